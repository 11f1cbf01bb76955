"""MagCache and RAS stacked on one ComfyUI MODEL holding the built-in model: one wrapper runs both.

Both own the transformer block stack (``accel.stacking``). Each node tags its ``DIFFUSION_MODEL`` wrapper with
its role and settings; a node applied to a model that already carries the other role replaces both wrappers by
one that runs RAS's sparse block stack on the steps MagCache computes (``accel.ras.ras_call`` with MagCache's
settings, the same call the app makes), so either order of the nodes gives the same model. The run state is
MagCache's per-run holder (its ``SAMPLER_SAMPLE`` wrapper), fresh for every run. ComfyUI's own Flux / SD3 / Wan
are patched per block instead, RAS's patches inside MagCache's (``accel.comfy_native_ras``).
"""

from __future__ import annotations

from typing import Any

from ..accel.ras import WRAPPER_KEY as RAS_KEY

ROLE_ATTR = "turbosample_block_stack"  # {role: settings} on our DIFFUSION_MODEL wrappers
MAGCACHE_KEY = "turbosample_magcache"


def tagged(fn, roles: dict[str, Any]):
    """``fn`` carrying the block-stack roles it runs (read back by ``roles_of``)."""
    setattr(fn, ROLE_ATTR, dict(roles))
    return fn


def roles_of(model) -> dict[str, Any]:
    """Block-stack roles ("magcache": (settings, curve_for, record), "ras": RASConfig) already on ``model``."""
    import comfy.patcher_extension as pe

    roles: dict[str, Any] = {}
    for key in (MAGCACHE_KEY, RAS_KEY):
        for fn in model.get_wrappers(pe.WrappersMP.DIFFUSION_MODEL, key):
            roles.update(getattr(fn, ROLE_ATTR, {}))
    return roles


def stacked_wrapper(magcache, ras_cfg, run_state_option: str):
    """The ``DIFFUSION_MODEL`` wrapper running MagCache's skip rule around RAS's sparse block stack."""
    from ..accel.ras import ras_call, ras_parts

    def wrapper(executor, x, timestep, context=None, control=None, transformer_options=None, **kwargs):
        transformer_options = transformer_options if transformer_options is not None else {}

        def plain(*_ignored):
            return executor(x, timestep, context, control, transformer_options, **kwargs)

        run = transformer_options.get(run_state_option)
        if run is None or control is not None:  # outside a run, or ControlNet residuals inside the stack
            return plain()
        options = {"sigmas": transformer_options.get("sigmas"), "run_state": run.data,
                   "sample_sigmas": transformer_options.get("sample_sigmas"),
                   "cond_or_uncond": transformer_options.get("cond_or_uncond")}
        return ras_call(ras_parts(executor.class_obj), ras_cfg, plain, x, timestep, context, options, magcache)

    return tagged(wrapper, {"magcache": magcache, "ras": ras_cfg})


def replace_block_stack_wrappers(patched, key: str, wrapper) -> None:
    """Drop both roles' ``DIFFUSION_MODEL`` wrappers from ``patched`` (a clone) and add ``wrapper`` under ``key``."""
    import comfy.patcher_extension as pe

    for old in (MAGCACHE_KEY, RAS_KEY):
        patched.remove_wrappers_with_key(pe.WrappersMP.DIFFUSION_MODEL, old)
    patched.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, key, wrapper)
