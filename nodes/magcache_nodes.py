"""MagCache nodes: calibrate the built-in model, and patch a MODEL with the skip rule."""

from __future__ import annotations

from pathlib import Path

from ..accel.magcache_calibration import (
    BUILTIN_CALIBRATION,
    PUBLISHED_CURVES,
    Calibration,
    calibrate,
    check_model,
    load_calibration,
    published_curve,
    run_settings,
    save_calibration,
    weights_fingerprint,
)
from ..models.builtin import MAX_SIZE
from ..samplers.registry import SAMPLERS
from ..samplers.schedulers import SCHEDULERS
from . import categories, comfy_magcache
from .builtin_nodes import MIN_SIZE, SEED, SIZE_STEP, empty_latent
from .spec import NodeInputError, NodeSpec, Output, Param
from .user_files import output_path, user_dir

RESAMPLE_MODES = ("off", "nearest", "linear")


def calibration_dir() -> Path:
    """Where calibrations are written: $TURBOSAMPLE_MAGCACHE_DIR, ComfyUI's user dir, or ~/.cache."""
    return user_dir("TURBOSAMPLE_MAGCACHE_DIR", "magcache")


def resolve_calibration(spec: str) -> Calibration:
    """'' or 'builtin' = shipped built-in calibration; a published curve name (e.g. 'flux'); else a JSON path."""
    import json

    spec = spec.strip()
    if spec in ("", "builtin"):
        return load_calibration(BUILTIN_CALIBRATION)
    if spec in json.loads(PUBLISHED_CURVES.read_text())["curves"]:
        return published_curve(spec)
    path = Path(spec).expanduser()
    if not path.is_absolute() and not path.exists():
        path = calibration_dir() / path
    try:
        return load_calibration(path)
    except (FileNotFoundError, ValueError) as exc:
        raise NodeInputError(f"calibration {spec!r}: {exc}") from None


def calibrate_builtin(prompt: str, negative_prompt: str, steps: int, scheduler: str, sampler_name: str, cfg: float,
                      seed: int, width: int, height: int, flow_shift: float, filename: str) -> tuple:
    """One full run of the built-in model recording the MagCache ratio curves; returns the JSON path."""
    from ..samplers.registry import get_sampler
    from ..samplers.schedulers import compute_sigmas
    from .builtin_nodes import encode_text, load_builtin_model

    (latent,) = empty_latent(width, height, 1)
    (model,) = load_builtin_model(flow_shift)
    sigmas = compute_sigmas(model.model_sampling, scheduler, steps, 1.0)
    meta = {"prompt": prompt, "negative_prompt": negative_prompt, "scheduler": scheduler, "width": width,
            "height": height, "flow_shift": flow_shift}
    cal = calibrate(model, encode_text(prompt)[0], encode_text(negative_prompt)[0], latent["samples"],
                    get_sampler(sampler_name), sigmas, seed, cfg, meta)
    default = f"{cal.model_id}_{scheduler}_{steps}steps_shift{flow_shift:g}_{width}x{height}"
    return (str(save_calibration(cal, output_path(calibration_dir(), filename, default, ".json"))),)


def settings_from_inputs(calibration: str, threshold: float, max_skip_steps: int, retention_ratio: float,
                         resample: str, fingerprint: str | None):
    cal = resolve_calibration(calibration)
    check_model(cal, fingerprint)
    return run_settings(cal, threshold, max_skip_steps, retention_ratio, None if resample == "off" else resample)


def apply_magcache(model, calibration: str, threshold: float, max_skip_steps: int, retention_ratio: float,
                   resample: str) -> tuple:
    from ..accel.magcache import magcache_model
    from ..samplers.denoiser import DiffusionModel

    if not isinstance(model, DiffusionModel):
        raise NodeInputError("TurboSample MagCache outside ComfyUI takes the built-in model (a DiffusionModel)")
    template, curve_for = settings_from_inputs(calibration, threshold, max_skip_steps, retention_ratio, resample,
                                               weights_fingerprint(model.diffusion_model))
    return (magcache_model(model, template, curve_for=curve_for),)


