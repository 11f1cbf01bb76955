"""What a block-level accelerator may ask of a transformer: embedding, the block list, the head, attention.

An accelerator never edits a model's own ``forward``: it rebuilds the forward from these parts inside a
wrapper (``DiffusionModel.with_wrapper`` here, ``add_wrapper_with_key`` in ComfyUI), so the original model
object stays untouched and every patched copy carries its own wrapper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Tokens = torch.Tensor
Grid = tuple[int, int]


class UnsupportedModel(TypeError):
    """The model has no adapter; the message names the supported ones."""


@dataclass(frozen=True)
class TransformerParts:
    """A DiT split into the pieces accelerators use.

    embed(x, timestep, context) -> (tokens (B, N, D), conditioning vector, grid (rows, cols))
    blocks[i](tokens, cond) -> tokens           the transformer blocks, in order
    head(tokens, cond, grid) -> model output    projection back to the input layout
    attention_modules                          objects whose ``attention(q, k, v)`` attribute may be replaced
    """

    name: str
    embed: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[Tokens, torch.Tensor, Grid]]
    blocks: Sequence[Callable[[Tokens, torch.Tensor], Tokens]]
    head: Callable[[Tokens, torch.Tensor, Grid], torch.Tensor]
    patch_size: int
    attention_modules: Sequence[object] = ()

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The plain forward rebuilt from the parts (equals the model's own forward)."""
        tokens, cond, grid = self.embed(x, timestep, context)
        for block in self.blocks:
            tokens = block(tokens, cond)
        return self.head(tokens, cond, grid)


def builtin_parts(model: torch.nn.Module) -> TransformerParts:
    """Parts of the built-in TinyDiT."""
    return TransformerParts(name="turbosample TinyDiT", embed=model.embed, blocks=list(model.blocks),
                            head=model.head, patch_size=model.config.patch_size,
                            attention_modules=list(model.blocks))


ADAPTERS: dict[str, Callable[[torch.nn.Module], TransformerParts]] = {"TinyDiT": builtin_parts}


def transformer_parts(model: torch.nn.Module) -> TransformerParts:
    """The parts of a supported transformer; a clear error names what is supported otherwise."""
    adapter = ADAPTERS.get(type(model).__name__)
    if adapter is None:
        raise UnsupportedModel(f"{type(model).__name__} is not supported by TurboSample's block-level "
                               f"accelerators; supported: {', '.join(sorted(ADAPTERS))}")
    return adapter(model)
