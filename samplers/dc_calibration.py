"""DC-Solver calibration: per-step compensation ratios searched against a high-NFE reference, and CPR.

As the official code (github wl-zhao/DC-Solver): a reference trajectory from the same noise at many steps (the
diffusers script uses 200 DDIM steps, ``batch_size`` 10 samples); then, step by step along DC-Solver's own
trajectory, the ratio of step k minimises the MSE between the state after step k (predictor + corrector) and the
reference state at that sigma; the first two ratios stay 1. Differences: the reference is iPNDM (order 4) on
``reference_nfe`` steps placed log-uniformly inside each coarse step, so it passes through every coarse sigma;
the 1-D search is bounded Brent (scipy, derivative-free, one model call per trial, works under ComfyUI's
inference mode) instead of 20 AdamW iterations (lr 0.1, from 1, unbounded) through the network, over
[-1, 3] (about the reach of those iterations), and ratio 1 is kept unless a ratio beats it.

CPR (cascade polynomial regression, official ``cascade_polynomial_regression``): ratio(step) =
sum_i x^i P_i(cfg / 12, nfe / 50) with x = step / nfe (1-based step, ratio 1 for steps 1-2), P_i quadratic in cfg
whose coefficients are quadratic in nfe: 4 x 3 x 3 weights, here fitted by one linear least-squares solve over
calibrations at several NFE / CFG (degrees drop where fewer distinct NFE or CFG values were calibrated).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from .dc_solver import DC_ORDER, NEUTRAL, check_ratios, run_dc, unipc_grid
from .denoiser import DiffusionModel, cfg_denoiser
from .fingerprint import model_id_of  # noqa: F401  (re-exported for the nodes)
from .gits import teacher_trajectory
from .noise import noisy_start, seeded_noise
from .sampling_utils import split_extra_args
from .schedulers import compute_sigmas
from .validate import check_finite, check_sigmas, check_steps

FORMAT = "turbosample-dc-solver-ratios"
CPR_FORMAT = "turbosample-dc-solver-cpr"
VERSION = 1
DEFAULTS = {"samples": 10, "reference_nfe": 200, "reference_solver": "ipndm", "bounds": (-1.0, 3.0),
            "xatol": 1e-3, "max_trials": 20}
CPR_SHAPE = (4, 3, 3)  # powers of step / nfe, of cfg / 12, of nfe / 50


def reference_states(denoiser, x_T: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                     reference_nfe: int = DEFAULTS["reference_nfe"],
                     solver: str = DEFAULTS["reference_solver"]) -> list[torch.Tensor]:
    """Reference x at every sigma UniPC visits (a final 0 read as 1e-3), from ``reference_nfe`` fine steps."""
    grid = unipc_grid(sigmas)
    steps = len(grid) - 1
    sub = max(1, math.ceil(check_steps(reference_nfe) / steps))
    logs = torch.tensor(grid, dtype=torch.float64).log()
    fine = torch.cat([torch.linspace(float(a), float(b), sub + 1, dtype=torch.float64)[:-1]
                      for a, b in zip(logs[:-1], logs[1:], strict=True)] + [logs[-1:]]).exp()
    fine[::sub] = torch.tensor(grid, dtype=torch.float64)  # exact coarse sigmas (no exp/log round trip)
    points, _ = teacher_trajectory(denoiser, x_T, fine.to(x_T.device, x_T.dtype), solver, extra_args)
    return [points[k * sub] for k in range(steps + 1)]


@torch.no_grad()
def search_ratios(denoiser, x_T: torch.Tensor, sigmas: torch.Tensor, reference: list[torch.Tensor],
                  extra_args: dict | None = None, variant: str = "bh1",
                  bounds: tuple[float, float] = DEFAULTS["bounds"],
                  xatol: float = DEFAULTS["xatol"], max_trials: int = DEFAULTS["max_trials"]) -> dict:
    """Greedy per-step ratio search; returns {"ratios", "loss_neutral", "loss"} (per-step MSE to the reference)."""
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < NEUTRAL < hi):
        raise ValueError(f"ratio bounds must be finite and enclose {NEUTRAL}, got {bounds}")
    if len(reference) != len(sigmas):
        raise ValueError(f"the reference has {len(reference)} states for {len(sigmas)} sigmas")
    _, args = split_extra_args(denoiser, extra_args)
    ratios, loss_neutral, loss = [], [], []

    def choose(k: int, attempt) -> float:
        def mse(r: float) -> float:
            return float(torch.mean((attempt(r)[0].double() - reference[k].double()) ** 2))

        found = minimize_scalar(mse, bounds=(lo, hi), method="bounded",
                                options={"xatol": xatol, "maxiter": max_trials})
        best = float(found.x) if mse(float(found.x)) < mse(NEUTRAL) else NEUTRAL
        loss_neutral.append(mse(NEUTRAL))
        loss.append(mse(best))
        ratios.append(best)
        return best

    run_dc(denoiser, x_T, sigmas, args, choose, variant)
    return {"ratios": [NEUTRAL] * min(DC_ORDER, len(sigmas) - 1) + ratios, "loss_neutral": loss_neutral,
            "loss": loss}


def calibrate(denoiser, x_T: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
              variant: str = "bh1", reference_nfe: int = DEFAULTS["reference_nfe"],
              reference_solver: str = DEFAULTS["reference_solver"],
              bounds: tuple[float, float] = DEFAULTS["bounds"]) -> dict:
    """Ratios for ``sigmas`` on any k-diffusion denoiser; ``x_T``: a batch of start points at sigmas[0]."""
    sigmas = check_sigmas(torch.as_tensor(sigmas))
    check_finite(x_T, "x_T")
    if len(sigmas) - 1 < 1:
        raise ValueError("calibration needs at least one step")
    ref = reference_states(denoiser, x_T, sigmas, extra_args, reference_nfe, reference_solver)
    for state in ref:
        check_finite(state, "reference trajectory")
    found = search_ratios(denoiser, x_T, sigmas, ref, extra_args, variant, bounds)
    return {**found, "sigmas": [float(s) for s in sigmas], "steps": len(sigmas) - 1, "variant": variant,
            "reference_nfe": int(reference_nfe), "reference_solver": reference_solver}


def calibrate_for_model(model: DiffusionModel, positive: list, negative: list, cfg: float, steps: int,
                        latent_shape: tuple[int, ...], samples: int = DEFAULTS["samples"], seed: int = 0,
                        scheduler: str = "simple", **options) -> dict:
    """A calibration record for our DiffusionModel under CFG: ``samples`` noises of ``latent_shape[1:]``."""
    steps = check_steps(steps)
    if int(samples) != samples or samples < 1:
        raise ValueError(f"samples must be a whole number >= 1, got {samples}")
    ms = model.model_sampling
    sigmas = compute_sigmas(ms, scheduler, steps).float().cpu()
    device = next(model.diffusion_model.parameters()).device
    noise = seeded_noise(seed, (int(samples), *latent_shape[1:]), device=device)
    x_T = noisy_start(ms, sigmas[0].to(device), noise)
    denoiser = cfg_denoiser(model, positive, negative, cfg, {"sample_sigmas": sigmas.to(device), "run_state": {}})
    found = calibrate(denoiser, x_T, sigmas.to(device), **options)
    return {**found, "model_id": model_id_of(model), "cfg": float(cfg), "scheduler": scheduler,
            "samples": int(samples), "seed": int(seed)}


def save_calibration(path: str | Path, record: dict) -> Path:
    """Write a calibration record (from ``calibrate_for_model`` or ``calibrate`` plus model_id and cfg) as JSON."""
    for key in ("model_id", "steps", "ratios", "sigmas"):
        if key not in record:
            raise ValueError(f"a DC-Solver calibration needs {key!r}")
    check_ratios(record["ratios"], record["steps"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": FORMAT, "version": VERSION, **record}, indent=1))
    return path


def _read(path: str | Path, fmt: str) -> dict:
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read a DC-Solver file from {path}: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise ValueError(f"{path} is not a {fmt} file")
    if record.get("version") != VERSION:
        raise ValueError(f"{path}: unsupported version {record.get('version')!r}")
    return record


def _check_model(path, record: dict, model_id: str | None) -> None:
    if model_id is not None and record.get("model_id") != model_id:
        raise ValueError(f"{path} was calibrated for model {record.get('model_id')!r}, not {model_id!r}; "
                         "calibrate DC-Solver on this model")


def load_calibration(path: str | Path, model_id: str | None = None, steps: int | None = None) -> dict:
    """Read a calibration; ValueError if it is not one or belongs to another model id / step count."""
    record = _read(path, FORMAT)
    _check_model(path, record, model_id)
    if steps is not None and record.get("steps") != steps:
        raise ValueError(f"{path} holds ratios for {record.get('steps')} steps, not {steps}; calibrate for "
                         f"{steps} steps")
    try:
        check_ratios(record["ratios"], int(record["steps"]))
        check_sigmas(torch.tensor(record["sigmas"], dtype=torch.float64))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: malformed DC-Solver calibration ({exc})") from None
    if len(record["sigmas"]) != record["steps"] + 1:
        raise ValueError(f"{path}: {len(record['sigmas'])} sigmas do not match steps = {record['steps']}")
    return record


def _cpr_features(nfe: int, cfg: float, step: np.ndarray) -> np.ndarray:
    """(len(step), 36) monomials x^i c^(2-j) n^(2-k) in the official coefficient order (i, j, k)."""
    x, c, n = np.asarray(step, dtype=np.float64) / nfe, cfg / 12, nfe / 50
    i, j, k = np.meshgrid(np.arange(4), np.arange(3), np.arange(3), indexing="ij")
    return (x[:, None] ** i.ravel()) * (c ** (2 - j.ravel())) * (n ** (2 - k.ravel()))


def fit_cpr(calibrations: list[tuple[int, float, list[float]]]) -> np.ndarray:
    """CPR weights (4, 3, 3) from (nfe, cfg, ratios) calibrations; ratios of steps 1-2 are not fitted."""
    rows, targets, nfes, cfgs = [], [], set(), set()
    for nfe, cfg, ratios in calibrations:
        values = check_ratios(ratios, check_steps(nfe))
        if nfe <= DC_ORDER:
            continue
        steps = np.arange(DC_ORDER + 1, nfe + 1)
        rows.append(_cpr_features(nfe, float(cfg), steps))
        targets.append(np.asarray(values[DC_ORDER:]))
        nfes.add(nfe)
        cfgs.add(float(cfg))
    if not rows:
        raise ValueError(f"CPR needs calibrations with more than {DC_ORDER} steps")
    # terms the data cannot tell apart are left at 0: cfg / nfe degree <= distinct values - 1
    i, j, k = np.meshgrid(np.arange(4), np.arange(3), np.arange(3), indexing="ij")
    keep = ((2 - j) <= len(cfgs) - 1) & ((2 - k) <= len(nfes) - 1)
    keep = keep.ravel()
    a, b = np.concatenate(rows), np.concatenate(targets)
    weights = np.zeros(keep.size)
    weights[keep] = np.linalg.lstsq(a[:, keep], b, rcond=None)[0]
    return weights.reshape(CPR_SHAPE)


def predict_cpr(weights: np.ndarray, nfe: int, cfg: float) -> list[float]:
    """Ratios for ``nfe`` steps at ``cfg`` from CPR weights (1 for steps 1-2, as the official code)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != CPR_SHAPE or not np.isfinite(w).all():
        raise ValueError(f"CPR weights must be finite with shape {CPR_SHAPE}, got {w.shape}")
    nfe = check_steps(nfe)
    if not math.isfinite(cfg):
        raise ValueError(f"cfg must be finite, got {cfg}")
    steps = np.arange(DC_ORDER + 1, nfe + 1)
    tail = (_cpr_features(nfe, float(cfg), steps) @ w.ravel()).tolist() if len(steps) else []
    return [NEUTRAL] * min(DC_ORDER, nfe) + [float(v) for v in tail]


