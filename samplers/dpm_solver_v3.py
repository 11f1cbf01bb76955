"""DPM-Solver-v3 (Zheng, Lu, Chen, Zhu, NeurIPS 2023) in k-diffusion form, for EPS, V and flow models.

Works in lambda = half_log_snr(sigma) (log(alpha / sigma); flow models: alpha = 1 - sigma) with the empirical
model statistics l, s, b of samplers/ems.py. With f = (sigma eps - l x) / alpha, L = int l, S = int s and, relative
to the step start lambda_s, g(lambda) = e^(-int_s s) f - int_s e^(-int_s^r s) b_r dr, the ODE solution is

    x_t = alpha_t e^(-int_s^t l) [ x_s / alpha_s - int_s^t e^(int_s^u (l + s)) (g(u) + B(u)) du ],  B = int_s e^-S b

and g is replaced by the polynomial through the last nodes (predictor: lambda_s and older points; corrector: the
new point too). Non-pseudo order: the exact interpolating polynomial; pseudo order: Newton divided differences
used as Taylor coefficients (the paper's trick for few steps). The official code reads integrals off the
statistics grid by the trapezoid rule and snaps steps to it; here l, s, b are interpolated linearly (constant
outside the grid), every integral is taken on the step's own sub-grid (trapezoid for L, S, B, Simpson for the
weights, ``quad_points`` points), so any sigma schedule works.

Corrector (use_corrector): after the model call at the new point, that point is re-solved from the previous one
with the new value as an extra node (order = predictor order + 1 when c_pseudo); as in the official code the
stored ``sigma eps - l x`` of the new point is kept, only x moves. ``half``: correct only in the first half of
the steps (the official code corrects at t > 0.5 of a time-uniform schedule). ``lower_order_final``: the order
drops to the steps left. A last step onto sigma = 0 returns the x0 estimate (no call at sigma = 0); a flow
model's first sigma of 1 is moved to 1e-4 of the way (ComfyUI's offset).

EMS None = l 1, s 0, b 0: then f = -x0, g = f, and order 1 is DDIM / Euler, order 2 without corrector is the
exponential Adams-Bashforth step with exact phi_2 weights (RES multistep); this is what the paper calls the
degenerate DPM-Solver++ case (l = 0 would be a noise-space Euler step, not a known solver).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .ems import EMS, load_ems, neutral_ems
from .model_sampling import is_flow
from .sampling_utils import (
    evaluate,
    half_log_snr,
    offset_first_sigma,
    require_model_sampling,
    signal_scale,
    step_callback,
)
from .validate import check_finite

MAX_ORDER = 3


def _interp(ems: EMS, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """l, s, b at lambdas ``u`` (P,) -> (P, *stat_shape); linear inside the grid, constant outside."""
    lam = ems.lambdas
    u = u.clamp(float(lam[0]), float(lam[-1]))
    hi = torch.searchsorted(lam, u, right=True).clamp(1, len(lam) - 1)
    w = ((u - lam[hi - 1]) / (lam[hi] - lam[hi - 1])).reshape(-1, *([1] * len(ems.stat_shape)))
    return tuple((1 - w) * v[hi - 1] + w * v[hi] for v in (ems.ell, ems.s, ems.b))


def _cumulative(y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Running trapezoid integral of y (P, ...) over u (P,), starting at 0."""
    du = (u[1:] - u[:-1]).reshape(-1, *([1] * (y.ndim - 1)))
    steps = 0.5 * du * (y[1:] + y[:-1])
    return torch.cat([torch.zeros_like(y[:1]), steps.cumsum(0)])


