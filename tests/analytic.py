"""Gaussian data with an exact denoiser and an exact probability-flow ODE solution (test oracle)."""

from __future__ import annotations

import torch


class GaussianFlow:
    """x0 ~ N(mean, std^2) per element; x_sigma = (1 - sigma) x0 + sigma noise."""

    def __init__(self, mean: float = 0.3, std: float = 0.5):
        self.mean, self.std = mean, std

    def marginal_std(self, sigma: torch.Tensor) -> torch.Tensor:
        return ((1 - sigma) ** 2 * self.std ** 2 + sigma ** 2).sqrt()

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        gain = (1 - s) * self.std ** 2 / self.marginal_std(s) ** 2
        return self.mean + gain * (x - (1 - s) * self.mean)

    def exact(self, x_start: torch.Tensor, sigma_start: float, sigma_end: float) -> torch.Tensor:
        """Solution of the probability-flow ODE from sigma_start to sigma_end (a linear map for Gaussians)."""
        s0, s1 = torch.tensor(sigma_start), torch.tensor(sigma_end)
        z = (x_start - (1 - s0) * self.mean) / self.marginal_std(s0)
        return (1 - s1) * self.mean + self.marginal_std(s1) * z


class GaussianVE:
    """x0 ~ N(mean, std^2) per element in the EPS/V (variance-exploding) view: x_sigma = x0 + sigma noise."""

    def __init__(self, mean: float = 0.3, std: float = 0.5):
        self.mean, self.std = mean, std

    def marginal_std(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma ** 2 + self.std ** 2) ** 0.5

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return self.mean + self.std ** 2 / (self.std ** 2 + s ** 2) * (x - self.mean)

    def exact(self, x_start: torch.Tensor, sigma_start: float, sigma_end: float) -> torch.Tensor:
        """Solution of the probability-flow ODE (x - mean scales with the marginal std)."""
        s0, s1 = torch.tensor(sigma_start), torch.tensor(sigma_end)
        return self.mean + (x_start - self.mean) * self.marginal_std(s1) / self.marginal_std(s0)
