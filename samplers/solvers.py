"""Sampler functions in k-diffusion/ComfyUI form: ``fn(model, x, sigmas, extra_args, callback, disable)``.

``model(x, sigma_batch, **extra_args)`` returns the denoised x0 for every prediction type, so the same
function runs inside ComfyUI (wrapped in ``comfy.samplers.KSAMPLER``) and in this package's own loop.
"""

from __future__ import annotations

import torch

from .sampling_utils import evaluate, step_callback


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma."""
    return (x - denoised) / sigma


@torch.no_grad()
def sample_euler(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                 callback=None, disable: bool | None = None) -> torch.Tensor:
    """First-order Euler steps; the last step lands exactly on sigmas[-1] (no evaluation there)."""
    for i in range(len(sigmas) - 1):
        denoised = evaluate(model, x, sigmas[i], extra_args)
        step_callback(callback, x, i, sigmas[i], denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_heun(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                callback=None, disable: bool | None = None) -> torch.Tensor:
    """Heun's second-order method (EDM Algorithm 1, no churn); an Euler step onto sigma = 0."""
    for i in range(len(sigmas) - 1):
        denoised = evaluate(model, x, sigmas[i], extra_args)
        step_callback(callback, x, i, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        x_euler = x + d * dt
        if sigmas[i + 1] == 0:
            x = x_euler
            continue
        d_next = to_d(x_euler, sigmas[i + 1], evaluate(model, x_euler, sigmas[i + 1], extra_args))
        x = x + (d + d_next) / 2 * dt
    return x


@torch.no_grad()
def sample_dpm_2(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                 callback=None, disable: bool | None = None) -> torch.Tensor:
    """DPM-Solver-2 as a midpoint method with the midpoint at the log-sigma centre."""
    for i in range(len(sigmas) - 1):
        denoised = evaluate(model, x, sigmas[i], extra_args)
        step_callback(callback, x, i, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
            continue
        sigma_mid = (sigmas[i].log() + sigmas[i + 1].log()).div(2).exp()
        x_mid = x + d * (sigma_mid - sigmas[i])
        d_mid = to_d(x_mid, sigma_mid, evaluate(model, x_mid, sigma_mid, extra_args))
        x = x + d_mid * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                    callback=None, disable: bool | None = None) -> torch.Tensor:
    """DPM-Solver++(2M): exponential integrator in t = -log(sigma) with a second-order multistep x0 estimate."""
    previous = None
    for i in range(len(sigmas) - 1):
        denoised = evaluate(model, x, sigmas[i], extra_args)
        step_callback(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        h = sigmas[i].log() - sigmas[i + 1].log()
        estimate = denoised
        if previous is not None:
            r = (sigmas[i - 1].log() - sigmas[i].log()) / h
            estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * estimate
        previous = denoised
    return x


def lagrange_weights(nodes: list[float], start: float, end: float) -> list[float]:
    """Exact integrals over [start, end] of the Lagrange basis polynomials on ``nodes``."""
    import numpy as np
    from numpy.polynomial import polynomial as P

    weights = []
    for j, node in enumerate(nodes):
        basis = np.array([1.0])
        for k, other in enumerate(nodes):
            if k != j:
                basis = P.polymul(basis, np.array([-other, 1.0]) / (node - other))
        antiderivative = P.polyint(basis)
        weights.append(float(P.polyval(end, antiderivative) - P.polyval(start, antiderivative)))
    return weights


@torch.no_grad()
def sample_lms(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
               callback=None, disable: bool | None = None, order: int = 4) -> torch.Tensor:
    """Linear multistep in sigma: Adams-Bashforth weights from the actual (uneven) sigma grid."""
    history: list[torch.Tensor] = []
    grid = [float(s) for s in sigmas]
    for i in range(len(sigmas) - 1):
        denoised = evaluate(model, x, sigmas[i], extra_args)
        step_callback(callback, x, i, sigmas[i], denoised)
        history = (history + [to_d(x, sigmas[i], denoised)])[-order:]
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        nodes = grid[i - len(history) + 1:i + 1]
        weights = lagrange_weights(nodes, grid[i], grid[i + 1])
        x = x + sum(w * d for w, d in zip(weights, history, strict=True))
    return x


# Adams-Bashforth coefficients for equal steps, newest derivative first (iPNDM, Zhang & Chen 2023)
AB_COEFFS = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


@torch.no_grad()
def sample_ipndm(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                 callback=None, disable: bool | None = None, max_order: int = 4) -> torch.Tensor:
    """Improved PNDM: fixed Adams-Bashforth weights on past derivatives, warming up from Euler."""
    history: list[torch.Tensor] = []  # newest first
    for i in range(len(sigmas) - 1):
        denoised = evaluate(model, x, sigmas[i], extra_args)
        step_callback(callback, x, i, sigmas[i], denoised)
        history = [to_d(x, sigmas[i], denoised)] + history[:max_order - 1]
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        coeffs = AB_COEFFS[len(history) - 1]
        x = x + (sigmas[i + 1] - sigmas[i]) * sum(c * d for c, d in zip(coeffs, history, strict=True))
    return x
