"""DC-Solver nodes: calibrate the compensation ratios on the connected model, and a SAMPLER that uses them.

Stand-alone the calibration runs on our DiffusionModel; in ComfyUI it runs inside ComfyUI's own CFG guider (a
KSAMPLER that calibrates and returns its input). The SAMPLER runs in TurboSample Sample or SamplerCustom /
SamplerCustomAdvanced (``comfy.samplers.KSAMPLER``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..samplers.dc_calibration import (
    CPR_FORMAT,
    DEFAULTS,
    calibrate,
    load_calibration,
    load_cpr,
    model_id_of,
    predict_cpr,
    save_calibration,
)
from ..samplers.dc_solver import sample_dc_solver
from ..samplers.registry import SamplerInfo
from . import categories
from .spec import NodeInputError, NodeSpec, Output, Param
from .user_files import output_path, user_dir


def calibration_dir() -> Path:
    """Where calibrations go: $TURBOSAMPLE_DC_SOLVER_DIR, ComfyUI's user dir, or ~/.cache/turbosample/dc_solver."""
    return user_dir("TURBOSAMPLE_DC_SOLVER_DIR", "dc_solver")


def resolve_path(spec: str) -> Path:
    path = Path(spec.strip()).expanduser()
    if not spec.strip():
        raise NodeInputError("calibration: give the JSON path written by TurboSample DC-Solver Calibrate")
    return path if path.is_absolute() or path.exists() else calibration_dir() / path


MIN_STEPS, MAX_STEPS = 3, 60


def _write(record: dict, filename: str) -> tuple:
    default = f"dc_solver_{record['model_id'].replace(':', '_')}_{record['steps']}steps_cfg{record['cfg']:g}"
    return (str(save_calibration(output_path(calibration_dir(), filename, default, ".json"), record)),)


def calibration_sigmas(sigmas) -> torch.Tensor:
    """The SIGMAS the ratios are calibrated for (the run's own), checked: 3-60 steps."""
    sigmas = torch.as_tensor(sigmas).float().cpu().flatten()
    steps = len(sigmas) - 1
    if not MIN_STEPS <= steps <= MAX_STEPS:
        raise NodeInputError(f"DC-Solver Calibrate: the SIGMAS have {steps} steps; it calibrates runs of "
                             f"{MIN_STEPS} to {MAX_STEPS} steps")
    return sigmas


def dc_calibrate(model, positive, negative, latent_image, sigmas, seed: int, cfg: float, samples: int,
                 filename: str) -> tuple:
    """Stand-alone: calibrate our DiffusionModel for these SIGMAS and write the JSON; returns its path."""
    from ..samplers.denoiser import DiffusionModel, cfg_denoiser
    from ..samplers.noise import noisy_start, seeded_noise

    if not isinstance(model, DiffusionModel):
        raise NodeInputError("TurboSample DC-Solver Calibrate outside ComfyUI takes the built-in model")
    sigmas = calibration_sigmas(sigmas)
    device = next(model.diffusion_model.parameters()).device
    noise = seeded_noise(seed, (int(samples), *latent_image["samples"].shape[1:]), device=device)
    x_T = noisy_start(model.model_sampling, sigmas[0].to(device), noise)
    denoiser = cfg_denoiser(model, positive, negative, cfg, {"sample_sigmas": sigmas.to(device), "run_state": {}})
    try:
        found = calibrate(denoiser, x_T, sigmas.to(device))
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None
    return _write({**found, "model_id": model_id_of(model), "cfg": float(cfg), "samples": int(samples),
                   "seed": int(seed)}, filename)


def comfy_dc_calibrate(model, positive, negative, latent_image, sigmas, seed: int, cfg: float, samples: int,
                       filename: str) -> tuple:
    """ComfyUI: the calibration runs inside ComfyUI's CFG guider on the connected SIGMAS."""
    import comfy.sample
    import comfy.samplers

    sigmas = calibration_sigmas(sigmas)
    found: dict = {}

    def search(model_fn, x, sigmas_in, extra_args=None, callback=None, disable=None):
        found.update(calibrate(model_fn, x, sigmas_in, extra_args=extra_args))
        return x

    latent = latent_image["samples"]
    latent = comfy.sample.fix_empty_latent_channels(model, torch.zeros((samples, *latent.shape[1:])))
    noise = comfy.sample.prepare_noise(latent, seed)
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    try:
        guider.sample(noise, latent, comfy.samplers.KSAMPLER(search), sigmas, seed=seed)
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None
    found.update(model_id=model_id_of(model), cfg=float(cfg), samples=int(samples), seed=int(seed))
    return _write(found, filename)


