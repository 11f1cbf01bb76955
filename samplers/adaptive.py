"""Adaptive-step samplers with error control (Gotta Go Fast, Jolicoeur-Martineau et al. 2021).

Every attempted step computes a low-order and a high-order solution from the same start and the same noise:

- ODE (``sample_adaptive``): Euler and Heun (EDM) steps in the model's sigma. Step sizes live in a normalised time
  u in [0, 1]: log sigma for EPS/V models (the paper's VE time), sigma itself for flow models.
- SDE (``sample_adaptive_sde``): the paper's Euler-Maruyama and improved Euler steps of the reverse VE SDE in
  normalised log-sigma time, sharing one Brownian increment (a Brownian tree by default, so a retried step sees a
  consistent path). Flow models run in their VE-equivalent coordinates y = x / (1 - sigma), s = sigma / (1 - sigma).

The error of a step is the paper's mixed norm ``E = ||(x_low - x_high) / delta||_2 / sqrt(n)`` per sample with
``delta = max(atol, rtol * max(|x_low|, |x_low_prev|))``; a step is accepted when the largest E over the batch is
<= 1 (then x = x_high, extrapolation), and the next step size is ``min(remaining, safety * h * E^-exponent)``.

Only the schedule's endpoints are used; its interior points are ignored. The integration runs from sigmas[0] to
sigmas[-1]; when sigmas[-1] is 0 it runs to ``sigma_min`` (default: the last non-zero sigma, sigmas[-2], as ComfyUI's
dpm_adaptive does) and then takes one denoised step onto 0, so the model is never evaluated at sigma = 0. An attempted
step costs 2 model calls (1 on a retry, which reuses the start's denoised estimate); the total is data-dependent and
is reported as ``model_calls`` in every callback dict.
"""

from __future__ import annotations

import math

import torch

from .noise_sources import NoiseSampler, noise_sampler_for
from .sampling_utils import evaluate, is_flow, offset_first_sigma, require_model_sampling

MIN_STEP = 1e-9  # in normalised time; a smaller proposed step means the solver cannot meet the tolerance


def _check(rtol: float, atol: float, h_init: float, safety: float, exponent: float) -> None:
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if rtol == 0 and atol == 0:
        raise ValueError("rtol and atol cannot both be 0 (no step could ever be accepted)")
    if not 0 < h_init <= 1:
        raise ValueError(f"h_init is a fraction of the integration interval and must be in (0, 1], got {h_init}")
    if not 0 < safety <= 1:
        raise ValueError(f"safety must be in (0, 1], got {safety}")
    if not 0 < exponent <= 1:
        raise ValueError(f"exponent must be in (0, 1], got {exponent}")


def _endpoints(sigmas: torch.Tensor, sigma_min: float | None) -> tuple[float, float, bool]:
    """(start sigma, end sigma of the adaptive part, whether a final denoised step onto 0 follows)."""
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D schedule with at least 2 entries, got shape {tuple(sigmas.shape)}")
    start, end = float(sigmas[0]), float(sigmas[-1])
    if not (math.isfinite(start) and start > end >= 0):
        raise ValueError(f"sigmas must decrease from sigmas[0] to sigmas[-1] >= 0, got {start} -> {end}")
    if end > 0:
        return start, end, False
    if sigma_min is None:
        sigma_min = float(sigmas[-2]) if len(sigmas) > 2 else 0.0
    if not 0 < sigma_min < start:
        raise ValueError(f"sigma_min (where the adaptive part stops before the step onto 0) must be in (0, {start}), "
                         f"got {sigma_min}; pass sigma_min or a schedule with a non-zero sigmas[-2]")
    return start, sigma_min, True


def step_error(low: torch.Tensor, high: torch.Tensor, low_prev: torch.Tensor, rtol: float, atol: float) -> float:
    """The paper's mixed absolute/relative scaled L2 error, the largest over the batch."""
    delta = torch.clamp(rtol * torch.maximum(low.abs(), low_prev.abs()), min=atol)
    per_sample = ((low - high) / delta).flatten(1).pow(2).mean(1).sqrt()
    return float(per_sample.max())


def _next_h(h: float, error: float, safety: float, exponent: float) -> float:
    if not math.isfinite(error):
        return h / 4
    return safety * h * error ** -exponent if error > 0 else math.inf


def _integrate(attempt, x: torch.Tensor, u_sigma, rtol, atol, h_init, safety, exponent, on_accept) -> torch.Tensor:
    """The accept/reject loop in normalised time u from 1 to 0; ``attempt(x, u, u_next, retry) -> (low, high)``."""
    u, h, low_prev, retry = 1.0, h_init, x, False
    while u > 0:
        h = min(h, u)
        u_next = 0.0 if h >= u else u - h
        low, high = attempt(x, u, u_next, retry)
        error = step_error(low, high, low_prev, rtol, atol)
        retry = not error <= 1
        if not retry:
            x, low_prev, u = high, low, u_next
            on_accept(x, u_sigma(u), error)
        h = _next_h(h, error, safety, exponent)
        if h < MIN_STEP:
            raise RuntimeError(f"adaptive step size fell below {MIN_STEP} at sigma {u_sigma(u):.4g} (error {error}); "
                               "the model output may be non-finite or the tolerance unreachable")
    return x