def save_cpr(path: str | Path, weights: np.ndarray, model_id: str,
             fitted_on: list[tuple[int, float]], **info: object) -> Path:
    """Write CPR weights with the model id and the (nfe, cfg) pairs they were fitted on."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != CPR_SHAPE:
        raise ValueError(f"CPR weights must have shape {CPR_SHAPE}, got {w.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": CPR_FORMAT, "version": VERSION, "model_id": model_id,
                                "weights": w.tolist(), "fitted_on": [list(p) for p in fitted_on], **info}, indent=1))
    return path


def load_cpr(path: str | Path, model_id: str | None = None) -> np.ndarray:
    record = _read(path, CPR_FORMAT)
    _check_model(path, record, model_id)
    return np.asarray(record["weights"], dtype=np.float64)


def ratios_from_file(path: str | Path, steps: int, model_id: str | None = None,
                     cfg: float | None = None) -> tuple[list[float], list[float] | None]:
    """(ratios, calibrated sigmas or None) for a run of ``steps``: a calibration file, or CPR weights + ``cfg``."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read a DC-Solver file from {path}: {exc}") from None
    if isinstance(record, dict) and record.get("format") == CPR_FORMAT:
        if cfg is None:
            raise ValueError(f"{path} holds CPR weights: give the cfg to predict ratios for")
        return predict_cpr(load_cpr(path, model_id), steps, cfg), None
    found = load_calibration(path, model_id, steps)
    return [float(r) for r in found["ratios"]], [float(s) for s in found["sigmas"]]
