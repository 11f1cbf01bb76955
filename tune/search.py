"""The budgeted search: reference once, then sampler x steps x MagCache x RAS x loop accelerators, measured.

Protocol (what every figure in a report means):

* **Reference**: the user's full run on each tuning seed (``seeds``), its images are what fidelity is measured
  against. Before the first timed run, one short warm-up run.
* **Wall time, alternating and repeated**: every reference run and every candidate's first run is preceded by a
  *pulse*, a short plain run of the reference sampler (about 1/8 of its steps); each candidate runs once per seed.
  A candidate's speed-up is the median over its runs of (the reference's median run time x drift / the run's
  time), drift = median of the last three candidates' pulses / median of the pulses beside the reference: drift
  of a shared machine between the reference and a candidate cancels. Seconds are measured on the device the model
  runs on.
* **Fidelity**: per seed, PSNR (and SSIM, LPIPS where available) of the candidate's image against the reference
  image of that seed; the mean over seeds is reported.
* **Budget**: everything after the reference (pulses, calibrations, candidate runs, metric computation) counts,
  in wall seconds; ``runs`` is the budget in reference runs (seconds / the reference's median run time), the same
  as the reference's model calls times that number. The search stops when the next run would not fit, keeps what
  it measured, and chooses among it; ``spent`` reports the reference phase and the search apart.
* **Search order** (per target speed-up): the reference sampler with fewer steps (the bar), MagCache's grid on it,
  every other sampler under the best accelerators so far, RAS ratios on the best, loop accelerators around it.
  Each candidate's step count is the most steps predicted to reach the target (``space.CostModel``, corrected by
  the speeds measured so far), refitted once to its measured speed.
* **Early stopping**: a candidate is dropped after its first seed when it is clearly slower than the target or
  more than ``race_margin`` dB behind the best so far on that seed; two stages in a row that improve on the best by
  less than ``min_gain`` dB end the search.
* **Verification**: the choice is then timed again in ``VERIFY_ROUNDS`` rounds back to back with the full run
  (budget kept for it); its speed-up becomes the median of those rounds' ratios, and the choice is made again (a
  choice that no longer holds makes way for the next, once).
* **Reuse**: one MagCache calibration (the given one, or one recording run) serves every candidate and step count
  (nearest-neighbour resampling, as the app's MagCache node); DC-Solver ratios are calibrated once per step count.

Choice: with ``Target.speedup`` the most faithful (mean PSNR) setting whose measured speed-up reaches it; with
``Target.min_psnr`` the fastest whose mean PSNR reaches it. Only settings measured on every seed are chosen. When
nothing reaches the target, the best that was reached is returned and the message says so.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from ..samplers.run import Interrupted
from .metrics import IDENTICAL_PSNR, lpips, missing_metrics, psnr, ssim
from .space import Candidate, CostModel, SearchSpace, Support, magcache_computed

VERIFY_ROUNDS = 2  # back-to-back rounds (full run, chosen setting) that confirm the choice's speed-up
SPEED_TOLERANCE = 0.03  # a first-seed speed this far under the target still gets its second timing sample, and
# a setting leads the race (drops others on PSNR after one seed) only this far above the target
SPEED_LEVELS = (1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)  # target speed-ups tried in min-PSNR mode


class Backend(Protocol):
    """Runs candidates on one model (``tune.standalone.StandaloneBackend``, ``nodes.autotune_comfy``)."""

    reference: Candidate
    model_calls: int
    images: bool  # True: to_array gives decoded images in [0, 1]; False: latents

    def support(self) -> Support: ...

    def needs_magcache_calibration(self) -> bool: ...

    def calibrate_magcache(self, seed: int, cancel: threading.Event | None = None) -> None: ...

    def curves(self) -> dict[int, tuple[float, ...]] | None: ...

    dc_records: dict[int, dict]  # DC-Solver calibrations by step count (filled by calibrate_dc)

    def calibrate_dc(self, steps: int, seed: int) -> None: ...

    def run(self, c: Candidate, seed: int, cancel: threading.Event | None = None) -> object: ...

    def to_array(self, output: object) -> np.ndarray: ...


@dataclass(frozen=True)
class Target:
    """Exactly one of: a speed-up to reach (then maximise fidelity), or a PSNR to keep (then maximise speed)."""

    speedup: float | None = None
    min_psnr: float | None = None

    def __post_init__(self) -> None:
        if (self.speedup is None) == (self.min_psnr is None):
            raise ValueError("give exactly one target: a speed-up (e.g. 2) or a minimum PSNR in dB (e.g. 30)")
        if self.speedup is not None and not (math.isfinite(self.speedup) and self.speedup > 1.0):
            raise ValueError(f"the target speed-up must be a number > 1 (x faster than the full run), got "
                             f"{self.speedup}")
        if self.min_psnr is not None and not (math.isfinite(self.min_psnr) and 0 < self.min_psnr < IDENTICAL_PSNR):
            raise ValueError(f"the minimum PSNR must be in (0, {IDENTICAL_PSNR:g}) dB, got {self.min_psnr}")

    def describe(self) -> str:
        return f"{self.speedup:g}x faster" if self.speedup is not None else f"PSNR >= {self.min_psnr:g} dB"


@dataclass(frozen=True)
class Budget:
    """How much the search may spend: ``runs`` reference runs' worth of wall time, ``calls`` the same in model
    calls (``calls`` / the reference's calls per run = runs), and/or ``seconds``; the tightest one applies."""

    runs: float | None = 10.0
    seconds: float | None = None
    calls: int | None = None

    def __post_init__(self) -> None:
        for name, value in (("full runs", self.runs), ("seconds", self.seconds), ("model calls", self.calls)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"the budget in {name} must be > 0, got {value}")
        if self.runs is None and self.seconds is None and self.calls is None:
            raise ValueError("give a budget in full runs, model calls or seconds")

    def describe(self) -> str:
        parts = [f"{self.runs:g} full runs" if self.runs is not None else "",
                 f"{self.calls} model calls" if self.calls is not None else "",
                 f"{self.seconds:g} s" if self.seconds is not None else ""]
        return " / ".join(p for p in parts if p)


@dataclass
class Measurement:
    """What was measured for one candidate: per-seed fidelity and times, with the drift-corrected baseline."""

    candidate: Candidate
    stage: str
    seconds: list[float] = field(default_factory=list)
    baseline_seconds: list[float] = field(default_factory=list)
    psnr: dict[int, float] = field(default_factory=dict)
    ssim: dict[int, float | None] = field(default_factory=dict)
    lpips: dict[int, float | None] = field(default_factory=dict)
    model_calls: int = 0
    note: str = ""
    error: str = ""
    verify_pairs: list[tuple[float, float]] = field(default_factory=list)  # (full run, this) back to back

    @property
    def speedup(self) -> float:
        """Median over the timed runs of (reference time beside the run / the run's time); once verified, over the
        back-to-back rounds with the full run only (the most direct comparison)."""
        pairs = self.verify_pairs or list(zip(self.baseline_seconds, self.seconds, strict=True))
        if not pairs:
            return float("nan")
        return statistics.median(b / t for b, t in pairs)

    @property
    def verified(self) -> int:
        return len(self.verify_pairs)

    @property
    def psnr_db(self) -> float:
        return float(np.mean(list(self.psnr.values()))) if self.psnr else float("nan")

    def mean_of(self, values: dict) -> float | None:
        vals = list(values.values())
        return None if not vals or any(v is None for v in vals) else float(np.mean(vals))

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.psnr)


