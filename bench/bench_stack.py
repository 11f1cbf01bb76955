"""MagCache + RAS stacked on the built-in model vs each alone: wall-time speedup and PSNR/SSIM/LPIPS vs plain.

    OMP_NUM_THREADS=1 python bench/bench_stack.py --prompts 4 --threshold 0.2 --ratio 0.5

Every row uses the same prompts, seeds, schedule (simple), sampler (euler), CFG and shipped MagCache calibration
(28 steps; another step count calibrates first); the reference is the plain model with the same steps. Rows are
timed in one process, one after another, after a warm-up. "fewer steps" is the plain model with its step count
scaled by the row's time ratio (about the same wall time), scored against the same reference.
``--with-sampler euler_dualfast ...`` adds the loop accelerators on top (plain, MagCache, MagCache -> RAS with
that sampler; ``bottleneck`` = Bottleneck Sampling with its defaults around Euler); ``--reference-steps`` moves the
reference to a longer run of ``--reference-sampler`` (default Euler; Heun converges far closer to the exact ODE, which
is fair to corrected and second-order samplers).
"""

from __future__ import annotations

import argparse

import torch
from builtin_runs import PROMPTS, conditions, empty, generate
from metrics import score
from timing import alternating_medians

from turbosample.accel.magcache import magcache_model
from turbosample.accel.magcache_calibration import (
    BUILTIN_CALIBRATION,
    calibrate,
    check_model,
    load_calibration,
    run_settings,
    weights_fingerprint,
)
from turbosample.accel.ras import apply_ras
from turbosample.nodes.builtin_nodes import encode_text, load_builtin_model
from turbosample.samplers.bottleneck import sample_bottleneck
from turbosample.samplers.registry import SAMPLERS, SamplerInfo
from turbosample.samplers.schedulers import compute_sigmas

EULER = SAMPLERS["euler"]
LOOP_ACCELERATORS = {"bottleneck": SamplerInfo("bottleneck", sample_bottleneck, 1, "Bottleneck Sampling",
                                               {"base": "euler"})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threshold", type=float, default=0.2)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--max-skip-steps", type=int, default=2)
    ap.add_argument("--retention-ratio", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timing rounds (methods alternate; medians)")
    ap.add_argument("--with-sampler", nargs="*", default=[], metavar="NAME",
                    help="also run plain, MagCache and MagCache -> RAS with these samplers (e.g. euler_dualfast)")
    ap.add_argument("--reference-sampler", default="euler", help="sampler of the --reference-steps run")
    ap.add_argument("--reference-steps", type=int, default=None,
                    help="Euler steps of the reference (default: --steps, i.e. the plain row itself)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = load_builtin_model(1.0)[0]
    conds = conditions(PROMPTS[:args.prompts], args.seeds)
    if args.steps == 28:
        cal = load_calibration(BUILTIN_CALIBRATION)
        check_model(cal, weights_fingerprint(model.diffusion_model))
    else:
        sigmas = compute_sigmas(model.model_sampling, "simple", args.steps)
        cal = calibrate(model, encode_text("smiling face")[0], encode_text("")[0],
                        empty(args.size), EULER, sigmas, 0, args.cfg)
    template, curve_for = run_settings(cal, args.threshold, args.max_skip_steps, args.retention_ratio)

    def mag(m):
        return magcache_model(m, template, curve_for=curve_for)

    def ras(m):
        return apply_ras(m, sample_ratio=args.ratio)

    rows = [(f"MagCache δ={args.threshold:g}", mag(model), EULER), (f"RAS {args.ratio:g}", ras(model), EULER),
            ("MagCache -> RAS (stacked)", ras(mag(model)), EULER), ("RAS -> MagCache (stacked)", mag(ras(model)),
                                                                    EULER)]
    for name in args.with_sampler:
        info = LOOP_ACCELERATORS.get(name) or SAMPLERS[name]
        rows += [(f"plain + {name}", model, info), (f"MagCache + {name}", mag(model), info),
                 (f"MagCache -> RAS + {name}", ras(mag(model)), info)]
    generate(model, EULER, 2, conds[:1], args.size, args.cfg)  # warm-up
    ref_info = SAMPLERS[args.reference_sampler] if args.reference_steps else EULER
    refs, _ = generate(model, ref_info, args.reference_steps or args.steps, conds, args.size, args.cfg)
    methods = {"plain": (model, EULER), **{name: (m, info) for name, m, info in rows}}
    medians = alternating_medians({name: (lambda m=m, info=info: generate(m, info, args.steps, conds, args.size,
                                                                          args.cfg))
                                   for name, (m, info) in methods.items()}, args.repeats)
    t_ref = medians["plain"] / len(conds)
    reference = f"{args.reference_sampler} {args.reference_steps} steps" if args.reference_steps else "the plain row"
    print(f"built-in model {args.size}x{args.size}, euler {args.steps} steps, CFG {args.cfg}, {len(conds)} images, "
          f"{torch.get_num_threads()} thread(s); times: median of {args.repeats} alternating rounds; "
          f"plain: {t_ref:.3f} s/image; reference: {reference}\n")
    print("| method | s/img | speedup | PSNR dB | SSIM | LPIPS | fewer steps (same time) | PSNR dB | SSIM | LPIPS |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    if args.reference_steps:
        imgs, _ = generate(model, EULER, args.steps, conds, args.size, args.cfg)
        psnr, ssim, lp = score(imgs, refs)
        print(f"| plain | {t_ref:.3f} | 1.00x | {psnr:.2f} | {ssim:.4f} | {lp:.4f} | - | - | - | - |")
    else:
        print(f"| plain | {t_ref:.3f} | 1.00x | - | - | - | - | - | - | - |")
    for name, patched, info in rows:
        imgs, _ = generate(patched, info, args.steps, conds, args.size, args.cfg)
        t = medians[name] / len(conds)
        psnr, ssim, lp = score(imgs, refs)
        few = max(1, round(args.steps * t / t_ref))
        few_imgs, _ = generate(model, EULER, few, conds, args.size, args.cfg)
        few_psnr, few_ssim, few_lp = score(few_imgs, refs)
        print(f"| {name} | {t:.3f} | {t_ref / t:.2f}x | {psnr:.2f} | {ssim:.4f} | {lp:.4f} | {few} steps | "
              f"{few_psnr:.2f} | {few_ssim:.4f} | {few_lp:.4f} |", flush=True)


if __name__ == "__main__":
    main()
