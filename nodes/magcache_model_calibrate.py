"""MagCache calibration of any supported MODEL from a graph: conditioning, latent, SAMPLER and SIGMAS as inputs.

The built-in calibrate node takes prompt text; this one takes what ComfyUI's SamplerCustomAdvanced takes, so it
calibrates ComfyUI's own Flux / SD3 (MMDiT) / Wan models (through the block patches of ``accel.comfy_native``)
as well as the built-in model, standalone or in ComfyUI.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..accel.adapter import UnsupportedModel
from ..accel.magcache_calibration import Calibration, calibrate, save_calibration, weights_fingerprint
from . import categories
from .builtin_nodes import SEED
from .magcache_nodes import calibration_dir
from .spec import NodeInputError, NodeSpec, Output, Param
from .user_files import output_path


def calibration_path(name: str, default: str) -> Path:
    return output_path(calibration_dir(), name, default, ".json")


def check_sigmas_input(sigmas: torch.Tensor) -> int:
    steps = int(sigmas.numel()) - 1
    if steps < 1:
        raise NodeInputError("MagCache calibration needs SIGMAS with at least one step")
    return steps


def reusable(path: Path, model, sigmas: torch.Tensor, shape: list, cfg: float) -> bool:
    """Whether ``path`` holds a calibration of these weights, sigmas, latent size and cfg (any prompt and seed)."""
    from ..accel.magcache_calibration import load_calibration

    try:
        cal = load_calibration(path)
    except (FileNotFoundError, ValueError):
        return False
    run = sigmas.detach().float().cpu()
    return (cal.fingerprint == weights_fingerprint(model.diffusion_model) and cal.sigmas is not None
            and len(cal.sigmas) == len(run) and torch.allclose(torch.tensor(cal.sigmas), run, atol=1e-6, rtol=0)
            and cal.meta.get("shape") == shape and cal.meta.get("cfg") == cfg)


def calibrate_model(model, positive, negative, latent_image, sampler, sigmas, seed: int, cfg: float,
                    filename: str) -> tuple:
    """Standalone: one full run of our DiffusionModel recording the ratio curves; returns the JSON path. A named
    file that already holds a calibration of these weights, sigmas, size and cfg is reused (ComfyUI's cache does
    the same for an unchanged graph), so a graph that calibrates before MagCache pays for it once."""
    from ..samplers.denoiser import DiffusionModel

    if not isinstance(model, DiffusionModel):
        raise NodeInputError("TurboSample MagCache Calibrate (model) outside ComfyUI takes the app's MODEL (the "
                             "built-in model or a model folder)")
    steps = check_sigmas_input(sigmas)
    latent = torch.zeros_like(latent_image["samples"])
    if filename.strip():
        path = calibration_path(filename, "")
        if reusable(path, model, sigmas, list(latent.shape), cfg):
            return (str(path),)
    try:
        cal = calibrate(model, positive, negative, latent, sampler, sigmas.float(), seed, cfg,
                        {"shape": list(latent.shape)})
    except UnsupportedModel as exc:
        raise NodeInputError(str(exc)) from None
    return (str(save_calibration(cal, calibration_path(filename, f"{cal.model_id}_{steps}steps"))),)


def comfy_calibrate_model(model, positive, negative, latent_image, sampler, sigmas, seed: int, cfg: float,
                          filename: str) -> tuple:
    """ComfyUI: the run goes through ComfyUI's own CFG guider with recording block patches (nothing skipped)."""
    import comfy.sample
    import comfy.samplers

    from ..accel.magcache_calibration import records_to_ratios
    from .comfy_magcache import recording_clone

    steps = check_sigmas_input(sigmas)
    records: dict = {}
    try:
        patched = recording_clone(model, records)
    except UnsupportedModel as exc:
        raise NodeInputError(f"{exc} (the built-in model calibrates with TurboSample MagCache Calibrate)") from None
    latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
    guider = comfy.samplers.CFGGuider(patched)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    guider.sample(comfy.sample.prepare_noise(latent, seed), latent, sampler, sigmas, seed=seed)
    ratios, extra = records_to_ratios(records, steps)
    diffusion_model = model.get_model_object("diffusion_model")
    model_id = type(diffusion_model).__name__
    cal = Calibration(model_id=model_id, steps=steps, ratios=ratios, fingerprint=weights_fingerprint(diffusion_model),
                      sigmas=tuple(float(s) for s in sigmas.float().cpu()),
                      meta={"seed": seed, "cfg": cfg, "shape": list(latent.shape), **extra})
    return (str(save_calibration(cal, calibration_path(filename, f"{model_id}_{steps}steps"))),)


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("TurboSampleMagCacheCalibrateModel", "TurboSample MagCache Calibrate (model)", categories.CALIBRATION,
             "One full sampling run of the connected MODEL (ComfyUI's Flux, SD3/MMDiT, Wan, or the built-in model) "
             "that records MagCache's per-step magnitude ratios per CFG branch; nothing is skipped. Writes JSON "
             "tied to these weights, steps and sigmas; returns its path for TurboSample MagCache.",
             (Param("model", "MODEL"), Param("positive", "CONDITIONING"), Param("negative", "CONDITIONING"),
              Param("latent_image", "LATENT", tooltip="Size of the calibration run (its content is not used)."),
              Param("sampler", "SAMPLER", tooltip="Sampler of the calibration run; euler evaluates each sigma once."),
              Param("sigmas", "SIGMAS", tooltip="The schedule MagCache will later run on."),
              SEED, Param("cfg", "FLOAT", 4.0, 0.0, 30.0, 0.1, tooltip="Guidance scale of the calibration run."),
              Param("filename", "STRING", "", tooltip="File name in the calibration folder; empty = model name "
                                                      "and step count.")),
             (Output("calibration", "STRING"),), calibrate_model, comfy_fn=comfy_calibrate_model, output_node=True),
)
