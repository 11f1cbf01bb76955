"""Model-sampling objects in ComfyUI's conventions: sigma <-> timestep, input/denoised scaling, noise scaling.

``DiscreteSampling`` is ComfyUI's EPS / V_PREDICTION + ModelSamplingDiscrete (SD1.x/SDXL); ``FlowSampling``
is CONST + ModelSamplingDiscreteFlow (SD3, Wan and the built-in model): ``x_t = sigma noise + (1 - sigma) x0``,
model output = velocity ``noise - x0``, ``timestep = sigma * multiplier``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

PREDICTIONS = ("eps", "v_prediction", "flow")


def time_snr_shift(shift: float, t: torch.Tensor | float):
    """SD3's constant flow shift: sigma = shift t / (1 + (shift - 1) t)."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def _bcast(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    return sigma.reshape(sigma.shape[:1] + (1,) * (like.ndim - 1)) if sigma.ndim else sigma


@dataclass
class DiscreteSampling:
    """EPS or V prediction on a 1000-step discrete DDPM schedule (SD's scaled-linear betas by default)."""

    prediction: str = "eps"
    linear_start: float = 0.00085
    linear_end: float = 0.012
    timesteps: int = 1000
    sigma_data: float = 1.0
    sigmas: torch.Tensor = field(init=False)
    log_sigmas: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        if self.prediction not in ("eps", "v_prediction"):
            raise ValueError(f"DiscreteSampling takes prediction 'eps' or 'v_prediction', not {self.prediction!r}")
        betas = torch.linspace(self.linear_start ** 0.5, self.linear_end ** 0.5, self.timesteps,
                               dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        dists = sigma.float().log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float32).clamp(0, len(self.sigmas) - 1)
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x / (_bcast(sigma, x) ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = _bcast(sigma, x)
        if self.prediction == "eps":
            return x - model_output * s
        sd2 = self.sigma_data ** 2
        return x * sd2 / (s ** 2 + sd2) - model_output * s * self.sigma_data / (s ** 2 + sd2) ** 0.5

    def noise_scaling(self, sigma, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool = False):
        s = _bcast(sigma, noise)
        return noise * (torch.sqrt(1.0 + s ** 2) if max_denoise else s) + latent

    def inverse_noise_scaling(self, sigma, latent: torch.Tensor) -> torch.Tensor:
        return latent


@dataclass
class FlowSampling:
    """Rectified flow (CONST): velocity output, optional constant shift, timestep = sigma * multiplier."""

    shift: float = 1.0
    multiplier: float = 1000.0
    timesteps: int = 1000
    prediction: str = "flow"
    sigmas: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        if not self.shift > 0:
            raise ValueError(f"flow shift must be > 0, got {self.shift}")
        self.sigmas = self.sigma(torch.arange(1, self.timesteps + 1, dtype=torch.float32))

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * self.multiplier

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return time_snr_shift(self.shift, torch.as_tensor(timestep, dtype=torch.float32) / self.multiplier)

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of the way through sampling (ComfyUI's ModelSamplingDiscreteFlow)."""
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(time_snr_shift(self.shift, 1.0 - percent))

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x - model_output * _bcast(sigma, x)

    def noise_scaling(self, sigma, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool = False):
        s = _bcast(sigma, noise)
        return s * noise + (1.0 - s) * latent

    def inverse_noise_scaling(self, sigma, latent: torch.Tensor) -> torch.Tensor:
        return latent / (1.0 - _bcast(sigma, latent))


def is_flow(model_sampling: object) -> bool:
    """True for rectified-flow sampling objects, ours or ComfyUI's (CONST)."""
    if getattr(model_sampling, "prediction", None) == "flow":
        return True
    return any(cls.__name__ == "CONST" for cls in type(model_sampling).__mro__)
