"""CFG++ samplers (Chung et al. 2024, arXiv 2406.08070) and RES multistep with ancestral noise.

CFG++ takes the data part of each step from the guided x0 estimate ``D_g = D_u + cfg (D_c - D_u)`` but re-noises
with the *unconditional* noise estimate ``eps_u = (x - alpha_s D_u) / sigma_s``: the DDIM step becomes
``x_t = alpha_t D_g + sigma_t eps_u``. ComfyUI's cfg is the paper's lambda, so the useful range is about 0-2 rather
than CFG's 4-10. Every sampler here writes that as "shift, then the plain step": ``x + alpha_s (D_g - D_u)`` stepped
with ``D_g``; alpha_s = 1 for EPS/V, 1 - sigma for flow (the alpha_s that ComfyUI's euler_cfg_pp has and its other
``_cfg_pp`` samplers lack). The step ``(s'/s) x + (1 - s'/s) x0`` used throughout is the exact constant-x0 step in
-log(sigma) for both families.

The sampler gets ``D_u`` through ComfyUI's post-CFG hook: it appends a function to
``extra_args["model_options"]["sampler_post_cfg_function"]`` with ``disable_cfg1_optimization`` (so the uncond
branch also runs at cfg 1); ComfyUI's CFG guider and denoiser.cfg_denoiser both call it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .noise_sources import NoiseSampler, noise_sampler_for
from .sampling_utils import (
    ancestral_split,
    evaluate,
    half_log_snr,
    is_flow,
    require_model_sampling,
    sigma_of_half_log_snr,
    signal_scale,
    split_extra_args,
    step_callback,
)

PostCfgFunction = Callable[[dict], torch.Tensor]


def set_model_options_post_cfg_function(model_options: dict, post_cfg_function: PostCfgFunction,
                                        disable_cfg1_optimization: bool = False) -> dict:
    """Append a post-CFG hook to ``model_options`` (ComfyUI's semantics: a new list, the dict updated, returned)."""
    model_options["sampler_post_cfg_function"] = [*model_options.get("sampler_post_cfg_function", []),
                                                  post_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


def capture_uncond(call_args: dict, sampler: str) -> tuple[dict, Callable[[], torch.Tensor]]:
    """(call_args whose model_options record each call's uncond x0, a getter for the latest one).

    The getter raises if the model did not run the hook since the last read (not a CFG denoiser).
    """
    store: dict[str, torch.Tensor] = {}

    def hook(args: dict) -> torch.Tensor:
        store["uncond"] = args["uncond_denoised"]
        return args["denoised"]

    out = dict(call_args)
    options = dict(out.get("model_options") or {})
    out["model_options"] = set_model_options_post_cfg_function(options, hook, disable_cfg1_optimization=True)

    def latest() -> torch.Tensor:
        if "uncond" not in store:
            raise ValueError(f"sampler {sampler!r} needs a CFG denoiser that calls "
                             "model_options['sampler_post_cfg_function'] (ComfyUI's CFG guider or turbosample's "
                             "cfg_denoiser); this model did not")
        return store.pop("uncond")

    return out, latest


def exp_step(x: torch.Tensor, x0: torch.Tensor, sigma, sigma_to) -> torch.Tensor:
    """The exact step from sigma to sigma_to for a constant x0, EPS/V and flow alike."""
    ratio = sigma_to / sigma
    return ratio * x + (1 - ratio) * x0


def cfg_pp_shift(x: torch.Tensor, guided: torch.Tensor, uncond: torch.Tensor, sigma, flow: bool) -> torch.Tensor:
    """x moved so that a plain step with the guided x0 re-noises with the unconditional noise estimate."""
    return x + signal_scale(sigma, flow) * (guided - uncond)


def _ve_ancestral(sigma, sigma_next, eta: float, flow: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) of an ancestral step in the VE-equivalent level sigma / alpha (finite at flow's sigma = 1)."""
    alpha, alpha_next = signal_scale(sigma, flow), signal_scale(sigma_next, flow)
    level_next = sigma_next / alpha_next
    if not eta:
        return level_next, torch.zeros_like(level_next)
    ratio = sigma_next * alpha / (alpha_next * sigma)  # level_next / level, 0 where alpha = 0
    up = torch.minimum(level_next, eta * level_next * (1 - ratio ** 2).clamp(min=0) ** 0.5)
    return (level_next ** 2 - up ** 2).clamp(min=0) ** 0.5, up


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                                  callback=None, disable: bool | None = None, eta: float = 1.0, s_noise: float = 1.0,
                                  noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Euler CFG++ with ancestral noise: ``alpha_t (D_g + down eps_u + up z)`` in the VE-equivalent level."""
    ms, args = require_model_sampling(model, extra_args, "euler_ancestral_cfg_pp")
    flow = is_flow(ms)
    args, uncond = capture_uncond(args, "euler_ancestral_cfg_pp")
    noise = noise_sampler_for(x, extra_args, noise_sampler) if eta > 0 and s_noise > 0 else None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = evaluate(model, x, sigma, args)
        denoised_u = uncond()
        step_callback(callback, x, i, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        alpha_next = signal_scale(sigma_next, flow)
        eps_u = (x - signal_scale(sigma, flow) * denoised_u) / sigma
        down, up = _ve_ancestral(sigma, sigma_next, eta, flow)
        x = alpha_next * (denoised + down * eps_u)
        if noise is not None:
            x = x + alpha_next * noise(sigma, sigma_next) * s_noise * up
    return x


@torch.no_grad()
def sample_euler_cfg_pp(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                        disable: bool | None = None) -> torch.Tensor:
    """Euler / DDIM CFG++: ``x_t = alpha_t D_g + sigma_t eps_u``."""
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args, callback, disable, eta=0.0, s_noise=0.0)


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                           callback=None, disable: bool | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) CFG++ (ComfyUI's form): the 2M correction is (D_g - previous D_u) / 2r."""
    ms, args = require_model_sampling(model, extra_args, "dpmpp_2m_cfg_pp")
    flow = is_flow(ms)
    args, uncond = capture_uncond(args, "dpmpp_2m_cfg_pp")
    previous = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = evaluate(model, x, sigma, args)
        denoised_u = uncond()
        step_callback(callback, x, i, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        x = exp_step(cfg_pp_shift(x, denoised, denoised_u, sigma, flow), denoised, sigma, sigma_next)
        if previous is not None:
            h = sigma.log() - sigma_next.log()
            r = (sigmas[i - 1].log() - sigma.log()) / h
            x = x - torch.expm1(-h) / (2 * r) * (denoised - previous)
        previous = denoised_u
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                                     callback=None, disable: bool | None = None, eta: float = 1.0,
                                     s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """DPM-Solver++(2S) CFG++ with ancestral noise; each stage shifts by its own evaluation's (D_g - D_u).

    (ComfyUI's version pairs the first call's D_g with the midpoint's D_u, so at cfg 0 it is not dpmpp_2s_ancestral
    on the uncond model; this one is.) Midpoint and noise as in stochastic.sample_dpmpp_2s_ancestral.
    """
    ms, args = require_model_sampling(model, extra_args, "dpmpp_2s_ancestral_cfg_pp")
    flow = is_flow(ms)
    args, uncond = capture_uncond(args, "dpmpp_2s_ancestral_cfg_pp")
    noise = noise_sampler_for(x, extra_args, noise_sampler) if eta > 0 and s_noise > 0 else None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = evaluate(model, x, sigma, args)
        denoised_u = uncond()
        step_callback(callback, x, i, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        sigma_down, rescale, renoise = ancestral_split(sigma, sigma_next, eta, flow)
        if sigma_down == 0:
            x = denoised
        else:
            if flow and sigma == 1.0:
                sigma_mid = torch.as_tensor(0.9999, dtype=sigma.dtype, device=sigma.device)
            else:
                lam = (half_log_snr(sigma, flow) + half_log_snr(sigma_down, flow)) / 2
                sigma_mid = sigma_of_half_log_snr(lam, flow)
            x_mid = exp_step(cfg_pp_shift(x, denoised, denoised_u, sigma, flow), denoised, sigma, sigma_mid)
            denoised_mid = evaluate(model, x_mid, sigma_mid, args)
            x = exp_step(cfg_pp_shift(x, denoised_mid, uncond(), sigma, flow), denoised_mid, sigma, sigma_down)
        if noise is not None:
            x = rescale * x + noise(sigma, sigma_next) * s_noise * renoise
    return x


def res_multistep_family(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None, callback,
                         eta: float, s_noise: float, noise_sampler: NoiseSampler | None, cfg_pp: bool,
                         name: str) -> torch.Tensor:
    """RES second-order multistep (arXiv 2308.02157) with optional ancestral noise and CFG++, as ComfyUI's.

    ComfyUI's conventions kept: the earlier node sits at the previous step's (sigma, sigma_down) distance, and the
    CFG++ second-order step weighs D_u (not D_g) in its data term, after the shift.
    """
    ms, args = require_model_sampling(model, extra_args, name) if (cfg_pp or eta > 0) \
        else split_extra_args(model, extra_args)
    flow = is_flow(ms) if ms is not None else False
    uncond = None
    if cfg_pp:
        args, uncond = capture_uncond(args, name)
    noise = noise_sampler_for(x, extra_args, noise_sampler) if eta > 0 and s_noise > 0 else None
    old, old_down = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = evaluate(model, x, sigma, args)
        denoised_u = uncond() if uncond is not None else denoised
        step_callback(callback, x, i, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        sigma_down, rescale, renoise = ancestral_split(sigma, sigma_next, eta, flow)
        shifted = cfg_pp_shift(x, denoised, denoised_u, sigma, flow) if cfg_pp else x
        h = sigma.log() - sigma_down.log() if sigma_down > 0 else None
        c2 = (old_down.log() - sigmas[i - 1].log()) / h if old is not None and h is not None and h != 0 else None
        if c2 is None or c2 == 0:
            x = exp_step(shifted, denoised, sigma, sigma_down)
        else:
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1) / -h
            b1, b2 = phi1 - phi2 / c2, phi2 / c2
            x = (-h).exp() * shifted + h * (b1 * denoised_u + b2 * old)
        if noise is not None:
            x = rescale * x + noise(sigma, sigma_next) * s_noise * renoise
        old, old_down = denoised_u, sigma_down
    return x


@torch.no_grad()
def sample_res_multistep_cfg_pp(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                                callback=None, disable: bool | None = None) -> torch.Tensor:
    """RES multistep CFG++ (deterministic)."""
    return res_multistep_family(model, x, sigmas, extra_args, callback, 0.0, 0.0, None, True, "res_multistep_cfg_pp")


@torch.no_grad()
def sample_res_multistep_ancestral(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                                   callback=None, disable: bool | None = None, eta: float = 1.0, s_noise: float = 1.0,
                                   noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """RES multistep down to sigma_down, then ancestral noise (rectified-flow noise on flow models)."""
    return res_multistep_family(model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler, False,
                                "res_multistep_ancestral")


@torch.no_grad()
def sample_res_multistep_ancestral_cfg_pp(model, x: torch.Tensor, sigmas: torch.Tensor,
                                          extra_args: dict | None = None, callback=None,
                                          disable: bool | None = None, eta: float = 1.0, s_noise: float = 1.0,
                                          noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """RES multistep CFG++ with ancestral noise."""
    return res_multistep_family(model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler, True,
                                "res_multistep_ancestral_cfg_pp")