def _simpson(y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Composite Simpson integral over an evenly spaced u with an odd number of points."""
    h = (u[-1] - u[0]) / (len(u) - 1)
    return h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum(0) + 2 * y[2:-1:2].sum(0))


def running_integrals(ems: EMS, start: float, end: float, points: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u, int_start^u l, int_start^u s, int_start^u e^-(int s) b) on ``points`` lambdas from start to end."""
    u = torch.linspace(start, end, points, dtype=torch.float64)
    ell, s, b = _interp(ems, u)
    big_s = _cumulative(s, u)
    return u, _cumulative(ell, u), big_s, _cumulative(torch.exp(-big_s) * b, u)


def coefficient_matrix(offsets: list[float], pseudo: bool) -> torch.Tensor:
    """M with c_k = sum_i M[k, i] g_i: coefficients of (u - lambda_s)^k from node values (offsets from lambda_s).

    Exact interpolation (Vandermonde inverse) or, if ``pseudo``, Newton divided differences g[0..k]."""
    n = len(offsets)
    if not pseudo:
        vander = torch.tensor([[d ** k for k in range(n)] for d in offsets], dtype=torch.float64)
        return torch.linalg.inv(vander)
    m = torch.zeros(n, n, dtype=torch.float64)
    for k in range(n):
        for i in range(k + 1):
            m[k, i] = 1 / math.prod(offsets[i] - offsets[j] for j in range(k + 1) if j != i)
    return m


def solve_step(ems: EMS, lam_s: float, lam_t: float, x_s: torch.Tensor, alpha_s: float, alpha_t: float,
               nodes: list[tuple[float, torch.Tensor]], pseudo: bool = False, points: int = 129) -> torch.Tensor:
    """x at lam_t from x_s at lam_s; ``nodes`` = [(lambda_i, f_i)], the first at lam_s (float64 math)."""
    u, big_l, big_s, big_b = running_integrals(ems, lam_s, lam_t, points)
    weight = torch.exp(big_l + big_s)
    gs = []
    for lam_i, f_i in nodes:
        if lam_i == lam_s:
            gs.append(f_i.double())
            continue
        _, _, s_i, b_i = running_integrals(ems, lam_s, lam_i, points)
        gs.append(torch.exp(-s_i[-1]) * f_i.double() - b_i[-1])
    coeffs = coefficient_matrix([lam_i - lam_s for lam_i, _ in nodes], pseudo)
    moments = [_simpson(weight * ((u - lam_s) ** k).reshape(-1, *([1] * (weight.ndim - 1))), u)
               for k in range(len(nodes))]
    integral = _simpson(weight * big_b, u)
    for i, g in enumerate(gs):
        integral = integral + sum(moments[k] * coeffs[k, i] for k in range(len(nodes))) * g
    return alpha_t * torch.exp(-big_l[-1]) * (x_s.double() / alpha_s - integral)


def resolve_ems(ems: EMS | str | Path | None, x: torch.Tensor) -> EMS:
    """The EMS to use for samples like ``x``: None = neutral, a path = loaded; ValueError if shapes clash."""
    if ems is None:
        return neutral_ems(stat_shape=(1,) * (x.ndim - 1))
    if isinstance(ems, (str, Path)):
        ems = load_ems(ems)
    if not isinstance(ems, EMS):
        raise ValueError(f"dpm_solver_v3: ems must be an EMS, a .safetensors path or None, not {type(ems).__name__}")
    shape, sample = ems.stat_shape, tuple(x.shape[1:])
    if all(n == 1 for n in shape) and len(shape) != len(sample):  # one value per lambda fits any sample shape
        return EMS(ems.lambdas, *(v.reshape(len(ems.lambdas), *([1] * len(sample))) for v in (ems.ell, ems.s, ems.b)),
                   ems.meta)
    if len(shape) != len(sample) or any(a not in (1, b) for a, b in zip(shape, sample, strict=True)):
        raise ValueError(f"dpm_solver_v3: statistics of shape {shape} do not fit samples of shape {sample}; "
                         "compute them for this latent shape or with reduce='channel'")
    return ems


def _check_options(order: int, quad_points: int) -> None:
    if int(order) != order or not 1 <= order <= MAX_ORDER:
        raise ValueError(f"dpm_solver_v3: order must be 1, 2 or 3, got {order}")
    if int(quad_points) != quad_points or quad_points < 3 or quad_points % 2 == 0:
        raise ValueError(f"dpm_solver_v3: quad_points must be an odd whole number >= 3, got {quad_points}")


@torch.no_grad()
def sample_dpm_solver_v3(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                         callback=None, disable: bool | None = None, ems: EMS | str | Path | None = None,
                         order: int = 2, use_corrector: bool = True, p_pseudo: bool = False, c_pseudo: bool = True,
                         lower_order_final: bool = True, half: bool = False, quad_points: int = 129) -> torch.Tensor:
    """DPM-Solver-v3 multistep predictor(-corrector), one model call per step; ``ems`` from samplers/ems.py."""
    _check_options(order, quad_points)
    ms, args = require_model_sampling(model, extra_args, "dpm_solver_v3")
    flow = is_flow(ms)
    ems = resolve_ems(ems, x)
    sigmas = offset_first_sigma(sigmas, ms, flow)
    grid = sigmas.detach().double().cpu()
    if len(grid) > 1 and (grid[1:] >= grid[:-1]).any():
        raise ValueError("dpm_solver_v3 needs strictly decreasing sigmas")
    lams = [float(v) for v in half_log_snr(grid, flow)]
    alphas = [float(v) for v in signal_scale(grid, flow)]
    steps = len(grid) - 1
    history: list[tuple[float, torch.Tensor, torch.Tensor, float]] = []  # (lambda, f, x, alpha), newest last
    prev_order = 0
    for i in range(steps):
        denoised = evaluate(model, x, sigmas[i], args)
        step_callback(callback, x, i, sigmas[i], denoised)
        l_i = _interp(ems, torch.tensor([lams[i]], dtype=torch.float64))[0][0]
        f_i = ((1 - l_i) * x.double() - alphas[i] * denoised.double()) / alphas[i]
        c_order = prev_order + int(c_pseudo)
        if use_corrector and c_order > 1 and (not half or i < steps / 2):
            lam_s, _, x_s, alpha_s = history[-1]
            nodes = [(lam_s, history[-1][1]), (lams[i], f_i)] + [(h[0], h[1]) for h in history[-2::-1]]
            x = solve_step(ems, lam_s, lams[i], x_s, alpha_s, alphas[i], nodes[:c_order], c_pseudo,
                           quad_points).to(x.dtype)
        history = (history + [(lams[i], f_i, x, alphas[i])])[-(MAX_ORDER + 1):]
        if grid[i + 1] == 0:
            x = ((1 - l_i) * x.double() / alphas[i] - f_i).to(x.dtype)  # the x0 estimate of the (corrected) point
            break
        p_order = min(order, i + 1, steps - i) if lower_order_final else min(order, i + 1)
        nodes = [(h[0], h[1]) for h in history[::-1]][:p_order]
        x = solve_step(ems, lams[i], lams[i + 1], x, alphas[i], alphas[i + 1], nodes, p_pseudo,
                       quad_points).to(x.dtype)
        check_finite(x, f"dpm_solver_v3 step {i + 1}")
        prev_order = p_order
    return x
