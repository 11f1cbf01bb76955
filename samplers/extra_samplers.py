"""More of ComfyUI's stochastic samplers in sigma space: ER-SDE, SEEDS-2/3, Heun++ (heunpp2) and DPM-2 ancestral.

Noise is ``noise_sampler(sigma, sigma_next)`` (standard normal; by default a Brownian tree seeded from
``extra_args["seed"]``). The half-logSNR lambda = log(alpha / sigma) makes ER-SDE and SEEDS work unchanged on flow
models (alpha = 1 - sigma; a first sigma of 1 moves to the 1e-4 point); DPM-2 ancestral uses the rectified-flow
re-noising there. No sampler evaluates the model at sigma = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .noise_sources import NoiseSampler, noise_sampler_for
from .sampling_utils import (
    ancestral_split,
    evaluate,
    half_log_snr,
    is_flow,
    offset_first_sigma,
    require_model_sampling,
    sigma_of_half_log_snr,
    split_extra_args,
    step_callback,
)
from .solvers import to_d


def _check_noise(eta: float, s_noise: float) -> None:
    for name, value in (("eta", eta), ("s_noise", s_noise)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {value}")


def _lam(sigma: float, flow: bool) -> float:
    return float(half_log_snr(torch.tensor(sigma, dtype=torch.float64), flow))


def _sigma(lam: float, flow: bool) -> float:
    return float(sigma_of_half_log_snr(torch.tensor(lam, dtype=torch.float64), flow))


def _one_minus_exp(z: float) -> float:
    """1 - e^(-z)."""
    return -math.expm1(-z)


def _phi2(z: float) -> float:
    """(e^(-z) - 1 + z) / z: the weight of a linear-in-lambda x0 slope in an exponential-integrator step."""
    return (math.expm1(-z) + z) / z


# ------------------------------------------------------------------------------------------------- ER-SDE
def er_sde_noise_scaler(x: torch.Tensor) -> torch.Tensor:
    """ER-SDE-Solver's default noise-scale function f(x) = x (e^(x^0.3) + 10) (the paper's 'ER SDE 5')."""
    return x * ((x ** 0.3).exp() + 10.0)


@torch.no_grad()
def sample_er_sde(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                  disable: bool | None = None, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                  noise_scaler: Callable[[torch.Tensor], torch.Tensor] | None = None, max_stage: int = 3,
                  integration_points: int = 200) -> torch.Tensor:
    """ER-SDE-Solver-3 (Cui et al. 2023), VP form in the noise level r = sigma / alpha; 1 call per step.

    The integrals of 1/f and (r - r_s)/f over a step use a left-point rule with ``integration_points`` points, as
    the reference code and ComfyUI do (200).
    """
    _check_noise(0.0, s_noise)
    if int(max_stage) != max_stage or not 1 <= max_stage <= 3:
        raise ValueError(f"max_stage must be 1, 2 or 3, got {max_stage}")
    if int(integration_points) != integration_points or integration_points < 1:
        raise ValueError(f"integration_points must be a whole number >= 1, got {integration_points}")
    ms, args = require_model_sampling(model, extra_args, "er_sde")
    flow = is_flow(ms)
    scale_fn = er_sde_noise_scaler if noise_scaler is None else noise_scaler
    noise = noise_sampler_for(x, extra_args, noise_sampler) if s_noise > 0 else None
    sigmas = offset_first_sigma(sigmas, ms, flow)
    lams = half_log_snr(sigmas.double(), flow)
    levels = lams.neg().exp()  # r = sigma / alpha (infinite lambda at sigma = 0 gives r = 0)
    frac = torch.arange(integration_points, dtype=torch.float64) / integration_points
    prev_d, prev_slope = None, None
    for i in range(len(sigmas) - 1):
        denoised = evaluate(model, x, sigmas[i], args)
        step_callback(callback, x, i, sigmas[i], denoised)
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x, prev_d = denoised, denoised
            continue
        r_s, r_t = levels[i], levels[i + 1]
        alpha_s, alpha_t = float(sigmas[i] / r_s), float(sigmas[i + 1] / r_t)
        f_s, f_t = scale_fn(r_s), scale_fn(r_t)
        ratio = float(f_t / f_s)
        x = (alpha_t / alpha_s) * ratio * x + alpha_t * (1 - ratio) * denoised
        if stage >= 2:
            dr = float(r_t - r_s)  # < 0
            points = r_t + frac * (r_s - r_t)  # left-point rule from r_t up to r_s
            width = float(r_s - r_t) / integration_points
            inv_f = 1 / scale_fn(points)
            slope = (denoised - prev_d) / float(r_s - levels[i - 1])
            x = x + alpha_t * (dr + float(inv_f.sum()) * width * float(f_t)) * slope
            if stage >= 3:
                s_u = float(((points - r_s) * inv_f).sum()) * width
                curve = (slope - prev_slope) / (float(r_s - levels[i - 2]) / 2)
                x = x + alpha_t * (dr ** 2 / 2 + s_u * float(f_t)) * curve
            prev_slope = slope
        if noise is not None:
            spread = float(r_t ** 2 - r_s ** 2 * ratio ** 2)
            if spread > 0:
                x = x + alpha_t * math.sqrt(spread) * s_noise * noise(sigmas[i], sigmas[i + 1])
        prev_d = denoised
    return x


# ------------------------------------------------------------------------------------------------- SEEDS
def _ou_noise(prev: torch.Tensor | None, decay: float, noise: NoiseSampler, s0, s1) -> torch.Tensor:
    """Standardised noise of the data-prediction SDE carried from one stage point to the next."""
    fresh = math.sqrt(-math.expm1(-2 * decay)) * noise(s0, s1)
    return fresh if prev is None else prev * math.exp(-decay) + fresh


def _seeds_setup(model, x, sigmas, extra_args, noise_sampler, eta, s_noise, name):
    _check_noise(eta, s_noise)
    ms, args = require_model_sampling(model, extra_args, name)
    flow = is_flow(ms)
    noise = noise_sampler_for(x, extra_args, noise_sampler) if eta > 0 and s_noise > 0 else None
    return args, flow, noise, offset_first_sigma(sigmas, ms, flow)


@torch.no_grad()
def sample_seeds_2(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                   disable: bool | None = None, eta: float = 1.0, s_noise: float = 1.0,
                   noise_sampler: NoiseSampler | None = None, r: float = 0.5) -> torch.Tensor:
    """SEEDS-2 (Gonzalez et al., NeurIPS 2023): two-stage stochastic exponential Runge-Kutta in half-logSNR."""
    if not 0 < r <= 1:
        raise ValueError(f"SEEDS-2 stage fraction r must be in (0, 1], got {r}")
    args, flow, noise, sigmas = _seeds_setup(model, x, sigmas, extra_args, noise_sampler, eta, s_noise, "seeds_2")
    for i in range(len(sigmas) - 1):
        denoised = evaluate(model, x, sigmas[i], args)
        step_callback(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        s, t = float(sigmas[i]), float(sigmas[i + 1])
        lam_s, lam_t = _lam(s, flow), _lam(t, flow)
        h = lam_t - lam_s
        lam_1 = lam_s + r * h
        s_1 = _sigma(lam_1, flow)
        big = h * (1 + eta)
        x_1 = (s_1 / s) * math.exp(-eta * r * h) * x + s_1 * math.exp(lam_1) * _one_minus_exp(r * big) * denoised
        w = None
        if noise is not None:
            w = _ou_noise(None, eta * r * h, noise, sigmas[i], s_1)
            x_1 = x_1 + s_1 * s_noise * w
        denoised_1 = evaluate(model, x_1, torch.as_tensor(s_1, dtype=sigmas.dtype), args)
        estimate = denoised + (denoised_1 - denoised) / (2 * r)
        x = (t / s) * math.exp(-eta * h) * x + t * math.exp(lam_t) * _one_minus_exp(big) * estimate
        if noise is not None:
            w = _ou_noise(w, eta * (1 - r) * h, noise, s_1, sigmas[i + 1])
            x = x + t * s_noise * w
    return x


@torch.no_grad()
def sample_seeds_3(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                   disable: bool | None = None, eta: float = 1.0, s_noise: float = 1.0,
                   noise_sampler: NoiseSampler | None = None, r_1: float = 1 / 3, r_2: float = 2 / 3) -> torch.Tensor:
    """SEEDS-3: three-stage stochastic exponential Runge-Kutta (stages at r_1 h and r_2 h) in half-logSNR."""
    if not 0 < r_1 < r_2 <= 1:
        raise ValueError(f"SEEDS-3 stage fractions need 0 < r_1 < r_2 <= 1, got {r_1} and {r_2}")
    args, flow, noise, sigmas = _seeds_setup(model, x, sigmas, extra_args, noise_sampler, eta, s_noise, "seeds_3")
    for i in range(len(sigmas) - 1):
        denoised = evaluate(model, x, sigmas[i], args)
        step_callback(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        s, t = float(sigmas[i]), float(sigmas[i + 1])
        lam_s, lam_t = _lam(s, flow), _lam(t, flow)
        h = lam_t - lam_s
        big = h * (1 + eta)
        lam_1, lam_2 = lam_s + r_1 * h, lam_s + r_2 * h
        s_1, s_2 = _sigma(lam_1, flow), _sigma(lam_2, flow)
        w = None
        # stage 1: first-order step to lambda_1
        x_1 = (s_1 / s) * math.exp(-eta * r_1 * h) * x + s_1 * math.exp(lam_1) * _one_minus_exp(r_1 * big) * denoised
        if noise is not None:
            w = _ou_noise(w, eta * r_1 * h, noise, sigmas[i], s_1)
            x_1 = x_1 + s_1 * s_noise * w
        d_1 = evaluate(model, x_1, torch.as_tensor(s_1, dtype=sigmas.dtype), args)
        # stage 2: to lambda_2 with the x0 slope from the first stage
        c_2 = (r_2 / r_1) * _phi2(r_2 * big)
        x_2 = (s_2 / s) * math.exp(-eta * r_2 * h) * x + s_2 * math.exp(lam_2) * (
            _one_minus_exp(r_2 * big) * denoised + c_2 * (d_1 - denoised))
        if noise is not None:
            w = _ou_noise(w, eta * (r_2 - r_1) * h, noise, s_1, s_2)
            x_2 = x_2 + s_2 * s_noise * w
        d_2 = evaluate(model, x_2, torch.as_tensor(s_2, dtype=sigmas.dtype), args)
        # final: the slope from the second stage
        c_t = _phi2(big) / r_2
        x = (t / s) * math.exp(-eta * h) * x + t * math.exp(lam_t) * (
            _one_minus_exp(big) * denoised + c_t * (d_2 - denoised))
        if noise is not None:
            w = _ou_noise(w, eta * (1 - r_2) * h, noise, s_2, sigmas[i + 1])
            x = x + t * s_noise * w
    return x


# ------------------------------------------------------------------------------------------------- Heun++
@torch.no_grad()
def sample_heunpp2(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                   disable: bool | None = None) -> torch.Tensor:
    """Heun++ (sd-webui-samplers-scheduler's heunpp2): Euler slopes at sigma_i, sigma_(i+1), sigma_(i+2) averaged with
    weights sigma_(i+1) / (3 sigma_0), sigma_(i+2) / (3 sigma_0) and the rest (Heun with 2 sigma_0 on the
    second-to-last step, Euler on the last); up to 3 calls per step, deterministic (ComfyUI's default: no churn)."""
    _, args = split_extra_args(model, extra_args)
    end, first = sigmas[-1], sigmas[0]
    for i in range(len(sigmas) - 1):
        denoised = evaluate(model, x, sigmas[i], args)
        step_callback(callback, x, i, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        x_1 = x + d * dt
        if sigmas[i + 1] == end:
            x = x_1
            continue
        d_1 = to_d(x_1, sigmas[i + 1], evaluate(model, x_1, sigmas[i + 1], args))
        if sigmas[i + 2] == end:
            w_1 = sigmas[i + 1] / (2 * first)
            x = x + ((1 - w_1) * d + w_1 * d_1) * dt
            continue
        x_2 = x_1 + d_1 * (sigmas[i + 2] - sigmas[i + 1])
        d_2 = to_d(x_2, sigmas[i + 2], evaluate(model, x_2, sigmas[i + 2], args))
        w_1, w_2 = sigmas[i + 1] / (3 * first), sigmas[i + 2] / (3 * first)
        x = x + ((1 - w_1 - w_2) * d + w_1 * d_1 + w_2 * d_2) * dt
    return x


# ------------------------------------------------------------------------------------------------- DPM-2 ancestral
@torch.no_grad()
def sample_dpm_2_ancestral(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                           callback=None, disable: bool | None = None, eta: float = 1.0, s_noise: float = 1.0,
                           noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """DPM-Solver-2 (log-sigma midpoint) down to sigma_down, then ancestral noise (RF re-noising on flow models)."""
    _check_noise(eta, s_noise)
    ms, args = require_model_sampling(model, extra_args, "dpm_2_ancestral")
    flow = is_flow(ms)
    noise = noise_sampler_for(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = evaluate(model, x, sigma, args)
        step_callback(callback, x, i, sigma, denoised)
        sigma_down, rescale, renoise = ancestral_split(sigma, sigmas[i + 1], eta, flow)
        d = to_d(x, sigma, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)  # = denoised; no noise onto sigma = 0
            continue
        sigma_mid = ((sigma.log() + sigma_down.log()) / 2).exp()
        x_mid = x + d * (sigma_mid - sigma)
        d_mid = to_d(x_mid, sigma_mid, evaluate(model, x_mid, sigma_mid, args))
        x = x + d_mid * (sigma_down - sigma)
        x = rescale * x + noise(sigma, sigmas[i + 1]) * s_noise * renoise
    return x
