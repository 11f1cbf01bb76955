"""FlowTurbo (Zhao, Shi, Yu, Zhou, Lu; NeurIPS 2024, arXiv 2409.18128): Heun, pseudo-corrector and refiner blocks.

Verified against the official code, ``shiml20/FlowTurbo`` ``models_assemble.py`` (snapshot 361b16b, 2024-10-01,
read through the fetch tool): ``VelocityBlock.forward`` (H with ``use_cache=False``, P with ``use_cache=True``),
``VelocityRefinerBlock.forward`` (R) and ``FlowTurboAssemble`` (blocks run H^N_H -> P^N_P -> R^N_R, class
default N_H=2, N_P=4, N_R=3; ``sample.py`` demo H1 P5 R3). Per step, in our sigma space (dt = sigma_{i+1} - sigma_i,
velocity d = (x - denoised) / sigma, the official SiT time runs the other way, t = 1 - sigma)::

    H:  d = v(x, s_i);              x~ = x + dt d;  d' = v(x~, s_{i+1});   x <- x + dt/2 (d + d');  pass d'
    P:  d = passed d' (no call);    x~ = x + dt d;  d' = v(x~, s_{i+1});   x <- x + dt/2 (d + d');  pass d'
    R:  u = passed velocity;        d = u + r(x, s_i, u);  x~ = x + dt d;  d' = d + r(x~, s_{i+1}, u)
                                    x <- x + dt/2 (d + d');  pass d      (the second call conditions on u, not d)

so H costs 2 model calls, P one, R none (two refiner calls). Differences from the official code, on purpose:

* any sigma grid (per-step dt) instead of the uniform ``linspace`` grid; guidance applies to all channels (the
  official code guides only the first 3 latent channels, a SiT reproducibility quirk);
* a step that lands on sigma = 0 is an Euler step (as ``sample_heun``): the model is never evaluated at sigma = 0;
* the block order is any sequence of segments ("H2P4R3", "H1P2H1R3"); it must start with H, since P and R need a
  passed velocity; one count may be '*' = the remaining steps ("H1P*" is a Heun + pseudo-corrector sampler for any
  flow model and step count, registered as ``flowturbo_hp``);
* the refiner is text-free (see ``models/refiner.py``), so R steps run at batch B, not 2B.
"""

from __future__ import annotations

import re

import torch

from .sampling_utils import evaluate
from .solvers import to_d

DEFAULT_SCHEDULE = "H2P4R3"  # FlowTurboAssemble defaults N_H=2, N_P=4, N_R=3
BLOCKS = ("H", "P", "R")
CALLS = {"H": 2, "P": 1, "R": 0}


def parse_schedule(schedule: str | tuple | list) -> list[tuple[str, int | None]]:
    """'H2P4R3' or (n_h, n_p, n_r) -> [('H', 2), ('P', 4), ('R', 3)]; a count '*' (None) takes the remaining steps.

    Raises ValueError naming the problem.
    """
    if isinstance(schedule, (tuple, list)):
        if len(schedule) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) for n in schedule):
            raise ValueError(f"FlowTurbo counts must be three integers (N_H, N_P, N_R), got {schedule!r}")
        if any(n < 0 for n in schedule):
            raise ValueError(f"FlowTurbo counts must be >= 0, got {schedule!r}")
        segments = [(b, n) for b, n in zip(BLOCKS, schedule, strict=True) if n]
    elif isinstance(schedule, str):
        text = schedule.replace(" ", "").upper()
        if not re.fullmatch(r"([HPR](\d+|\*))+", text):
            raise ValueError(f"FlowTurbo schedule must look like 'H2P4R3' (blocks H, P, R each followed by a "
                             f"step count or '*' for the remaining steps), got {schedule!r}")
        segments = [(b, None if n == "*" else int(n)) for b, n in re.findall(r"([HPR])(\d+|\*)", text)]
        if any(n == 0 for _, n in segments):
            raise ValueError(f"FlowTurbo schedule {schedule!r} has a block with 0 steps; leave it out instead")
        if sum(n is None for _, n in segments) > 1:
            raise ValueError(f"FlowTurbo schedule {schedule!r} may use '*' (the remaining steps) only once")
    else:
        raise ValueError(f"FlowTurbo schedule must be a string like 'H2P4R3' or three counts, got {schedule!r}")
    if not segments:
        raise ValueError(f"FlowTurbo schedule {schedule!r} has no steps")
    if segments[0][0] != "H":
        raise ValueError(f"FlowTurbo schedule {schedule!r} must start with an H block: P and R blocks reuse the "
                         "velocity passed on by the step before")
    return segments


