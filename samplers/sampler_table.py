"""Samplers by name, for samplers that run another one by name (DualFast, Time-Shift, Bottleneck Sampling).

``samplers.registry`` fills ``TABLE`` with its ``SamplerInfo`` entries when it is imported; it imports every sampler
module and none of them imports it, so the import graph stays one-way (the registry is the top of ``samplers/``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

TABLE: dict[str, object] = {}  # name -> samplers.registry.SamplerInfo


def resolve_sampler(base: str | Callable) -> tuple[Callable, dict, float | None]:
    """A registered sampler name (or a sampler function) -> (function, registry options, calls per step)."""
    if callable(base):
        return base, {}, None
    if not TABLE:  # the registry fills the table on import
        importlib.import_module(f"{__package__}.registry")
    if base not in TABLE:
        raise ValueError(f"unknown base sampler {base!r}; choose one of {', '.join(TABLE)}")
    info = TABLE[base]
    return info.fn, dict(info.options), info.calls_per_step
