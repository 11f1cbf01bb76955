"""The pack's node menu: one tree under ``TurboSample``, a branch per kind of node."""

from __future__ import annotations

ROOT = "TurboSample"
BUILTIN_MODEL = f"{ROOT}/built-in model"  # the built-in model's loader, text encoder, latent and decoder
SAMPLING = f"{ROOT}/sampling"  # sample a latent, choose a sampler by name
SAMPLERS = f"{ROOT}/samplers"  # SAMPLER nodes with their own settings (loop accelerators, learned solvers, ...)
SCHEDULERS = f"{ROOT}/schedulers"  # SIGMAS nodes, shaped or searched on the model, and their plot
ACCELERATORS = f"{ROOT}/accelerators"  # MODEL patches: MagCache, RAS, attention backend
CALIBRATION = f"{ROOT}/calibration"  # one-off runs that write what an accelerator or solver learns from a model

ALL = (BUILTIN_MODEL, SAMPLING, SAMPLERS, SCHEDULERS, ACCELERATORS, CALIBRATION)
