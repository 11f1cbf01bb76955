"""What the tuner searches: a candidate setting, the knobs it may turn, and a cost prediction for each.

A ``Candidate`` is one sampler x steps x MagCache (threshold, K) x RAS ratio x loop accelerator on the reference
run's scheduler, CFG and size. DualFast is a sampler here (``euler_dualfast``, ``dpmpp_2m_dualfast``,
``uni_pc_dualfast``: the registry's measured coefficients), Bottleneck Sampling and DC-Solver are loop
accelerators. The cost prediction (in "full model calls" of the reference's kind) only orders candidates and picks
their step counts; every number the tuner reports is measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from ..accel.magcache import MagCacheSettings, decide, retention_steps
from ..accel.ras_select import RASConfig, is_dense_step
from ..samplers.bottleneck import (
    DEFAULT_NOISE,
    DEFAULT_SCALES,
    DEFAULT_SHIFTS,
    PAPER_STEP_BUDGET,
    budget_steps,
    sample_bottleneck,
    split_steps,
)
from ..samplers.registry import SAMPLERS, SamplerInfo

LOOPS = ("none", "bottleneck", "dc_solver")
MAGCACHE_RETENTION = 0.2  # the MagCache node's default; the tuner does not change it
BOTTLENECK_STEP_BUDGET = round(PAPER_STEP_BUDGET, 2)  # the Bottleneck node's default widget value
DEFAULT_SAMPLERS = ("euler", "euler_dualfast", "dpmpp_2m", "dpmpp_2m_dualfast", "uni_pc", "res_multistep")
DEFAULT_THRESHOLDS = (0.06, 0.12, 0.25)
DEFAULT_KS = (2, 3)
DEFAULT_RAS_RATIOS = (0.5, 0.35)


@dataclass(frozen=True)
class Candidate:
    """One setting: sampler and steps on the reference's schedule, plus accelerators (0 / 1 / "none" = off)."""

    sampler: str
    steps: int
    magcache_threshold: float = 0.0
    magcache_k: int = 2
    ras_ratio: float = 1.0
    loop: str = "none"

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.loop not in LOOPS:
            raise ValueError(f"unknown loop accelerator {self.loop!r}; choose one of {', '.join(LOOPS)}")
        if not 0.0 < self.ras_ratio <= 1.0:
            raise ValueError(f"RAS ratio must be in (0, 1], got {self.ras_ratio}")

    @property
    def magcache(self) -> bool:
        return self.magcache_threshold > 0

    @property
    def ras(self) -> bool:
        return self.ras_ratio < 1.0

    @property
    def accelerators(self) -> tuple[str, ...]:
        """Names of the accelerators this setting uses (DualFast counts, being a loop-level correction)."""
        names = []
        if self.magcache:
            names.append(f"MagCache {self.magcache_threshold:g}/K{self.magcache_k}")
        if self.ras:
            names.append(f"RAS {self.ras_ratio:g}")
        if self.sampler.endswith("_dualfast"):
            names.append("DualFast")
        if self.loop != "none":
            names.append({"bottleneck": "Bottleneck", "dc_solver": "DC-Solver"}[self.loop])
        return tuple(names)

    def label(self) -> str:
        base = f"{self.sampler} {self.steps}"
        extra = [a for a in self.accelerators if a != "DualFast"]
        return " + ".join([base, *extra])

    def key(self) -> tuple:
        m = (self.magcache_threshold, self.magcache_k) if self.magcache else (0.0, 0)
        return (self.sampler, self.steps, *m, self.ras_ratio, self.loop)

    def to_dict(self) -> dict:
        return asdict(self)

    def with_steps(self, steps: int) -> Candidate:
        return replace(self, steps=steps)


@dataclass(frozen=True)
class Support:
    """Which accelerators the model takes; ``notes`` says why one is missing."""

    magcache: bool = True
    ras: bool = True
    bottleneck: bool = True
    notes: tuple[str, ...] = ()

    @property
    def any_model_accelerator(self) -> bool:
        return self.magcache or self.ras or self.bottleneck


@dataclass(frozen=True)
class SearchSpace:
    """The knobs: samplers (DualFast ones included), MagCache thresholds x K, RAS ratios, loop accelerators."""

    samplers: tuple[str, ...] = DEFAULT_SAMPLERS
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    ks: tuple[int, ...] = DEFAULT_KS
    ras_ratios: tuple[float, ...] = DEFAULT_RAS_RATIOS
    loops: tuple[str, ...] = ("none", "bottleneck")
    min_steps: int = 3

    def __post_init__(self) -> None:
        unknown = [s for s in self.samplers if s not in SAMPLERS]
        if unknown:
            raise ValueError(f"unknown sampler(s) {', '.join(unknown)}")
        bad = [lp for lp in self.loops if lp not in LOOPS]
        if bad:
            raise ValueError(f"unknown loop accelerator(s) {', '.join(bad)}; choose from {', '.join(LOOPS)}")
        if any(not 0 < t for t in self.thresholds) or any(k < 1 for k in self.ks):
            raise ValueError("MagCache thresholds must be > 0 and K >= 1")
        if any(not 0 < r < 1 for r in self.ras_ratios):
            raise ValueError("RAS ratios must be in (0, 1)")
        if self.min_steps < 2:
            raise ValueError("min_steps must be >= 2")

    def restricted(self, support: Support) -> SearchSpace:
        """The space without what the model does not support."""
        return replace(self, thresholds=self.thresholds if support.magcache else (),
                       ras_ratios=self.ras_ratios if support.ras else (),
                       loops=tuple(lp for lp in self.loops if lp != "bottleneck" or support.bottleneck))


