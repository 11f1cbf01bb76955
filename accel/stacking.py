"""Which model-level accelerators may be stacked on one model, and how MagCache and RAS share the block stack.

MagCache and RAS both own the transformer block stack: MagCache decides per step and CFG branch whether the
stack runs or its cached residual is reused, RAS runs it on active tokens only. Stacked, they share one call
(``accel.magcache.magcache_forward`` with RAS's block-stack runner from ``accel.ras.ras_runner``): whichever
wrapper is inner runs it, and the outer one becomes a ``Handover`` that only passes its settings inward through
``options[STACK_OPTION]``. Both orders of application therefore give the same result.

In ComfyUI, on the built-in model, the node applied second replaces both ``DIFFUSION_MODEL`` wrappers by one
that runs both (``nodes.comfy_block_stack``). ComfyUI's own Flux / SD3 / Wan are patched per block
(``patches_replace["dit"]``): RAS's patches always sit inside MagCache's (``accel.comfy_native_ras``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

BLOCK_STACK_OWNERS = {"magcache": "MagCache", "turbosample_magcache": "MagCache", "turbosample.ras": "RAS"}
STACK_OPTION = "turbosample.block_stack"  # options entry: {role: settings} of outer block-stack wrappers


class StackingError(ValueError):
    """Two accelerators that cannot work together were applied to one model."""


def check_one_sigma(options: dict, name: str) -> None:
    """Step caches key on one noise level per model call; samplers that batch several (paradigms) are refused."""
    sigma = options.get("sigmas")
    if sigma is not None and torch.as_tensor(sigma).reshape(-1).unique().numel() > 1:
        raise StackingError(f"{name} needs one noise level per model call, but this sampler batches several "
                            f"(e.g. paradigms); use another sampler or turn {name} off")


def wrapper_keys(model: object) -> set[str]:
    """Wrapper keys of our DiffusionModel (tuple of pairs) or of a ComfyUI ModelPatcher (dict by wrapper type)."""
    wrappers = getattr(model, "wrappers", None) or ()
    if isinstance(wrappers, dict):
        return {key for by_key in wrappers.values() for key in by_key}
    return {key for key, _fn in wrappers}


@dataclass(frozen=True)
class BlockStackWrapper:
    """A DiffusionModel wrapper owning the block stack; ``settings`` is what a partner needs to run it."""

    role: str  # "magcache" or "ras"
    settings: Any
    fn: Callable

    def __call__(self, forward, x, timestep, context, options):
        return self.fn(forward, x, timestep, context, options)


@dataclass(frozen=True)
class Handover:
    """Stand-in for an outer block-stack wrapper whose inner partner runs both: passes ``settings`` inward."""

    role: str
    settings: Any

    def __call__(self, forward, x, timestep, context, options):
        shared = {**(options.get(STACK_OPTION) or {}), self.role: self.settings}
        return forward(x, timestep, context, {**options, STACK_OPTION: shared})


def partner_settings(options: dict, role: str) -> Any:
    """Settings an outer ``Handover`` of ``role`` passed in, or None."""
    return (options.get(STACK_OPTION) or {}).get(role)


def add_block_stack_wrapper(model, key: str, wrapper: BlockStackWrapper):
    """``model.with_wrapper(key, wrapper)``; a block-stack wrapper of another role already there hands over."""
    wrappers = tuple((k, Handover(w.role, w.settings) if isinstance(w, BlockStackWrapper) and w.role != wrapper.role
                      else w) for k, w in model.wrappers)
    return replace(model, wrappers=wrappers).with_wrapper(key, wrapper)