class _Counter:
    """Model calls with the denoised estimate of the current step's start cached for retries."""

    def __init__(self, model, args: dict, callback):
        self.model, self.args, self.callback = model, args, callback
        self.calls, self.accepted, self.rejected, self.start = 0, 0, 0, None

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        self.calls += 1
        return evaluate(self.model, x, torch.as_tensor(sigma, dtype=x.dtype, device=x.device), self.args)

    def start_denoised(self, x: torch.Tensor, sigma: float, retry: bool) -> torch.Tensor:
        if not retry or self.start is None:
            self.start = self(x, sigma)
        else:
            self.rejected += 1
        return self.start

    def report(self, x: torch.Tensor, sigma: float, denoised: torch.Tensor, error: float | None) -> None:
        if self.callback is not None:
            s = torch.as_tensor(sigma, dtype=x.dtype)
            self.callback({"x": x, "i": self.accepted, "sigma": s, "sigma_hat": s, "denoised": denoised,
                           "model_calls": self.calls, "rejected": self.rejected, "error": error})
        self.accepted += 1


@torch.no_grad()
def sample_adaptive(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                    disable: bool | None = None, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.01,
                    safety: float = 0.9, exponent: float = 0.5, sigma_min: float | None = None) -> torch.Tensor:
    """Adaptive Euler/Heun probability-flow ODE solver (see the module docstring; interior sigmas are ignored).

    The step-size exponent is 1/2 (the Euler/Heun difference is O(h^2)); the paper's 0.9 suits the SDE, whose
    difference is O(h), and makes the ODE controller alternate between accepted and rejected steps.
    """
    _check(rtol, atol, h_init, safety, exponent)
    ms, args = require_model_sampling(model, extra_args, "adaptive_ode")
    flow = is_flow(ms)
    start, end, to_zero = _endpoints(sigmas, sigma_min)
    if flow:
        def u_sigma(u: float) -> float:
            return end + u * (start - end)
    else:
        log_start, log_end = math.log(start), math.log(end)

        def u_sigma(u: float) -> float:
            return start if u == 1 else end if u == 0 else math.exp(log_end + u * (log_start - log_end))
    count = _Counter(model, args, callback)

    def attempt(x, u, u_next, retry):
        sigma, sigma_next = u_sigma(u), u_sigma(u_next)
        d = (x - count.start_denoised(x, sigma, retry)) / sigma
        low = x + d * (sigma_next - sigma)
        d_next = (low - count(low, sigma_next)) / sigma_next
        return low, x + (d + d_next) / 2 * (sigma_next - sigma)

    x = _integrate(attempt, x, u_sigma, rtol, atol, h_init, safety, exponent,
                   lambda x, sigma, error: count.report(x, sigma, count.start, error))
    if to_zero:
        x = count(x, end)
        count.report(x, 0.0, x, None)
    return x


@torch.no_grad()
def sample_adaptive_sde(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                        disable: bool | None = None, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.01,
                        safety: float = 0.9, exponent: float = 0.9, sigma_min: float | None = None,
                        s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Adaptive reverse-SDE solver: Euler-Maruyama / improved Euler with a shared Brownian increment (the paper's)."""
    _check(rtol, atol, h_init, safety, exponent)
    ms, args = require_model_sampling(model, extra_args, "adaptive_sde")
    flow = is_flow(ms)
    sigmas = offset_first_sigma(sigmas, ms, flow)  # flow: sigma 1 is infinite VE level
    start, end, to_zero = _endpoints(sigmas, sigma_min)
    noise = noise_sampler_for(x, extra_args, noise_sampler)

    def ve(sigma: float) -> float:  # VE-equivalent noise level s
        return sigma / (1 - sigma) if flow else sigma

    def model_sigma(s: float) -> float:
        return s / (1 + s) if flow else s

    log_start, log_end = math.log(ve(start)), math.log(ve(end))
    span = log_start - log_end

    def s_of(u: float) -> float:
        return ve(start) if u == 1 else ve(end) if u == 0 else math.exp(log_end + u * span)

    def u_sigma(u: float) -> float:
        return start if u == 1 else end if u == 0 else model_sigma(s_of(u))

    count = _Counter(model, args, callback)

    def denoise_ve(y: torch.Tensor, u: float, retry: bool | None = None) -> torch.Tensor:
        sigma = u_sigma(u)
        x_in = y * (1 - sigma) if flow else y
        return count(x_in, sigma) if retry is None else count.start_denoised(x_in, sigma, retry)

    def attempt(y, u, u_next, retry):
        s, s_next = s_of(u), s_of(u_next)
        step = math.log(s / s_next)  # h times the log-sigma span: g(u)^2 h = 2 s^2 step
        z = noise(u_sigma(u), u_sigma(u_next)) * s_noise
        low = y + 2 * step * (denoise_ve(y, u, retry) - y) + s * math.sqrt(2 * step) * z
        high_alone = y + 2 * step * (denoise_ve(low, u_next) - low) + s_next * math.sqrt(2 * step) * z
        return low, (low + high_alone) / 2

    y = x / (1 - start) if flow else x
    y = _integrate(attempt, y, u_sigma, rtol, atol, h_init, safety, exponent,
                   lambda y, sigma, error: count.report(y * (1 - sigma) if flow else y, sigma, count.start, error))
    x = y * (1 - end) if flow else y
    if to_zero:
        x = count(x, end)
        count.report(x, 0.0, x, None)
    return x