@dataclass
class TuneResult:
    """The choice, everything measured (in the order tried) and what the search spent."""

    target: Target
    seeds: tuple[int, ...]
    reference: Measurement | None
    measurements: list[Measurement]
    chosen: Measurement | None
    met: bool
    message: str
    spent: dict
    notes: list[str]
    stopped: bool
    metric_space: str  # "image" or "latent"

    def complete(self, m: Measurement) -> bool:
        return m.ok and len(m.psnr) == len(self.seeds)


class Stopped(Exception):
    """Stop was pressed (or the budget ran out): keep what was measured."""


class _Search:
    """One tuning session's state: the backend, measurements, timing pulses and spending."""

    def __init__(self, backend: Backend, target: Target, budget: Budget, space: SearchSpace, seeds: tuple[int, ...],
                 cancel: threading.Event | None, progress: Callable[[str, TuneResult], None] | None,
                 race_margin: float, min_gain: float, clock: Callable[[], float]):
        self.clock = clock
        self.backend, self.target, self.budget, self.seeds = backend, target, budget, seeds
        self.cancel, self.progress = cancel, progress
        self.race_margin, self.min_gain = race_margin, min_gain
        self.ref = backend.reference
        self.support = backend.support()
        self.space = space.restricted(self.support)
        self.measured: dict[tuple, Measurement] = {}
        self.order: list[Measurement] = []
        self.reference: Measurement | None = None
        self.ref_images: dict[int, np.ndarray] = {}
        self.ref_pulses: list[float] = []
        self.recent_pulses: list[float] = []
        self.start = self.clock()
        self.search_start: float | None = None
        self.ref_seconds: float | None = None
        self.calibration_seconds = 0.0
        self.pulse_steps = max(2, round(self.ref.steps / 8))
        self.cost = CostModel()
        self.notes: list[str] = []
        self.stop_reason = ""
        self.level: float | None = None  # the speed-up the current stage aims at
        self.verifying = False

    # -- spending -------------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        """Seconds spent by the search proper (the clock starts once the reference is measured)."""
        return self.clock() - (self.search_start or self.clock())

    def limit_seconds(self) -> float:
        limits = [self.budget.seconds] if self.budget.seconds is not None else []
        if self.ref_seconds is not None and self.budget.runs is not None:
            limits.append(self.budget.runs * self.ref_seconds)
        if self.ref_seconds is not None and self.budget.calls is not None and self.reference is not None:
            limits.append(self.budget.calls / max(self.reference.model_calls, 1) * self.ref_seconds)
        return min(limits) if limits else float("inf")

    def afford(self, predicted_seconds: float) -> None:
        """Stopped('budget') unless a run of ``predicted_seconds`` still fits (before the time kept for verifying
        the choice, while searching)."""
        if self.elapsed() + predicted_seconds > self.limit_seconds() - self.reserve_seconds():
            self.stop_reason = "budget spent"
            raise Stopped("budget")

    def reserve_seconds(self) -> float:
        """What verifying the choice will cost: VERIFY_ROUNDS x (a full run + the choice's run), at most 30 % of the
        budget (a small budget verifies fewer rounds)."""
        if self.verifying or self.ref_seconds is None:
            return 0.0
        level = self.level or self.target.speedup or 2.0
        return min(VERIFY_ROUNDS * self.ref_seconds * (1 + 1 / level), 0.3 * self.limit_seconds())

    def verify(self) -> None:
        """Time the choice back to back with the full run (VERIFY_ROUNDS alternating rounds on the first seed) and
        choose again with those samples; a choice that no longer holds makes way for the next (after the setting
        the race dropped for trailing it is measured in full, see ``revive``), twice at most."""
        self.verifying = True
        for _ in range(3):
            chosen, _met, _message = choose(self.order, self.seeds, self.target)
            if chosen is None or chosen.verified:
                return
            for _round in range(VERIFY_ROUNDS):
                self.afford(self.ref_seconds + self.predicted_seconds(chosen.candidate))
                _, t_ref = self.timed(self.ref, self.seeds[0])
                _, t = self.timed(chosen.candidate, self.seeds[0])
                chosen.verify_pairs.append((t_ref, t))
            self.report(f"verified {chosen.candidate.label()}")
            again, met, _message = choose(self.order, self.seeds, self.target)
            holds = again is chosen and (met or self.target.speedup is None)
            if holds or (self.revive() is None and again is chosen):
                return

    def revive(self) -> Measurement | None:
        """Speed-up mode, after a choice failed its verification: the race judged later settings against it, so
        the best of those it dropped after the first seed (fast enough there, and ahead of the new choice on that
        seed) is measured on the other seeds, to compete again."""
        level = self.target.speedup
        if level is None:
            return None
        first = self.seeds[0]
        dropped = [m for m in self.order if m.ok and m.note.startswith("more than") and first in m.psnr
                   and len(m.psnr) < len(self.seeds) and m.speedup >= level]
        if not dropped:
            return None
        m = max(dropped, key=lambda m: (m.psnr[first], m.speedup))
        current = choose(self.order, self.seeds, self.target)[0]
        if current is not None and current.speedup >= level and _first_seed_psnr(current, self.seeds) >= m.psnr[first]:
            return None
        for seed in self.seeds:
            if seed not in m.psnr:
                self.afford(self.predicted_seconds(m.candidate))
                array, t = self.timed(m.candidate, seed)
                m.seconds.append(t)
                m.baseline_seconds.append(self.baseline_now())
                m.psnr[seed], m.ssim[seed], m.lpips[seed] = self.scores(array, seed)
        m.note = "measured in full after the setting it trailed failed verification"
        self.report(f"measured {m.candidate.label()} in full")
        return m

    def predicted_seconds(self, c: Candidate) -> float:
        if self.ref_seconds is None:
            return 0.0
        return self.ref_seconds / max(self.cost.predicted_speedup(c, self.ref), 1e-6)

    # -- runs -----------------------------------------------------------------------------------------------
    def timed(self, c: Candidate, seed: int):
        if self.cancel is not None and self.cancel.is_set():
            self.stop_reason = "stopped"
            raise Stopped("stop")
        try:
            t0 = self.clock()
            out = self.backend.run(c, seed, self.cancel)
            array = self.backend.to_array(out)  # also waits for the device
            return array, self.clock() - t0
        except (Interrupted, KeyboardInterrupt):
            self.stop_reason = "stopped"
            raise Stopped("stop") from None

    def pulse(self) -> float:
        return self.timed(self.ref.with_steps(self.pulse_steps), self.seeds[0])[1]

    def baseline_now(self) -> float:
        """The reference's run time corrected by the drift the pulses saw since it was measured."""
        recent = self.recent_pulses[-3:] or self.ref_pulses
        drift = statistics.median(recent) / statistics.median(self.ref_pulses)
        return self.ref_seconds * drift

    def scores(self, array: np.ndarray, seed: int) -> tuple[float, float | None, float | None]:
        ref = self.ref_images[seed]
        if self.backend.images:
            return psnr(array, ref), ssim(array, ref), lpips(array, ref)
        span = float(ref.max() - ref.min()) or 1.0
        return psnr(array, ref, data_range=span), None, None

    # -- the reference --------------------------------------------------------------------------------------
    def run_reference(self) -> None:
        warm, _ = self.timed(self.ref.with_steps(2), self.seeds[0])  # warm-up: loads, allocations, first calls
        if self.backend.images:  # loads the LPIPS weights and scikit-image now, outside the search's budget
            lpips(warm, warm)
            ssim(warm, warm)
        m = Measurement(self.ref, "reference")
        calls, times = 0, []
        for seed in self.seeds:
            self.ref_pulses.append(self.pulse())
            calls0 = self.backend.model_calls
            array, t = self.timed(self.ref, seed)
            calls += self.backend.model_calls - calls0
            self.ref_images[seed] = array
            times.append(t)
            m.psnr[seed], m.ssim[seed], m.lpips[seed] = IDENTICAL_PSNR, None, None
        m.seconds, m.baseline_seconds = times, list(times)
        m.model_calls = calls // len(self.seeds)
        self.ref_seconds = statistics.median(times)
        self.reference = m
        self.search_start = self.clock()
        self.report("reference measured")

    def calibrate(self) -> None:
        if self.support.magcache and self.space.thresholds and self.backend.needs_magcache_calibration():
            self.afford(self.ref_seconds)
            t0 = self.clock()
            try:
                self.backend.calibrate_magcache(self.seeds[0], self.cancel)
            except (Interrupted, KeyboardInterrupt):
                self.stop_reason = "stopped"
                raise Stopped("stop") from None
            self.calibration_seconds += self.clock() - t0
            self.notes.append(f"MagCache: calibrated on this model and prompt (one Euler run of "
                              f"{self.ref.steps} steps, {self.clock() - t0:.1f} s), reused for every "
                              "candidate")
        self.cost = CostModel(curves=self.backend.curves(), resample=nearest_curve)

    def report(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message, self.snapshot())

    def snapshot(self) -> TuneResult:
        """The result as it stands: the choice among what was measured so far, and the spending."""
        measurements = list(self.order)
        if self.reference is None:
            chosen, met, message = None, False, "stopped before the reference run finished: nothing was measured"
        else:
            chosen, met, message = choose(measurements, self.seeds, self.target)
        elapsed, b = self.elapsed(), self.budget
        spent = {"seconds": round(self.clock() - self.start, 3), "search_seconds": round(elapsed, 3),
                 "calibration_seconds": round(self.calibration_seconds, 3),
                 "full_runs": round(elapsed / self.ref_seconds, 2) if self.ref_seconds else None,
                 "reference_run_seconds": round(self.ref_seconds, 4) if self.ref_seconds else None,
                 "model_calls": self.backend.model_calls, "runs_measured": sum(len(m.seconds) for m in measurements),
                 "budget": b.describe(), "budget_runs": b.runs, "budget_calls": b.calls, "budget_seconds": b.seconds}
        return TuneResult(self.target, self.seeds, self.reference, measurements, chosen, met, message, spent,
                          list(self.notes), self.stop_reason == "stopped",
                          "image" if self.backend.images else "latent")

    # -- candidates -----------------------------------------------------------------------------------------
    def evaluate(self, c: Candidate, stage: str, race: bool = True, race_speed: bool = True) -> Measurement:
        """Measure ``c`` on every seed (pulse first), or fewer when ``race`` drops it after the first seed (too slow
        for the level, when ``race_speed``; or too far behind the best)."""
        if c.key() in self.measured:
            return self.measured[c.key()]
        m = Measurement(c, stage)
        self.measured[c.key()] = m
        self.order.append(m)
        level = self.level
        # the race's leader must clear the level with room to spare: one that only just reaches it may fail its
        # verification, and the settings dropped for trailing it would be lost with it
        best = self.best_at(level * (1 + SPEED_TOLERANCE)) if race and level is not None else None
        calls = 0
        try:
            if c.loop == "dc_solver" and c.steps not in self.backend.dc_records:
                self.afford(self.ref_seconds * (200 + 20 * c.steps) / self.ref.steps)
                t0 = self.clock()
                self.backend.calibrate_dc(c.steps, self.seeds[0])
                self.calibration_seconds += self.clock() - t0
            for j, seed in enumerate(self.seeds):
                self.afford((self.pulse_seconds() if j == 0 else 0.0) + self.predicted_seconds(c))
                if j == 0:
                    self.recent_pulses.append(self.pulse())
                calls0 = self.backend.model_calls
                array, t = self.timed(c, seed)
                calls += self.backend.model_calls - calls0
                m.seconds.append(t)
                m.baseline_seconds.append(self.baseline_now())
                m.psnr[seed], m.ssim[seed], m.lpips[seed] = self.scores(array, seed)
                if j == 0:
                    self.cost.observe(c, self.ref, m.speedup)
                if j == 0 and race and len(self.seeds) > 1:
                    if race_speed and level is not None and m.speedup < level * (1 - SPEED_TOLERANCE):
                        m.note = f"slower than {level:g}x on the first seed"
                        break
                    if best is not None and m.psnr[seed] < best.psnr[seed] - self.race_margin:
                        m.note = f"more than {self.race_margin:g} dB behind the best on the first seed"
                        break
        except ValueError as exc:  # a setting this model or size cannot run (e.g. Bottleneck scales)
            m.error = str(exc)
        except Stopped:
            if not m.seconds:  # never ran: not a measurement
                self.order.remove(m)
                del self.measured[c.key()]
            raise
        finally:
            m.model_calls = calls // max(len(m.seconds), 1)
            if m.seconds or m.error:
                self.report(f"measured {c.label()}")
        return m

    def pulse_seconds(self) -> float:
        return self.ref_seconds * self.pulse_steps / self.ref.steps

    def fit(self, c: Candidate, stage: str, level: float) -> Measurement | None:
        """Evaluate ``c`` at the step count predicted to reach ``level``x, refitted once to the measured speed."""
        n = self.cost.steps_for(c, self.ref, level, self.space.min_steps)
        reachable = n is not None
        if not reachable:
            n = self.space.min_steps  # cannot reach the level: its fastest form shows the best reachable
        m = self.evaluate(c.with_steps(n), stage, race_speed=reachable)
        if not m.ok or not m.seconds:
            return m
        speed = m.speedup
        if speed < level and n > self.space.min_steps:
            n2 = max(self.space.min_steps, min(n - 1, math.floor(n * speed / level)))
            m = self.evaluate(c.with_steps(n2), stage)
        elif speed > level * 1.15 and n < self.ref.steps:
            n2 = min(self.ref.steps, math.floor(n * speed / (level * 1.03)))
            if n2 > n:
                m2 = self.evaluate(c.with_steps(n2), stage)
                if m2.ok and m2.seconds and m2.speedup >= level:
                    m = m2
        return m

    # -- stages ---------------------------------------------------------------------------------------------
    def best_at(self, level: float) -> Measurement | None:
        done = [m for m in self.order if m.ok and len(m.psnr) == len(self.seeds) and m.speedup >= level]
        return max(done, key=lambda m: (m.psnr_db, m.speedup), default=None)

    def stages_at(self, level: float) -> None:
        """The staged search for the most faithful setting at ``level``x (speed-up mode, or one min-PSNR level)."""
        self.level = level
        misses = 0

        def gained(before: Measurement | None) -> None:
            nonlocal misses
            after = self.best_at(level)
            if before is None and after is not None or (after is not None and before is not None
                                                        and after.psnr_db >= before.psnr_db + self.min_gain):
                misses = 0
            else:
                misses += 1
            if misses >= 2:
                self.stop_reason = f"early stop at {level:g}x: two stages in a row gained under {self.min_gain:g} dB"
                raise _LevelDone

        try:
            stages = (self.stage_bar, self.stage_magcache, self.stage_solvers, self.stage_ras, self.stage_loops)
            for stage in stages:
                before = self.best_at(level)
                stage(level)
                gained(before)
            self.bar_points(level, slower=True)
        except _LevelDone:
            self.notes.append(self.stop_reason)
            self.stop_reason = ""

    def incumbent_candidate(self, level: float) -> Candidate:
        best = self.best_at(level)
        return best.candidate if best is not None else self.ref

    def stage_bar(self, level: float) -> None:
        """The reference sampler with fewer steps: the bar to beat, and a faster point of its curve."""
        self.fit(self.ref, "fewer steps", level)
        self.bar_points(level, slower=False)

    def stage_magcache(self, level: float) -> None:
        """MagCache's (threshold, K) grid on the reference sampler."""
        self.magcache_grid(self.ref.sampler, level)

    def stage_solvers(self, level: float) -> None:
        """Every other sampler under the best setting's accelerators (accelerators pay off on a good solver)."""
        best = self.incumbent_candidate(level)
        for name in self.space.samplers:
            if name != best.sampler:
                self.fit(replace(best, sampler=name, loop="none"), "solvers", level)

    def stage_ras(self, level: float) -> None:
        """RAS ratios on the best setting so far."""
        best = replace(self.incumbent_candidate(level), loop="none")
        for ratio in self.space.ras_ratios:
            self.fit(replace(best, ras_ratio=ratio), "RAS", level)

    def stage_loops(self, level: float) -> None:
        """Loop accelerators (Bottleneck Sampling, DC-Solver) around the best setting's sampler and MagCache."""
        best = replace(self.incumbent_candidate(level), ras_ratio=1.0)
        for loop in self.space.loops:
            if loop == "none":
                continue
            sampler = "uni_pc" if loop == "dc_solver" else best.sampler.removesuffix("_dualfast")
            self.fit(replace(best, sampler=sampler, loop=loop), "loop", level)

    def magcache_grid(self, sampler: str, level: float) -> Measurement | None:
        """MagCache's (threshold, K) grid on one sampler; settings whose simulated skips repeat are run once."""
        if not self.space.thresholds or self.cost.curves is None:
            return None
        seen, best = set(), None
        for threshold in self.space.thresholds:
            for k in self.space.ks:
                c = Candidate(sampler, self.ref.steps, threshold, k)
                n = self.cost.steps_for(c, self.ref, level, self.space.min_steps) or self.space.min_steps
                pattern = (n, tuple(magcache_computed(self.cost.curves, n, threshold, k, resample=nearest_curve)))
                if pattern in seen or min(pattern[1]) == 1.0:
                    continue  # the same decisions as a setting already run, or no skip at all
                seen.add(pattern)
                m = self.fit(c, "MagCache", level)
                if m is not None and m.ok and len(m.psnr) == len(self.seeds) and m.speedup >= level:
                    if best is None or m.psnr_db > best.psnr_db:
                        best = m
        return best

    def bar_points(self, level: float, slower: bool) -> None:
        """The reference sampler at 1.5x ``level`` (or, ``slower``, at ``level`` / 1.5): points of the bar's curve."""
        speed = level / 1.5 if slower else level * 1.5
        if speed < 1.15:
            return
        n = self.cost.steps_for(self.ref, self.ref, speed, 1, margin=0.0)
        if n is not None and n < self.ref.steps:
            self.evaluate(self.ref.with_steps(n), "fewer steps", race=False)


