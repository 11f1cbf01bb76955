"""Align Your Steps optimizer: a sampling schedule fitted to one model by minimising a KL upper bound (KLUB).

Sabour, Fidler, Kreis, "Align Your Steps: Optimizing Sampling Schedules in Diffusion Models" (ICML 2024). The
paper bounds the KL divergence between the true reverse SDE and the discretised one, whose denoiser is held at
its value at the start of each step. In EDM's VE form (x_t = x0 + t noise) Girsanov's theorem gives, per step
t_i -> t_{i-1},

    KLUB(t_{i-1}, t_i) = int_{t_{i-1}}^{t_i} E || D(x_t, t) - D(x_{t_i}, t_i) ||^2 / t^3 dt,

with (x_t, x_{t_i}) drawn jointly from the true process. The schedule's interior points are then optimised one
at a time (each between its neighbours, minimising the two KLUB terms it touches), sweep after sweep, starting
from a coarse schedule that is subdivided (midpoints in log sigma) and optimised again up to the asked steps.

What is done here, and what differs from the paper (stated, not verified against code: none is published):

* Data: no dataset is at hand, so x0 is a batch the model samples itself at high NFE (``data_solver`` for
  ``data_steps`` steps, default Heun 24 = 47 calls). The paper uses training data.
* Joint draws: x_t = x0 + t eps and x_{t_i} = x0 + t_i eps with the same eps (as I read the paper's estimator;
  the exact forward coupling, an independent increment between the two, was tried first and gave schedules
  that lost to Karras on the analytic Gaussians). Squared norms are per element (a constant factor).
* Importance sampling of t: each sample gets ``mc_points`` levels stratified in log t over [sigma_min,
  sigma_max] (density 1 / (t log(sigma_max / sigma_min))), so the integrand is weighted by log-range / t^2.
* Cost: schedule points live on a grid of ``grid_points`` log-spaced candidates, where the denoiser is evaluated
  once per sample (common random numbers); every KLUB of the search then comes from that table, so the whole
  optimisation costs batch * (mc_points + grid_points) denoiser calls plus the data. The paper searches
  continuous t with fresh Monte-Carlo estimates for each candidate (far more calls) and more samples.
* Sweeps: coordinate sweeps until nothing moves or ``max_sweeps``; coarse start ``coarse_steps`` (default 4;
  the paper starts its 10-step schedules from a hand-made one), subdividing by 2 up to ``steps``.
* Ends: the schedule runs from sigma_max to sigma_min in ``steps`` intervals, and sigma_min is then replaced by 0
  for the last step, which is exactly the convention of NVIDIA's published 10-step lists (11 values ending at
  sigma_min; ComfyUI sets the last to 0).
* Flow models: all work is in EDM sigma = s / (1 - s) (the same noise-to-signal ratio; x_edm = x_flow / (1 - s),
  the same x0), and the result is mapped back with s = sigma / (1 + sigma); the first value becomes the model's
  own sigma_max (1, pure noise). The optimized span is [0.0292, 999] in EDM sigma (see :func:`edm_range`),
  so a flow model is never called at s = 0 or s = 1 by the optimizer.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .denoiser import DiffusionModel, cfg_denoiser
from .fingerprint import model_id_of  # noqa: F401  (the id a saved schedule is tied to)
from .model_sampling import is_flow
from .noise import noisy_start, seeded_noise
from .registry import get_sampler
from .sampling_utils import MODEL_SAMPLING_KEY, unwrap_for_base
from .schedule_file import load_schedule_file, save_schedule_file
from .schedulers import karras, simple
from .validate import check_finite, check_steps

FORMAT = "turbosample-ays-schedule"
DEFAULTS = {"mc_points": 64, "grid_points": 96, "max_sweeps": 20, "coarse_steps": 4, "data_steps": 24,
            "data_solver": "heun", "sigma_min": None, "sigma_max": None}
FLOW_EDM_RANGE = (0.0291671582, 999.0)  # low end of the published AYS lists (ays.py); s = 0.999 at the top


def edm_denoiser(denoiser, flow: bool):
    """The model's x0 prediction as a function of EDM (VE) input x0 + sigma noise and sigma."""
    if not flow:
        return denoiser

    def call(y: torch.Tensor, sigma: torch.Tensor, **extra: object) -> torch.Tensor:
        s = sigma / (1 + sigma)
        return denoiser(y * (1 - s).reshape(-1, *([1] * (y.ndim - 1))), s, **extra)

    return call


