"""Which model-level accelerators may be stacked on one model.

MagCache and RAS each run the transformer block stack themselves (MagCache to record or reuse the stack's
residual, RAS to run it on active tokens only), so with both on one model the inner one would be bypassed
silently on most calls. Until they share one block runner the pair is refused with a message.
"""

from __future__ import annotations

from collections.abc import Iterable

BLOCK_STACK_OWNERS = {"magcache": "MagCache", "turbosample_magcache": "MagCache", "turbosample.ras": "RAS"}


class StackingError(ValueError):
    """Two accelerators that cannot work together were applied to one model."""


def wrapper_keys(model: object) -> set[str]:
    """Wrapper keys of our DiffusionModel (tuple of pairs) or of a ComfyUI ModelPatcher (dict by wrapper type)."""
    wrappers = getattr(model, "wrappers", None) or ()
    if isinstance(wrappers, dict):
        return {key for by_key in wrappers.values() for key in by_key}
    return {key for key, _fn in wrappers}


def check_can_stack(model: object, adding: str, keys: Iterable[str] | None = None) -> None:
    """Raise StackingError if ``adding`` (a wrapper key) would share the block stack with another owner."""
    name = BLOCK_STACK_OWNERS[adding]
    present = {BLOCK_STACK_OWNERS[k] for k in (keys if keys is not None else wrapper_keys(model))
               if k in BLOCK_STACK_OWNERS}
    others = sorted(present - {name})
    if others:
        raise StackingError(f"{name} cannot be stacked with {', '.join(others)} on one model yet: both run the "
                            f"transformer block stack themselves; use one of them")
