"""DPM-Solver-v3 with statistics estimated on the built-in model vs dpmpp_2m and uni_pc at few model calls: paired
PSNR against a high-NFE reference of the same prompt and seed; prints a markdown table.

    cd bench && OMP_NUM_THREADS=2 ../.venv/bin/python bench_dpm_solver_v3.py [--nfe 5 6 8 10 --prompts 4]

Held out: the statistics are computed once, on ``--ems-prompt`` (not among the evaluated prompts) with its own
seed 100 and batch --batch, and then used for every evaluated prompt and seed; a per-prompt file (what the EMS
node makes) can only do better. ``dpm_solver_v3 (neutral)`` is the same solver with l = 1, s = 0, b = 0;
``--raw`` adds ``(raw EMS)``, the estimate without its clean-up (smooth=0, sb_margin=0).
Every sampler makes one model call per step. The default command takes about 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

from builtin_runs import PROMPTS, conditions, empty, to_image
from metrics import score

from turbosample.nodes.builtin_nodes import load_builtin_model
from turbosample.samplers.denoiser import cfg_denoiser
from turbosample.samplers.ems import estimate_ems
from turbosample.samplers.noise import seeded_noise
from turbosample.samplers.registry import SamplerInfo, get_sampler
from turbosample.samplers.run import sample
from turbosample.samplers.schedulers import compute_sigmas


def images(model, info_for, sigmas, conds, size: int, cfg: float) -> list:
    return [to_image(sample(model, pos, neg, empty(size), info_for(k), sigmas, seed=seed, cfg=cfg))
            for k, (pos, neg, seed) in enumerate(conds)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 6, 8, 10])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[11])
    ap.add_argument("--ems-prompt", default=PROMPTS[-1])
    ap.add_argument("--ref-steps", type=int, default=40)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--scheduler", default="simple")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--grid-points", type=int, default=32)
    ap.add_argument("--reduce", default="channel")
    ap.add_argument("--raw", action="store_true", help="also run the estimate without its clean-up")
    args = ap.parse_args()

    (model,) = load_builtin_model(1.0)
    ms = model.model_sampling
    prompts = [p for p in PROMPTS if p != args.ems_prompt][: args.prompts]
    conds = conditions(prompts, args.seeds)
    refs = images(model, lambda k: get_sampler("heun"), compute_sigmas(ms, "simple", args.ref_steps), conds,
                  args.size, args.cfg)
    (pos, neg, _), start = conditions([args.ems_prompt])[0], time.perf_counter()
    denoiser = cfg_denoiser(model, pos, neg, args.cfg, {"sample_sigmas": None, "run_state": {}})
    noise = seeded_noise(100, tuple(empty(args.size, args.batch).shape))
    ems = estimate_ems(denoiser, ms, noise, seed=100, grid_points=args.grid_points, reduce=args.reduce)
    ems_seconds = time.perf_counter() - start
    v3 = get_sampler("dpm_solver_v3")
    rows = {"dpmpp_2m": get_sampler("dpmpp_2m"), "uni_pc": get_sampler("uni_pc"), "dpm_solver_v3 (neutral)": v3}
    if args.raw:
        raw = estimate_ems(denoiser, ms, noise, seed=100, grid_points=args.grid_points, reduce=args.reduce,
                           smooth=0, sb_margin=0)
        rows["dpm_solver_v3 (raw EMS)"] = SamplerInfo(v3.name, v3.fn, 1, "", {"ems": raw})
    rows["dpm_solver_v3 (EMS)"] = SamplerInfo(v3.name, v3.fn, 1, "", {"ems": ems})
    print(f"reference: heun {args.ref_steps} steps (simple); prompts {prompts} x seeds {args.seeds}, {args.size} px, "
          f"CFG {args.cfg}, scheduler {args.scheduler}; EMS on held-out {args.ems_prompt!r}: batch {args.batch}, "
          f"{args.grid_points} lambdas, reduce {args.reduce}, {3 * args.grid_points} CFG calls per sample "
          f"({ems_seconds:.0f} s)\n")
    print("| sampler | " + " | ".join(f"{n} NFE PSNR / SSIM" for n in args.nfe) + " |")
    print("| --- | " + " | ".join("---" for _ in args.nfe) + " |")
    for name, info in rows.items():
        cells = []
        for nfe in args.nfe:
            sigmas = compute_sigmas(ms, args.scheduler, nfe)
            psnr, ssim, _ = score(images(model, lambda k, info=info: info, sigmas, conds, args.size, args.cfg), refs)
            cells.append(f"{psnr:.2f} / {ssim:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
