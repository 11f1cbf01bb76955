"""Checks that turn bad sampler input into clear errors."""

from __future__ import annotations

import torch


def check_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """A non-empty, finite, non-increasing 1-D schedule, or ValueError saying what is wrong."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1:
        raise ValueError("sigmas must be a 1-D tensor")
    if sigmas.numel() < 2:
        raise ValueError(f"sigmas must hold at least 2 values (1 step), got {sigmas.numel()}")
    if not torch.isfinite(sigmas).all():
        raise ValueError("sigmas contain NaN or infinite values")
    if (sigmas < 0).any():
        raise ValueError("sigmas must be >= 0")
    if (sigmas[1:] > sigmas[:-1]).any():
        i = int(torch.nonzero(sigmas[1:] > sigmas[:-1])[0])
        raise ValueError(f"sigmas must not increase: sigma[{i + 1}]={float(sigmas[i + 1]):.4g} > "
                         f"sigma[{i}]={float(sigmas[i]):.4g}")
    return sigmas


def check_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{what} contains {bad} NaN or infinite values")
    return x


def check_steps(steps: int) -> int:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps}")
    return int(steps)
