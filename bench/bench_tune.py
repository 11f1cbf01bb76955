"""Auto-tune on the built-in model, judged on prompts it was not tuned on.

    cd bench && OMP_NUM_THREADS=1 python bench_tune.py --targets 2 3 4 --tune-prompt "smiling face" --repeats 3

For each target speed-up X: ``turbosample tune`` (the package's ``run_tune``: default search space, budget and two
seeds) finds a setting on ``--tune-prompt``. Then, on the held-out prompts (``builtin_runs.PROMPTS``, seed = prompt
index), the same 64 px / Euler 28 / CFG 4 full run is the reference and three settings are measured against it:

* the tuned setting;
* the best single accelerator: MagCache (threshold x K), RAS (ratio), Bottleneck Sampling or DualFast alone on the
  reference sampler, each at the step count predicted to reach X and one more (the tuner's cost model, corrected
  first by timing one setting of each kind); the most faithful one whose held-out speed-up reaches X (chosen on the
  held-out prompts themselves, so this baseline is if anything favoured);
* fewer steps: plain Euler with its steps scaled to the tuned setting's measured speed-up (same wall time).

Times: ``--repeats`` rounds; in each, every method (in rotated order) is timed right after a full run on
``--timing-prompts`` held-out prompts, and its speed-up is the median over rounds of those back-to-back ratios (a
shared machine's drift cancels within a pair; run time does not depend on the prompt). Fidelity: PSNR / SSIM /
LPIPS of each image against the full run's image of the same prompt and seed, means over all held-out prompts.
"Fewer steps" runs the reference sampler with 28 / (the tuned setting's speed-up) steps. Prints one Markdown table
and the details behind it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from builtin_runs import PROMPTS
from metrics import paired_scores

from turbosample.nodes.autotune import builtin_image, report_json, run_tune, tune_problem
from turbosample.nodes.txt2img import Settings
from turbosample.tune.report import pareto_plot
from turbosample.tune.search import Budget, Target, nearest_curve
from turbosample.tune.space import Candidate, CostModel
from turbosample.tune.standalone import StandaloneBackend

SINGLES = ([("MagCache", dict(magcache_threshold=t, magcache_k=k))
            for t, k in ((0.06, 2), (0.12, 2), (0.25, 3), (0.5, 4))]
           + [("RAS", dict(ras_ratio=r)) for r in (0.5, 0.35, 0.25)]
           + [("Bottleneck", dict(loop="bottleneck")), ("DualFast", dict(sampler="euler_dualfast"))])


def fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


class HeldOut:
    """The held-out prompts: one backend per prompt (same construction as the tuner's) and the full-run images."""

    def __init__(self, base: Settings, prompts: list[str], timing_prompts: int):
        self.cases = [(StandaloneBackend(tune_problem(Settings(**{**base.to_dict(), "prompt": p, "seed": k}))), k)
                      for k, p in enumerate(prompts)]
        self.timing = self.cases[:timing_prompts]
        self.reference = Candidate(base.sampler, base.steps)
        self.refs = self.images(self.reference)

    def images(self, c: Candidate) -> list:
        return [builtin_image(b.run(c, seed)) for b, seed in self.cases]

    def seconds(self, c: Candidate) -> float:
        start = time.perf_counter()
        for b, seed in self.timing:
            b.run(c, seed)
        return (time.perf_counter() - start) / len(self.timing)

    def measure(self, methods: dict[str, Candidate], repeats: int) -> dict[str, dict]:
        """Per method: paired scores on every held-out prompt, and the median over ``repeats`` rounds of (full run
        time / method time), each method timed right after a full run on the timing prompts (methods in rotated
        order per round), so drift of a shared machine cancels within each pair."""
        ratios: dict[str, list[float]] = {n: [] for n in methods}
        seconds: dict[str, list[float]] = {n: [] for n in methods}
        names = list(methods)
        for r in range(repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                full = self.seconds(self.reference)
                t = self.seconds(methods[name])
                ratios[name].append(full / t)
                seconds[name].append(t)
        return {name: {"candidate": c, "speedup": statistics.median(ratios[name]),
                       "seconds": statistics.median(seconds[name]), **paired_scores(self.images(c), self.refs)}
                for name, c in methods.items()}


def calibrated_cost(held: HeldOut, repeats: int) -> CostModel:
    """The tuner's cost model with the built-in calibration, corrected by one timed setting of each kind."""
    backend = held.cases[0][0]
    cost = CostModel(curves=backend.curves(), resample=nearest_curve)
    probes = {"magcache": Candidate("euler", 28, 0.12, 2), "ras": Candidate("euler", 28, ras_ratio=0.5),
              "ras35": Candidate("euler", 28, ras_ratio=0.35), "ras25": Candidate("euler", 28, ras_ratio=0.25),
              "bottleneck": Candidate("euler", 28, loop="bottleneck"), "plain": Candidate("euler", 14),
              "mag3": Candidate("euler", 28, 0.25, 3)}
    for c, v in zip(probes.values(), held.measure(probes, repeats).values(), strict=True):
        cost.observe(c, held.reference, v["speedup"])
    return cost


def singles_at(cost: CostModel, reference: Candidate, target: float) -> dict[str, Candidate]:
    """Each single accelerator at the predicted step count for ``target`` and one step more (closer to X)."""
    out = {}
    for family, knobs in SINGLES:
        c = Candidate(**{"sampler": reference.sampler, "steps": reference.steps, **knobs})
        n = cost.steps_for(c, reference, target, 3)
        for steps in sorted({n, n + 1} - {None}) if n is not None else ():
            if steps <= reference.steps:
                out[f"{family}: {c.with_steps(steps).label()}"] = c.with_steps(steps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", type=float, nargs="+", default=[2.0, 3.0, 4.0])
    ap.add_argument("--tune-prompt", default="smiling face")
    ap.add_argument("--tune-seed", type=int, default=0)
    ap.add_argument("--more-tune-prompts", nargs="*", default=[],
                    help="tune on these prompts too (turbosample tune --more-prompts); not among the held-out ones")
    ap.add_argument("--prompts", type=int, default=8, help="held-out prompts (builtin_runs.PROMPTS[:n])")
    ap.add_argument("--budget-runs", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3, help="timing rounds (pairs full run / method)")
    ap.add_argument("--timing-prompts", type=int, default=2, help="held-out prompts timed (run time does not depend "
                                                                    "on the prompt); fidelity uses all of them")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="out/tune", help="folder for the tuner's JSON reports and plots")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tuning = {args.tune_prompt, *args.more_tune_prompts}
    prompts = [p for p in PROMPTS if p not in tuning][:args.prompts]
    base = Settings(prompt=args.tune_prompt, seed=args.tune_seed)
    start = time.time()
    held = HeldOut(base, prompts, args.timing_prompts)
    cost = calibrated_cost(held, args.repeats)
    rows, details = [], []
    for target in args.targets:
        result = run_tune(base, Target(speedup=target), Budget(runs=args.budget_runs), seeds=2,
                          more_prompts=args.more_tune_prompts)
        (out / f"tune_{target:g}x.json").write_text(json.dumps(report_json(result, base), indent=2))
        pareto_plot(result).save(out / f"tune_{target:g}x.png")
        tuned = result.chosen.candidate
        singles = singles_at(cost, held.reference, target)
        measured = held.measure({"tuned": tuned, **singles}, args.repeats)
        t = measured["tuned"]
        few_steps = max(1, round(held.reference.steps / t["speedup"]))
        few = paired_scores(held.images(Candidate(held.reference.sampler, few_steps)), held.refs)
        others = {k: v for k, v in measured.items() if k != "tuned"}
        best = max((v for v in others.values() if v["speedup"] >= target), key=lambda v: v["psnr"], default=None)
        single = best or max(others.values(), key=lambda v: v["speedup"])
        single_name = single["candidate"].label() + ("" if best else " (none reaches X; the fastest)")
        sp = result.spent
        cells = [f"{target:g}x", tuned.label(), f"{t['speedup']:.2f}x", f"{t['psnr']:.2f}", fmt(t["ssim"], 4),
                 fmt(t["lpips"], 4), single_name, f"{single['speedup']:.2f}x", f"{single['psnr']:.2f}",
                 fmt(single["lpips"], 4), f"{few_steps} steps", f"{few['psnr']:.2f}", fmt(few["lpips"], 4),
                 f"{sp['full_runs']} runs ({sp['search_seconds']:.0f} s)"]
        rows.append("| " + " | ".join(cells) + " |")
        details.append(f"{target:g}x: tuner on {[args.tune_prompt, *args.more_tune_prompts]} seeds "
                       f"{list(result.seeds)}: {result.message}; "
                       f"spent {sp['full_runs']} full runs + reference; {len(result.measurements)} settings measured")
        print(details[-1], flush=True)
        for name, v in sorted(measured.items(), key=lambda kv: -kv[1]["speedup"]):
            details.append(f"    {name}: {v['speedup']:.2f}x, {v['psnr']:.2f} dB, LPIPS {fmt(v['lpips'], 4)}")
    print(f"\nbuilt-in model {base.width}x{base.height}, reference {held.reference.label()} (CFG {base.cfg:g}, "
          f"{base.scheduler}), {len(prompts)} held-out prompts x 1 seed, {torch.get_num_threads()} thread(s); "
          f"speed-up: median of {args.repeats} rounds of (full run / setting) timed back to back on "
          f"{args.timing_prompts} of them; tuned on {args.tune_prompt!r}; {time.time() - start:.0f} s\n")
    print("| target | tuned setting | speed-up | PSNR dB | SSIM | LPIPS | best single accelerator at X | speed-up | "
          "PSNR dB | LPIPS | fewer steps (same time) | PSNR dB | LPIPS | tuning spent |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print("\n" + "\n".join(details))


if __name__ == "__main__":
    main()
