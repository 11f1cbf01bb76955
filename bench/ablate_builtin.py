"""Small CPU ablations of the built-in model's recipe: what limits memorising the emoji set?

    python bench/ablate_builtin.py --data-pack /tmp/emoji_pack.npz --subset 256 --out bench/out/ablate.jsonl \
        --variant "w64d4:--width 64 --depth 4 --heads 2" --variant "w128d6:" ...

Every variant trains ``models/train.py`` on the same random subset of images at 32 px (phase 1 only) with the same
step count and batch unless its own arguments say otherwise, then draws each subset image's name (seed fixed,
Euler 28 steps, CFG 4, 32 px unless ``--eval-sizes`` says otherwise) and ranks the named image among all training
images by pixel distance at 32x32 (as ``bench/bench_builtin.py`` does). One JSON line per variant and evaluation
size: top-1 / top-10 / median rank, loss, train minutes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_builtin import draw_with_weights, split_by_flag, top_rates

from turbosample.models.train import parse_args as train_args
from turbosample.models.train import train
from turbosample.models.train_data import load_pack


def ranks(images: torch.Tensor, generated: torch.Tensor, targets: torch.Tensor) -> list[int]:
    ref = F.interpolate(images, size=(32, 32), mode="area").flatten(1)
    gen = F.interpolate(generated, size=(32, 32), mode="area").flatten(1)
    d = torch.cdist(gen, ref)
    return [int((d[i] < d[i, t]).sum()) for i, t in enumerate(targets.tolist())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-pack", required=True)
    ap.add_argument("--subset", type=int, default=256)
    ap.add_argument("--eval", type=int, default=64, help="subset images drawn for the evaluation")
    ap.add_argument("--common", default="--steps-low 1500 --steps-mixed 0 --batch 64 --warmup 100 --lr 1e-3",
                    help="train.py arguments shared by all variants")
    ap.add_argument("--variant", action="append", required=True, help="'name:extra train.py arguments'")
    ap.add_argument("--eval-sizes", type=int, nargs="+", default=[32],
                    help="draw the evaluation at these sizes (one JSON line per variant and size)")
    ap.add_argument("--workdir", default="/tmp/ablate")
    ap.add_argument("--out", default="bench/out/ablate.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pack = load_pack(Path(args.data_pack))
    images = pack.images_float()
    gen = torch.Generator().manual_seed(1)  # train.py --subset uses seed + 1 = 1 with the default seed
    subset = torch.randperm(len(images), generator=gen)[:args.subset].sort().values
    chosen = subset[torch.randperm(len(subset), generator=torch.Generator().manual_seed(2))[:args.eval]]
    names = pack.embeddings[pack.starts[chosen]]  # first variant = the plain name ("{}" template)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for spec in args.variant:
        name, _, extra = spec.partition(":")
        weights = Path(args.workdir) / f"{name}.safetensors"
        argv = ["--data-pack", args.data_pack, "--subset", str(args.subset), "--out", str(weights),
                "--checkpoint-every", "0", "--log-every", "500", *shlex.split(args.common), *shlex.split(extra)]
        start = time.time()
        info = train(train_args(argv))
        minutes = round((time.time() - start) / 60, 2)
        for size in args.eval_sizes:
            r = ranks(images, draw_with_weights(weights, names, size, 4.0, 0), chosen)
            row = {"variant": name, "args": " ".join(argv[8:]), "train_minutes": minutes,
                   "final_loss": info["final_loss"], "images_seen": info["images_seen"], "eval_size": size,
                   **top_rates(r),
                   "median_rank": statistics.median(r), "n": len(r), "subset": args.subset,
                   **({} if pack.tone is None else split_by_flag(r, pack.tone[chosen].tolist()))}
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
