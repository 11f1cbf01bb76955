"""AYS-optimized schedule vs the default and other schedules on the built-in model: paired PSNR/SSIM against a
high-NFE reference of the same prompt and seed; prints a markdown table.

    OMP_NUM_THREADS=2 python bench/bench_ays_optimize.py [--steps 8 16 --samplers euler dpmpp_2m]

The optimizer runs once per prompt (as the node does, with that prompt and CFG) on its own seeds (100 + k, batch
--batch), so the evaluation noise is never seen by it; its cost is reported as model calls per image.
"""

from __future__ import annotations

import argparse
import time

from builtin_runs import PROMPTS, conditions, empty, to_image
from metrics import score

from turbosample.nodes.builtin_nodes import load_builtin_model
from turbosample.samplers.ays_optimize import DEFAULTS, ays_for_model
from turbosample.samplers.registry import get_sampler
from turbosample.samplers.run import sample
from turbosample.samplers.schedulers import compute_sigmas


def images(model, sampler: str, sigmas_for, conds, size: int, cfg: float) -> list:
    info = get_sampler(sampler)
    return [to_image(sample(model, pos, neg, empty(size), info, sigmas_for(k), seed=seed, cfg=cfg))
            for k, (pos, neg, seed) in enumerate(conds)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--samplers", nargs="+", default=["euler", "dpmpp_2m"])
    ap.add_argument("--schedules", nargs="+", default=["simple", "karras", "ays_sd1"])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--ref-steps", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--mc-points", type=int, default=DEFAULTS["mc_points"])
    ap.add_argument("--sigma-min", type=float, default=None, help="EDM sigma span (default: the optimizer's)")
    ap.add_argument("--sigma-max", type=float, default=None)
    args = ap.parse_args()

    (model,) = load_builtin_model(1.0)
    ms = model.model_sampling
    conds = conditions(PROMPTS[: args.prompts])
    ref_sigmas = compute_sigmas(ms, "simple", args.ref_steps)
    refs = images(model, "heun", lambda k: ref_sigmas, conds, args.size, args.cfg)
    calls = args.batch * (2 * DEFAULTS["data_steps"] - 1 + args.mc_points + DEFAULTS["grid_points"])
    print(f"reference: heun {args.ref_steps} steps (simple); {len(conds)} prompts, {args.size} px, CFG {args.cfg}; "
          f"optimizer: batch {args.batch}, mc_points {args.mc_points}, {calls} CFG model calls per prompt\n")
    print("| steps | schedule | " + " | ".join(f"{s} PSNR / SSIM" for s in args.samplers) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in args.samplers) + " |")
    for steps in args.steps:
        start = time.perf_counter()
        opt = [ays_for_model(model, pos, neg, args.cfg, steps, tuple(empty(args.size, args.batch).shape), seed=100 + k,
                             mc_points=args.mc_points, sigma_min=args.sigma_min, sigma_max=args.sigma_max)
               for k, (pos, neg, _seed) in enumerate(conds)]
        opt_seconds = (time.perf_counter() - start) / len(conds)
        rows = {name: (lambda k, s=compute_sigmas(ms, name, steps): s) for name in args.schedules}
        rows["ays_opt"] = opt.__getitem__
        for name, sigmas_for in rows.items():
            cells = []
            for sampler in args.samplers:
                psnr, ssim, _ = score(images(model, sampler, sigmas_for, conds, args.size, args.cfg), refs)
                cells.append(f"{psnr:.2f} / {ssim:.3f}")
            print(f"| {steps} | {name} | " + " | ".join(cells) + " |")
        print(f"\n(optimizer at {steps} steps: {opt_seconds:.1f} s per prompt; first prompt's schedule: "
              f"{[round(float(s), 3) for s in opt[0]]})\n")


if __name__ == "__main__":
    main()
