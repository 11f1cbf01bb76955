"""Seeded Gaussian noise that is identical on every device: drawn on the CPU, then moved."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def seeded_noise(seed: int, shape: tuple[int, ...], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Same draws as ComfyUI's ``prepare_noise`` for a whole batch: one CPU generator seeded with ``seed``."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


Seed = int | Sequence[int]  # one seed for the batch, or one per image


def check_seeds(seed: Seed, batch: int) -> int | tuple[int, ...]:
    """An int seed, or a tuple of one integer seed per image of a ``batch``; ValueError otherwise."""
    if isinstance(seed, bool):
        raise ValueError(f"seed must be an integer or a list of integers, got {seed!r}")
    if isinstance(seed, int):
        return seed
    if isinstance(seed, torch.Tensor) and seed.ndim == 0:
        return int(seed)
    seeds = tuple(seed) if isinstance(seed, Sequence | torch.Tensor) else None
    if seeds is None or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seed must be an integer or a list of integers, got {seed!r}")
    if len(seeds) != batch:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {batch} images: give one seed per image (or one int)")
    return seeds


def batch_noise(seed: Seed, shape: tuple[int, ...], device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``seeded_noise`` for an int seed; for a list, image i gets ``seeded_noise(seed[i])`` of its own shape, so an
    image of a batch is reproduced alone by its seed."""
    seed = check_seeds(seed, shape[0])
    if isinstance(seed, int):
        return seeded_noise(seed, shape, device, dtype)
    return torch.cat([seeded_noise(s, (1, *shape[1:]), device, dtype) for s in seed])


def noisy_start(model_sampling, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor | None = None
                ) -> torch.Tensor:
    """``latent`` (zeros if None) noised to ``sigma`` the way ComfyUI does (pure noise scaling at sigma_max)."""
    latent = torch.zeros_like(noise) if latent is None else latent
    max_denoise = float(sigma) >= float(model_sampling.sigma_max) * (1 - 1e-5)
    return model_sampling.noise_scaling(sigma, noise, latent, max_denoise)
