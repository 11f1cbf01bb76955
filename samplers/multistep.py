"""Deterministic multistep samplers: UniPC (bh1/bh2), DEIS (tAB), iPNDM-v and RES multistep, in sigma space.

All follow ComfyUI's conventions (k-diffusion ``fn(model, x, sigmas, extra_args, callback, disable)``); none of
them evaluates the model at sigma = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .sampling_utils import evaluate, split_extra_args, step_callback
from .solvers import to_d

UNIPC_FINAL_SIGMA = 1e-3  # ComfyUI's UniPC stops at this sigma instead of 0


def _unipc_coefficients(rks: list[float], h: float, order: int, variant: str) -> tuple[float, list[float], list[float]]:
    """(B(h), predictor weights, corrector weights) of UniPC's data-prediction update (Zhao et al. 2023)."""
    hh = -h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi_k = math.expm1(hh) / hh - 1
    rows, rhs, factorial = [], [], 1
    for k in range(1, order + 1):
        rows.append([r ** (k - 1) for r in rks])
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R, b = np.array(rows), np.array(rhs)
    if order == 1:
        predictor = []
    elif order == 2:
        predictor = [0.5]
    else:
        predictor = list(np.linalg.solve(R[:-1, :-1], b[:-1]))
    corrector = [0.5] if order == 1 else list(np.linalg.solve(R, b))
    return b_h, predictor, corrector


