"""Ancestral and SDE samplers in k-diffusion/ComfyUI form, with rectified-flow noise formulas on flow models.

Noise comes from ``noise_sampler(sigma, sigma_next)`` (standard normal); by default a Brownian tree seeded from
``extra_args["seed"]`` (see noise_sources.py). The model-sampling object (to tell flow from EPS/V) comes from
``extra_args["model_sampling"]`` or ComfyUI's denoiser (sampling_utils.split_extra_args). No sampler evaluates the
model at sigma = 0: a step onto 0 returns the last denoised estimate.
"""

from __future__ import annotations

import torch

from .noise_sources import NoiseSampler, noise_sampler_for
from .sampling_utils import (
    ancestral_split,
    ancestral_step,
    evaluate,
    half_log_snr,
    is_flow,
    offset_first_sigma,
    require_model_sampling,
    sigma_of_half_log_snr,
    signal_scale,
    step_callback,
)
from .solvers import to_d


@torch.no_grad()
def sample_euler_ancestral(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                           callback=None, disable: bool | None = None, eta: float = 1.0, s_noise: float = 1.0,
                           noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Euler steps down to sigma_down, then fresh noise up to the next sigma (RF re-noising on flow models)."""
    ms, args = require_model_sampling(model, extra_args, "euler_ancestral")
    flow = is_flow(ms)
    noise = noise_sampler_for(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = evaluate(model, x, sigma, args)
        step_callback(callback, x, i, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        sigma_down, rescale, renoise = ancestral_split(sigma, sigma_next, eta, flow)
        x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        if eta > 0:
            x = rescale * x + noise(sigma, sigma_next) * s_noise * renoise
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                              callback=None, disable: bool | None = None, eta: float = 1.0, s_noise: float = 1.0,
                              noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """DPM-Solver++(2S) (midpoint in half-logSNR) down to sigma_down, then ancestral noise; 2 calls per step."""
    ms, args = require_model_sampling(model, extra_args, "dpmpp_2s_ancestral")
    flow = is_flow(ms)
    noise = noise_sampler_for(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = evaluate(model, x, sigma, args)
        step_callback(callback, x, i, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        sigma_down, rescale, renoise = ancestral_split(sigma, sigma_next, eta, flow)
        if flow and sigma == 1.0:
            sigma_mid = torch.as_tensor(0.9999, dtype=sigma.dtype, device=sigma.device)
        else:
            lam, lam_down = half_log_snr(sigma, flow), half_log_snr(sigma_down, flow)
            sigma_mid = sigma_of_half_log_snr((lam + lam_down) / 2, flow)
        x_mid = _data_step(x, denoised, sigma, sigma_mid, flow)
        denoised_mid = evaluate(model, x_mid, sigma_mid, args)
        x = _data_step(x, denoised_mid, sigma, sigma_down, flow)
        if eta > 0:
            x = rescale * x + noise(sigma, sigma_next) * s_noise * renoise
    return x


def _data_step(x: torch.Tensor, denoised: torch.Tensor, sigma, sigma_to, flow: bool) -> torch.Tensor:
    """First-order exponential-integrator step in half-logSNR with a constant x0 estimate."""
    if flow:  # ComfyUI's RF form: linear in sigma between x and x0
        return denoised + (sigma_to / sigma) * (x - denoised)
    h = sigma.log() - sigma_to.log()
    return (sigma_to / sigma) * x - torch.expm1(-h) * denoised


@torch.no_grad()
def sample_dpmpp_sde(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                     disable: bool | None = None, eta: float = 1.0, s_noise: float = 1.0,
                     noise_sampler: NoiseSampler | None = None, r: float = 0.5) -> torch.Tensor:
    """DPM-Solver++ SDE: a two-stage singlestep method in half-logSNR with Brownian noise; 2 calls per step."""
    ms, args = require_model_sampling(model, extra_args, "dpmpp_sde")
    flow = is_flow(ms)
    noise = noise_sampler_for(x, extra_args, noise_sampler)
    sigmas = offset_first_sigma(sigmas, ms, flow)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = evaluate(model, x, sigma, args)
        step_callback(callback, x, i, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigma, flow), half_log_snr(sigma_next, flow)
        lam_mid = lam_s + r * (lam_t - lam_s)
        sigma_mid = sigma_of_half_log_snr(lam_mid, flow)
        x_mid = _sde_stage(x, denoised, sigma, lam_s, sigma_mid, lam_mid, eta, s_noise, noise)
        denoised_mid = evaluate(model, x_mid, sigma_mid, args)
        fac = 1 / (2 * r)
        x = _sde_stage(x, (1 - fac) * denoised + fac * denoised_mid, sigma, lam_s, sigma_next, lam_t, eta, s_noise,
                       noise)
    return x


def _sde_stage(x: torch.Tensor, x0: torch.Tensor, sigma, lam_s, sigma_to, lam_to, eta: float, s_noise: float,
               noise: NoiseSampler) -> torch.Tensor:
    """An ancestral exponential-integrator step in the VE-equivalent level exp(-lambda), scaled back by alpha."""
    down, up = ancestral_step(lam_s.neg().exp(), lam_to.neg().exp(), eta)
    h = -down.log() - lam_s
    alpha_s, alpha_to = sigma * lam_s.exp(), sigma_to * lam_to.exp()
    out = (alpha_to / alpha_s) * (-h).exp() * x - alpha_to * (-h).expm1() * x0
    if eta > 0 and s_noise > 0:
        out = out + alpha_to * noise(sigma, sigma_to) * s_noise * up
    return out


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                        callback=None, disable: bool | None = None, eta: float = 1.0, s_noise: float = 1.0,
                        noise_sampler: NoiseSampler | None = None, solver_type: str = "midpoint") -> torch.Tensor:
    """DPM-Solver++(2M) SDE (midpoint or heun correction of the multistep x0 estimate)."""
    return _dpmpp_multistep_sde(model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler, 2, solver_type)


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                        callback=None, disable: bool | None = None, eta: float = 1.0, s_noise: float = 1.0,
                        noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """DPM-Solver++(3M) SDE."""
    return _dpmpp_multistep_sde(model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler, 3, "heun")


def _dpmpp_multistep_sde(model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler, order: int,
                         solver_type: str) -> torch.Tensor:
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    ms, args = require_model_sampling(model, extra_args, f"dpmpp_{order}m_sde")
    flow = is_flow(ms)
    noise = noise_sampler_for(x, extra_args, noise_sampler)
    sigmas = offset_first_sigma(sigmas, ms, flow)
    history: list[tuple[torch.Tensor, torch.Tensor]] = []  # (denoised, h) of earlier steps, newest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = evaluate(model, x, sigma, args)
        step_callback(callback, x, i, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigma, flow), half_log_snr(sigma_next, flow)
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        alpha_t = sigma_next * lam_t.exp()
        phi_1 = (-h_eta).expm1().neg()  # 1 - exp(-h_eta)
        phi_2 = (-h_eta).expm1() / h_eta + 1
        x = (sigma_next / sigma) * (-h * eta).exp() * x + alpha_t * phi_1 * denoised
        if order == 3 and len(history) >= 2:
            (d1_, h1), (d2_, h2) = history[0], history[1]
            r0, r1 = h1 / h, h2 / h
            d1_0 = (denoised - d1_) / r0
            d1_1 = (d1_ - d2_) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + alpha_t * phi_2 * d1 - alpha_t * phi_3 * d2
        elif history:
            d1_, h1 = history[0]
            slope = (denoised - d1_) * (h / h1)
            if order == 2 and solver_type == "midpoint":
                x = x + 0.5 * alpha_t * phi_1 * slope
            else:
                x = x + alpha_t * phi_2 * slope
        if eta > 0 and s_noise > 0:
            x = x + noise(sigma, sigma_next) * sigma_next * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        history = [(denoised, h)] + history[:order - 2]
    return x


@torch.no_grad()
def sample_ddim(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                disable: bool | None = None, eta: float = 0.0, s_noise: float = 1.0,
                noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021) for x = alpha x0 + sigma eps; eta = 0 is Euler, eta = 1 is DDPM's posterior."""
    ms, args = require_model_sampling(model, extra_args, "ddim")
    flow = is_flow(ms)
    noise = noise_sampler_for(x, extra_args, noise_sampler) if eta > 0 else None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = evaluate(model, x, sigma, args)
        step_callback(callback, x, i, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        alpha, alpha_next = signal_scale(sigma, flow), signal_scale(sigma_next, flow)
        eps = (x - alpha * denoised) / sigma
        # posterior noise std: eta * sigma_next * sqrt(1 - SNR(sigma) / SNR(sigma_next))
        snr_ratio = (alpha * sigma_next / (alpha_next * sigma)) ** 2
        c = eta * sigma_next * (1 - snr_ratio).clamp(min=0) ** 0.5
        x = alpha_next * denoised + (sigma_next ** 2 - c ** 2).clamp(min=0) ** 0.5 * eps
        if noise is not None:
            x = x + c * s_noise * noise(sigma, sigma_next)
    return x


@torch.no_grad()
def sample_ddpm(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                disable: bool | None = None, noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """DDPM ancestral sampling: a draw from q(x_next | x, x0 = denoised) at every step (DDIM with eta = 1)."""
    return sample_ddim(model, x, sigmas, extra_args, callback, disable, eta=1.0, noise_sampler=noise_sampler)


@torch.no_grad()
def sample_lcm(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
               disable: bool | None = None, noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Latent-consistency sampling: jump to the x0 estimate, then re-noise it to the next sigma."""
    ms, args = require_model_sampling(model, extra_args, "lcm")
    noise = noise_sampler_for(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        denoised = evaluate(model, x, sigmas[i], args)
        step_callback(callback, x, i, sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = ms.noise_scaling(sigmas[i + 1], noise(sigmas[i], sigmas[i + 1]), x)
    return x
