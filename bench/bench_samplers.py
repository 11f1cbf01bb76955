"""Samplers on the built-in model: paired PSNR/SSIM against a high-NFE reference at a given model-call budget.

    python bench/bench_samplers.py --out bench/out/samplers.json

Same prompts, seeds and schedule family for every sampler; NFE counts the CFG-batched model calls actually
made (one call evaluates both CFG branches). The reference is Heun with --ref-steps steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from builtin_runs import conditions, generate
from metrics import score

from turbosample.nodes.builtin_nodes import load_builtin_model
from turbosample.samplers.registry import SAMPLERS

PROMPTS = ["grinning face", "cat face", "red apple", "japan flag", "rocket", "slice of pizza", "sunflower",
           "thumbs up sign"]


def run(model, name: str, steps: int, conds, size: int, cfg: float, scheduler: str) -> tuple[list, int, float]:
    calls = 0

    def counting(forward, x, timestep, context, options):
        nonlocal calls
        calls += 1
        return forward(x, timestep, context, options)

    counted = model.with_wrapper("bench.count_calls", counting)
    images, seconds = generate(counted, SAMPLERS[name], steps, conds, size, cfg, scheduler)
    return images, calls // len(conds), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nfe", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--ref-steps", type=int, default=128)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--scheduler", default="simple")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/out/samplers.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    (model,) = load_builtin_model(1.0)
    conds = conditions(PROMPTS)
    refs, ref_nfe, _ = run(model, "heun", args.ref_steps, conds, args.size, args.cfg, args.scheduler)
    rows = []
    for name, info in SAMPLERS.items():
        for nfe in args.nfe:
            steps = max(1, (nfe + 1) // 2 if info.calls_per_step == 2 else nfe)  # 2-call solvers: 2 steps - 1 calls
            images, used, seconds = run(model, name, steps, conds, args.size, args.cfg, args.scheduler)
            psnr, ssim, lp = score(images, refs)
            rows.append({"sampler": name, "target_nfe": nfe, "nfe": used, "steps": steps, "psnr": round(psnr, 2),
                         "ssim": round(ssim, 4), "lpips": round(lp, 4), "seconds_per_image": round(seconds, 3)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"reference": {"sampler": "heun", "steps": args.ref_steps, "nfe": ref_nfe}, "size": args.size,
              "cfg": args.cfg, "scheduler": args.scheduler, "prompts": PROMPTS, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
