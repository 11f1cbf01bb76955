"""Which adapter gives a model's ``TransformerParts`` (``accel.parts``): the built-in DiT here, diffusers SD3 / Flux /
Wan in ``accel.diffusers_adapters``; ``transformer_parts(model)`` looks a model's class up in ``ADAPTERS``.
"""

from __future__ import annotations

from collections.abc import Callable

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


ADAPTERS.update(dict.fromkeys(("SD3Transformer2DModel", "FluxTransformer2DModel", "WanTransformer3DModel",
                               "DiffusersDiT"), diffusers_parts))  # diffusers itself is never imported there


def transformer_parts(model: torch.nn.Module) -> TransformerParts:
    """The parts of a supported transformer; a clear error names what is supported otherwise."""
    adapter = next((ADAPTERS[c.__name__] for c in type(model).__mro__ if c.__name__ in ADAPTERS), None)
    if adapter is None:
        raise UnsupportedModel(f"{type(model).__name__} is not supported by TurboSample's block-level "
                               f"accelerators; supported: {', '.join(sorted(ADAPTERS))}")
    return adapter(model)
