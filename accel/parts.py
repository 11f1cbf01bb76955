"""What a block-level accelerator may ask of a transformer: embedding, the block list, the head, attention.

An accelerator never edits a model's own ``forward``: it rebuilds the forward from these parts inside a
wrapper (``DiffusionModel.with_wrapper`` here, ``add_wrapper_with_key`` in ComfyUI), so the original model
object stays untouched and every patched copy carries its own wrapper. ``accel.adapter`` finds the parts of a
model; adapters (``accel.diffusers_adapters``) build them from this module alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Tokens = torch.Tensor
Grid = tuple[int, ...]  # token rows, cols (Wan: frames, rows, cols)
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class UnsupportedModel(TypeError):
    """The model has no adapter; the message names the supported ones and how to add one."""


@dataclass(frozen=True)
class TransformerParts:
    """A DiT split into the pieces accelerators use.

    embed(x, timestep, context) -> (tokens (B, N, D), conditioning, token grid (rows, cols) or (frames, rows, cols))
        ``x`` is the network input (B, C, H, W) (video: (B, C, F, H, W)), ``timestep`` what the network takes,
        ``context`` the CONDITIONING entry (a tensor, a mapping, or integer class labels: kept as integers)
    blocks[i](tokens, cond) -> tokens           the transformer blocks, in order (MagCache caches their residual)
    head(tokens, cond, grid) -> model output    projection back to the input layout
    patch_size                                 pixels per token side (an int), or one per spatial dim
    attention_modules                          objects whose ``attention(q, k, v)`` attribute may be replaced
    run_block(i, tokens, cond, attention)      block i with ``attention(q, k, v)`` (B, heads, N, hd) used in
                                               place of its own (None: RAS refuses the model); see
                                               ``accel.adapter.swap_attention``
    stack(tokens, cond) -> tokens               the whole block stack in one call, as the model's own forward runs
                                               it (None: the blocks in a loop); dual-stream models split the text
                                               and image streams once here instead of at every block
    fixed_grid                                 the only token grid the model takes (a learned position table of
                                               fixed size), None when any grid works; Bottleneck Sampling, which
                                               runs stages at other sizes, refuses a model with one
    """

    name: str
    embed: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[Tokens, torch.Tensor, Grid]]
    blocks: Sequence[Callable[[Tokens, torch.Tensor], Tokens]]
    head: Callable[[Tokens, torch.Tensor, Grid], torch.Tensor]
    patch_size: int | tuple[int, ...]  # square patch side, or one size per spatial dim (Wan: frames, rows, cols)
    attention_modules: Sequence[object] = ()
    run_block: Callable[[int, Tokens, torch.Tensor, AttentionFn], Tokens] | None = None
    stack: Callable[[Tokens, torch.Tensor], Tokens] | None = None
    fixed_grid: tuple[int, ...] | None = None

    def run_stack(self, tokens: Tokens, cond: torch.Tensor) -> Tokens:
        """Every block, in order (``stack`` when the adapter has one)."""
        if self.stack is not None:
            return self.stack(tokens, cond)
        for block in self.blocks:
            tokens = block(tokens, cond)
        return tokens

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The plain forward rebuilt from the parts (equals the model's own forward)."""
        tokens, cond, grid = self.embed(x, timestep, context)
        return self.head(self.run_stack(tokens, cond), cond, grid)