def expand_schedule(schedule: str | tuple | list, steps: int | None = None) -> list[str]:
    """One block letter per step, e.g. 'H1P2R1' -> ['H', 'P', 'P', 'R']; checked against ``steps`` if given."""
    segments = parse_schedule(schedule)
    fixed = sum(n for _, n in segments if n is not None)
    open_ended = any(n is None for _, n in segments)
    if steps is not None and (fixed > steps or (fixed != steps and not open_ended)):
        raise ValueError(f"FlowTurbo schedule {schedule!r} has {fixed}{' or more' if open_ended else ''} steps but "
                         f"the sigmas have {steps}; set the step count to {fixed} or change the schedule")
    if open_ended and steps is None:
        raise ValueError(f"FlowTurbo schedule {schedule!r} uses '*': the number of steps is needed")
    return [b for b, n in segments for _ in range(steps - fixed if n is None else n)]


def model_calls(schedule: str | tuple | list, steps: int | None = None) -> int:
    """Big-model calls of a run whose last step does not land on sigma = 0 (one fewer when it does, unless R)."""
    return sum(CALLS[b] for b in expand_schedule(schedule, steps))


_COMPILED: dict[tuple[int, str], object] = {}


def compiled_block(block, backend: str = "inductor"):
    """``torch.compile`` of one block, cached per block object and backend (compiled once, reused every step)."""
    if not hasattr(torch, "compile"):
        return block
    key = (id(block), backend)
    cached = _COMPILED.get(key)
    if cached is None or cached[0] is not block:
        cached = (block, torch.compile(block, backend=backend, dynamic=False))
        _COMPILED[key] = cached
    return cached[1]


@torch.no_grad()
def sample_flowturbo(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                     callback=None, disable: bool | None = None, schedule: str | tuple | list = DEFAULT_SCHEDULE,
                     refiner=None, compile_blocks: bool | None = None,
                     compile_backend: str = "inductor") -> torch.Tensor:
    """FlowTurbo sampling; ``refiner(x, sigma_batch, v_prev) -> delta v`` is needed when the schedule has R blocks.

    ``compile_blocks`` (None = on with CUDA, off on the CPU): sample-aware compilation, the refiner block is
    compiled on its own with ``torch.compile`` (the big model's H/P calls are compiled, if at all, by whoever
    owns that network, e.g. ComfyUI's TorchCompileModel node).
    """
    steps = expand_schedule(schedule, len(sigmas) - 1)
    if "R" in steps:
        if refiner is None:
            raise ValueError(f"FlowTurbo schedule {schedule!r} has R blocks but no refiner was given")
        if isinstance(refiner, torch.nn.Module):
            refiner = refiner.to(device=x.device, dtype=x.dtype)
        if compile_blocks is None:
            compile_blocks = x.device.type == "cuda"
        if compile_blocks:
            refiner = compiled_block(refiner, compile_backend)
    passed = None  # velocity handed from one step to the next
    for i, block in enumerate(steps):
        sigma, dt = sigmas[i], sigmas[i + 1] - sigmas[i]
        if block == "H":
            denoised = evaluate(model, x, sigma, extra_args)
            d = to_d(x, sigma, denoised)
        elif block == "P":
            d = passed
            denoised = x - d * sigma
        else:
            u = passed
            d = u + refiner(x, sigma * x.new_ones([x.shape[0]]), u)
            denoised = x - d * sigma
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        x_euler = x + d * dt
        if sigmas[i + 1] == 0:
            x = x_euler
            continue
        if block == "R":
            d_next = d + refiner(x_euler, sigmas[i + 1] * x.new_ones([x.shape[0]]), u)
            passed = d
        else:
            d_next = to_d(x_euler, sigmas[i + 1], evaluate(model, x_euler, sigmas[i + 1], extra_args))
            passed = d_next
        x = x + (d + d_next) / 2 * dt
    return x
