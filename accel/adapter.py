"""Which adapter gives a model's ``TransformerParts`` (``accel.parts``): the built-in DiT here, diffusers SD3 / Flux /
Wan in ``accel.diffusers_adapters``; ``transformer_parts(model)`` looks a model's class up in ``ADAPTERS``.

Public API for your own DiT (README, "Your own DiT"): describe it as ``TransformerParts`` in a function, register
that function for its class with ``register_adapter``, and build its ``DiffusionModel`` with ``diffusion_model``
(which tells the samplers its patch size and a fixed token grid). MagCache and RAS then run on it, and Bottleneck
Sampling takes its size rule from the adapter (or refuses a fixed-size model up front).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .diffusers_adapters import diffusers_parts
from .parts import AttentionFn, Grid, Tokens, TransformerParts, UnsupportedModel  # noqa: F401  (re-exported)


def dit_block_forward(block: torch.nn.Module, x: Tokens, c: torch.Tensor, attention: AttentionFn) -> Tokens:
    """``DiTBlock.forward`` with another attention function (every other op is per token)."""
    from ..models.dit import modulate

    shift1, scale1, gate1, shift2, scale2, gate2 = block.ada(torch.nn.functional.silu(c)).chunk(6, dim=1)
    q, k, v = block.qkv_heads(modulate(block.norm1(x), shift1, scale1))
    attn = attention(q, k, v).transpose(1, 2).reshape(x.shape)
    x = x + gate1[:, None, :] * block.proj(attn)
    return x + gate2[:, None, :] * block.mlp(modulate(block.norm2(x), shift2, scale2))


def builtin_parts(model: torch.nn.Module) -> TransformerParts:
    """Parts of the built-in TinyDiT."""
    blocks = list(model.blocks)
    return TransformerParts(name="turbosample TinyDiT", embed=model.embed, blocks=blocks,
                            head=model.head, patch_size=model.config.patch_size,
                            attention_modules=blocks,
                            run_block=lambda i, x, c, attention: dit_block_forward(blocks[i], x, c, attention))


ADAPTERS: dict[str, Callable[[torch.nn.Module], TransformerParts]] = {"TinyDiT": builtin_parts}
# networks that have no block stack to accelerate, with the reason
NOT_A_BLOCK_STACK = {
    "DiffusersUNet": "an SD 1.x / 2.x / SDXL UNet has no stack of equal transformer blocks over one token sequence "
                     "for MagCache to skip or RAS to run on fewer tokens (its blocks change resolution); DualFast, "
                     "Bottleneck Sampling, DC-Solver and DPM-Solver-v3 run on it",
    "WanExperts": "Wan 2.2's two experts (transformer, transformer_2) switch at the boundary step, and MagCache's "
                  "cached residual and RAS's caches would carry one expert's blocks into the other's; "
                  "single-transformer Wan folders (2.1, 2.2 TI2V) run both",
}


ADAPTERS.update(dict.fromkeys(("SD3Transformer2DModel", "FluxTransformer2DModel", "WanTransformer3DModel",
                               "DiffusersDiT"), diffusers_parts))  # diffusers itself is never imported there


def transformer_parts(model: torch.nn.Module) -> TransformerParts:
    """The parts of a supported transformer; a clear error names what is supported otherwise."""
    adapter = next((ADAPTERS[c.__name__] for c in type(model).__mro__ if c.__name__ in ADAPTERS), None)
    if adapter is None:
        name = type(model).__name__
        if name in NOT_A_BLOCK_STACK:
            raise UnsupportedModel(f"MagCache and RAS do not run on {name}: {NOT_A_BLOCK_STACK[name]}")
        raise UnsupportedModel(f"{name} is not supported by TurboSample's block-level accelerators; supported: "
                               f"{', '.join(sorted(ADAPTERS))}. For your own DiT, describe it as TransformerParts and "
                               "register it: turbosample.accel.adapter.register_adapter (README: Your own DiT)")
    return adapter(model)


def class_name(model_class: type | str) -> str:
    return model_class if isinstance(model_class, str) else model_class.__name__


def register_adapter(model_class: type | str, parts: Callable[[torch.nn.Module], TransformerParts]) -> None:
    """Let MagCache, RAS and Bottleneck Sampling run on ``model_class`` (a class or its name; subclasses match too):
    ``parts(model)`` returns the model's ``TransformerParts``. Registering a class again replaces its adapter."""
    if not callable(parts):
        raise TypeError(f"register_adapter needs a function model -> TransformerParts, got {type(parts).__name__}")
    ADAPTERS[class_name(model_class)] = parts


def unregister_adapter(model_class: type | str) -> None:
    """Forget an adapter registered with ``register_adapter`` (no error if there is none)."""
    ADAPTERS.pop(class_name(model_class), None)


def swap_attention(blocks: Sequence[torch.nn.Module], attention_modules: Sequence[object],
                   attribute: str = "attention") -> Callable[[int, Tokens, torch.Tensor, AttentionFn], Tokens]:
    """A ``run_block`` for blocks whose forward calls ``module.<attribute>(q, k, v)`` (B, heads, N, head_dim) of
    ``attention_modules[i]``: block i runs with that attribute set to RAS's function for the call and restored
    after. It edits the module for the call, so the same model must not run in two threads at once."""
    if len(attention_modules) != len(blocks) or not all(hasattr(m, attribute) for m in attention_modules):
        raise ValueError(f"swap_attention needs one module with an {attribute!r} attribute per block")

    def run_block(i: int, tokens: Tokens, cond: torch.Tensor, attention: AttentionFn) -> Tokens:
        module = attention_modules[i]
        own = getattr(module, attribute)
        setattr(module, attribute, attention)
        try:
            return blocks[i](tokens, cond)
        finally:
            setattr(module, attribute, own)

    return run_block


def spatial_patch(patch: int | tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) pixels per token of a patch size (a video patch's last two)."""
    return (patch, patch) if isinstance(patch, int) else (int(patch[-2]), int(patch[-1]))


def diffusion_model(network: torch.nn.Module, model_sampling: object, name: str = "model"):
    """Our ``DiffusionModel`` of a supported or registered transformer, with what samplers need from its adapter:
    the size factor (latent sides must divide by the patch size; Bottleneck Sampling's rule) and the fixed latent
    size of a model with a fixed token grid."""
    from ..samplers.denoiser import DiffusionModel

    parts = transformer_parts(network)
    rows, cols = spatial_patch(parts.patch_size)
    fixed = None if parts.fixed_grid is None else (parts.fixed_grid[-2] * rows, parts.fixed_grid[-1] * cols)
    return DiffusionModel(network, model_sampling, name=name, size_factor=math.lcm(rows, cols), fixed_size=fixed)
