"""Bottleneck Sampling vs its base sampler on the built-in model (64 px: stages 64 -> 32 -> 64 px).

    OMP_NUM_THREADS=1 python bench/bench_bottleneck.py [--sweep]

Fixed prompts and seeds. The full-cost reference is the base sampler at full resolution with --steps steps;
Bottleneck Sampling gets the same SIGMAS and, by default, runs 0.68 of their steps (the paper's 34 steps for a
50-step baseline), split 6 : 20 : 8 (variant ``{"step_budget": 1}``: all of them). The equal-time baseline
is the base sampler with its steps scaled by the measured time ratio. Wall times are measured in this run,
per image, one thread (``--repeats N``: medians of N alternating rounds). Quality: paired PSNR/SSIM (skimage)
and LPIPS (bench/metrics.py; None without its weights) to the reference. ``--sweep`` also tries other shifts,
noise strengths, resizers, scales and hand-over rules (used to pick defaults); ``--variant JSON`` adds any other
settings.
"""

from __future__ import annotations

import argparse
import json

import torch
from builtin_runs import PROMPTS, conditions, generate
from metrics import score
from timing import alternating_medians

from turbosample.nodes.builtin_nodes import load_builtin_model
from turbosample.samplers.bottleneck import (
    NOISE_SOURCES,
    PAPER_STEP_BUDGET,
    RESIZERS,
    budget_steps,
    sample_bottleneck,
    split_steps,
)
from turbosample.samplers.registry import SAMPLERS, SamplerInfo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base", default="euler")
    ap.add_argument("--steps", type=int, nargs="+", default=[28])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1,
                    help="timing rounds per method (> 1: reference and variants alternate, medians reported)")
    ap.add_argument("--equal-time-all", action="store_true", help="an equal-time base-sampler row after every variant")
    ap.add_argument("--step-budget", type=float, default=PAPER_STEP_BUDGET,
                    help="step budget of every variant that does not set its own (1 = the tables measured before "
                         "the budget existed)")
    ap.add_argument("--variant", action="append", default=[], metavar="JSON",
                    help='extra settings to try, e.g. \'{"scales": [1, 0.75, 1]}\' (repeatable)')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    (model,) = load_builtin_model(1.0)
    conds = conditions(PROMPTS[:4])
    base = SAMPLERS[args.base]
    variants = [("defaults", {})]
    if args.sweep:
        variants += [(f"shifts {s}", {"shifts": s}) for s in [(1.0, 1.0, 1.0), (2.0, 1.5, 2.0)]]
        variants += [(f"noise {w}", {"noise": w}) for w in [(1.0, 0.9, 0.7), (1.0, 0.7, 0.5), (1.0, 0.6, 0.4)]]
        variants += [(f"resize {m}", {"resize_method": m}) for m in RESIZERS if m != "lanczos"]
        variants += [("scales (1, 0.75, 1)", {"scales": (1.0, 0.75, 1.0)})]
        variants += [(f"noise source {n}", {"noise_source": n}) for n in NOISE_SOURCES if n != "estimated"]
        variants += [("stages run to sigma 0", {"stop_early": False}),
                     ("fresh noise, stages run to sigma 0 (first reading)", {"noise_source": "fresh",
                                                                             "stop_early": False})]
    variants += [(", ".join(f"{k} {v}" for k, v in json.loads(text).items()), json.loads(text))
                 for text in args.variant]
    variants = [(label, {"step_budget": args.step_budget, **options}) for label, options in variants]
    print(f"built-in model {args.size}px, CFG {args.cfg}, simple schedule, prompts {PROMPTS[:4]} (seed = index), "
          f"base sampler {args.base}, step budget {args.step_budget:g} unless a variant sets one, 1 thread\n")
    print("| steps | method | model calls (full + low res) | s/image | speedup vs full | PSNR vs full | "
          "SSIM vs full | LPIPS vs full |")
    print("|---|---|---|---|---|---|---|---|")
    for steps in args.steps:
        refs, full_seconds = generate(model, base, steps, conds, args.size, args.cfg)
        infos = {label: SamplerInfo("bottleneck", sample_bottleneck, 1, "", {"base": args.base, **options})
                 for label, options in variants}
        medians = {}
        if args.repeats > 1:
            runs = {label: (lambda i=info, n=steps: generate(model, i, n, conds, args.size, args.cfg))
                    for label, info in {"reference": base, **infos}.items()}
            medians = {k: v / len(conds) for k, v in alternating_medians(runs, args.repeats).items()}
            full_seconds = medians["reference"]
        print(f"| {steps} | {args.base} full cost (reference) | {steps} | {full_seconds:.3f} | 1.00x | - | - | - |")
        for label, options in variants:
            images, seconds = generate(model, infos[label], steps, conds, args.size, args.cfg)
            seconds = medians.get(label, seconds)
            psnr, ssim, lp = score(images, refs)
            split = options.get("steps") or split_steps(budget_steps(steps, options["step_budget"], 3), 3)
            print(f"| {steps} | bottleneck {label} | {split[0] + split[2]} + {split[1]} | {seconds:.3f} | "
                  f"{full_seconds / seconds:.2f}x | {psnr:.2f} | {ssim:.4f} | {lp:.4f} |", flush=True)
            if label == "defaults" or args.equal_time_all:
                equal = max(1, round(steps * seconds / full_seconds))
                images, eq_seconds = generate(model, base, equal, conds, args.size, args.cfg)
                psnr, ssim, lp = score(images, refs)
                print(f"| {steps} | {args.base} {equal} steps (equal time) | {equal} | {eq_seconds:.3f} | "
                      f"{full_seconds / eq_seconds:.2f}x | {psnr:.2f} | {ssim:.4f} | {lp:.4f} |", flush=True)


if __name__ == "__main__":
    main()