def edm_range(model_sampling) -> tuple[float, float]:
    """(sigma_min, sigma_max) in EDM sigma that the schedule spans (before its last step to 0).

    EPS/V models: their own range. Flow models: [0.0292, 999] (flow s in [0.028, 0.999]): the low end of NVIDIA's
    published lists, since the flow model's own sigma_min (EDM 0.001) made the optimizer spend most steps at
    noise levels far below anything visible and lose to Karras on the analytic Gaussian; the top is where
    ComfyUI's offset puts a first sigma of 1 (s = 0.999). On the built-in model 999 beat 14.61 (bench script).
    """
    if is_flow(model_sampling):
        return FLOW_EDM_RANGE
    return float(model_sampling.sigma_min), float(model_sampling.sigma_max)


def to_model_sigmas(edm_sigmas: torch.Tensor, model_sampling) -> torch.Tensor:
    """EDM sigmas (ending in 0) -> the model's own sigmas (flow: s = sigma / (1 + sigma), first = sigma_max)."""
    if not is_flow(model_sampling):
        return edm_sigmas.clone()
    out = edm_sigmas / (1 + edm_sigmas)
    out[0] = float(model_sampling.sigma_max)
    return out


def sample_data(denoiser, model_sampling, x_T: torch.Tensor, steps: int = DEFAULTS["data_steps"],
                solver: str = DEFAULTS["data_solver"], extra_args: dict | None = None) -> torch.Tensor:
    """The model's own samples x0 from start points x_T (at its sigma_max): the optimizer's stand-in for data."""
    info = get_sampler(solver)
    sigmas = (simple if is_flow(model_sampling) else karras)(model_sampling, check_steps(steps)).to(x_T.device)
    # the solver may read model_sampling from extra_args; the model itself never gets it (ComfyUI's refuses it)
    call, args = unwrap_for_base(denoiser, {"seed": 0, **(extra_args or {}), MODEL_SAMPLING_KEY: model_sampling})
    out = info.fn(call, x_T, sigmas, extra_args=args, callback=None, disable=True, **info.options)
    return check_finite(out, "the model's samples (optimizer data)")


def candidate_grid(sigma_min: float, sigma_max: float, points: int) -> torch.Tensor:
    """``points`` log-spaced EDM sigmas from sigma_max down to sigma_min (float64)."""
    if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
    if int(points) != points or points < 3:
        raise ValueError(f"the candidate grid needs a whole number >= 3 of points, got {points}")
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), int(points), dtype=torch.float64).exp()


@torch.no_grad()
def _denoise_levels(denoiser, x0: torch.Tensor, levels: torch.Tensor, generator: torch.Generator,
                    extra_args: dict, chunk: int) -> torch.Tensor:
    """D(x0 + sigma eps, sigma) at ``levels`` with one noise draw eps shared by all levels; (len, F) float64."""
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    out = []
    for start in range(0, len(levels), chunk):
        sig = levels[start:start + chunk]
        x = (x0.double() + sig.reshape(-1, *([1] * (x0.ndim - 1))) * eps).to(x0)
        out.append(denoiser(x, sig.to(x0), **extra_args).double().flatten(1).cpu())
    return check_finite(torch.cat(out), "the model's denoised output")


