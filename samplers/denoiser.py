"""The denoiser protocol: ``denoised = model(x, sigma, **extra_args)`` returning x0, plus CFG."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Denoiser = Callable[..., torch.Tensor]


@dataclass
class DiffusionModel:
    """A raw network (ComfyUI forward convention) with its model-sampling object: the app's MODEL value."""

    diffusion_model: torch.nn.Module
    model_sampling: object
    name: str = "model"

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        ms = self.model_sampling
        out = self.diffusion_model(ms.calculate_input(sigma, x), ms.timestep(sigma), context=context)
        return ms.calculate_denoised(sigma, out.to(x.dtype), x)


def model_sampling_of(model: object) -> object:
    """The model-sampling object of our DiffusionModel or of a ComfyUI ModelPatcher."""
    if hasattr(model, "model_sampling"):
        return model.model_sampling
    if hasattr(model, "get_model_object"):
        return model.get_model_object("model_sampling")
    raise TypeError(f"{type(model).__name__} is not a diffusion model (no model_sampling)")


def conditioning_tensor(conditioning: list) -> torch.Tensor:
    """The (B, L, D) tensor of a single-entry ComfyUI-style CONDITIONING ``[[tensor, {...}]]``."""
    if not isinstance(conditioning, list) or not conditioning or not isinstance(conditioning[0][0], torch.Tensor):
        raise ValueError("conditioning must be a CONDITIONING list [[tensor, dict], ...]")
    if len(conditioning) != 1:
        raise ValueError("the built-in sampler takes one conditioning entry; combine prompts into one text")
    return conditioning[0][0]


def cfg_denoiser(model: DiffusionModel, positive: list, negative: list, cfg: float) -> Denoiser:
    """x0 with classifier-free guidance; both branches run in one batched call."""
    cond, uncond = conditioning_tensor(positive), conditioning_tensor(negative)

    def denoise(x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        b = x.shape[0]
        c = cond.to(x).expand(b, -1, -1) if cond.shape[0] == 1 else cond.to(x)
        if cfg == 1.0:
            return model.denoise(x, sigma, c)
        u = uncond.to(x).expand(b, -1, -1) if uncond.shape[0] == 1 else uncond.to(x)
        if u.shape[1] != c.shape[1]:
            raise ValueError("positive and negative conditioning have different lengths")
        both = model.denoise(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([c, u]))
        pos, neg = both.chunk(2)
        return neg + cfg * (pos - neg)

    return denoise
