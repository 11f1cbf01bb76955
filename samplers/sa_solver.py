"""SA-Solver (Xue et al., NeurIPS 2023): stochastic Adams predictor-corrector for the data-prediction diffusion SDE.

The SDE family has a stochasticity tau(sigma) >= 0 (tau = 0: the probability-flow ODE, tau = 1: the reverse SDE).
In half-logSNR lambda, with h = lambda_t - lambda_s and c = 1 + tau^2, one step from s to t is

    x_t = (sigma_t / sigma_s) e^(-tau^2 h) x_s + alpha_t c sum_j w_j D_j + sigma_t sqrt(1 - e^(-2 tau^2 h)) z,

where D_j are x0 estimates at earlier half-logSNRs lambda_j and w_j integrates the Lagrange basis polynomial of
lambda_j against e^(-c (lambda_t - lambda)) over [lambda_s, lambda_t]. The predictor (Adams-Bashforth type) uses the
last ``predictor_order`` estimates; the corrector (Adams-Moulton type) redoes the step once the estimate at t exists,
with the same noise z. PECE mode evaluates the model again on the corrected state (2 calls per step), the default
(PEC) reuses the predicted state's estimate (1 call per step).

As in ComfyUI's ``sa_solver``: tau = ``eta`` while sigma_next lies in the middle 20%-80% of the model's sigma range
(``sde_start_percent`` / ``sde_end_percent``), 0 elsewhere; orders are lowered near a final sigma of 0. Works for
EPS/V and flow models (alpha_t = 1 - sigma_t; a first sigma of 1 moves to the 1e-4 point). Differences from
ComfyUI: a schedule that ends above 0 returns the state at that last sigma (ComfyUI returns the previous one), and
the weights come from closed-form exponential moments (series for small steps) instead of a matrix recursion.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .noise_sources import NoiseSampler, noise_sampler_for
from .sampling_utils import (
    evaluate,
    half_log_snr,
    is_flow,
    offset_first_sigma,
    require_model_sampling,
    step_callback,
)

TauFunc = Callable[[float], float]
MAX_ORDER = 6


def exp_moments(a: float, count: int) -> list[float]:
    """m_p = integral over v in [-1, 0] of e^(a v) v^p, for p = 0 .. count - 1 (a >= 0)."""
    if a < 1.0:  # power series of e^(a v): stable where the recursion below would divide by a small a
        moments = []
        for p in range(count):
            total, term = 0.0, 1.0
            for k in range(60):
                total += term * (-1) ** (p + k) / (p + k + 1)
                term *= a / (k + 1)
                if term < 1e-18:
                    break
            moments.append(total)
        return moments
    decay = math.exp(-a)
    moments = [-math.expm1(-a) / a]
    for p in range(1, count):  # integration by parts
        moments.append(-((-1) ** p) * decay / a - p / a * moments[-1])
    return moments


def adams_weights(nodes: list[float], lam_s: float, lam_t: float, tau: float) -> list[float]:
    """Weights w_j (one per node lambda_j) with alpha_t * sum_j w_j D_j the step's data term.

    w_j = c * integral over [lam_s, lam_t] of e^(-c (lam_t - lam)) l_j(lam), c = 1 + tau^2, l_j the Lagrange basis.
    """
    c, h = 1.0 + tau * tau, lam_t - lam_s
    if not h > 0:
        raise ValueError(f"SA-Solver needs strictly increasing half-logSNR (distinct, decreasing sigmas); got a step "
                         f"from lambda={lam_s:.6g} to {lam_t:.6g}")
    v = np.array([(node - lam_t) / h for node in nodes], dtype=np.float64)
    moments = np.array(exp_moments(c * h, len(nodes)), dtype=np.float64)
    # sum_j w_j v_j^p = c h m_p for p < K: the Lagrange integrals, by the transposed Vandermonde system
    weights = np.linalg.solve(np.vander(v, len(nodes), increasing=True).T, c * h * moments)
    return [float(w) for w in weights]


def percent_to_sigma(model_sampling: object, percent: float) -> float:
    """Sigma at a fraction of the way through sampling; ComfyUI's rule for discrete schedules when absent."""
    if hasattr(model_sampling, "percent_to_sigma"):
        return float(model_sampling.percent_to_sigma(percent))
    if percent <= 0.0:
        return math.inf
    if percent >= 1.0:
        return 0.0
    last = len(model_sampling.sigmas) - 1
    return float(model_sampling.sigma(torch.tensor((1.0 - percent) * last)))


def interval_tau(start_sigma: float, end_sigma: float, eta: float) -> TauFunc:
    """tau(sigma) = eta for end_sigma <= sigma <= start_sigma, else 0."""
    return lambda sigma: eta if eta > 0 and end_sigma <= float(sigma) <= start_sigma else 0.0


