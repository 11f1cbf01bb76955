"""DualFast vs its base sampler on the built-in model: paired PSNR/SSIM to a high-step reference at 4-10 calls.

    OMP_NUM_THREADS=1 python bench/bench_dualfast.py [--sweep]

Same prompts, seeds and schedule for every run; the reference is Heun with --ref-steps steps. DualFast
costs no extra model call, so at equal NFE the wall times agree and the comparison is quality at equal cost.
``--sweep`` prints the coefficient sweep used to choose ``samplers.dualfast.DEFAULT_COEFFICIENT``.
LPIPS is not reported: no LPIPS weights are available offline.
"""

from __future__ import annotations

import argparse

import torch
from builtin_runs import PROMPTS, conditions, generate
from metrics import score

from turbosample.nodes.builtin_nodes import load_builtin_model
from turbosample.samplers.dualfast import (
    DEFAULT_COEFFICIENT,
    DEFAULT_SCHEDULE,
    DEFAULT_SCOPE,
    SCOPES,
    sample_dualfast,
)
from turbosample.samplers.registry import SAMPLERS, SamplerInfo


def dualfast(base: str, coefficient: float, schedule: str = "linear", reference: str = "previous",
             target: str = "d", scope: str | None = None) -> SamplerInfo:
    options = {"base": base, "coefficient": coefficient, "schedule": schedule, "reference": reference,
               "target": target, "scope": scope}
    return SamplerInfo(f"{base}_dualfast", sample_dualfast, 1, "bench", options)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nfe", type=int, nargs="+", default=[4, 6, 8, 10])
    ap.add_argument("--bases", nargs="+", default=["euler", "dpmpp_2m"])
    ap.add_argument("--ref-steps", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--coefficients", type=float, nargs="+", default=None,
                    help="coefficients to try (default: each base's registered default)")
    ap.add_argument("--schedule", default=DEFAULT_SCHEDULE)
    ap.add_argument("--scope", default=None, choices=SCOPES, help="default: each base's (corrector for UniPC)")
    ap.add_argument("--sweep", action="store_true", help="try several coefficients, schedules and targets")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    (model,) = load_builtin_model(1.0)
    conds = conditions(PROMPTS[:4])
    refs, ref_seconds = generate(model, SAMPLERS["heun"], args.ref_steps, conds, args.size, args.cfg)
    print(f"reference: heun {args.ref_steps} steps ({2 * args.ref_steps - 1} calls), {ref_seconds:.2f} s/image, "
          f"{args.size}px, CFG {args.cfg}, prompts {PROMPTS[:4]} (seed = index), simple schedule\n")
    if args.sweep:
        variants = [(c, s, r, t) for t in ("d", "x0") for s in ("linear", "constant") for r in ("previous",)
                    for c in (-0.3, -0.15, 0.15, 0.3, 0.6)] + [(c, "linear", "first", "d") for c in (-0.3, 0.3)]
    else:
        variants = [(c, args.schedule, "previous", "d") for c in (args.coefficients or [None])]
    print("| base | NFE | base PSNR | base SSIM | base LPIPS | base s/img | variant | DualFast PSNR | DualFast SSIM | "
          "DualFast LPIPS | DualFast s/img | dPSNR |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for base in args.bases:
        for nfe in args.nfe:
            images, base_seconds = generate(model, SAMPLERS[base], nfe, conds, args.size, args.cfg)
            base_psnr, base_ssim, base_lp = score(images, refs)
            for c, schedule, reference, target in variants:
                c = DEFAULT_COEFFICIENT.get(base, 0.0) if c is None else c
                scope = args.scope or DEFAULT_SCOPE.get(base, "all")
                info = dualfast(base, c, schedule, reference, target, scope)
                scope_label = "" if scope == "all" else f" {scope}"
                images, seconds = generate(model, info, nfe, conds, args.size, args.cfg)
                psnr, ssim, lp = score(images, refs)
                print(f"| {base} | {nfe} | {base_psnr:.2f} | {base_ssim:.4f} | {base_lp:.4f} | {base_seconds:.3f} | "
                      f"c={c:g} {schedule} {reference} {target}{scope_label} | {psnr:.2f} | {ssim:.4f} | "
                      f"{lp:.4f} | {seconds:.3f} | "
                      f"{psnr - base_psnr:+.2f} |", flush=True)


if __name__ == "__main__":
    main()
