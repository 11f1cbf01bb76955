"""The AYS optimizer as a SIGMAS node: the schedule is fitted to the connected model, prompt, CFG and latent size."""

from __future__ import annotations

import torch

from ..samplers.ays_optimize import DEFAULTS, ays_for_model, ays_optimize
from ..samplers.model_sampling import is_flow
from ..samplers.schedulers import karras, simple
from . import categories
from .spec import NodeInputError, NodeSpec, Output, Param


def ays_opt_sigmas(model, positive, negative, latent_image, seed: int, cfg: float, steps: int, batch: int,
                   mc_points: int) -> tuple:
    """Stand-alone: the optimized schedule for our DiffusionModel."""
    from ..samplers.denoiser import DiffusionModel

    if not isinstance(model, DiffusionModel):
        raise NodeInputError("TurboSample AYS Optimize outside ComfyUI takes the built-in model")
    shape = (batch, *latent_image["samples"].shape[1:])
    try:
        return (ays_for_model(model, positive, negative, cfg, steps, shape, seed=seed, mc_points=mc_points).float(),)
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None


def comfy_ays_opt_sigmas(model, positive, negative, latent_image, seed: int, cfg: float, steps: int, batch: int,
                         mc_points: int) -> tuple:
    """ComfyUI: the optimizer runs inside ComfyUI's own CFG guider (a KSAMPLER that optimizes, returns its input)."""
    import comfy.sample
    import comfy.samplers

    ms = model.get_model_object("model_sampling")
    found: dict[str, torch.Tensor] = {}

    def optimize(model_fn, x, sigmas, extra_args=None, callback=None, disable=None):
        found["sigmas"] = ays_optimize(model_fn, ms, x, steps, seed=seed, extra_args=extra_args,
                                       mc_points=mc_points)[0]
        return x

    latent = latent_image["samples"]
    latent = comfy.sample.fix_empty_latent_channels(model, torch.zeros((batch, *latent.shape[1:])))
    noise = comfy.sample.prepare_noise(latent, seed)
    data_sigmas = (simple if is_flow(ms) else karras)(ms, DEFAULTS["data_steps"])  # x arrives at data_sigmas[0]
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    try:
        guider.sample(noise, latent, comfy.samplers.KSAMPLER(optimize), data_sigmas, seed=seed)
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None
    return (found["sigmas"].float().cpu(),)


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("TurboSampleAYSOptimizeScheduler", "TurboSample AYS Optimize Scheduler", categories.SCHEDULERS,
             "Align Your Steps optimizer (Sabour et al. 2024): fits `steps` noise levels to this model, prompt and "
             "CFG by minimising a Monte-Carlo KL upper bound on samples the model makes itself (about "
             "batch x (47 + mc_points + 96) model calls, once).",
             (Param("model", "MODEL"), Param("positive", "CONDITIONING"), Param("negative", "CONDITIONING"),
              Param("latent_image", "LATENT", tooltip="Only its shape is used."),
              Param("seed", "INT", 0, 0, 2**64 - 1, seed=True, tooltip="Noise of the optimizer's samples."),
              Param("cfg", "FLOAT", 4.0, 0.0, 30.0, 0.1, tooltip="Guidance the schedule is optimized for."),
              Param("steps", "INT", 8, 1, 60, tooltip="Steps of the schedule to optimize."),
              Param("batch", "INT", 2, 1, 64, tooltip="Samples the model makes as the optimizer's data."),
              Param("mc_points", "INT", DEFAULTS["mc_points"], 4, 512,
                    tooltip="Monte-Carlo noise levels per sample for the KL bound (more: steadier, slower).")),
             (Output("SIGMAS", "SIGMAS"),), ays_opt_sigmas, comfy_fn=comfy_ays_opt_sigmas),
)
