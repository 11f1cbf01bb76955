"""Sigma schedules following ComfyUI's definitions: ``fn(model_sampling, steps) -> sigmas`` ending in 0."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .validate import check_steps

Scheduler = Callable[[object, int], torch.Tensor]


def _append_zero(values) -> torch.Tensor:
    return torch.cat([torch.as_tensor(values, dtype=torch.float32).reshape(-1), torch.zeros(1)])


def simple(model_sampling, steps: int) -> torch.Tensor:
    """Evenly spaced entries of the model's own 1000-entry sigma table."""
    table = model_sampling.sigmas
    stride = len(table) / steps
    return _append_zero([float(table[-(1 + int(i * stride))]) for i in range(steps)])


def normal(model_sampling, steps: int) -> torch.Tensor:
    """Timesteps linear between the model's sigma_max and sigma_min."""
    start = float(model_sampling.timestep(torch.as_tensor(model_sampling.sigma_max)))
    end = float(model_sampling.timestep(torch.as_tensor(model_sampling.sigma_min)))
    ends_at_zero = math.isclose(float(model_sampling.sigma(torch.tensor(end))), 0.0, abs_tol=1e-5)
    n = steps + 1 if ends_at_zero else steps
    sigmas = [float(model_sampling.sigma(torch.tensor(t))) for t in torch.linspace(start, end, n).tolist()]
    return torch.tensor(sigmas, dtype=torch.float32) if ends_at_zero else _append_zero(sigmas)


def karras(model_sampling, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) rho-spaced schedule between sigma_min and sigma_max."""
    lo, hi = float(model_sampling.sigma_min) ** (1 / rho), float(model_sampling.sigma_max) ** (1 / rho)
    ramp = torch.linspace(0, 1, steps)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential(model_sampling, steps: int) -> torch.Tensor:
    """Log-linear spacing between sigma_max and sigma_min."""
    return _append_zero(torch.linspace(math.log(float(model_sampling.sigma_max)),
                                       math.log(float(model_sampling.sigma_min)), steps).exp())


def sgm_uniform(model_sampling, steps: int) -> torch.Tensor:
    """Stability's SGM spacing: ``steps`` timesteps linear from sigma_max, the end point left out."""
    start = float(model_sampling.timestep(torch.as_tensor(model_sampling.sigma_max)))
    end = float(model_sampling.timestep(torch.as_tensor(model_sampling.sigma_min)))
    ts = torch.linspace(start, end, steps + 1)[:-1]
    return _append_zero([float(model_sampling.sigma(t)) for t in ts])


def ddim_uniform(model_sampling, steps: int) -> torch.Tensor:
    """Every k-th entry of the sigma table from index 1 (DDIM's uniform timestep skipping)."""
    table = model_sampling.sigmas
    ends_at_zero = math.isclose(float(table[1]), 0.0, abs_tol=1e-5)
    stride = max(len(table) // (steps + 1 if ends_at_zero else steps), 1)
    picked = table[1::stride].flip(0).float()
    return picked if ends_at_zero else _append_zero(picked)


def beta(model_sampling, steps: int, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """Beta-distribution spacing of table indices (Lee et al. 2024, arXiv:2407.12173); repeats dropped."""
    from scipy.stats import beta as beta_dist

    table = model_sampling.sigmas
    quantiles = 1 - torch.linspace(0, 1, steps + 1)[:-1].double().numpy()
    idx = torch.from_numpy(beta_dist.ppf(quantiles, alpha, beta_) * (len(table) - 1)).round().long()
    idx = torch.unique_consecutive(idx)
    return _append_zero(table[idx])


def linear_quadratic(model_sampling, steps: int, threshold_noise: float = 0.025,
                     linear_steps: int | None = None) -> torch.Tensor:
    """Mochi's schedule: linear in 1 - sigma up to ``threshold_noise``, then quadratic to 1."""
    if steps == 1:
        return torch.tensor([1.0, 0.0]) * float(model_sampling.sigma_max)
    n_lin = steps // 2 if linear_steps is None else linear_steps
    n_quad = steps - n_lin
    gap = n_lin - threshold_noise * steps
    a = gap / (n_lin * n_quad ** 2)
    b = threshold_noise / n_lin - 2 * gap / n_quad ** 2
    c = a * n_lin ** 2
    done = [i * threshold_noise / n_lin for i in range(n_lin)] + [a * i * i + b * i + c for i in range(n_lin, steps)]
    return (1.0 - torch.tensor(done + [1.0], dtype=torch.float32)) * float(model_sampling.sigma_max)


def kl_optimal(model_sampling, steps: int) -> torch.Tensor:
    """Linear in arctan(sigma) between sigma_max and sigma_min (the KL-optimal schedule of AYS)."""
    lo, hi = math.atan(float(model_sampling.sigma_min)), math.atan(float(model_sampling.sigma_max))
    w = torch.linspace(0, 1, steps) if steps > 1 else torch.zeros(1)
    return _append_zero((w * lo + (1 - w) * hi).tan())


def polyexponential(model_sampling, steps: int, rho: float = 1.0) -> torch.Tensor:
    """Polynomial in log sigma (k-diffusion); rho = 1 is the exponential schedule."""
    lo, hi = math.log(float(model_sampling.sigma_min)), math.log(float(model_sampling.sigma_max))
    ramp = torch.linspace(1, 0, steps) ** rho
    return _append_zero((ramp * (hi - lo) + lo).exp())


def vp(model_sampling, steps: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> torch.Tensor:
    """Continuous variance-preserving schedule (Song et al. 2021); ignores the model's own range."""
    t = torch.linspace(1, eps_s, steps)
    return _append_zero(torch.special.expm1(beta_d * t ** 2 / 2 + beta_min * t).sqrt())


SCHEDULERS: dict[str, Scheduler] = {
    "simple": simple, "normal": normal, "sgm_uniform": sgm_uniform, "karras": karras, "exponential": exponential,
    "ddim_uniform": ddim_uniform, "beta": beta, "linear_quadratic": linear_quadratic, "kl_optimal": kl_optimal,
    "polyexponential": polyexponential, "vp": vp,
}


def compute_sigmas(model_sampling, scheduler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """Sigmas for ``steps`` steps; ``denoise`` < 1 keeps the last part of a longer schedule (img2img)."""
    steps = check_steps(steps)
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")
    if denoise >= 1.0:
        return SCHEDULERS[scheduler](model_sampling, steps)
    return SCHEDULERS[scheduler](model_sampling, int(steps / denoise))[-(steps + 1):]


# Align Your Steps lists (ays.py), appended after ComfyUI's names
from .ays import AYS_SCHEDULERS  # noqa: E402

SCHEDULERS.update(AYS_SCHEDULERS)