def sample_dc_solver_cpr(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                         callback=None, disable: bool | None = None, cpr_weights=None, cfg: float = 7.5,
                         variant: str = "bh1") -> torch.Tensor:
    """DC-Solver with ratios predicted by CPR for this run's step count and ``cfg``."""
    ratios = predict_cpr(cpr_weights, len(sigmas) - 1, cfg)
    return sample_dc_solver(model, x, sigmas, extra_args, callback, disable, ratios=ratios, variant=variant)


def dc_solver_info(model, calibration: str, cfg: float) -> SamplerInfo:
    """The SamplerInfo for a calibration (or CPR) file checked against ``model``'s weights."""
    import json

    path = resolve_path(calibration)
    try:
        model_id = model_id_of(model)
        kind = json.loads(path.read_text()).get("format") if path.is_file() else None
        if kind == CPR_FORMAT:
            options = {"cpr_weights": load_cpr(path, model_id), "cfg": float(cfg)}
            return SamplerInfo("dc_solver", sample_dc_solver_cpr, 1, f"DC-Solver (CPR, cfg {cfg:g})", options)
        record = load_calibration(path, model_id)
    except (ValueError, OSError, AttributeError) as exc:
        raise NodeInputError(f"calibration {calibration!r}: {exc}") from None
    options = {"ratios": record["ratios"], "variant": record.get("variant", "bh1"),
               "calibrated_sigmas": record["sigmas"]}
    return SamplerInfo("dc_solver", sample_dc_solver, 1, f"DC-Solver ({record['steps']} steps)", options)


def dc_solver_sampler(model, calibration: str, cfg: float) -> tuple:
    return (dc_solver_info(model, calibration, cfg),)


def comfy_dc_solver_sampler(model, calibration: str, cfg: float) -> tuple:
    import comfy.samplers

    info = dc_solver_info(model, calibration, cfg)
    return (comfy.samplers.KSAMPLER(info.fn, extra_options=dict(info.options)),)


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("TurboSampleDCSolverCalibrate", "TurboSample DC-Solver Calibrate", categories.CALIBRATION,
             "DC-Solver (Zhao et al., ECCV 2024): finds one dynamic-compensation ratio per step for UniPC on this "
             "model, prompt, CFG and the connected SIGMAS (steps come from them) by matching a 200-step reference "
             "trajectory of `samples` noises (about samples x (200 + 20 x steps) model calls, once). Writes JSON; "
             "returns its path.",
             (Param("model", "MODEL"), Param("positive", "CONDITIONING"), Param("negative", "CONDITIONING"),
              Param("latent_image", "LATENT", tooltip="Only its shape is used."),
              Param("sigmas", "SIGMAS", tooltip="The schedule the DC-Solver run will use (connect the same "
                                                "Scheduler output): its step count and sigmas are calibrated for; "
                                                "the sampler refuses other sigmas. 3-60 steps."),
              Param("seed", "INT", 0, 0, 2**64 - 1, seed=True, tooltip="Noise of the calibration samples."),
              Param("cfg", "FLOAT", 4.0, 0.0, 30.0, 0.1, tooltip="Guidance the ratios are calibrated for."),
              Param("samples", "INT", DEFAULTS["samples"], 1, 64, tooltip="Calibration samples (the paper uses 10)."),
              Param("filename", "STRING", "", tooltip="File name in the calibration folder; empty = derived from the "
                                                      "settings.")),
             (Output("calibration", "STRING"),), dc_calibrate, comfy_fn=comfy_dc_calibrate, output_node=True),
    NodeSpec("TurboSampleDCSolverSampler", "TurboSample DC-Solver", categories.SAMPLERS,
             "DC-Solver sampler: UniPC (one model call per step) with the compensation ratios of a DC-Solver "
             "Calibrate file; the run must use the model, step count and sigmas it was calibrated for. A CPR file "
             "(samplers/dc_calibration.py save_cpr) predicts ratios for any step count at the given cfg.",
             (Param("model", "MODEL", tooltip="Checked against the calibration's weights fingerprint."),
              Param("calibration", "STRING", "", tooltip="Calibration JSON path (or name in the calibration folder)."),
              Param("cfg", "FLOAT", 4.0, 0.0, 30.0, 0.1, tooltip="Only for CPR files: the guidance to predict for.")),
             (Output("SAMPLER", "SAMPLER"),), dc_solver_sampler, comfy_fn=comfy_dc_solver_sampler),
)
