"""Gradient-estimation sampler (Permenter & Yuan 2024, "Interpreting and Improving Diffusion Models from an
Optimization Perspective") and its CFG++ variant, in ComfyUI's sampler form.

Each step is Euler in sigma with the direction ``d_bar = gamma d_i + (1 - gamma) d_{i-1}`` (gamma = 2: the
previous direction extrapolated, an estimate of the gradient at the step's end); the first step is plain Euler, the
step onto sigma = 0 returns the x0 estimate. ``d = (x - x0) / sigma`` is dx/dsigma for EPS/V and flow models alike.
CFG++: ``x`` is first shifted by ``alpha_s (D_g - D_u)`` (see cfg_pp.py), so that the Euler step with the guided x0
re-noises with the unconditional noise estimate.
"""

from __future__ import annotations

import torch

from .cfg_pp import capture_uncond, cfg_pp_shift
from .sampling_utils import evaluate, is_flow, require_model_sampling, split_extra_args, step_callback


@torch.no_grad()
def sample_gradient_estimation(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                               callback=None, disable: bool | None = None, ge_gamma: float = 2.0,
                               cfg_pp: bool = False) -> torch.Tensor:
    """Euler with the gradient-estimation direction ``d + (gamma - 1)(d - d_prev)``; one call per step."""
    name = "gradient_estimation_cfg_pp" if cfg_pp else "gradient_estimation"
    if cfg_pp:
        ms, args = require_model_sampling(model, extra_args, name)
        flow = is_flow(ms)
        args, uncond = capture_uncond(args, name)
    else:
        _, args = split_extra_args(model, extra_args)
    previous = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = evaluate(model, x, sigma, args)
        shifted = cfg_pp_shift(x, denoised, uncond(), sigma, flow) if cfg_pp else x
        d = (shifted - denoised) / sigma
        step_callback(callback, x, i, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        dt = sigma_next - sigma
        x = shifted + d * dt
        if previous is not None:
            x = x + (ge_gamma - 1) * (d - previous) * dt
        previous = d
    return x


@torch.no_grad()
def sample_gradient_estimation_cfg_pp(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                                      callback=None, disable: bool | None = None,
                                      ge_gamma: float = 2.0) -> torch.Tensor:
    """Gradient estimation with CFG++."""
    return sample_gradient_estimation(model, x, sigmas, extra_args, callback, disable, ge_gamma, cfg_pp=True)
