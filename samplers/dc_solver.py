"""DC-Solver: UniPC with dynamic compensation (Zhao, Wang, Zhou, Lu, ECCV 2024, arXiv 2409.03755).

Read from the official code (github wl-zhao/DC-Solver, ``dc_solver.py`` of the LDM version and
``scheduling_dcsolver_multistep.py`` of the diffusers version): before step k, the newest model value m_(k-1) is
replaced by the Lagrange interpolation through the last ``DC_ORDER + 1`` = 3 model values, taken at
``tau = t_(k-2) + ratio (t_(k-1) - t_(k-2))``; the compensated value is used by the predictor and the corrector of
that step and stays in the history. ratio = 1 is plain UniPC; the first two steps have too few values and keep 1.
One ratio per step comes from a small calibration (samplers/dc_calibration.py) or from CPR.

Difference: the interpolation variable is UniPC's own -log(sigma) grid instead of the model's time t, so the
sampler needs nothing but sigmas (works for any k-diffusion denoiser, EPS/V and flow alike).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .multistep import UNIPC_FINAL_SIGMA, unipc_step, unipc_step_order
from .sampling_utils import evaluate, split_extra_args, step_callback

DC_ORDER = 2  # the paper's default: quadratic interpolation through three model values
NEUTRAL = 1.0
SIGMA_RTOL = 1e-4


def unipc_grid(sigmas: torch.Tensor) -> list[float]:
    """The sigmas UniPC steps through: a final 0 becomes 1e-3 (no model call at sigma = 0)."""
    grid = [float(s) for s in sigmas]
    if grid[-1] == 0:
        grid[-1] = UNIPC_FINAL_SIGMA
    return grid


def compensate(history: list, lam: list[float], ratio: float) -> list:
    """``history`` with its newest x0 replaced by the Lagrange value at lam_(-2) + ratio (lam_(-1) - lam_(-2))."""
    if ratio == NEUTRAL or len(history) < DC_ORDER + 1:
        return history
    points = history[-(DC_ORDER + 1):]
    nodes = [lam[j] for j, _ in points]
    tau = nodes[-2] + ratio * (nodes[-1] - nodes[-2])
    value = 0
    for i, (_, m) in enumerate(points):
        weight = math.prod((tau - nodes[j]) / (nodes[i] - nodes[j]) for j in range(len(points)) if j != i)
        value = value + weight * m
    return history[:-1] + [(history[-1][0], value)]


def check_ratios(ratios, steps: int) -> list[float]:
    """One finite ratio per step; the first two must be neutral (DC needs three model values)."""
    try:
        values = [float(r) for r in ratios]
    except (TypeError, ValueError):
        raise ValueError(f"DC-Solver ratios must be a list of numbers, got {ratios!r}") from None
    if len(values) != steps:
        raise ValueError(f"DC-Solver needs one compensation ratio per step: {steps} steps, got {len(values)} ratios "
                         "(calibrate for this step count)")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"DC-Solver ratios must be finite, got {values}")
    if any(v != NEUTRAL for v in values[:DC_ORDER]):
        raise ValueError(f"the first {DC_ORDER} DC-Solver ratios must be {NEUTRAL} (too few model values to "
                         f"compensate), got {values[:DC_ORDER]}")
    return values


def check_schedule(sigmas: torch.Tensor, calibrated: list[float] | None) -> None:
    """ValueError when the run's sigmas are not the ones the ratios were calibrated on."""
    if calibrated is None:
        return
    run = torch.as_tensor([float(s) for s in sigmas], dtype=torch.float64)
    ref = torch.as_tensor(calibrated, dtype=torch.float64)
    if run.shape != ref.shape or not torch.allclose(run, ref, rtol=SIGMA_RTOL, atol=1e-6):
        raise ValueError(f"DC-Solver ratios were calibrated for the sigmas {[round(float(s), 4) for s in ref]}, "
                         f"this run uses {[round(float(s), 4) for s in run]}; calibrate for this schedule")


def run_dc(model, x: torch.Tensor, sigmas: torch.Tensor, call_args: dict,
           choose: Callable[[int, Callable], float], variant: str = "bh1", callback=None) -> torch.Tensor:
    """The DC-Solver loop; ``choose(k, attempt)`` gives the ratio of step k (1-based).

    ``attempt(ratio)`` -> (x after step k, new model value or None on the last step); it is memoised, so a
    calibration may try ratios and the loop reuses the chosen attempt without another model call.
    """
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    grid = unipc_grid(sigmas)
    steps = len(grid) - 1
    order = max(1, min(3, steps - 1))
    lam = [-math.log(s) for s in grid]
    history = [(0, evaluate(model, x, sigmas[0], call_args))]
    for k in range(1, steps + 1):
        step_callback(callback, x, k - 1, sigmas[k - 1], history[-1][1])
        tried: dict[float, tuple] = {}

        def attempt(ratio: float, k: int = k, x: torch.Tensor = x, tried: dict = tried,
                    history: list = history) -> tuple:
            ratio = float(ratio)
            if ratio not in tried:
                used = compensate(history, lam, ratio)
                x_pred, correct = unipc_step(x, used, lam, grid, k, unipc_step_order(k, steps, order), variant)
                if k < steps:
                    m_new = evaluate(model, x_pred, sigmas.new_tensor(grid[k]), call_args)
                    tried[ratio] = (correct(m_new), m_new, used)
                else:
                    tried[ratio] = (x_pred, None, used)
            return tried[ratio]

        x, m_new, used = attempt(choose(k, attempt) if k > DC_ORDER else NEUTRAL)
        if m_new is not None:
            history = (used + [(k, m_new)])[-max(order, DC_ORDER + 1):]
    return x


@torch.no_grad()
def sample_dc_solver(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                     disable: bool | None = None, ratios=None, variant: str = "bh1",
                     calibrated_sigmas: list[float] | None = None) -> torch.Tensor:
    """UniPC (order 3, one call per step) with per-step dynamic-compensation ``ratios`` (None: all 1 = UniPC).

    ``calibrated_sigmas``: the schedule the ratios were found for; a run on other sigmas is refused.
    """
    _, args = split_extra_args(model, extra_args)
    steps = len(sigmas) - 1
    if steps < 1:
        raise ValueError("DC-Solver needs at least 2 sigmas")
    values = check_ratios([NEUTRAL] * steps if ratios is None else ratios, steps)
    check_schedule(sigmas, calibrated_sigmas)
    return run_dc(model, x, sigmas, args, lambda k, _attempt: values[k - 1], variant, callback)
