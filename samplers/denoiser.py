"""The denoiser protocol: ``denoised = model(x, sigma, **extra_args)`` returning x0, plus CFG."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial

import torch

Denoiser = Callable[..., torch.Tensor]
# ``wrapper(forward, x, timestep, context, options) -> output``; ``forward`` has the same signature minus itself.
# ``options`` holds "sigmas" (current), "sample_sigmas" (the run's schedule), "cond_or_uncond" (0 = positive,
# 1 = negative, one entry per batch chunk) and "run_state", a dict created fresh for every sampling run.
ModelWrapper = Callable[..., torch.Tensor]


def network_placement(module: torch.nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """Device and compute dtype of a network: the dtype holding most of its floating-point parameters.

    (Modules kept in float32 inside a half-precision model, like diffusers' ``_keep_in_fp32_modules``, do not
    make it a float32 model.) A network without floating-point parameters gives (None, None): inputs pass as they
    are.
    """
    counts: dict[torch.dtype, int] = {}
    device = None
    for p in module.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
            device = device or p.device
    if device is None:
        return None, None
    return device, max(counts, key=counts.get)


def to_network(value: object, device: torch.device, dtype: torch.dtype) -> object:
    """``value`` on the network's device: floating-point tensors also in its dtype, integer ones kept (labels);
    mappings and sequences entry by entry; anything else unchanged."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
    if isinstance(value, Mapping):
        return {k: to_network(v, device, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_network(v, device, dtype) for v in value)
    return value


@dataclass
class DiffusionModel:
    """A raw network (ComfyUI forward convention) with its model-sampling object: the app's MODEL value."""

    diffusion_model: torch.nn.Module
    model_sampling: object
    name: str = "model"
    wrappers: tuple[tuple[str, ModelWrapper], ...] = field(default=())
    size_factor: int | None = None  # latent sides must divide by this (DiT patch, UNet 2**downsamples); None: unknown
    fixed_size: tuple[int, ...] | None = None  # the only latent (H, W) the network takes (a fixed-size position table)
    onload: Callable[[], None] | None = None  # called before each network call (offloaded weights onto the device)

    def with_wrapper(self, key: str, wrapper: ModelWrapper) -> DiffusionModel:
        """A patched copy whose network call goes through ``wrapper`` (same key replaces); self is unchanged."""
        kept = tuple((k, w) for k, w in self.wrappers if k != key)
        return replace(self, wrappers=(*kept, (key, wrapper)))

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                options: dict | None = None) -> torch.Tensor:
        """The raw network call through every wrapper, outermost = first added.

        As in ComfyUI, ``x`` and floating-point context tensors are cast to the network's device and compute
        dtype before the first wrapper (so accelerators see what the network sees), the timestep stays float32
        on that device, and the output comes back as float32 on ``x``'s device.
        """
        if self.onload is not None:
            self.onload()

        def call(x_: torch.Tensor, t_: torch.Tensor, c_: torch.Tensor, _options: dict) -> torch.Tensor:
            return self.diffusion_model(x_, t_, context=c_)

        for _key, wrapper in reversed(self.wrappers):
            call = partial(wrapper, call)
        device, dtype = network_placement(self.diffusion_model)
        options = options if options is not None else {}
        if dtype is None:  # no parameters to take a placement from (analytic test models): as given
            return call(x, timestep, context, options)
        t_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        out = call(x.to(device=device, dtype=dtype), torch.as_tensor(timestep).to(device=device, dtype=t_dtype),
                   to_network(context, device, dtype), options)
        return (out.float() if dtype != torch.float64 else out).to(x.device)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                options: dict | None = None) -> torch.Tensor:
        ms = self.model_sampling
        options = {**(options or {}), "sigmas": sigma}
        out = self.forward(ms.calculate_input(sigma, x), ms.timestep(sigma), context, options)
        return ms.calculate_denoised(sigma, out.to(x.dtype), x)


def model_sampling_of(model: object) -> object:
    """The model-sampling object of our DiffusionModel or of a ComfyUI ModelPatcher."""
    if hasattr(model, "model_sampling"):
        return model.model_sampling
    if hasattr(model, "get_model_object"):
        return model.get_model_object("model_sampling")
    raise TypeError(f"{type(model).__name__} is not a diffusion model (no model_sampling)")


