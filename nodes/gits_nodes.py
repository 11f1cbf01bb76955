"""GITS as a SIGMAS node: the timestep search runs on the connected model with its prompt, CFG and latent size."""

from __future__ import annotations

import torch

from ..samplers.gits import DEFAULT_COEFF, default_fine_sigmas, gits_for_model, gits_schedule
from . import categories
from .spec import NodeInputError, NodeSpec, Output, Param


def gits_sigmas(model, positive, negative, latent_image, seed: int, cfg: float, steps: int, batch: int,
                coeff: float) -> tuple:
    """Stand-alone: the searched schedule for our DiffusionModel."""
    from ..samplers.denoiser import DiffusionModel

    if not isinstance(model, DiffusionModel):
        raise NodeInputError("TurboSample GITS outside ComfyUI takes the built-in model")
    shape = (batch, *latent_image["samples"].shape[1:])
    try:
        return (gits_for_model(model, positive, negative, cfg, steps, shape, seed=seed, coeff=coeff).float(),)
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None


def comfy_gits_sigmas(model, positive, negative, latent_image, seed: int, cfg: float, steps: int, batch: int,
                      coeff: float) -> tuple:
    """ComfyUI: the search runs inside ComfyUI's own CFG guider (a KSAMPLER that searches and returns its input)."""
    import comfy.sample
    import comfy.samplers

    found: dict[str, torch.Tensor] = {}

    def search(model_fn, x, sigmas, extra_args=None, callback=None, disable=None):
        found["sigmas"] = gits_schedule(model_fn, x, sigmas, steps, coeff=coeff, extra_args=extra_args)
        return x

    latent = latent_image["samples"]
    latent = comfy.sample.fix_empty_latent_channels(model, torch.zeros((batch, *latent.shape[1:])))
    noise = comfy.sample.prepare_noise(latent, seed)
    fine = default_fine_sigmas(model.get_model_object("model_sampling"))
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    try:
        guider.sample(noise, latent, comfy.samplers.KSAMPLER(search), fine, seed=seed)
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None
    return (found["sigmas"].float().cpu(),)


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("TurboSampleGITSScheduler", "TurboSample GITS Scheduler", categories.SCHEDULERS,
             "GITS (Chen et al. 2024): searches the best `steps` timesteps for this model, prompt and CFG by dynamic "
             "programming over a 61-point teacher trajectory (costs about 60 model calls per sample, once).",
             (Param("model", "MODEL"), Param("positive", "CONDITIONING"), Param("negative", "CONDITIONING"),
              Param("latent_image", "LATENT", tooltip="Only its shape is used."),
              Param("seed", "INT", 0, 0, 2**64 - 1, seed=True, tooltip="Noise of the search samples."),
              Param("cfg", "FLOAT", 4.0, 0.0, 30.0, 0.1, tooltip="Guidance the schedule is searched for."),
              Param("steps", "INT", 8, 1, 60, tooltip="Steps of the schedule to find."),
              Param("batch", "INT", 2, 1, 64, tooltip="Samples averaged by the search (the paper uses 256)."),
              Param("coeff", "FLOAT", DEFAULT_COEFF, 0.5, 2.0, 0.01,
                    tooltip="Weight growth per jump in the path cost (>1 weighs later, low-noise jumps more).")),
             (Output("SIGMAS", "SIGMAS"),), gits_sigmas, comfy_fn=comfy_gits_sigmas),
)