@torch.no_grad()
def sample_uni_pc(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                  disable: bool | None = None, variant: str = "bh1", max_order: int = 3,
                  corrector_value: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """UniPC multistep predictor-corrector (data prediction, lower order at the end), one call per step.

    As in ComfyUI, a final sigma of 0 is replaced by 1e-3 and the order is min(3, steps - 1).
    ``corrector_value(x, sigma, x0)`` (optional, e.g. DualFast's) sees every model output in call order and returns
    the value the UniC corrector uses; the predictor's history keeps the raw outputs.
    """
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    _, args = split_extra_args(model, extra_args)
    grid = [float(s) for s in sigmas]
    if grid[-1] == 0:
        grid[-1] = UNIPC_FINAL_SIGMA
    steps = len(grid) - 1
    order = max(1, min(max_order, steps - 1))
    lam = [-math.log(s) for s in grid]
    denoised = evaluate(model, x, sigmas[0], args)
    if corrector_value is not None:
        corrector_value(x, sigmas[0], denoised)  # the first output is the reference of the next one
    history = [(0, denoised)]  # (grid index, x0 estimate), oldest first
    for k in range(1, steps + 1):
        step_callback(callback, x, k - 1, sigmas[k - 1], history[-1][1])
        x, correct = unipc_step(x, history, lam, grid, k, unipc_step_order(k, steps, order), variant)
        if k < steps:  # UniC corrector with the new model value, which the next step also reuses
            sigma = sigmas.new_tensor(grid[k])
            m_new = evaluate(model, x, sigma, args)
            x = correct(m_new if corrector_value is None else corrector_value(x, sigma, m_new))
            history = (history + [(k, m_new)])[-order:]
    return x


def unipc_step_order(k: int, steps: int, order: int) -> int:
    """UniPC's order at step k (1-based): warm-up k, then ``order``, lower again over the last steps."""
    return k if k < order else min(order, steps + 1 - k)


def unipc_step(x: torch.Tensor, history: list, lam: list[float], grid: list[float], k: int, step_order: int,
               variant: str):
    """UniP predictor from grid[k - 1] to grid[k] using the newest ``step_order`` (grid index, x0) of ``history``.

    Returns (predicted x, ``correct(m_new)`` giving the UniC-corrected x from the model value at the prediction).
    """
    j0, m0 = history[-1]
    h = lam[k] - lam[j0]
    previous = history[-step_order:-1][::-1]  # newest first, excluding m0
    rks = [(lam[j] - lam[j0]) / h for j, _ in previous] + [1.0]
    b_h, rho_p, rho_c = _unipc_coefficients(rks, h, step_order, variant)
    slopes = [(m - m0) / r for (_, m), r in zip(previous, rks, strict=False)]
    x_base = (grid[k] / grid[j0]) * x - math.expm1(-h) * m0
    x_pred = x_base - b_h * sum(w * d for w, d in zip(rho_p, slopes, strict=True)) if slopes else x_base

    def correct(m_new: torch.Tensor) -> torch.Tensor:
        correction = sum(w * d for w, d in zip(rho_c[:-1], slopes, strict=True)) if slopes else 0
        return x_base - b_h * (correction + rho_c[-1] * (m_new - m0))

    return x_pred, correct


@torch.no_grad()
def sample_uni_pc_bh2(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                      disable: bool | None = None,
                      corrector_value: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """UniPC with B(h) = e^h - 1."""
    return sample_uni_pc(model, x, sigmas, extra_args, callback, disable, variant="bh2",
                         corrector_value=corrector_value)


def _vp_time(edm_sigma_min: float = 0.002, edm_sigma_max: float = 80.0, eps: float = 1e-3):
    """DEIS's map sigma -> VP-SDE time t for the EDM VP schedule fitted to [sigma_min, sigma_max]."""
    beta_d = 2 * (math.log(edm_sigma_min ** 2 + 1) / eps - math.log(edm_sigma_max ** 2 + 1)) / (eps - 1)
    beta_min = math.log(edm_sigma_max ** 2 + 1) - 0.5 * beta_d
    return lambda s: (np.sqrt(beta_min ** 2 + 2 * beta_d * np.log1p(np.asarray(s) ** 2)) - beta_min) / beta_d


def deis_coefficients(sigmas: list[float], max_order: int = 3, nodes: int = 32) -> list[list[float]]:
    """DEIS-tAB weights: integrals over each sigma step of the Lagrange basis of eps in VP time.

    Row i weighs the derivatives at steps i, i-1, ... (newest first); integrated by Gauss-Legendre in sigma, where
    the integrand is smooth.
    """
    to_t = _vp_time()
    gl_x, gl_w = np.polynomial.legendre.leggauss(nodes)
    ts = to_t(np.array(sigmas, dtype=np.float64))
    out = []
    for i in range(len(sigmas) - 1):
        order = min(i + 1, max_order)
        if order == 1:
            out.append([])
            continue
        a, b = sigmas[i], sigmas[i + 1]
        s = (a + b) / 2 + (b - a) / 2 * gl_x
        w = (b - a) / 2 * gl_w
        tau = to_t(s)
        prev = [ts[i - k] for k in range(order)]
        row = []
        for j in range(order):
            basis = np.ones_like(tau)
            for k in range(order):
                if k != j:
                    basis *= (tau - prev[k]) / (prev[j] - prev[k])
            row.append(float(np.sum(w * basis)))
        out.append(row)
    return out


@torch.no_grad()
def sample_deis(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                disable: bool | None = None, max_order: int = 3) -> torch.Tensor:
    """DEIS (Zhang & Chen 2023), tAB variant: Adams-Bashforth on eps in VP time, integrated exactly in sigma."""
    _, args = split_extra_args(model, extra_args)
    coeffs = deis_coefficients([float(s) for s in sigmas], max_order)
    history: list[torch.Tensor] = []  # derivatives, newest first
    for i in range(len(sigmas) - 1):
        denoised = evaluate(model, x, sigmas[i], args)
        step_callback(callback, x, i, sigmas[i], denoised)
        history = [to_d(x, sigmas[i], denoised)] + history[:max_order - 1]
        if sigmas[i + 1] <= 0 or not coeffs[i]:
            x = x + history[0] * (sigmas[i + 1] - sigmas[i])
        else:
            x = x + sum(c * d for c, d in zip(coeffs[i], history, strict=False))
    return x


def ipndm_v_coefficients(h: list[float]) -> list[float]:
    """iPNDM-v weights (newest first) from step sizes ``h`` = [h_n, h_n-1, ...] (zju-pi/diff-sampler's rule).

    Equal steps give the Adams-Bashforth coefficients; uneven steps use iPNDM-v's variable-step correction.
    """
    order = len(h)
    if order == 1:
        return [1.0]
    hn, h1 = h[0], h[1]
    c = [1 + hn / (2 * h1), -hn / (2 * h1)]
    if order == 2:
        return c
    h2 = h[2]
    t1 = (1 - hn / (3 * (hn + h1)) * (hn * (hn + h1)) / (h1 * (h1 + h2))) / 2
    c = [c[0] + t1, c[1] - (1 + h1 / h2) * t1, t1 * h1 / h2]
    if order == 3:
        return c
    h3 = h[3]
    ratio = h1 * (h1 + h2) / (h2 * (h2 + h3))
    t2 = ((1 - hn / (3 * (hn + h1))) / 2 + (1 - hn / (2 * (hn + h1))) * hn / (6 * (hn + h1 + h2))) \
        * (hn * (hn + h1) * (hn + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    return [c[0] + t2, c[1] - (1 + h1 / h2 + ratio) * t2, c[2] + (h1 / h2 + ratio * (1 + h2 / h3)) * t2,
            -t2 * ratio * h1 / h2]


@torch.no_grad()
def sample_ipndm_v(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                   disable: bool | None = None, max_order: int = 4) -> torch.Tensor:
    """Improved PNDM with variable-step coefficients (Zhang & Chen 2023; zju-pi/diff-sampler)."""
    _, args = split_extra_args(model, extra_args)
    grid = [float(s) for s in sigmas]
    history: list[torch.Tensor] = []  # derivatives, newest first
    for i in range(len(sigmas) - 1):
        denoised = evaluate(model, x, sigmas[i], args)
        step_callback(callback, x, i, sigmas[i], denoised)
        history = [to_d(x, sigmas[i], denoised)] + history[:max_order - 1]
        if grid[i + 1] == 0:
            x = denoised
            continue
        steps = [grid[i + 1 - k] - grid[i - k] for k in range(len(history))]
        coeffs = ipndm_v_coefficients(steps)
        x = x + (sigmas[i + 1] - sigmas[i]) * sum(c * d for c, d in zip(coeffs, history, strict=True))
    return x


@torch.no_grad()
def sample_res_multistep(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                         callback=None, disable: bool | None = None) -> torch.Tensor:
    """RES second-order multistep exponential integrator in -log(sigma) (Zhang et al. 2023, arXiv 2308.02157)."""
    _, args = split_extra_args(model, extra_args)
    previous = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = evaluate(model, x, sigma, args)
        step_callback(callback, x, i, sigma, denoised)
        if sigma_next == 0 or previous is None:
            x = x + to_d(x, sigma, denoised) * (sigma_next - sigma)
        else:
            h = sigma.log() - sigma_next.log()
            c2 = (sigma.log() - sigmas[i - 1].log()) / h  # (t_prev - t) / h < 0: the last node lies behind
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1) / -h
            b2 = phi2 / c2
            x = (-h).exp() * x + h * ((phi1 - b2) * denoised + b2 * previous)
        previous = denoised
    return x