def conditioning_tensor(conditioning: list) -> torch.Tensor | Mapping[str, torch.Tensor]:
    """The (B, L, D) tensor of a single-entry ComfyUI-style CONDITIONING ``[[tensor, {...}]]``.

    The entry may also be a mapping of batch-first tensors, the context of a dict-context model (diffusers
    SD3/Flux through ``accel.diffusers_adapters.DiffusersDiT``: encoder_hidden_states, pooled_projections ...).
    """
    if not isinstance(conditioning, list) or not conditioning or not isinstance(conditioning[0][0],
                                                                                 (torch.Tensor, Mapping)):
        raise ValueError("conditioning must be a CONDITIONING list [[tensor, dict], ...]")
    if len(conditioning) != 1:
        raise ValueError("the built-in sampler takes one conditioning entry; combine prompts into one text")
    return conditioning[0][0]


def batch_context(context: torch.Tensor | Mapping, x: torch.Tensor) -> torch.Tensor | dict:
    """A tensor or mapping context on ``x``'s device (floating-point entries also in its dtype; integer ones,
    such as class labels, keep theirs), one-row entries repeated to ``x``'s batch."""
    if isinstance(context, Mapping):
        return {k: batch_context(v, x) for k, v in context.items()}
    t = context.to(device=x.device, dtype=x.dtype if context.is_floating_point() else context.dtype)
    t = t.reshape(1) if t.ndim == 0 else t
    return t.expand(x.shape[0], *t.shape[1:]) if t.shape[0] == 1 else t


def join_contexts(c: torch.Tensor | Mapping, u: torch.Tensor | Mapping) -> torch.Tensor | dict:
    """[positive; negative] contexts along the batch (per key for mappings)."""
    if isinstance(c, Mapping) or isinstance(u, Mapping):
        if not (isinstance(c, Mapping) and isinstance(u, Mapping)) or set(c) != set(u):
            raise ValueError("positive and negative conditioning have different keys")
        return {k: join_contexts(c[k], u[k]) for k in c}
    if c.shape[1:] != u.shape[1:]:
        raise ValueError("positive and negative conditioning have different lengths")
    return torch.cat([c, u])


def cfg_denoiser(model: DiffusionModel, positive: list, negative: list, cfg: float,
                 options: dict | None = None) -> Denoiser:
    """x0 with classifier-free guidance; both branches run in one batched call (positive first).

    Like ComfyUI's sampling_function, the returned denoiser takes ``model_options``: each
    ``model_options["sampler_post_cfg_function"]`` entry gets ComfyUI's args dict and returns the new denoised;
    at cfg 1 the uncond branch is skipped (its x0 passed as zeros, as ComfyUI does) unless
    ``model_options["disable_cfg1_optimization"]``.
    """
    cond, uncond = conditioning_tensor(positive), conditioning_tensor(negative)
    options = options or {}

    def denoise(x: torch.Tensor, sigma: torch.Tensor, model_options: dict | None = None, **_: object) -> torch.Tensor:
        model_options = model_options or {}
        c = batch_context(cond, x)
        if cfg == 1.0 and not model_options.get("disable_cfg1_optimization", False):
            pos = model.denoise(x, sigma, c, {**options, "cond_or_uncond": [0]})
            neg, out = torch.zeros_like(pos), pos
        else:
            both = model.denoise(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                 join_contexts(c, batch_context(uncond, x)), {**options, "cond_or_uncond": [0, 1]})
            pos, neg = both.chunk(2)
            out = neg + cfg * (pos - neg)
        for fn in model_options.get("sampler_post_cfg_function", []):
            out = fn({"denoised": out, "cond": positive, "uncond": negative, "cond_scale": cfg, "model": model,
                      "uncond_denoised": neg, "cond_denoised": pos, "sigma": sigma,
                      "model_options": model_options, "input": x})
        return out

    denoise.turbosample_model = model  # samplers that need the model's shape rules (Bottleneck) read it here
    return denoise
