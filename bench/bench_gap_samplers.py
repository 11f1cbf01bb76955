"""GHVB / PLMS-HB momentum and Time-Shift vs their base samplers on the built-in model (paired PSNR/SSIM).

    OMP_NUM_THREADS=1 python bench/bench_gap_samplers.py [--size 32] [--nfe 6 8 12]

Reference: Heun with --ref-steps steps; same prompts, seeds and schedule for every run. Only deterministic samplers
are scored: Restart and EDM churn draw fresh noise, so they end at a different sample than the ODE reference and
per-seed PSNR says nothing about them (their claim is about the sample distribution; see tests/test_gap_samplers.py).
"""

from __future__ import annotations

import argparse

import torch
from builtin_runs import PROMPTS, conditions, generate
from metrics import score

from turbosample.nodes.builtin_nodes import load_builtin_model
from turbosample.samplers.registry import SAMPLERS

GROUPS = {"momentum": ["ipndm", "ghvb", "plms_hb", "euler"],
          "time_shift": ["euler", "euler_time_shift", "dpmpp_2m", "dpmpp_2m_time_shift"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nfe", type=int, nargs="+", default=[6, 8, 12])
    ap.add_argument("--ref-steps", type=int, default=100)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--prompts", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    (model,) = load_builtin_model(1.0)
    conds = conditions(PROMPTS[:args.prompts])
    refs, _ = generate(model, SAMPLERS["heun"], args.ref_steps, conds, args.size, args.cfg)
    print(f"reference heun {args.ref_steps} steps, {args.size}px, CFG {args.cfg}, {len(conds)} prompts, simple")
    print("| group | NFE | sampler | PSNR | SSIM |")
    print("|---|---|---|---|---|")
    for group, names in GROUPS.items():
        for nfe in args.nfe:
            for name in names:
                images, _ = generate(model, SAMPLERS[name], nfe, conds, args.size, args.cfg)
                psnr, ssim, _ = score(images, refs)
                print(f"| {group} | {nfe} | {name} | {psnr:.2f} | {ssim:.4f} |", flush=True)


if __name__ == "__main__":
    main()
