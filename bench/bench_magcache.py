"""MagCache on the built-in model: speed-up, full model calls and fidelity vs the unaccelerated run.

    OMP_NUM_THREADS=1 python bench/bench_magcache.py --prompts "cat face" "red apple" --seeds 0 1

For every prompt and seed: the unaccelerated run (default 64x64, 28 steps, euler, simple, CFG 4), then MagCache at
each threshold with the shipped calibration, and the "fewer steps" baseline that spends the same number of full
model calls as plain Euler steps. Wall times are measured in this process, alternating runs; PSNR/SSIM
(skimage.metrics) are against the unaccelerated image in [0, 1]. Prints a markdown table (means over runs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from builtin_runs import empty, to_image
from metrics import score

from turbosample.accel.magcache import magcache_model
from turbosample.accel.magcache_calibration import (
    BUILTIN_CALIBRATION,
    calibrate,
    check_model,
    load_calibration,
    run_settings,
    weights_fingerprint,
)
from turbosample.nodes.builtin_nodes import encode_text, load_builtin_model
from turbosample.samplers.registry import get_sampler
from turbosample.samplers.run import sample
from turbosample.samplers.schedulers import compute_sigmas


def fidelity(img: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    return score([img], [ref])


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", nargs="+", default=["cat face", "red apple", "rocket", "smiling face"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--thresholds", nargs="+", type=float, default=[0.05, 0.1, 0.2, 0.4])
    ap.add_argument("--max-skip-steps", type=int, default=2)
    ap.add_argument("--retention-ratio", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--cfg", type=float, default=4.0)
    args = ap.parse_args()

    (model,) = load_builtin_model(1.0)
    sigmas = compute_sigmas(model.model_sampling, "simple", args.steps, 1.0)
    euler = get_sampler("euler")
    latent = empty(args.size)
    neg = encode_text("")[0]
    if args.steps == 28:
        cal = load_calibration(BUILTIN_CALIBRATION)
        check_model(cal, weights_fingerprint(model.diffusion_model))
    else:
        cal = calibrate(model, encode_text("smiling face")[0], neg, latent, euler, sigmas, 0, args.cfg)

    rows: dict[str, list[dict]] = {}
    for prompt in args.prompts:
        pos = encode_text(prompt)[0]
        for seed in args.seeds:
            def run(m, s=sigmas, seed=seed, pos=pos):
                return sample(m, pos, neg, latent, euler, s, seed, args.cfg)

            run(model)  # warm-up
            ref, t_base = timed(lambda: run(model))
            ref_img = to_image(ref)
            rows.setdefault("unaccelerated", []).append(
                {"t": t_base, "speedup": 1.0, "calls": float(args.steps), "psnr": 100.0, "ssim": 1.0,
                 "lpips": 0.0})
            for th in args.thresholds:
                record: list = []
                template, curve_for = run_settings(cal, th, args.max_skip_steps, args.retention_ratio)
                patched = magcache_model(model, template, curve_for=curve_for, record=record)
                out, t = timed(lambda p=patched: run(p))
                computed = [not skip for *_, skip in record]
                calls = sum(computed) / max(1, len({key for key, *_ in record}))  # full stacks per branch
                psnr, ssim, lp = fidelity(to_image(out), ref_img)
                rows.setdefault(f"MagCache δ={th:g}", []).append(
                    {"t": t, "speedup": t_base / t, "calls": calls, "psnr": psnr, "ssim": ssim, "lpips": lp})
                n = max(1, round(calls))
                few, t_few = timed(lambda n=n: run(model, compute_sigmas(model.model_sampling, "simple", n, 1.0)))
                psnr, ssim, lp = fidelity(to_image(few), ref_img)
                rows.setdefault(f"fewer steps (calls of δ={th:g})", []).append(
                    {"t": t_few, "speedup": t_base / t_few, "calls": float(n), "psnr": psnr, "ssim": ssim,
                     "lpips": lp})

    print(f"\nBuilt-in model, {args.size}x{args.size}, {args.steps} steps euler/simple, CFG {args.cfg}, "
          f"K={args.max_skip_steps}, retention={args.retention_ratio}, {len(args.prompts)} prompts x "
          f"{len(args.seeds)} seeds, torch threads={torch.get_num_threads()}\n")
    print("| method | full model calls | wall time (s) | speed-up | PSNR (dB) | SSIM | LPIPS |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, rs in rows.items():
        def mean(key, rs=rs):
            return statistics.fmean(r[key] for r in rs)

        print(f"| {name} | {mean('calls'):.1f} | {mean('t'):.2f} | {mean('speedup'):.2f}x | {mean('psnr'):.2f} | "
              f"{mean('ssim'):.4f} | {mean('lpips'):.4f} |")


if __name__ == "__main__":
    main()
