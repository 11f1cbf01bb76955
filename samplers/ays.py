"""Align Your Steps (Sabour, Fidler, Kreis; ICML 2024): NVIDIA's published 10-step sigma lists, log-linearly
interpolated to other step counts.

What was verified, and where (2026-11):

* The tables below and the interpolation rule (log sigma linear over the normalised step index, then the last
  sigma set to 0): ComfyUI's ``comfy_extras/nodes_align_your_steps.py`` (/work/cf v0.3.64), whose header cites
  NVIDIA's how-to page (research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html). Checked value for value
  by tests/test_ays.py when COMFYUI_DIR is set.
* diffusers' ``AysSchedules`` holds the same lists rounded to 3 decimals; its SDXL list differs from NVIDIA's by up
  to 0.003 (e.g. 6.315 vs 6.3184), so the 10-digit values are used here.

The lists are VE sigmas of SD-style (EPS/V, k-diffusion convention) models; each starts at the model's sigma_max
(SD: 14.6146). On a rectified-flow model the scheduler maps every later value to the flow sigma with the same
noise-to-signal ratio, s = v / (1 + v), and starts at the model's own sigma_max (pure noise); that keeps the logSNR
spacing but is NOT an AYS-optimised schedule for the flow model (none is published; samplers/ays_optimize.py
fits one). ``ays_svd`` (sigma_max 700, EDM-style SVD) is offered like the others but is only meaningful for SVD;
its list is ComfyUI's, not checked against NVIDIA's page here (offline).
"""

from __future__ import annotations

import numpy as np
import torch

from .model_sampling import is_flow

# NVIDIA's 10-step lists (11 noise levels), as in ComfyUI's AlignYourStepsScheduler
NOISE_LEVELS: dict[str, list[float]] = {
    "SD1": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092, 0.9642583904,
            0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582],
    "SDXL": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141, 0.5550693289,
             0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582],
    "SVD": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
}


def loglinear_interp(values, count: int) -> np.ndarray:
    """``count`` values spaced like ``values`` (positive, decreasing): log-linear over the normalised index."""
    values = np.asarray(values, dtype=np.float64)
    if count < 1 or values.ndim != 1 or len(values) < 2 or not (values > 0).all():
        raise ValueError("loglinear_interp needs >= 2 positive values and count >= 1")
    if count == 1:
        return values[:1].copy()
    return np.exp(np.interp(np.linspace(0, 1, count), np.linspace(0, 1, len(values)), np.log(values)))


def ays_sigmas(model_type: str, steps: int) -> torch.Tensor:
    """``steps + 1`` sigmas (VE) ending in 0, as ComfyUI's AlignYourStepsScheduler with denoise = 1."""
    if model_type not in NOISE_LEVELS:
        raise ValueError(f"unknown AYS model type {model_type!r}; choose one of {', '.join(NOISE_LEVELS)}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps}")
    levels = NOISE_LEVELS[model_type]
    sigmas = np.array(levels) if steps + 1 == len(levels) else loglinear_interp(levels, steps + 1)
    sigmas[-1] = 0.0
    return torch.tensor(sigmas, dtype=torch.float32)


def _scheduler(model_type: str):
    def schedule(model_sampling, steps: int) -> torch.Tensor:
        sigmas = ays_sigmas(model_type, steps)
        if not is_flow(model_sampling):
            return sigmas
        flow = sigmas / (1 + sigmas)
        flow[0] = float(model_sampling.sigma_max)
        return flow

    schedule.__name__ = f"ays_{model_type.lower()}"
    schedule.__doc__ = f"Align Your Steps {model_type} list (flow: sigma_max, then equal noise-to-signal ratios)."
    return schedule


ays_sd1, ays_sdxl, ays_svd = (_scheduler(name) for name in ("SD1", "SDXL", "SVD"))
AYS_SCHEDULERS = {"ays_sd1": ays_sd1, "ays_sdxl": ays_sdxl, "ays_svd": ays_svd}  # ays_svd: for SVD (sigma 700)
