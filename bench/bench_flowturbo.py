"""FlowTurbo vs Heun on the built-in model: error against a 100-step Heun reference and wall time, in one run.

    OMP_NUM_THREADS=1 python bench/bench_flowturbo.py [--schedules H2P4R3 H1P5R3] [--heun-steps 3 4 5 6 8 10]

Same prompts, seeds and "simple" schedule for every run (64 px, CFG 4). Every row: PSNR/SSIM/LPIPS to the
reference and seconds per image (4 images, generated one after another). Then per FlowTurbo schedule:
* equal error: the Heun wall time at the same PSNR (linear interpolation on the measured Heun curve) / FlowTurbo's;
* equal wall time: Heun's PSNR at FlowTurbo's wall time (interpolated), i.e. Heun with fewer steps.
LPIPS is NaN when its weights are absent offline.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from builtin_runs import PROMPTS, conditions, generate
from metrics import score

from turbosample.models.refiner import load_refiner
from turbosample.nodes.builtin_nodes import load_builtin_model
from turbosample.samplers.flowturbo import expand_schedule, model_calls, sample_flowturbo
from turbosample.samplers.registry import SAMPLERS, SamplerInfo


def best_of(repeats: int, model, info: SamplerInfo, steps: int, conds, size: int, cfg: float
            ) -> tuple[list, float]:
    """Images and the best-of-``repeats`` seconds per image."""
    runs = [generate(model, info, steps, conds, size, cfg) for _ in range(max(1, repeats))]
    return runs[-1][0], min(seconds for _, seconds in runs)


def interpolate(x: float, xs: list[float], ys: list[float]) -> float:
    """y at x on the piecewise-linear curve (xs sorted ascending); NaN outside the measured range."""
    if not xs[0] <= x <= xs[-1]:
        return float("nan")
    return float(np.interp(x, xs, ys))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--schedules", nargs="+", default=["H2P4R3", "H1P5R3", "H3P3R3", "H2P7", "H1P4R2"])
    ap.add_argument("--heun-steps", type=int, nargs="+", default=[3, 4, 5, 6, 8, 10, 12, 14])
    ap.add_argument("--ref-steps", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--refiner", default="builtin")
    ap.add_argument("--repeats", type=int, default=2, help="timing repeats (best is kept)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    (model,) = load_builtin_model(1.0)
    refiner = load_refiner(args.refiner, model)
    conds = conditions(PROMPTS[:4])
    refs, ref_seconds = best_of(1, model, SAMPLERS["heun"], args.ref_steps, conds, args.size, args.cfg)
    print(f"reference: heun {args.ref_steps} steps, {ref_seconds:.2f} s/image, {args.size}px, CFG {args.cfg}, "
          f"prompts {PROMPTS[:4]} (seed = index), simple schedule, {args.threads} thread(s)\n")
    print("| sampler | steps | model calls | PSNR | SSIM | LPIPS | s/img |")
    print("|---|---|---|---|---|---|---|")
    heun = []
    for steps in args.heun_steps:
        images, seconds = best_of(args.repeats, model, SAMPLERS["heun"], steps, conds, args.size, args.cfg)
        psnr, ssim, lp = score(images, refs)
        heun.append((seconds, psnr, ssim))
        print(f"| heun | {steps} | {2 * steps - 1} | {psnr:.2f} | {ssim:.4f} | {lp:.4f} | {seconds:.3f} |", flush=True)
    turbo = []
    for schedule in args.schedules:
        steps = len(expand_schedule(schedule))
        calls = model_calls(schedule) - (expand_schedule(schedule)[-1] != "R")
        info = SamplerInfo("flowturbo", sample_flowturbo, calls / steps, schedule,
                           {"schedule": schedule, "refiner": refiner})
        images, seconds = best_of(args.repeats, model, info, steps, conds, args.size, args.cfg)
        psnr, ssim, lp = score(images, refs)
        turbo.append((schedule, seconds, psnr))
        print(f"| flowturbo {schedule} | {steps} | {calls} | {psnr:.2f} | {ssim:.4f} | {lp:.4f} | {seconds:.3f} |",
              flush=True)
    by_psnr = sorted(heun, key=lambda r: r[1])
    by_time = sorted(heun)
    print("\n| FlowTurbo | s/img | PSNR | Heun s/img at equal PSNR | speedup at equal error | "
          "Heun PSNR at equal time | dPSNR at equal time |")
    print("|---|---|---|---|---|---|---|")
    for schedule, seconds, psnr in turbo:
        heun_time = interpolate(psnr, [r[1] for r in by_psnr], [r[0] for r in by_psnr])
        heun_psnr = interpolate(seconds, [r[0] for r in by_time], [r[1] for r in by_time])
        print(f"| {schedule} | {seconds:.3f} | {psnr:.2f} | {heun_time:.3f} | {heun_time / seconds:.2f}x | "
              f"{heun_psnr:.2f} | {psnr - heun_psnr:+.2f} |")


if __name__ == "__main__":
    main()
