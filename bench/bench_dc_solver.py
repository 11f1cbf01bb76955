"""DC-Solver vs UniPC on the built-in model: paired PSNR to a high-step reference on held-out seeds.

    OMP_NUM_THREADS=2 python bench/bench_dc_solver.py [--nfe 5 6 8 10] [--size 32] [--cpr 3 5]

For every NFE the ratios are calibrated (samplers/dc_calibration.py, paper defaults: 10 samples, 200-step
reference) on one noise batch drawn from --calib-seed with the prompts of builtin_runs.PROMPTS; the comparison
then runs on other seeds (--seeds) for the same prompts, both samplers on the same simple schedule and CFG.
The reference is iPNDM with --ref-steps steps. dPSNR is the mean per-image difference DC - UniPC with its
standard error (paired). Both samplers make one model call per step, so the NFE is equal.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from builtin_runs import PROMPTS, conditions, empty, generate
from metrics import peak_signal_noise_ratio

from turbosample.nodes.builtin_nodes import encode_text, load_builtin_model
from turbosample.samplers.dc_calibration import calibrate_for_model, fit_cpr, predict_cpr
from turbosample.samplers.dc_solver import sample_dc_solver
from turbosample.samplers.registry import SAMPLERS, SamplerInfo


def psnr_each(images: list[np.ndarray], refs: list[np.ndarray]) -> np.ndarray:
    return np.array([peak_signal_noise_ratio(r, i, data_range=1.0) for i, r in zip(images, refs, strict=True)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 6, 8, 10])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--samples", type=int, default=10, help="calibration samples (paper: 10)")
    ap.add_argument("--calib-seed", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--ref-steps", type=int, default=200)
    ap.add_argument("--bounds", type=float, nargs=2, default=None, help="ratio search interval (default (-1, 3))")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpr", type=float, nargs="*", default=None, metavar="CFG",
                    help="also calibrate at these extra CFGs and every NFE from min to max --nfe, and evaluate "
                         "CPR ratios fitted without the evaluated NFE (leave-one-NFE-out)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    (model,) = load_builtin_model(1.0)
    prompts = [PROMPTS[k % len(PROMPTS)] for k in range(args.samples)]
    positive = [[torch.cat([encode_text(p)[0][0][0] for p in prompts]), {}]]
    (negative,) = encode_text("")
    conds = conditions(PROMPTS, seeds=args.seeds)
    refs, ref_seconds = generate(model, SAMPLERS["ipndm"], args.ref_steps, conds, args.size, args.cfg)
    print(f"built-in model, {args.size}px, CFG {args.cfg}, simple schedule; reference iPNDM {args.ref_steps} steps "
          f"({ref_seconds:.2f} s/image); calibration: {args.samples} samples (seed {args.calib_seed}); "
          f"evaluation: {len(conds)} images ({len(PROMPTS)} prompts x seeds {args.seeds})\n")

    def calibrated(nfe: int, cfg: float) -> tuple[list[float], float]:
        start = time.perf_counter()
        record = calibrate_for_model(model, positive, negative, cfg, nfe, tuple(empty(args.size).shape),
                                     samples=args.samples, seed=args.calib_seed, scheduler="simple",
                                     **({"bounds": tuple(args.bounds)} if args.bounds else {}))
        return record["ratios"], time.perf_counter() - start

    if args.cpr is not None:
        cpr_table(args, calibrated, conds, refs, model)
        return
    print("| NFE | UniPC PSNR | DC-Solver PSNR | dPSNR (paired, +- s.e.) | DC better on | calibration s | ratios |")
    print("|---|---|---|---|---|---|---|")
    for nfe in args.nfe:
        ratios, calib_seconds = calibrated(nfe, args.cfg)
        dc = SamplerInfo("dc_solver", sample_dc_solver, 1, "bench", {"ratios": ratios})
        base = psnr_each(generate(model, SAMPLERS["uni_pc"], nfe, conds, args.size, args.cfg)[0], refs)
        ours = psnr_each(generate(model, dc, nfe, conds, args.size, args.cfg)[0], refs)
        diff = ours - base
        print(f"| {nfe} | {base.mean():.2f} | {ours.mean():.2f} | {diff.mean():+.2f} +- "
              f"{diff.std(ddof=1) / np.sqrt(len(diff)):.2f} | {int((diff > 0).sum())}/{len(diff)} | "
              f"{calib_seconds:.0f} | {', '.join(f'{r:.3f}' for r in ratios[2:])} |", flush=True)


def cpr_table(args, calibrated, conds, refs, model) -> None:
    """UniPC vs calibrated DC vs CPR-predicted DC at --cfg, CPR fitted on the other NFEs (all CFGs)."""
    cfgs = sorted({args.cfg, *args.cpr})
    grid = range(min(args.nfe), max(args.nfe) + 1)
    found = {(nfe, cfg): calibrated(nfe, cfg)[0] for nfe in grid for cfg in cfgs}
    print(f"CPR fitted on NFE {min(grid)}-{max(grid)} x CFG {', '.join(f'{c:g}' for c in cfgs)} "
          f"without the evaluated NFE\n")
    print("| NFE | UniPC PSNR | DC calibrated PSNR | DC CPR PSNR | CPR - UniPC (paired, +- s.e.) | "
          "CPR - calibrated | CPR ratios |")
    print("|---|---|---|---|---|---|---|")
    for nfe in args.nfe:
        weights = fit_cpr([(n, c, r) for (n, c), r in found.items() if n != nfe])
        predicted = predict_cpr(weights, nfe, args.cfg)
        runs = {name: psnr_each(generate(model, info, nfe, conds, args.size, args.cfg)[0], refs) for name, info in (
            ("unipc", SAMPLERS["uni_pc"]),
            ("dc", SamplerInfo("dc_solver", sample_dc_solver, 1, "bench", {"ratios": found[(nfe, args.cfg)]})),
            ("cpr", SamplerInfo("dc_solver", sample_dc_solver, 1, "bench", {"ratios": predicted})))}
        diff = runs["cpr"] - runs["unipc"]
        print(f"| {nfe} | {runs['unipc'].mean():.2f} | {runs['dc'].mean():.2f} | {runs['cpr'].mean():.2f} | "
              f"{diff.mean():+.2f} +- {diff.std(ddof=1) / np.sqrt(len(diff)):.2f} | "
              f"{(runs['cpr'] - runs['dc']).mean():+.2f} | {', '.join(f'{r:.3f}' for r in predicted[2:])} |",
              flush=True)


if __name__ == "__main__":
    main()
