"""DPM-Solver-v3 nodes: compute the empirical model statistics (EMS) of the connected model, and a SAMPLER using them.

Stand-alone the statistics come from our DiffusionModel; in ComfyUI they are computed inside ComfyUI's own CFG
guider (a KSAMPLER that estimates and returns its input). The file is tied to the model's weights and prediction
type; the SAMPLER node refuses a file made for another model. The estimate is cleaned up (l smoothed in lambda, s
and b left at 0 at the noisiest end; samplers/ems.py): on the built-in model, statistics from one held-out prompt
then beat neutral statistics and dpmpp_2m at 5-10 steps (bench/bench_dpm_solver_v3.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..samplers.dpm_solver_v3 import MAX_ORDER, sample_dpm_solver_v3
from ..samplers.ems import DEFAULTS, REDUCTIONS, estimate_ems, load_ems, model_id_of, prediction_of, save_ems
from ..samplers.registry import SamplerInfo
from . import categories
from .spec import NodeInputError, NodeSpec, Output, Param
from .user_files import output_path, user_dir


def ems_dir() -> Path:
    """Where EMS files go: $TURBOSAMPLE_EMS_DIR, ComfyUI's user dir, or ~/.cache/turbosample/dpm_solver_v3."""
    return user_dir("TURBOSAMPLE_EMS_DIR", "dpm_solver_v3")


def resolve_path(spec: str) -> Path:
    if not spec.strip():
        raise NodeInputError("ems: give the .safetensors path written by TurboSample DPM-Solver-v3 EMS")
    path = Path(spec.strip()).expanduser()
    path = path if path.is_absolute() or path.exists() else ems_dir() / path
    return path if path.suffix == ".safetensors" or path.exists() else path.with_name(path.name + ".safetensors")


def _write(ems, model, filename: str, cfg: float) -> tuple:
    model_id = model_id_of(model)
    default = f"ems_{model_id.replace(':', '_')}_cfg{cfg:g}_{ems.meta['reduce']}"
    return (str(save_ems(output_path(ems_dir(), filename, default, ".safetensors"), ems, model_id, cfg=float(cfg))),)


def _options(grid_points: int, reduce: str, smooth: float, sb_margin: float) -> dict:
    if reduce not in REDUCTIONS:
        raise NodeInputError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    return {"grid_points": int(grid_points), "reduce": reduce, "smooth": float(smooth), "sb_margin": float(sb_margin)}


def compute_ems(model, positive, negative, latent_image, seed: int, cfg: float, batch: int, grid_points: int,
                reduce: str, filename: str, smooth: float = DEFAULTS["smooth"],
                sb_margin: float = DEFAULTS["sb_margin"]) -> tuple:
    """Stand-alone: statistics of our DiffusionModel under CFG, written as .safetensors; returns the path."""
    from ..samplers.denoiser import DiffusionModel, cfg_denoiser
    from ..samplers.noise import seeded_noise

    if not isinstance(model, DiffusionModel):
        raise NodeInputError("TurboSample DPM-Solver-v3 EMS outside ComfyUI takes the built-in model")
    device = next(model.diffusion_model.parameters()).device
    noise = seeded_noise(seed, (batch, *latent_image["samples"].shape[1:]), device=device)
    denoiser = cfg_denoiser(model, positive, negative, cfg, {"sample_sigmas": None, "run_state": {}})
    try:
        ems = estimate_ems(denoiser, model.model_sampling, noise, seed=seed,
                           **_options(grid_points, reduce, smooth, sb_margin))
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None
    return _write(ems, model, filename, cfg)


def comfy_compute_ems(model, positive, negative, latent_image, seed: int, cfg: float, batch: int, grid_points: int,
                      reduce: str, filename: str, smooth: float = DEFAULTS["smooth"],
                      sb_margin: float = DEFAULTS["sb_margin"]) -> tuple:
    """ComfyUI: the estimate runs inside ComfyUI's CFG guider on ComfyUI's noise for this seed."""
    import comfy.sample
    import comfy.samplers

    ms = model.get_model_object("model_sampling")
    latent = comfy.sample.fix_empty_latent_channels(model, torch.zeros((batch, *latent_image["samples"].shape[1:])))
    noise = comfy.sample.prepare_noise(latent, seed)
    found: dict = {}

    def estimate(model_fn, x, sigmas, extra_args=None, callback=None, disable=None):
        found["ems"] = estimate_ems(model_fn, ms, noise.to(x), extra_args=extra_args, seed=seed,
                                    **_options(grid_points, reduce, smooth, sb_margin))
        return x

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    sigmas = torch.stack([ms.sigma_max.float().cpu(), torch.tensor(0.0)])
    try:
        guider.sample(noise, latent, comfy.samplers.KSAMPLER(estimate), sigmas, seed=seed)
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None
    return _write(found["ems"], model, filename, cfg)


