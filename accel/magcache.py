"""MagCache (Ma et al., NeurIPS 2025, arXiv 2506.09045): skip the transformer block stack on steps where a
calibrated magnitude-ratio curve predicts a small error, reusing the last block-stack residual.

Rule per CFG branch (official ``MagCache4Wan2.1/magcache_generate.py``, diffusers ``hooks/mag_cache.py``):
from step ``int(retention_ratio * steps + 0.5)`` on, ``acc_ratio *= ratio[step]``, ``acc_steps += 1`` and
``acc_err += |1 - acc_ratio|``; the stack is skipped while ``acc_err <= threshold`` and ``acc_steps <= K``
(``tokens_out = tokens_in + cached_residual``), otherwise it runs, the accumulators reset and the residual is
cached again. Embedding and head always run with the current timestep. ``threshold = 0`` never skips (diffusers
would skip on a ratio of exactly 1.0 there).

Steps: the step index is the position of the call's sigma in ``sample_sigmas`` (the largest ``j`` with
``sample_sigmas[j] >= sigma``). One decision is made per branch and step index, at its first call; every later
call with the same index (Heun's corrector at ``sigma_{i+1}``, midpoint sigmas of dpm_2 / dpmpp_2s) follows it,
recomputing and re-caching the residual when the decision was "compute". So each distinct schedule sigma is
accounted once, as in the calibration run, and a skip always has a cached residual of the right shape.

Block stack runner: by default the blocks run in a loop; stacked with RAS (``accel.stacking``) the stack runs
through RAS's ``runner.run(tokens, cond, rows)`` (active tokens only at its sparse steps; inactive tokens keep
their previous stack output, so the cached residual is over all tokens) and ``runner.finish`` merges and records
the output after the head.

State lives in ``options["run_state"]`` (fresh for every sampling run) keyed by branch (``cond_or_uncond`` entry
and its occurrence in the batch), so runs never leak into each other and cond/uncond never share a cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .adapter import TransformerParts, transformer_parts
from .ras import RASRunner, ras_runner
from .stacking import BlockStackWrapper, add_block_stack_wrapper, check_one_sigma, partner_settings

STATE_KEY = "magcache"
BranchKey = tuple[int, int]  # (cond_or_uncond entry, occurrence in the batch)


@dataclass(frozen=True)
class MagCacheSettings:
    """Hyper-parameters and the per-branch ratio curves (branch 0 = cond, 1 = uncond)."""

    ratios: dict[int, tuple[float, ...]]
    threshold: float = 0.06
    max_skip_steps: int = 2
    retention_ratio: float = 0.2

    def __post_init__(self) -> None:
        if not self.ratios or 0 not in self.ratios:
            raise ValueError("MagCache needs a ratio curve for the cond branch (0)")
        lengths = {len(v) for v in self.ratios.values()}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(f"MagCache ratio curves must be non-empty and of one length, got {sorted(lengths)}")
        if not all(torch.isfinite(torch.tensor(v)).all() and min(v) > 0 for v in self.ratios.values()):
            raise ValueError("MagCache ratios must be finite positive numbers")
        if not (self.threshold >= 0 and self.threshold == self.threshold):
            raise ValueError(f"MagCache threshold must be >= 0, got {self.threshold}")
        if self.max_skip_steps < 1:
            raise ValueError(f"MagCache max_skip_steps must be >= 1, got {self.max_skip_steps}")
        if not 0.0 <= self.retention_ratio <= 1.0:
            raise ValueError(f"MagCache retention_ratio must be in [0, 1], got {self.retention_ratio}")

    @property
    def steps(self) -> int:
        return len(self.ratios[0])

    def curve(self, branch: int) -> tuple[float, ...]:
        """The branch's curve; a branch without its own curve (e.g. uncond with a Flux curve) uses cond's."""
        return self.ratios.get(branch, self.ratios[0])


@dataclass
class BranchState:
    acc_ratio: float = 1.0
    acc_err: float = 0.0
    acc_steps: int = 0
    residual: torch.Tensor | None = None
    step: int = -1  # step index of the last decision
    skip: bool = False  # that decision


def retention_steps(retention_ratio: float, steps: int) -> int:
    """Leading steps that always run (diffusers / Flux rounding)."""
    return int(retention_ratio * steps + 0.5)


def decide(state: BranchState, ratio: float, step: int, settings: MagCacheSettings, retention: int,
           has_residual: bool) -> bool:
    """The MagCache decision for one new step of one branch; updates the accumulators. True = skip."""
    if step < retention:
        return False
    state.acc_ratio *= ratio
    state.acc_steps += 1
    state.acc_err += abs(1.0 - state.acc_ratio)
    if (has_residual and settings.threshold > 0 and state.acc_err <= settings.threshold
            and state.acc_steps <= settings.max_skip_steps):
        return True
    state.acc_ratio, state.acc_err, state.acc_steps = 1.0, 0.0, 0
    return False


def step_index(sigma: float, sample_sigmas: torch.Tensor) -> int | None:
    """Index of the schedule interval holding ``sigma``; None if the schedule is unusable (empty, flat, NaN)."""
    s = sample_sigmas.detach().float().cpu().reshape(-1)
    if s.numel() < 2 or not torch.isfinite(s).all() or not bool((s[:-1] >= s[1:]).all()) or not s[0] > s[-1]:
        return None
    n = s.numel() - 1
    at_or_above = int((s[:n] >= sigma - 1e-6 * max(abs(sigma), 1.0)).sum())
    return min(max(at_or_above - 1, 0), n - 1)


def branch_keys(cond_or_uncond: Sequence[int]) -> list[BranchKey]:
    """(branch, occurrence) per batch chunk, e.g. [0, 0, 1] -> [(0, 0), (0, 1), (1, 0)]."""
    seen: dict[int, int] = {}
    keys = []
    for b in cond_or_uncond:
        keys.append((int(b), seen.get(int(b), 0)))
        seen[int(b)] = seen.get(int(b), 0) + 1
    return keys


@dataclass
class StepPlan:
    """One model call's MagCache context: step index, branch keys and their states, the run's settings."""

    step: int
    keys: list[BranchKey]
    states: dict[BranchKey, BranchState]
    settings: MagCacheSettings
    retention: int


def plan_step(settings: MagCacheSettings, options: dict, batch: int,
              curve_for: Callable[[torch.Tensor], MagCacheSettings] | None = None) -> StepPlan | None:
    """The call's step and branch states from ``options`` (sigmas, sample_sigmas, cond_or_uncond, run_state);
    None when the call gives no usable step (then the plain forward runs)."""
    run_state, sample_sigmas, sigma = options.get("run_state"), options.get("sample_sigmas"), options.get("sigmas")
    if run_state is None or sample_sigmas is None or sigma is None:
        return None
    check_one_sigma(options, "MagCache")
    step = step_index(float(torch.as_tensor(sigma).reshape(-1)[0]), sample_sigmas)
    branches = list(options.get("cond_or_uncond") or [0])
    if step is None or batch % len(branches):
        return None
    store = run_state.setdefault(STATE_KEY, {})
    if "settings" not in store:
        store["settings"] = curve_for(sample_sigmas) if curve_for else settings
    active: MagCacheSettings = store["settings"]
    steps = len(sample_sigmas) - 1
    if active.steps != steps:
        raise ValueError(f"MagCache ratio curve has {active.steps} steps but this run has {steps}; calibrate for "
                         f"{steps} steps or resample the curve")
    return StepPlan(step, branch_keys(branches), store.setdefault("branches", {}), active,
                    retention_steps(active.retention_ratio, steps))


def decide_branches(plan: StepPlan, shapes: Sequence[torch.Size], record: list | None = None) -> list[bool]:
    """Skip (True) or compute per branch chunk; ``shapes`` are the chunks' stack-input shapes (a skip needs a
    cached residual of that shape). The first call of a step decides; later calls of that step follow it."""
    skips = []
    for key, shape in zip(plan.keys, shapes, strict=True):
        st = plan.states.setdefault(key, BranchState())
        has_residual = st.residual is not None and st.residual.shape == shape
        if plan.step < st.step:  # a new pass over the schedule with the same state: start over
            plan.states[key] = st = BranchState()
            has_residual = False
        if plan.step != st.step:
            st.step = plan.step
            st.skip = decide(st, plan.settings.curve(key[0])[plan.step], plan.step, plan.settings, plan.retention,
                             has_residual)
            if record is not None:
                record.append((key, plan.step, st.skip))
        skips.append(st.skip and has_residual)
    return skips


def run_blocks(parts: TransformerParts, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    return parts.run_stack(tokens, cond)


def magcache_forward(parts: TransformerParts, settings: MagCacheSettings, x: torch.Tensor, timestep: torch.Tensor,
                     context: torch.Tensor, options: dict, fallback: Callable[[], torch.Tensor],
                     curve_for: Callable[[torch.Tensor], MagCacheSettings] | None = None,
                     record: list | None = None, runner: RASRunner | None = None) -> torch.Tensor:
    """One model call with MagCache; ``fallback()`` is the plain call used when the run gives no step/state.

    ``runner`` (optional, e.g. ``accel.ras.RASRunner``) runs the block stack instead of the plain block loop.

    ``curve_for(sample_sigmas)`` may return run-specific settings (checked/resampled curve); it is called once
    per run. ``record`` (optional) receives ``(branch_key, step, skipped)`` for every decision.
    """
    plan = plan_step(settings, options, x.shape[0], curve_for)
    if plan is None:
        return fallback()
    tokens, cond, grid = parts.embed(x, timestep, context)
    branches, keys, states = plan.keys, plan.keys, plan.states
    chunks = tokens.chunk(len(keys))
    skips = decide_branches(plan, [c.shape for c in chunks], record)

    run = runner.run if runner is not None else (lambda t, c, _rows: run_blocks(parts, t, c))
    if not any(skips):
        out = run(tokens, cond, None)
        for key, r in zip(keys, (out - tokens).chunk(len(branches)), strict=True):
            states[key].residual = r
        head = parts.head(out, cond, grid)
        return runner.finish(out, head) if runner is not None else head

    b = x.shape[0] // len(branches)
    out_chunks = list(chunks)
    compute = [i for i, s in enumerate(skips) if not s]
    if compute:
        rows = torch.cat([torch.arange(i * b, (i + 1) * b, device=tokens.device) for i in compute])
        sub_in = tokens[rows]
        sub_out = run(sub_in, cond[rows], rows)
        for j, i in enumerate(compute):
            out_chunks[i] = sub_out[j * b:(j + 1) * b]
            states[keys[i]].residual = out_chunks[i] - chunks[i]
    for i, s in enumerate(skips):
        if s:
            out_chunks[i] = chunks[i] + states[keys[i]].residual.to(chunks[i])
    out = torch.cat(out_chunks)
    head = parts.head(out, cond, grid)
    return runner.finish(out, head) if runner is not None else head


@dataclass(frozen=True)
class MagCacheRun:
    """What a MagCache wrapper carries, and what a stacked RAS wrapper calls to let MagCache decide each step
    (RAS never imports this module: it calls ``run`` on the object it is handed)."""

    settings: MagCacheSettings
    curve_for: Callable[[torch.Tensor], MagCacheSettings] | None = None
    record: list | None = None

    def run(self, parts: TransformerParts, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
            options: dict, fallback: Callable[[], torch.Tensor], runner: RASRunner | None = None) -> torch.Tensor:
        return magcache_forward(parts, self.settings, x, timestep, context, options, fallback, self.curve_for,
                                self.record, runner)


def magcache_model(model, settings: MagCacheSettings, key: str = "magcache",
                   curve_for: Callable[[torch.Tensor], MagCacheSettings] | None = None, record: list | None = None):
    """A patched copy of a ``DiffusionModel`` running MagCache; raises UnsupportedModel before patching.

    Stacks with RAS (either order): the block stack then runs through RAS's runner on the steps MagCache computes.
    """
    parts = transformer_parts(model.diffusion_model)
    mine = MagCacheRun(settings, curve_for, record)

    def wrapper(forward, x, timestep, context, options):
        ras_cfg = partner_settings(options, "ras")
        runner = ras_runner(parts, ras_cfg, x, options) if ras_cfg is not None else None
        return mine.run(parts, x, timestep, context, options, lambda: forward(x, timestep, context, options), runner)

    return add_block_stack_wrapper(model, key, BlockStackWrapper("magcache", mine, wrapper))
