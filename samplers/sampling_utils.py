"""Shared pieces of the sampler functions: model-sampling lookup, half-logSNR maps, model calls, callbacks."""

from __future__ import annotations

import torch

from .model_sampling import is_flow

MODEL_SAMPLING_KEY = "model_sampling"


def split_extra_args(model, extra_args: dict | None) -> tuple[object | None, dict]:
    """(model_sampling or None, the extra_args to pass to the model).

    Looked up in ``extra_args["model_sampling"]`` (this package's run loop), then on ``model.model_sampling``,
    then where ComfyUI's KSAMPLER denoiser keeps it (``model.inner_model.model_patcher`` /
    ``model.inner_model.inner_model``).
    """
    call_args = dict(extra_args or {})
    ms = call_args.pop(MODEL_SAMPLING_KEY, None)
    if ms is None:
        ms = getattr(model, "model_sampling", None)
    inner = getattr(model, "inner_model", None)
    if ms is None and getattr(inner, "model_patcher", None) is not None:
        ms = inner.model_patcher.get_model_object("model_sampling")
    if ms is None and getattr(inner, "inner_model", None) is not None:
        ms = getattr(inner.inner_model, "model_sampling", None)
    return ms, call_args


def unwrap_for_base(model, extra_args: dict | None) -> tuple[object, dict]:
    """For samplers that wrap the model before calling a base sampler.

    Returns (a model that drops the model_sampling key before calling ``model``, extra_args carrying the
    model's model_sampling), so a stochastic base still finds it when the wrapper hides ComfyUI's inner_model.
    """
    ms, call_args = split_extra_args(model, extra_args)
    if ms is not None:
        call_args[MODEL_SAMPLING_KEY] = ms

    def call(x: torch.Tensor, sigma: torch.Tensor, **extra: object) -> torch.Tensor:
        extra.pop(MODEL_SAMPLING_KEY, None)
        return model(x, sigma, **extra)

    return call, call_args


def require_model_sampling(model, extra_args: dict | None, sampler: str) -> tuple[object, dict]:
    ms, call_args = split_extra_args(model, extra_args)
    if ms is None:
        raise ValueError(f"sampler {sampler!r} needs the model's model_sampling to tell flow from EPS/V models; "
                         f"pass extra_args['{MODEL_SAMPLING_KEY}']")
    return ms, call_args


def evaluate(model, x: torch.Tensor, sigma: torch.Tensor, call_args: dict | None) -> torch.Tensor:
    """One model call at a scalar sigma, broadcast over the batch."""
    return model(x, sigma * x.new_ones([x.shape[0]]), **(call_args or {}))


def step_callback(callback, x: torch.Tensor, i: int, sigma, denoised: torch.Tensor) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


def half_log_snr(sigma: torch.Tensor, flow: bool) -> torch.Tensor:
    """lambda = log(alpha / sigma): -log(sigma) for EPS/V (alpha = 1), log((1 - sigma) / sigma) for flow."""
    return sigma.logit().neg() if flow else sigma.log().neg()


def sigma_of_half_log_snr(lam: torch.Tensor, flow: bool) -> torch.Tensor:
    return lam.neg().sigmoid() if flow else lam.neg().exp()


def signal_scale(sigma: torch.Tensor, flow: bool) -> torch.Tensor:
    """alpha(sigma): the data coefficient of x_sigma = alpha x0 + sigma noise."""
    return 1 - sigma if flow else torch.ones_like(sigma)


def offset_first_sigma(sigmas: torch.Tensor, ms: object, flow: bool, percent: float = 1e-4) -> torch.Tensor:
    """Flow models: move a first sigma of 1 (infinite -logSNR) to ``percent`` of the way, as ComfyUI does."""
    if flow and len(sigmas) > 1 and sigmas[0] >= 1:
        sigmas = sigmas.clone()
        sigmas[0] = ms.percent_to_sigma(percent)
    return sigmas


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_down, sigma_up) of an ancestral step for EPS/V models (k-diffusion's rule)."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    up = eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5
    sigma_up = torch.minimum(sigma_to, up)
    return (sigma_to ** 2 - sigma_up ** 2) ** 0.5, sigma_up


def ancestral_step_rf(sigma_from: torch.Tensor, sigma_to: torch.Tensor,
                      eta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flow models: (sigma_down, rescale, renoise) so that rescale * x(sigma_down) + renoise * z is at sigma_to."""
    sigma_down = sigma_to * (1 + (sigma_to / sigma_from - 1) * eta)
    rescale = (1 - sigma_to) / (1 - sigma_down)
    renoise = (sigma_to ** 2 - sigma_down ** 2 * rescale ** 2).clamp(min=0) ** 0.5
    return sigma_down, rescale, renoise


def ancestral_split(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float, flow: bool
                    ) -> tuple[torch.Tensor, torch.Tensor | float, torch.Tensor]:
    """(sigma_down, rescale, renoise) for either family: step deterministically to sigma_down, then
    ``rescale * x + renoise * z`` lands on sigma_to (EPS/V: rescale 1, renoise = sigma_up)."""
    if flow:
        return ancestral_step_rf(sigma_from, sigma_to, eta)
    sigma_down, sigma_up = ancestral_step(sigma_from, sigma_to, eta)
    return sigma_down, 1.0, sigma_up


__all__ = ["is_flow", "split_extra_args", "require_model_sampling", "evaluate", "step_callback", "half_log_snr",
           "sigma_of_half_log_snr", "signal_scale", "offset_first_sigma", "ancestral_step", "ancestral_step_rf",
           "ancestral_split"]
