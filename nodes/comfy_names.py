"""Adds this pack's sampler and scheduler names to ComfyUI's KSampler lists (imported inside ComfyUI only).

A name that ComfyUI or another pack already registered is left alone (ours is skipped with one log line),
so core behaviour and other packs never change. Registration is idempotent.
"""

from __future__ import annotations

import logging
from functools import partial

log = logging.getLogger("turbosample")


def register_ksampler_names() -> dict[str, list[str]]:
    """Register free names; returns {"samplers": [...], "schedulers": [...], "skipped": [...]} added now."""
    import comfy.k_diffusion.sampling as k_sampling
    import comfy.samplers as cs

    from ..samplers.registry import SAMPLERS
    from ..samplers.schedulers import SCHEDULERS, compute_sigmas

    added: dict[str, list[str]] = {"samplers": [], "schedulers": [], "skipped": []}
    for name, info in SAMPLERS.items():
        attr = f"sample_{name}"
        ours = getattr(getattr(k_sampling, attr, None), "turbosample_name", None) == name
        if name in cs.KSAMPLER_NAMES or name in cs.SAMPLER_NAMES or (hasattr(k_sampling, attr) and not ours):
            if not ours:
                added["skipped"].append(name)
            continue
        fn = partial(info.fn, **info.options)
        fn.turbosample_name = name  # type: ignore[attr-defined]
        setattr(k_sampling, attr, fn)
        cs.KSAMPLER_NAMES.append(name)
        cs.SAMPLER_NAMES.append(name)  # the same list object as KSampler.SAMPLERS
        added["samplers"].append(name)
    for name in SCHEDULERS:
        if name in cs.SCHEDULER_HANDLERS:
            continue
        cs.SCHEDULER_HANDLERS[name] = cs.SchedulerHandler(partial(_sigmas, compute_sigmas, name), use_ms=True)
        cs.SCHEDULER_NAMES.append(name)  # the same list object as KSampler.SCHEDULERS
        added["schedulers"].append(name)
    if added["samplers"] or added["schedulers"]:
        log.info("TurboSample added KSampler samplers %s and schedulers %s", added["samplers"], added["schedulers"])
    return added


def _sigmas(compute, name: str, model_sampling, steps: int):
    return compute(model_sampling, name, steps)