def sampler_info(candidate: Candidate, dc_record: dict | None = None) -> SamplerInfo:
    """The SamplerInfo a candidate runs, built as the workflow's sampler nodes build it (``nodes/txt2img.py``:
    Sampler Select, Bottleneck Sampling with its default widgets, DC-Solver from a calibration record)."""
    base = SAMPLERS[candidate.sampler]
    if candidate.loop == "none":
        return base
    if candidate.loop == "bottleneck":
        options = {"base": candidate.sampler, "scales": list(DEFAULT_SCALES), "noise": list(DEFAULT_NOISE),
                   "shifts": list(DEFAULT_SHIFTS), "resize_method": "lanczos", "steps": None,
                   "noise_source": "estimated", "stop_early": True, "step_budget": BOTTLENECK_STEP_BUDGET}
        return SamplerInfo(f"bottleneck_{candidate.sampler}", sample_bottleneck, base.calls_per_step,
                           "Bottleneck Sampling (high -> low -> high resolution)", options)
    if dc_record is None:
        raise ValueError("a DC-Solver candidate needs its calibration record")
    from ..samplers.dc_solver import sample_dc_solver

    options = {"ratios": dc_record["ratios"], "variant": dc_record.get("variant", "bh1"),
               "calibrated_sigmas": dc_record["sigmas"]}
    return SamplerInfo("dc_solver", sample_dc_solver, 1, f"DC-Solver ({dc_record['steps']} steps)", options)


def magcache_computed(curves: dict[int, Sequence[float]], steps: int, threshold: float, k: int,
                      retention_ratio: float = MAGCACHE_RETENTION, resample=None) -> list[float]:
    """Per step, the fraction of CFG branches whose block stack MagCache runs (1 = all), simulated from the
    calibrated ratio curves with MagCache's own decision rule (the decisions depend on the curve only).

    ``resample(curve, steps)`` maps a curve to ``steps`` entries (the run's nearest-neighbour resampling).
    """
    settings = MagCacheSettings({b: tuple(resample(c, steps) if resample else c) for b, c in curves.items()},
                                threshold, k, retention_ratio)
    retention = retention_steps(retention_ratio, steps)
    from ..accel.magcache import BranchState

    states = {b: BranchState() for b in settings.ratios}
    out = []
    for i in range(steps):
        runs = [not decide(states[b], settings.curve(b)[i], i, settings, retention, has_residual=i > 0)
                for b in states]
        out.append(sum(runs) / len(runs))
    return out


def ras_work(ratio: float, steps: int) -> list[float]:
    """Per step, the fraction of image tokens RAS (default schedule) runs through the blocks."""
    cfg = RASConfig(sample_ratio=ratio)
    return [1.0 if is_dense_step(cfg, i) else ratio for i in range(steps)]


@dataclass
class CostModel:
    """Predicted cost of a candidate in reference-model-call units, corrected by measured ones.

    A call whose block stack is skipped or thinned still pays ``overhead`` (embedding, head, sampler, token
    selection); the correction per accelerator kind is the median measured / predicted cost seen so far (1 for a
    kind not measured yet).
    """

    curves: dict[int, tuple[float, ...]] | None = None
    overhead: float = 0.1
    resample: object = None
    corrections: dict[tuple, list[float]] = field(default_factory=dict)

    def units(self, c: Candidate) -> float:
        calls = SAMPLERS[c.sampler].calls_per_step
        steps = c.steps
        scale_cost = 1.0
        if c.loop == "bottleneck":
            total = budget_steps(steps, BOTTLENECK_STEP_BUDGET, len(DEFAULT_SCALES))
            split = split_steps(total, len(DEFAULT_SCALES))
            scale_cost = sum(n * s * s for n, s in zip(split, DEFAULT_SCALES, strict=True)) / steps
        computed = [1.0] * steps
        if c.magcache and self.curves:
            computed = magcache_computed(self.curves, steps, c.magcache_threshold, c.magcache_k,
                                         resample=self.resample)
        work = ras_work(c.ras_ratio, steps) if c.ras else [1.0] * steps
        per_step = [self.overhead + (1 - self.overhead) * f * w for f, w in zip(computed, work, strict=True)]
        return calls * sum(per_step) * scale_cost

    @staticmethod
    def kind(c: Candidate) -> tuple:
        return (c.magcache, c.ras_ratio, c.loop, SAMPLERS[c.sampler].calls_per_step)

    def correction(self, c: Candidate) -> float:
        seen = sorted(self.corrections.get(self.kind(c), ()))
        return seen[len(seen) // 2] if seen else 1.0

    def predicted_speedup(self, c: Candidate, reference: Candidate) -> float:
        """Reference units over the candidate's (the reference's cost is what speed-ups are measured against)."""
        return self.units(reference) / (self.units(c) * self.correction(c))

    def observe(self, c: Candidate, reference: Candidate, measured_speedup: float) -> None:
        """Learn from one measured speed-up (ratio of predicted to measured cost, per kind)."""
        if measured_speedup > 0 and math.isfinite(measured_speedup):
            ratio = (self.units(reference) / measured_speedup) / self.units(c)
            self.corrections.setdefault(self.kind(c), []).append(ratio)

    def steps_for(self, c: Candidate, reference: Candidate, target: float, min_steps: int,
                  margin: float = 0.03) -> int | None:
        """The most steps (<= the reference's) whose predicted speed-up reaches ``target`` x (1 + margin)."""
        for n in range(reference.steps, min_steps - 1, -1):
            if self.predicted_speedup(c.with_steps(n), reference) >= target * (1 + margin):
                return n
        return None
