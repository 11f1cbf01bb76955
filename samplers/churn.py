"""EDM stochastic churn (Karras et al. 2022, Algorithm 2) for Euler, Heun and DPM-Solver-2, on EPS/V and flow models.

Per step i with sigma_i inside [s_tmin, s_tmax]: gamma_i = min(s_churn / N, sqrt(2) - 1) (N = number of steps),
sigma_hat = sigma_i (1 + gamma_i); the sample is moved *up* to sigma_hat with fresh noise, then the base method steps
from sigma_hat to sigma_{i+1}. ``s_churn = 0`` (or a [s_tmin, s_tmax] window that holds no sigma) runs exactly the
base method's arithmetic (tested bit for bit against solvers.py).

What was verified, and where (2026-11):

* The gamma rule, the window test ``s_tmin <= sigma_i <= s_tmax`` and ``x_hat = x + sqrt(sigma_hat^2 - sigma^2)
  s_noise z``: ComfyUI's ``comfy/k_diffusion/sampling.py`` (``sample_euler``/``sample_heun``/``sample_dpm_2``,
  /work/cf v0.3.64) and the Restart authors' copy of diffusers' EulerDiscreteScheduler.step (same formula).
* The paper's ImageNet-64 settings ``S_churn=40, S_min=0.05, S_max=50, S_noise=1.003`` (256 steps): NVlabs/edm
  README ("For ImageNet at 64x64, use stochastic sampling with 256 steps"), found through the code index.

Flow models (x = (1 - s) x0 + s eps). ComfyUI applies the VE formula to flow sigmas, which is wrong there. Here the
churn acts on the equivalent VE level v = s / (1 - s) (noise-to-signal ratio; x / (1 - s) = x0 + v eps), so the
paper's numbers keep their meaning: v_hat = v (1 + gamma), s_hat = v_hat / (1 + v_hat), and s_tmin/s_tmax are
compared with v. Moving x from s up to s_hat (any s_hat >= s) keeps x0's coefficient exact::

    x_hat = (1 - s_hat) / (1 - s) * x + sqrt(s_hat^2 - ((1 - s_hat) / (1 - s))^2 s^2) * z

(data coefficient (1 - s_hat), noise variance s_hat^2). On EPS/V models (k-diffusion's x = x0 + sigma eps) this is
the EDM formula. A flow sigma of 1 (pure noise) gets no churn.

Noise: ``noise_sampler(sigma, sigma_hat)`` when one is given (ComfyUI passes one), else a Gaussian drawn on the CPU
from a generator keyed by (run seed, step), identical on every device and independent between steps (a Brownian
increment over [sigma, sigma_hat] would repeat when those intervals overlap).

Measured (2026-11-23, analytic N(0.3, 0.5^2), 200k samples, registered EDM settings): with an exact denoiser churn
only adds discretisation error (it corrects model error, of which there is none): output std at 30 / 100 steps,
flow: Euler 0.476 / 0.493, euler_churn 0.434 / 0.455; Heun 0.499 / 0.500, heun_churn 0.500 / 0.502.
The settings are the paper's for 256 Heun steps; at UI step counts gamma hits its cap sqrt(2) - 1.
"""

from __future__ import annotations

import math

import torch

from .noise_sources import NoiseSampler, node_seed, resolve_seed
from .sampling_utils import evaluate, is_flow, split_extra_args
from .solvers import to_d

# NVlabs/edm README, ImageNet-64 stochastic sampling
EDM_DEFAULTS = {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}
CHURN_KEY = 0x43485552  # "CHUR": separates churn draws from other keyed draws of the same seed
METHODS = ("euler", "heun", "dpm_2")


def ve_level(sigma: torch.Tensor, flow: bool) -> torch.Tensor:
    """The VE-equivalent noise level (noise-to-signal ratio): sigma itself, or s / (1 - s) on flow models."""
    return sigma / (1 - sigma) if flow else sigma


def from_ve_level(v: torch.Tensor, flow: bool) -> torch.Tensor:
    return v / (1 + v) if flow else v


def add_noise(x: torch.Tensor, sigma: torch.Tensor, sigma_to: torch.Tensor, z: torch.Tensor,
              flow: bool) -> torch.Tensor:
    """Forward-noise a sample at ``sigma`` to the higher level ``sigma_to`` with standard normal ``z``."""
    if not flow:
        return x + (sigma_to ** 2 - sigma ** 2).clamp(min=0) ** 0.5 * z
    scale = (1 - sigma_to) / (1 - sigma)
    return scale * x + (sigma_to ** 2 - scale ** 2 * sigma ** 2).clamp(min=0) ** 0.5 * z


