"""Samplers on the built-in model: paired PSNR/SSIM against a high-NFE reference at a given model-call budget.

    python bench/bench_samplers.py --out bench/out/samplers.json

Same prompts, seeds and schedule family for every sampler; NFE counts the CFG-batched model calls actually
made (one call evaluates both CFG branches). The reference is Heun with --ref-steps steps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from metrics import score

from turbosample.nodes.builtin_nodes import encode_text, load_builtin_model
from turbosample.samplers.registry import SAMPLERS
from turbosample.samplers.run import sample
from turbosample.samplers.schedulers import compute_sigmas

PROMPTS = ["grinning face", "cat face", "red apple", "japan flag", "rocket", "slice of pizza", "sunflower",
           "thumbs up sign"]


def run(model, name: str, steps: int, conds, size: int, cfg: float, scheduler: str) -> tuple[list, int, float]:
    calls = 0

    def counting(forward, x, timestep, context, options):
        nonlocal calls
        calls += 1
        return forward(x, timestep, context, options)

    counted = model.with_wrapper("bench.count_calls", counting)
    sigmas = compute_sigmas(model.model_sampling, scheduler, steps)
    start = time.perf_counter()
    outs = [sample(counted, pos, neg, torch.zeros(1, 3, size, size), SAMPLERS[name], sigmas, seed=k, cfg=cfg)
            for k, (pos, neg) in enumerate(conds)]
    seconds = (time.perf_counter() - start) / len(conds)
    return [((o[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy() for o in outs], calls // len(conds), seconds


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
    (neg,) = encode_text("")
    conds = [(encode_text(p)[0], neg) for p in PROMPTS]
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