@torch.no_grad()
def klub_matrix(denoiser, data: torch.Tensor, grid: torch.Tensor, mc_points: int = DEFAULTS["mc_points"],
                seed: int = 0, extra_args: dict | None = None, chunk: int = 32) -> torch.Tensor:
    """K[a, b] (a < b): Monte-Carlo KLUB estimate of the step grid[a] -> grid[b] (grid descending, EDM sigma).

    ``denoiser(x, sigma_batch, **extra_args)`` takes EDM inputs (see :func:`edm_denoiser`); ``data`` (B, ...) are
    the x0 samples. Uses B * (mc_points + len(grid)) denoiser calls.
    """
    check_finite(data, "data")
    if int(mc_points) != mc_points or mc_points < 1:
        raise ValueError(f"mc_points must be a whole number >= 1, got {mc_points}")
    grid = grid.double().cpu()
    lo, hi = float(grid[-1]), float(grid[0])
    log_range = math.log(hi / lo)
    generator = torch.Generator().manual_seed(int(seed))
    n, total = len(grid), torch.zeros(len(grid), len(grid), dtype=torch.float64)
    for x0 in data:
        strata = (torch.arange(mc_points, dtype=torch.float64) + torch.rand(mc_points, generator=generator,
                                                                           dtype=torch.float64)) / mc_points
        ts = (math.log(lo) + strata * log_range).exp()
        denoised = _denoise_levels(denoiser, x0[None], torch.cat([ts, grid]), generator, extra_args or {}, chunk)
        d_t, d_grid = denoised[:mc_points], denoised[mc_points:]
        sq = torch.cdist(d_t, d_grid) ** 2 / d_t.shape[1]  # (M, n): per-element squared distance
        weighted = sq * (log_range / ts ** 2)[:, None] / mc_points  # importance weight of log-uniform t
        # K[a, b] = sum of weighted[m, a] over t_m in [grid[b], grid[a])
        below = ts[:, None] < grid[None, :]  # (M, n): t_m below grid[a]
        for a in range(n - 1):
            inside = below[:, a:a + 1] & ~below[:, a + 1:]  # t_m >= grid[b] for b > a
            total[a, a + 1:] += (weighted[:, a:a + 1] * inside).sum(0)
    return total / len(data)


def schedule_klub(matrix: torch.Tensor, path: list[int]) -> float:
    """Sum of the KLUB estimates of the path's steps."""
    return float(sum(float(matrix[a, b]) for a, b in zip(path[:-1], path[1:], strict=True)))


def optimize_path(matrix: torch.Tensor, path: list[int], max_sweeps: int = DEFAULTS["max_sweeps"]
                  ) -> tuple[list[int], list[float]]:
    """Per-point coordinate descent: each interior index moves to the best place between its neighbours.

    Returns the path and the KLUB after the start and after every sweep (never increasing).
    """
    path = list(path)
    history = [schedule_klub(matrix, path)]
    for _ in range(int(max_sweeps)):
        moved = False
        for i in range(1, len(path) - 1):
            lo, hi = path[i - 1], path[i + 1]
            if hi - lo < 2:
                continue
            options = torch.arange(lo + 1, hi)
            cost = matrix[lo, options] + matrix[options, hi]
            best = int(options[int(cost.argmin())])
            if cost.min() < matrix[lo, path[i]] + matrix[path[i], hi] and best != path[i]:
                path[i], moved = best, True
        history.append(schedule_klub(matrix, path))
        if not moved:
            break
    return path, history


def _snap(log_values: np.ndarray, log_grid: np.ndarray) -> list[int]:
    """Nearest grid indices (grid descending) of descending values, kept strictly increasing."""
    idx = [int(np.abs(log_grid - v).argmin()) for v in log_values]
    idx[0], idx[-1] = 0, len(log_grid) - 1
    for k in range(1, len(idx) - 1):
        idx[k] = min(max(idx[k], idx[k - 1] + 1), len(log_grid) - 1 - (len(idx) - 1 - k))
    return idx


def step_counts(steps: int, coarse_steps: int) -> list[int]:
    """Coarse-to-fine step counts: halve from ``steps`` until <= coarse_steps (e.g. 16, 4 -> [4, 8, 16])."""
    counts = [check_steps(steps)]
    while counts[-1] > max(int(coarse_steps), 1):
        counts.append(math.ceil(counts[-1] / 2))
    return counts[::-1]