def keyed_normal(x: torch.Tensor, seed: int | tuple[int, ...], *key: int) -> torch.Tensor:
    """A standard normal like ``x``, drawn on the CPU from (seed, key): same values on every device; a tuple of seeds
    draws image i from its own seed."""
    if not isinstance(seed, int):
        return torch.cat([keyed_normal(x[i:i + 1], s, *key) for i, s in enumerate(seed)])
    generator = torch.Generator(device="cpu").manual_seed(node_seed(seed, *key) & ((1 << 63) - 1))
    return torch.randn(tuple(x.shape), generator=generator, dtype=torch.float32).to(device=x.device, dtype=x.dtype)


def churn_gamma(sigma: torch.Tensor, steps: int, s_churn: float, s_tmin: float, s_tmax: float, flow: bool) -> float:
    """EDM's gamma_i for one step (0 outside [s_tmin, s_tmax], which is compared with the VE-equivalent level)."""
    if s_churn <= 0 or (flow and float(sigma) >= 1.0):
        return 0.0
    v = float(ve_level(sigma, flow))
    return min(s_churn / steps, math.sqrt(2) - 1) if s_tmin <= v <= s_tmax else 0.0


def check_churn(s_churn: float, s_tmin: float, s_tmax: float, s_noise: float) -> None:
    if not (math.isfinite(s_churn) and s_churn >= 0):
        raise ValueError(f"s_churn must be a finite number >= 0, got {s_churn}")
    if not (s_tmin >= 0 and s_tmax >= s_tmin):
        raise ValueError(f"need 0 <= s_tmin <= s_tmax, got s_tmin={s_tmin}, s_tmax={s_tmax}")
    if not (math.isfinite(s_noise) and s_noise >= 0):
        raise ValueError(f"s_noise must be a finite number >= 0, got {s_noise}")


@torch.no_grad()
def sample_churn(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                 disable: bool | None = None, method: str = "euler", s_churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float = float("inf"), s_noise: float = 1.0,
                 noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Euler / Heun / DPM-Solver-2 with EDM churn; 1 / 2 / 2 model calls per step (1 on the step onto 0)."""
    if method not in METHODS:
        raise ValueError(f"unknown churn method {method!r}; choose one of {', '.join(METHODS)}")
    check_churn(s_churn, s_tmin, s_tmax, s_noise)
    ms, args = split_extra_args(model, extra_args)
    flow = ms is not None and is_flow(ms)
    if s_churn > 0 and ms is None:
        raise ValueError("churn needs the model's model_sampling to tell flow from EPS/V models; "
                         "pass extra_args['model_sampling']")
    seed = resolve_seed(extra_args) if s_churn > 0 and noise_sampler is None else 0
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = churn_gamma(sigma, steps, s_churn, s_tmin, s_tmax, flow)
        sigma_hat = sigma
        if gamma > 0:
            sigma_hat = from_ve_level(ve_level(sigma, flow) * (1 + gamma), flow)
            z = noise_sampler(sigma, sigma_hat) if noise_sampler is not None else keyed_normal(x, seed, CHURN_KEY, i)
            x = add_noise(x, sigma, sigma_hat, z * s_noise, flow)
        denoised = evaluate(model, x, sigma_hat, args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
        x = _base_step(model, x, denoised, sigma_hat, sigma_next, method, args)
    return x


def _base_step(model, x, denoised, sigma, sigma_next, method: str, args: dict) -> torch.Tensor:
    """One Euler / Heun / DPM-2 step from ``sigma`` (its model output given) to ``sigma_next``, as in solvers.py."""
    d = to_d(x, sigma, denoised)
    dt = sigma_next - sigma
    if method == "euler" or sigma_next == 0:
        return x + d * dt
    if method == "heun":
        x_euler = x + d * dt
        d_next = to_d(x_euler, sigma_next, evaluate(model, x_euler, sigma_next, args))
        return x + (d + d_next) / 2 * dt
    sigma_mid = (sigma.log() + sigma_next.log()).div(2).exp()
    x_mid = x + d * (sigma_mid - sigma)
    d_mid = to_d(x_mid, sigma_mid, evaluate(model, x_mid, sigma_mid, args))
    return x + d_mid * dt


__all__ = ["EDM_DEFAULTS", "add_noise", "keyed_normal", "ve_level", "from_ve_level", "churn_gamma", "sample_churn"]