def v3_info(model, ems: str, order: int, use_corrector: bool, half: bool, model_sampling=None) -> SamplerInfo:
    """The SamplerInfo for an EMS file checked against ``model``'s weights and prediction type."""
    if not 1 <= order <= MAX_ORDER:
        raise NodeInputError(f"order must be 1-{MAX_ORDER}, got {order}")
    path = resolve_path(ems)
    try:
        ms = model_sampling if model_sampling is not None else model.model_sampling
        stats = load_ems(path, model_id_of(model), prediction_of(ms))
    except (ValueError, AttributeError) as exc:
        raise NodeInputError(f"ems {ems!r}: {exc}") from None
    options = {"ems": stats, "order": int(order), "use_corrector": bool(use_corrector), "half": bool(half)}
    return SamplerInfo("dpm_solver_v3", sample_dpm_solver_v3, 1, f"DPM-Solver-v3 with {path.name}", options)


def v3_sampler(model, ems: str, order: int, use_corrector: bool, half: bool) -> tuple:
    return (v3_info(model, ems, order, use_corrector, half),)


def comfy_v3_sampler(model, ems: str, order: int, use_corrector: bool, half: bool) -> tuple:
    import comfy.samplers

    info = v3_info(model, ems, order, use_corrector, half, model.get_model_object("model_sampling"))
    return (comfy.samplers.KSAMPLER(info.fn, extra_options=dict(info.options)),)


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("TurboSampleDPMSolverV3EMS", "TurboSample DPM-Solver-v3 EMS", categories.CALIBRATION,
             "DPM-Solver-v3 (Zheng et al. 2023): computes the empirical model statistics l, s, b of this model, "
             "prompt and CFG on `batch` of its own ODE trajectories (grid_points x 3 model calls per sample, "
             "once); l is smoothed over log-SNR and s, b are left at 0 at the noisiest end, where a few samples "
             "cannot estimate them. Writes .safetensors tied to the model's weights; returns its path.",
             (Param("model", "MODEL"), Param("positive", "CONDITIONING"), Param("negative", "CONDITIONING"),
              Param("latent_image", "LATENT", tooltip="Only its shape is used."),
              Param("seed", "INT", 0, 0, 2**64 - 1, seed=True, tooltip="Noise of the statistics' samples."),
              Param("cfg", "FLOAT", 4.0, 0.0, 30.0, 0.1, tooltip="Guidance the statistics are computed for."),
              Param("batch", "INT", 4, 1, 64, tooltip="Trajectories averaged (the paper uses 1024)."),
              Param("grid_points", "INT", DEFAULTS["grid_points"], 8, 512, tooltip="Lambdas of the statistics grid."),
              Param("reduce", "COMBO", DEFAULTS["reduce"], choices=lambda: list(REDUCTIONS),
                    tooltip="channel: one value per channel (any resolution); element: per pixel (same size only)."),
              Param("filename", "STRING", "", tooltip="File name in the EMS folder; empty = derived from the model."),
              Param("smooth", "FLOAT", DEFAULTS["smooth"], 0.0, 5.0, 0.05,
                    tooltip="Width (in log-SNR) of the smoothing of l; 0 = the raw estimate."),
              Param("sb_margin", "FLOAT", DEFAULTS["sb_margin"], 0.0, 10.0, 0.1,
                    tooltip="s and b stay 0 within this log-SNR distance of the noisiest end; 0 = estimate them "
                            "everywhere.")),
             (Output("ems", "STRING"),), compute_ems, comfy_fn=comfy_compute_ems, output_node=True),
    NodeSpec("TurboSampleDPMSolverV3Sampler", "TurboSample DPM-Solver-v3", categories.SAMPLERS,
             "DPM-Solver-v3 multistep predictor-corrector (one model call per step) with the statistics of a "
             "DPM-Solver-v3 EMS file made for this model (refused for other weights or prediction types).",
             (Param("model", "MODEL", tooltip="Checked against the file's weights fingerprint."),
              Param("ems", "STRING", "", tooltip="EMS .safetensors path (or name in the EMS folder)."),
              Param("order", "INT", 2, 1, MAX_ORDER, tooltip="Predictor order (2 for guided sampling, 3 without)."),
              Param("use_corrector", "BOOLEAN", True, tooltip="Correct each new point once its model value is known."),
              Param("half", "BOOLEAN", False, tooltip="Correct only in the first (noisier) half of the steps.")),
             (Output("SAMPLER", "SAMPLER"),), v3_sampler, comfy_fn=comfy_v3_sampler),
)