class _LevelDone(Exception):
    pass


def nearest_curve(curve, steps: int):
    from ..accel.magcache_calibration import resample_curve

    return resample_curve(tuple(curve), steps, "nearest")


def _first_seed_psnr(m: Measurement, seeds: tuple[int, ...]) -> float:
    return m.psnr.get(seeds[0], float("-inf"))


def choose(result_measurements: list[Measurement], seeds: tuple[int, ...], target: Target
           ) -> tuple[Measurement | None, bool, str]:
    """(chosen, met, message) among measured settings; settings measured on every seed first."""
    usable = [m for m in result_measurements if m.ok and m.seconds]
    complete = [m for m in usable if len(m.psnr) == len(seeds)]
    pool, partial = (complete, "") if complete else (usable, " (measured on fewer seeds: the search was cut short)")
    if not pool:
        return None, False, "nothing was measured besides the reference"
    if target.speedup is not None:
        feasible = [m for m in pool if m.speedup >= target.speedup]
        if feasible:
            m = max(feasible, key=lambda m: (m.psnr_db, m.speedup))
            return m, True, (f"{m.candidate.label()}: {m.speedup:.2f}x at {m.psnr_db:.1f} dB, the most faithful "
                             f"setting measured that reaches {target.speedup:g}x{partial}")
        m = max(pool, key=lambda m: (m.speedup, m.psnr_db))
        return m, False, (f"target {target.speedup:g}x not reached: the fastest setting measured, "
                          f"{m.candidate.label()}, reaches {m.speedup:.2f}x at {m.psnr_db:.1f} dB{partial}")
    faster = [m for m in pool if m.speedup > 1.0]
    feasible = [m for m in faster if m.psnr_db >= target.min_psnr]
    if feasible:
        m = max(feasible, key=lambda m: (m.speedup, m.psnr_db))
        return m, True, (f"{m.candidate.label()}: {m.speedup:.2f}x at {m.psnr_db:.1f} dB, the fastest setting "
                         f"measured that keeps PSNR >= {target.min_psnr:g} dB{partial}")
    if not faster:
        return None, False, "no setting measured was faster than the full run"
    m = max(faster, key=lambda m: (m.psnr_db, m.speedup))
    return m, False, (f"PSNR >= {target.min_psnr:g} dB not reached by any faster setting: the most faithful "
                      f"measured, {m.candidate.label()}, has {m.psnr_db:.1f} dB at {m.speedup:.2f}x{partial}")


