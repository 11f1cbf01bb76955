"""One sampling run outside ComfyUI: noise, scaling, the sampler loop, progress and interruption."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import torch

from .denoiser import DiffusionModel, cfg_denoiser
from .noise import noisy_start, seeded_noise
from .registry import SamplerInfo
from .sampling_utils import MODEL_SAMPLING_KEY
from .validate import check_finite, check_sigmas


class Interrupted(RuntimeError):
    """Raised inside the sampler loop when the run was cancelled."""


def sample(model: DiffusionModel, positive: list, negative: list, latent: torch.Tensor, sampler: SamplerInfo,
           sigmas: torch.Tensor, seed: int, cfg: float, add_noise: bool = True,
           callback: Callable[[dict], None] | None = None, cancel: threading.Event | None = None) -> torch.Tensor:
    """Sample from ``latent`` along ``sigmas``; ``callback`` sees k-diffusion's step dict."""
    sigmas = check_sigmas(sigmas.float().cpu())
    check_finite(latent, "input latent")
    if not math.isfinite(cfg):
        raise ValueError(f"cfg must be a finite number, got {cfg}")
    ms = model.model_sampling
    device = next(model.diffusion_model.parameters()).device
    latent = latent.to(device=device, dtype=torch.float32)
    sigmas = sigmas.to(device)
    if add_noise:
        x = noisy_start(ms, sigmas[0], seeded_noise(seed, tuple(latent.shape), device=device), latent)
    else:
        x = latent

    def step_callback(info: dict) -> None:
        if cancel is not None and cancel.is_set():
            raise Interrupted("sampling was interrupted")
        if not torch.isfinite(info["denoised"]).all():
            raise FloatingPointError(f"the model produced NaN/inf at step {info['i'] + 1} "
                                     f"(sigma={float(info['sigma']):.4g})")
        if callback is not None:
            callback(info)

    options = {"sample_sigmas": sigmas, "run_state": {}}  # fresh per run: accelerator state never leaks
    extra_args = {"seed": int(seed), MODEL_SAMPLING_KEY: ms}  # stochastic samplers seed their Brownian noise
    out = sampler.fn(cfg_denoiser(model, positive, negative, cfg, options), x, sigmas, extra_args=extra_args,
                     callback=step_callback, disable=True, **sampler.options)
    check_finite(out, "sampler output")
    return ms.inverse_noise_scaling(sigmas[-1], out)