def _check_options(predictor_order: int, corrector_order: int, eta: float, s_noise: float,
                   sde_start_percent: float, sde_end_percent: float) -> None:
    for name, order in (("predictor_order", predictor_order), ("corrector_order", corrector_order)):
        if int(order) != order or not 1 <= order <= MAX_ORDER:
            raise ValueError(f"{name} must be a whole number from 1 to {MAX_ORDER}, got {order}")
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta (SA-Solver's tau inside the SDE interval) must be finite and >= 0, got {eta}")
    if not (math.isfinite(s_noise) and s_noise >= 0):
        raise ValueError(f"s_noise must be finite and >= 0, got {s_noise}")
    if not 0 <= sde_start_percent <= sde_end_percent <= 1:
        raise ValueError(f"need 0 <= sde_start_percent <= sde_end_percent <= 1, got {sde_start_percent} and "
                         f"{sde_end_percent}")


def simple_order_2_weights(nodes: list[float], lam_s: float, lam_t: float, tau: float,
                           corrector: bool) -> list[float]:
    """The paper's simplified order-2 weights (Appendix D; diffusers' default at order 2, ComfyUI's option): the
    slope term integrated without the exponential, as UniPC's B(h) = h does. Same order, not the same numbers."""
    c, h = 1.0 + tau * tau, lam_t - lam_s
    total = -math.expm1(-c * h)
    if corrector:  # nodes (lam_s, lam_t)
        newest = c * h / 2
        return [total - newest, newest]
    older = c * h * h / 2 / (nodes[0] - lam_s)  # nodes (older, lam_s)
    return [older, total - older]


def _adams_step(x: torch.Tensor, estimates: list[torch.Tensor], nodes: list[float], lam_s: float, lam_t: float,
                sigma_s: float, sigma_t: float, alpha_t: float, tau: float, simple_order_2: bool,
                corrector: bool) -> torch.Tensor:
    """The deterministic part of one SA step from (sigma_s, x) to sigma_t."""
    if simple_order_2 and len(nodes) == 2:
        weights = simple_order_2_weights(nodes, lam_s, lam_t, tau, corrector)
    else:
        weights = adams_weights(nodes, lam_s, lam_t, tau)
    out = (sigma_t / sigma_s) * math.exp(-tau * tau * (lam_t - lam_s)) * x
    for w, d in zip(weights, estimates, strict=True):
        out = out + (alpha_t * w) * d
    return out


@torch.no_grad()
def sample_sa_solver(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                     disable: bool | None = None, eta: float = 1.0, s_noise: float = 1.0,
                     noise_sampler: NoiseSampler | None = None, predictor_order: int = 3, corrector_order: int = 4,
                     use_pece: bool = False, tau_func: TauFunc | None = None, sde_start_percent: float = 0.2,
                     sde_end_percent: float = 0.8, simple_order_2: bool = False) -> torch.Tensor:
    """SA-Solver: order-3 stochastic Adams predictor, order-4 corrector; ``eta = 0`` (or tau_func = 0) is an ODE."""
    _check_options(predictor_order, corrector_order, eta, s_noise, sde_start_percent, sde_end_percent)
    ms, args = require_model_sampling(model, extra_args, "sa_solver_pece" if use_pece else "sa_solver")
    flow = is_flow(ms)
    if len(sigmas) < 2:
        return x
    if tau_func is None:
        tau_func = interval_tau(percent_to_sigma(ms, sde_start_percent), percent_to_sigma(ms, sde_end_percent), eta)
    sigmas = offset_first_sigma(sigmas, ms, flow)
    grid = [float(s) for s in sigmas]
    lams = [float(half_log_snr(torch.tensor(s, dtype=torch.float64), flow)) if s > 0 else math.inf for s in grid]
    noise = None
    steps, to_zero = len(grid) - 1, grid[-1] == 0
    keep = max(predictor_order, corrector_order)
    history: list[torch.Tensor] = []  # x0 estimates, oldest first
    x_pred, tau, step_noise = x, 0.0, None
    for i in range(steps):
        sigma, sigma_next = grid[i], grid[i + 1]
        denoised = evaluate(model, x_pred, sigmas[i], args)
        step_callback(callback, x_pred, i, sigmas[i], denoised)
        history = (history + [denoised])[-keep:]
        k_corr = 0 if i == 0 or (sigma_next == 0 and not use_pece) else min(corrector_order, len(history))
        k_pred = min(predictor_order, len(history))
        if to_zero:  # lower orders over the last steps, as ComfyUI does
            k_corr, k_pred = min(k_corr, steps - i), min(k_pred, steps - 1 - i)
        if k_corr:  # redo the previous step with the new estimate at its end point, and the same noise
            x = _adams_step(x, history[-k_corr:], lams[i - k_corr + 1:i + 1], lams[i - 1], lams[i], grid[i - 1],
                            sigma, sigma * math.exp(lams[i]), tau, simple_order_2, corrector=True)
            if step_noise is not None:
                x = x + step_noise
            if use_pece:
                denoised = evaluate(model, x, sigmas[i], args)
                history[-1] = denoised
        else:
            x = x_pred
        if sigma_next == 0:
            x_pred = denoised
            continue
        tau = float(tau_func(sigma_next))
        x_pred = _adams_step(x, history[-k_pred:], lams[i - k_pred + 1:i + 1], lams[i], lams[i + 1], sigma,
                             sigma_next, sigma_next * math.exp(lams[i + 1]), tau, simple_order_2, corrector=False)
        step_noise = None
        if tau > 0 and s_noise > 0:
            if noise is None:
                noise = noise_sampler_for(x, extra_args, noise_sampler)
            scale = sigma_next * math.sqrt(-math.expm1(-2 * tau * tau * (lams[i + 1] - lams[i]))) * s_noise
            step_noise = noise(sigmas[i], sigmas[i + 1]) * scale
            x_pred = x_pred + step_noise
    return x_pred


@torch.no_grad()
def sample_sa_solver_pece(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                          callback=None, disable: bool | None = None, **options) -> torch.Tensor:
    """SA-Solver in PECE mode: the corrected state is evaluated again (2 model calls per step after the first)."""
    return sample_sa_solver(model, x, sigmas, extra_args, callback, disable, use_pece=True, **options)