def optimize_schedule(matrix: torch.Tensor, grid: torch.Tensor, steps: int,
                      coarse_steps: int = DEFAULTS["coarse_steps"], max_sweeps: int = DEFAULTS["max_sweeps"]
                      ) -> tuple[torch.Tensor, list[float]]:
    """``steps + 1`` EDM sigmas ending in 0 (the AYS search on a KLUB matrix) and the KLUB history of the last
    (finest) stage; starts log-uniform at the coarsest count and subdivides."""
    steps = check_steps(steps)
    if steps > len(grid) - 1:
        raise ValueError(f"{steps} steps need at least {steps + 1} candidate sigmas, got {len(grid)}")
    log_grid = grid.double().log().numpy()
    path: list[int] | None = None
    history: list[float] = []
    for count in step_counts(steps, coarse_steps):
        if path is None:
            target = np.linspace(log_grid[0], log_grid[-1], count + 1)
        else:  # subdivide: log-linear over the step index (exact log midpoints when doubling)
            target = np.interp(np.linspace(0, 1, count + 1), np.linspace(0, 1, len(path)), log_grid[path])
        path, history = optimize_path(matrix, _snap(target, log_grid), max_sweeps)
    sigmas = grid[path].float().clone()
    sigmas[-1] = 0.0
    return check_result(sigmas), history


def check_result(sigmas: torch.Tensor) -> torch.Tensor:
    """ValueError unless the schedule is finite and strictly decreasing."""
    if not torch.isfinite(sigmas).all():
        raise ValueError("the AYS optimizer produced NaN or infinite sigmas")
    if (sigmas[1:] >= sigmas[:-1]).any():
        raise ValueError(f"the AYS optimizer produced a schedule that is not strictly decreasing: "
                         f"{[round(float(s), 4) for s in sigmas]}")
    return sigmas


def ays_optimize(denoiser, model_sampling, x_T: torch.Tensor, steps: int, seed: int = 0,
                 extra_args: dict | None = None, **options: object) -> tuple[torch.Tensor, list[float]]:
    """The optimized ``steps + 1`` model sigmas (ending in 0) and the KLUB history, for any model.

    ``denoiser(x, sigma_batch, **extra_args)`` returns x0 in the model's own convention; ``x_T`` (B, ...) are
    start points at the model's sigma_max for the data run. ``options``: keys of :data:`DEFAULTS`.
    """
    steps = check_steps(steps)
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown AYS optimizer option(s): {', '.join(sorted(unknown))}")
    opt = {**DEFAULTS, **options}
    check_finite(x_T, "x_T")
    data = sample_data(denoiser, model_sampling, x_T, opt["data_steps"], opt["data_solver"], extra_args)
    lo, hi = edm_range(model_sampling)
    lo = lo if opt["sigma_min"] is None else float(opt["sigma_min"])
    hi = hi if opt["sigma_max"] is None else float(opt["sigma_max"])
    grid = candidate_grid(lo, hi, opt["grid_points"])
    call_args = {k: v for k, v in (extra_args or {}).items() if k not in (MODEL_SAMPLING_KEY, "seed")}
    matrix = klub_matrix(edm_denoiser(denoiser, is_flow(model_sampling)), data, grid, opt["mc_points"], seed,
                         call_args)
    sigmas, history = optimize_schedule(matrix, grid, steps, opt["coarse_steps"], opt["max_sweeps"])
    return check_result(to_model_sigmas(sigmas, model_sampling)), history


def ays_for_model(model: DiffusionModel, positive: list, negative: list, cfg: float, steps: int,
                  latent_shape: tuple[int, ...], seed: int = 0, **options: object) -> torch.Tensor:
    """AYS-optimized sigmas of a DiffusionModel under CFG; ``latent_shape`` (B, C, H, W) sets the data batch."""
    ms = model.model_sampling
    device = next(model.diffusion_model.parameters()).device
    noise = seeded_noise(seed, tuple(latent_shape), device=device)
    x_T = noisy_start(ms, ms.sigma_max.to(device), noise)
    denoiser = cfg_denoiser(model, positive, negative, cfg, {"sample_sigmas": None, "run_state": {}})
    return ays_optimize(denoiser, ms, x_T, steps, seed=seed, **options)[0]


def save_schedule(path: str | Path, sigmas: torch.Tensor, model_id: str, **info: object) -> None:
    """Write the schedule as JSON with the model id and step count it was optimized for (plus ``info``)."""
    save_schedule_file(path, check_result(torch.as_tensor(sigmas).float().cpu()), FORMAT, model_id, **info)


def load_schedule(path: str | Path, model_id: str | None = None, steps: int | None = None) -> torch.Tensor:
    """Read a saved schedule; ValueError if it is not one or was optimized for another model / step count."""
    return check_result(load_schedule_file(path, FORMAT, "an AYS schedule", model_id, steps))