def tune(backend: Backend, target: Target, budget: Budget = Budget(), space: SearchSpace = SearchSpace(),
         seeds: tuple[int, ...] = (0, 1), cancel: threading.Event | None = None,
         progress: Callable[[str, TuneResult], None] | None = None, race_margin: float = 1.5,
         min_gain: float = 0.2, clock: Callable[[], float] = time.perf_counter) -> TuneResult:
    """Search for the setting that best meets ``target`` on ``backend``'s model, within ``budget``.

    ``progress(message, result_so_far)`` is called after the reference and after every candidate; ``cancel``
    (Stop) ends the search between or inside runs and the result is chosen from what was measured. ``clock`` is
    the wall clock (seconds) every timing and the budget use.
    """
    seeds = tuple(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise ValueError("give at least one tuning seed")
    s = _Search(backend, target, budget, space, seeds, cancel, progress, race_margin, min_gain, clock)
    s.notes.extend(s.support.notes)
    if not s.support.any_model_accelerator:
        s.notes.append("this model supports none of MagCache, RAS and Bottleneck Sampling: tuning samplers "
                       "(DualFast included) and steps only")
    try:
        s.run_reference()
        s.calibrate()
        try:
            if target.speedup is not None:
                s.stages_at(target.speedup)
            else:
                min_psnr_levels(s, target.min_psnr)
        except Stopped:
            if s.stop_reason == "stopped":
                raise
        s.verify()  # the budget kept a reserve for it
    except Stopped:
        pass
    if s.stop_reason:
        s.notes.append(f"search ended: {s.stop_reason}")
    if backend.images:
        s.notes.extend(missing_metrics())
    else:
        s.notes.append("fidelity measured on latents (no decoder given): PSNR over the reference latent's range; "
                       "SSIM and LPIPS not computed")
    return s.snapshot()


def min_psnr_levels(s: _Search, min_psnr: float) -> None:
    """Min-PSNR mode: the staged search at rising speed-ups while the best at a level keeps ``min_psnr``."""
    start = SPEED_LEVELS.index(2.0)
    s.stages_at(SPEED_LEVELS[start])
    best = s.best_at(SPEED_LEVELS[start])
    if best is not None and best.psnr_db >= min_psnr:
        for level in SPEED_LEVELS[start + 1:]:
            s.stages_at(level)
            best = s.best_at(level)
            if best is None or best.psnr_db < min_psnr:
                break
    else:
        for level in reversed(SPEED_LEVELS[:start]):
            s.stages_at(level)
            best = s.best_at(level)
            if best is not None and best.psnr_db >= min_psnr:
                break
