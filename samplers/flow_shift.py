"""One flow-shift control for any schedule shape: constant (SD3) or resolution-dependent (Flux) time shift.

The warps, t in [0, 1] -> sigma:

* constant (SD3, ComfyUI ModelSamplingSD3, diffusers ``shift``): sigma = shift t / (1 + (shift - 1) t)
* resolution-dependent (Flux, ComfyUI ModelSamplingFlux, diffusers ``use_dynamic_shifting``):
  mu = base_shift + (max_shift - base_shift) (tokens - 256) / (4096 - 256), sigma = e^mu / (e^mu + (1 / t - 1))
  (the exponential time shift with power 1); the defaults 0.5 / 1.15 / 256 / 4096 are Flux's.

``shifted_schedule`` puts the warp where ComfyUI puts it, in the model sampling (``ShiftedFlowSampling``), and runs
any scheduler of schedulers.py on it, so shape and shift combine exactly as a ComfyUI ModelSampling node followed by
a scheduler does (constant shift: identical to ``FlowSampling(shift)``). ``apply_flow_shift`` warps a given sigma
list instead.

What was verified, and where (2026-11):

* ComfyUI (/work/cf v0.3.64): ``shifted_schedule`` equals ``comfy.samplers.calculate_sigmas`` on ModelSamplingSD3
  (shift 3) and ModelSamplingFlux (shift = mu for 256/1024/4096 tokens) for simple, normal, sgm_uniform, karras,
  exponential, beta, kl_optimal, linear_quadratic and ddim_uniform at 4/10/28 steps, to <= 1.2e-7
  (tests/comfy_gap_oracle.py, run by tests/test_ays.py when COMFYUI_DIR and COMFYUI_PYTHON are set). Like
  ModelSamplingFlux, the resolution-dependent sampling uses a 10000-entry table (timestep = 10000 t).
* diffusers 0.42.1 (installed): ``calculate_shift`` of ``pipelines/flux/pipeline_flux.py`` equals ``resolution_mu``.
  ``FlowMatchEulerDiscreteScheduler.set_timesteps`` spaces linearly between 1 and its sigma_min, then warps. With a
  constant shift its sigma_min is the *shifted* 1/1000 (set in ``__init__``), as in ComfyUI, so
  ``shifted_schedule("normal", n, shift=s)`` equals diffusers (tested). With ``use_dynamic_shifting`` its sigma_min
  is the unshifted 1/1000, i.e. diffusers = ``apply_flow_shift(linspace(1, 1/1000, n), mu=mu)`` (tested exactly);
  ComfyUI's Flux sampling (and ``shifted_schedule``) spaces down to the shifted 1/10000 instead, so the two differ
  near the end of the schedule (< 1e-2 in sigma at 20 steps, largest at the last non-zero sigma; tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .model_sampling import FlowSampling, time_snr_shift
from .schedulers import compute_sigmas

FLUX_SHIFT = {"base_shift": 0.5, "max_shift": 1.15, "base_seq_len": 256, "max_seq_len": 4096}


def resolution_mu(image_seq_len: int, base_shift: float = 0.5, max_shift: float = 1.15, base_seq_len: int = 256,
                  max_seq_len: int = 4096) -> float:
    """Flux's mu: linear in the number of image tokens through (base_seq_len, base_shift), (max_seq_len, max_shift)."""
    if not image_seq_len > 0 or max_seq_len == base_seq_len:
        raise ValueError(f"need image_seq_len > 0 and max_seq_len != base_seq_len, got {image_seq_len}, "
                         f"{base_seq_len}, {max_seq_len}")
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return base_shift + slope * (image_seq_len - base_seq_len)


def image_tokens(height: int, width: int, patch: int) -> int:
    """Transformer tokens of an image: (height / patch) (width / patch) in latent pixels (Flux: patch 2 latents)."""
    return (int(height) // int(patch)) * (int(width) // int(patch))


def exponential_time_shift(mu: float, t: torch.Tensor) -> torch.Tensor:
    """e^mu / (e^mu + (1 / t - 1)); t = 0 stays 0 and t = 1 stays 1."""
    t = torch.as_tensor(t, dtype=torch.float64)
    safe = t.clamp(min=1e-300)
    return torch.where(t > 0, math.exp(mu) / (math.exp(mu) + (1 / safe - 1)), torch.zeros_like(t))


def apply_flow_shift(sigmas: torch.Tensor, shift: float | None = None, mu: float | None = None) -> torch.Tensor:
    """Warp flow sigmas in [0, 1] by a constant ``shift`` or the exponential shift of ``mu`` (exactly one)."""
    if (shift is None) == (mu is None):
        raise ValueError("give exactly one of shift (constant, SD3) and mu (resolution-dependent, Flux)")
    if (sigmas < 0).any() or (sigmas > 1).any():
        raise ValueError("flow shift needs sigmas in [0, 1] (a rectified-flow schedule)")
    if shift is not None:
        if not (math.isfinite(shift) and shift > 0):
            raise ValueError(f"flow shift must be a finite number > 0, got {shift}")
        return time_snr_shift(float(shift), sigmas.double()).to(sigmas.dtype)
    if not math.isfinite(mu):
        raise ValueError(f"mu must be finite, got {mu}")
    return exponential_time_shift(float(mu), sigmas).to(sigmas.dtype)


@dataclass
class ShiftedFlowSampling(FlowSampling):
    """Rectified-flow model sampling whose sigma(t) is the constant shift, or the exponential shift of ``mu``."""

    mu: float | None = None

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float32) / self.multiplier
        if self.mu is None:
            return time_snr_shift(self.shift, t)
        return exponential_time_shift(self.mu, t).float()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * self.multiplier)))


def shifted_schedule(scheduler: str, steps: int, shift: float | None = None, image_seq_len: int | None = None,
                     denoise: float = 1.0, base_shift: float = 0.5, max_shift: float = 1.15, base_seq_len: int = 256,
                     max_seq_len: int = 4096) -> torch.Tensor:
    """``scheduler``'s sigmas on a rectified-flow model shifted by ``shift`` or by Flux's rule for ``image_seq_len``.

    With neither given the model is unshifted (shift 1).
    """
    if shift is not None and image_seq_len is not None:
        raise ValueError("give either a constant shift or image_seq_len (resolution-dependent shift), not both")
    if image_seq_len is not None:
        mu = resolution_mu(image_seq_len, base_shift, max_shift, base_seq_len, max_seq_len)
        flux = ShiftedFlowSampling(mu=mu, timesteps=10000, multiplier=10000.0)  # ComfyUI's Flux table size
        return compute_sigmas(flux, scheduler, steps, denoise)
    shift = 1.0 if shift is None else float(shift)
    if not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"flow shift must be a finite number > 0, got {shift}")
    return compute_sigmas(ShiftedFlowSampling(shift=shift), scheduler, steps, denoise)
