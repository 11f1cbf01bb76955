"""Seeded Gaussian noise that is identical on every device: drawn on the CPU, then moved."""

from __future__ import annotations

import torch


def seeded_noise(seed: int, shape: tuple[int, ...], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Same draws as ComfyUI's ``prepare_noise`` for a whole batch: one CPU generator seeded with ``seed``."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


def noisy_start(model_sampling, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor | None = None
                ) -> torch.Tensor:
    """``latent`` (zeros if None) noised to ``sigma`` the way ComfyUI does (pure noise scaling at sigma_max)."""
    latent = torch.zeros_like(noise) if latent is None else latent
    max_denoise = float(sigma) >= float(model_sampling.sigma_max) * (1 - 1e-5)
    return model_sampling.noise_scaling(sigma, noise, latent, max_denoise)
