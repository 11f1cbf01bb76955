"""RAS on the built-in model: wall-time speedup and PSNR/SSIM against the unaccelerated output of the same run.

    OMP_NUM_THREADS=1 python bench/bench_ras.py --prompts 4 --ratios 0.75 0.5 0.25
    OMP_NUM_THREADS=1 python bench/bench_ras.py --starvation-study
    OMP_NUM_THREADS=1 python bench/bench_ras.py --cache-study      # the int8 (low-memory) K/V cache's fidelity cost

Times are wall-clock seconds per image (run it on an otherwise idle machine).
Every row uses the same prompts, seeds, schedule (simple), sampler (euler) and CFG; the reference is the plain
model with the same steps. "fewer steps" is the plain model with its step count scaled by the RAS row's
time ratio (about the same wall time), scored against the same reference. "work" is the fraction of
token-block evaluations RAS runs (dense steps count 1, sparse steps the sample ratio).
"""

from __future__ import annotations

import argparse

import torch
from builtin_runs import PROMPTS, conditions, generate
from metrics import score
from timing import alternating_medians

from turbosample.accel.ras import apply_ras
from turbosample.accel.ras_select import RASConfig, is_dense_step
from turbosample.nodes.builtin_nodes import load_builtin_model
from turbosample.samplers.registry import SAMPLERS

EULER = SAMPLERS["euler"]

def work_fraction(cfg: RASConfig, steps: int) -> float:
    return sum(1.0 if is_dense_step(cfg, i) else cfg.sample_ratio for i in range(steps)) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.75, 0.5, 0.25])
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timing rounds (methods alternate; medians)")
    ap.add_argument("--starvation-scale", type=float, default=None,
                    help="starvation_scale of the ratio sweep (default: RASConfig's)")
    ap.add_argument("--starvation-study", action="store_true",
                    help="compare the starvation directions and scales at sample_ratio 0.5 instead")
    ap.add_argument("--cache-study", action="store_true",
                    help="fidelity of the int8 K/V cache against the full one at each ratio instead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = load_builtin_model(1.0)[0]
    conds = conditions(PROMPTS[:args.prompts], args.seeds)
    generate(model, EULER, 2, conds[:1], args.size, args.cfg)  # warm-up
    refs, t_ref = generate(model, EULER, args.steps, conds, args.size, args.cfg)

    print(f"built-in model {args.size}x{args.size}, euler {args.steps} steps, CFG {args.cfg}, {len(conds)} images, "
          f"{torch.get_num_threads()} thread(s); plain: {t_ref:.3f} s/image\n")
    if args.starvation_study:
        print("| starvation | scale | PSNR dB | SSIM | LPIPS | s/image |\n| --- | --- | --- | --- | --- | --- |")
        for mode, scale in [("spread", 0.0), ("spread", 0.1), ("official", 0.1), ("spread", 0.5),
                            ("official", 0.5), ("spread", 1.0), ("official", 1.0)]:
            patched = apply_ras(model, sample_ratio=0.5, starvation=mode, starvation_scale=scale)
            imgs, t = generate(patched, EULER, args.steps, conds, args.size, args.cfg)
            psnr, ssim, lp = score(imgs, refs)
            print(f"| {mode if scale else '-'} | {scale} | {psnr:.2f} | {ssim:.4f} | {lp:.4f} | {t:.3f} |")
        return

    if args.cache_study:
        print("| RAS ratio | K/V cache | PSNR dB | SSIM | LPIPS | vs full cache: PSNR dB |\n"
              "| --- | --- | --- | --- | --- | --- |")
        for ratio in args.ratios:
            full, _ = generate(apply_ras(model, sample_ratio=ratio), EULER, args.steps, conds, args.size, args.cfg)
            small, _ = generate(apply_ras(model, sample_ratio=ratio, kv_cache="int8"), EULER, args.steps, conds,
                                args.size, args.cfg)
            for name, imgs in (("full", full), ("int8", small)):
                psnr, ssim, lp = score(imgs, refs)
                vs_full = "-" if name == "full" else f"{score(imgs, full)[0]:.2f}"
                print(f"| {ratio} | {name} | {psnr:.2f} | {ssim:.4f} | {lp:.4f} | {vs_full} |")
        return

    extra = {} if args.starvation_scale is None else {"starvation_scale": args.starvation_scale}
    patched = {ratio: apply_ras(model, sample_ratio=ratio, **extra) for ratio in args.ratios}
    runs = {"plain": model, **patched}
    medians = alternating_medians({k: (lambda m=m: generate(m, EULER, args.steps, conds, args.size, args.cfg))
                                   for k, m in runs.items()}, args.repeats)
    t_ref = medians["plain"] / len(conds)
    print(f"times: median of {args.repeats} alternating rounds; plain {t_ref:.3f} s/image\n")
    print("| RAS ratio | work | s/img | speedup | PSNR dB | SSIM | LPIPS | fewer steps (same time) | PSNR dB | SSIM | "
          "LPIPS |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for ratio in args.ratios:
        cfg = RASConfig(sample_ratio=ratio, **extra)
        imgs, _ = generate(patched[ratio], EULER, args.steps, conds, args.size, args.cfg)
        t = medians[ratio] / len(conds)
        psnr, ssim, lp = score(imgs, refs)
        few = max(1, round(args.steps * t / t_ref))
        few_imgs, _ = generate(model, EULER, few, conds, args.size, args.cfg)
        few_psnr, few_ssim, few_lp = score(few_imgs, refs)
        print(f"| {ratio} | {work_fraction(cfg, args.steps):.2f} | {t:.3f} | {t_ref / t:.2f}x | {psnr:.2f} | "
              f"{ssim:.4f} | {lp:.4f} | {few} steps | {few_psnr:.2f} | {few_ssim:.4f} | {few_lp:.4f} |")


if __name__ == "__main__":
    main()
