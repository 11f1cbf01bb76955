"""Seconds per training step of the built-in model on this CPU, float32 against bf16 autocast (``--autocast``).

    OMP_NUM_THREADS=1 python bench/bench_train_step.py --threads 1

One optimiser step of ``models/train.py`` (batch 32, random data) at 32 and 64 px; the two precisions alternate
(``timing.alternating_medians``), each timed call runs ``--steps`` steps after a warm-up step.
"""

from __future__ import annotations

import argparse

import torch
from timing import alternating_medians

from turbosample.models.dit import DiTConfig, TinyDiT
from turbosample.models.train import make_step


def stepper(size: int, batch: int, autocast: bool, steps: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen)
    t, cond, target = torch.rand(batch, generator=gen) * 1000, torch.randn(batch, 1, 384, generator=gen), x.flip(0)
    model = TinyDiT(DiTConfig(text_scale=19.6))
    step = make_step(model, torch.optim.AdamW(model.parameters(), lr=1e-4), autocast, torch.device("cpu"))
    step(x, t, cond, target)  # warm-up
    return lambda: [step(x, t, cond, target) for _ in range(steps)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, {args.threads} thread(s), median of {args.repeats} alternating rounds of "
          f"{args.steps} steps\n\n| size | float32 s/step | bf16 autocast s/step | speed-up |\n"
          "| --- | --- | --- | --- |")
    for size in (32, 64):
        runs = {name: stepper(size, args.batch, autocast, args.steps) for name, autocast in (("fp32", False),
                                                                                              ("bf16", True))}
        med = {k: v / args.steps for k, v in alternating_medians(runs, args.repeats).items()}
        print(f"| {size} | {med['fp32']:.3f} | {med['bf16']:.3f} | {med['fp32'] / med['bf16']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