def comfy_apply_magcache(model, calibration: str, threshold: float, max_skip_steps: int, retention_ratio: float,
                         resample: str) -> tuple:
    diffusion_model = model.get_model_object("diffusion_model")
    comfy_magcache.check_supported(diffusion_model)  # UnsupportedModel before any calibration file is read
    template, curve_for = settings_from_inputs(calibration, threshold, max_skip_steps, retention_ratio, resample,
                                               weights_fingerprint(diffusion_model))
    return (comfy_magcache.patch_model_patcher(model, template, curve_for),)


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("TurboSampleMagCacheCalibrate", "TurboSample MagCache Calibrate", categories.CALIBRATION,
             "One full run of the built-in model that records MagCache's per-step residual magnitude ratios "
             "(cond and uncond separately) and saves them as JSON; returns the file path.",
             (Param("prompt", "STRING", "smiling face", multiline=True, tooltip="Calibration prompt (one suffices)."),
              Param("negative_prompt", "STRING", "", multiline=True, tooltip="Negative prompt (CFG branch)."),
              Param("steps", "INT", 28, 2, 1000, tooltip="Steps the calibration is for (MagCache refuses others "
                                                        "unless resampling is enabled)."),
              Param("scheduler", "COMBO", "simple", choices=lambda: list(SCHEDULERS), tooltip="Schedule shape."),
              Param("sampler_name", "COMBO", "euler", choices=lambda: list(SAMPLERS),
                    tooltip="Sampler of the calibration run; euler evaluates every schedule sigma once."),
              Param("cfg", "FLOAT", 4.0, 0.0, 30.0, 0.1, tooltip="Guidance scale of the calibration run."),
              SEED,
              Param("width", "INT", 64, MIN_SIZE, MAX_SIZE, SIZE_STEP, tooltip="Width in pixels."),
              Param("height", "INT", 64, MIN_SIZE, MAX_SIZE, SIZE_STEP, tooltip="Height in pixels."),
              Param("flow_shift", "FLOAT", 1.0, 0.1, 20.0, 0.05, tooltip="Must match the model loader's shift."),
              Param("filename", "STRING", "", tooltip="File name in the calibration folder; empty = derived "
                                                      "from the settings.")),
             (Output("calibration", "STRING"),), calibrate_builtin),
    NodeSpec("TurboSampleMagCache", "TurboSample MagCache", categories.ACCELERATORS,
             "Skips the transformer block stack on steps where the calibrated magnitude-ratio curve predicts a "
             "small error, reusing the cached residual (MagCache, NeurIPS 2025). Returns a patched MODEL.",
             (Param("model", "MODEL"),
              Param("calibration", "STRING", "builtin",
                    tooltip="'builtin' (shipped: built-in model, 28 steps, simple, shift 1), a published curve "
                            "name (flux, wan2.1_t2v_1.3B, ...) or a calibration JSON path from MagCache Calibrate."),
              Param("threshold", "FLOAT", 0.06, 0.0, 1.0, 0.01,
                    tooltip="Accumulated-error budget; higher skips more (0 = never skip)."),
              Param("max_skip_steps", "INT", 2, 1, 50, tooltip="Most consecutive skipped steps (K)."),
              Param("retention_ratio", "FLOAT", 0.2, 0.0, 1.0, 0.01,
                    tooltip="Fraction of leading steps that always run."),
              Param("resample", "COMBO", "off", choices=lambda: list(RESAMPLE_MODES),
                    tooltip="off: the run must match the calibration's steps and schedule; nearest/linear: map the "
                            "curve to the run's step count.")),
             (Output("MODEL", "MODEL"),), apply_magcache, comfy_fn=comfy_apply_magcache),
)
