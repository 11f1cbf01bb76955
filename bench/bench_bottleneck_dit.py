"""Bottleneck Sampling timing on diffusers SD3- and Flux-shaped transformers with random weights (timing only).

    python bench/bench_bottleneck_dit.py [--latent 64] [--steps 28] [--repeats 3] [--threads 2]

The stand-in for the GPU table of issue 4 on a machine without one: random weights make fidelity meaningless, so
only wall time is compared. Each model runs the base sampler at full cost, Bottleneck Sampling with its defaults
(full -> half -> full latent size, 0.68 of the steps) and the base sampler with the step count of Bottleneck's
measured time; timing as medians of ``--repeats`` alternating rounds, CFG batched (2 rows per call).
"""

from __future__ import annotations

import argparse

import torch
from timing import alternating_medians

from turbosample.accel.diffusers_adapters import DiffusersDiT
from turbosample.samplers.bottleneck import PAPER_STEP_BUDGET, budget_steps, sample_bottleneck, split_steps
from turbosample.samplers.denoiser import DiffusionModel
from turbosample.samplers.model_sampling import FlowSampling
from turbosample.samplers.registry import SAMPLERS, SamplerInfo
from turbosample.samplers.run import sample
from turbosample.samplers.schedulers import compute_sigmas

TEXT_TOKENS, TEXT_DIM, POOLED_DIM = 64, 256, 128


def make_model(kind: str, heads: int, head_dim: int, layers: int, latent: int) -> torch.nn.Module:
    """A random-weight diffusers transformer of the named shape (16 latent channels, patch 2 like the real ones)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    torch.manual_seed(0)
    if kind == "flux":  # one third double-stream blocks, the rest single-stream, as in FLUX.1 (19 + 38)
        double = max(1, layers // 3)
        rope_t = head_dim // 8  # FLUX.1's split of a 128-wide head is (16, 56, 56)
        rope = (rope_t, (head_dim - rope_t) // 2, (head_dim - rope_t) // 2)
        return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=double,
                                      num_single_layers=layers - double, attention_head_dim=head_dim,
                                      num_attention_heads=heads, joint_attention_dim=TEXT_DIM,
                                      pooled_projection_dim=POOLED_DIM,
                                      axes_dims_rope=rope).eval()
    return SD3Transformer2DModel(sample_size=latent, patch_size=2, in_channels=16, num_layers=layers,
                                 attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=TEXT_DIM,
                                 caption_projection_dim=heads * head_dim, pooled_projection_dim=POOLED_DIM,
                                 out_channels=16, pos_embed_max_size=2 * latent).eval()


def conditioning(seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [[{"encoder_hidden_states": torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=g),
              "pooled_projections": torch.randn(1, POOLED_DIM, generator=g)}, {}]]


def time_model(model: DiffusionModel, base: SamplerInfo, bottleneck: SamplerInfo, steps: int, side: int,
               repeats: int) -> tuple[dict[str, float], int]:
    """Median seconds of the full-cost run, Bottleneck and the equal-time run, and the equal-time step count."""
    pos, neg = conditioning(1), conditioning(2)
    latent = torch.zeros(1, 16, side, side)

    def run(info: SamplerInfo, n: int) -> torch.Tensor:
        with torch.no_grad():
            return sample(model, pos, neg, latent, info, compute_sigmas(model.model_sampling, "simple", n), seed=0,
                          cfg=4.0)

    run(base, 2)  # warm-up
    times = alternating_medians({"full": lambda: run(base, steps), "bottleneck": lambda: run(bottleneck, steps)},
                                repeats)
    equal = max(1, round(steps * times["bottleneck"] / times["full"]))
    times["equal"] = alternating_medians({"equal": lambda: run(base, equal)}, repeats)["equal"]
    return times, equal


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["sd3", "flux"], choices=["sd3", "flux"])
    ap.add_argument("--latent", type=int, default=64, help="latent side (x 8 = image side)")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base", default="euler")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = SAMPLERS[args.base]
    bottleneck = SamplerInfo("bottleneck", sample_bottleneck, 1, "", {"base": args.base, "multiple": 2})
    split = split_steps(budget_steps(args.steps, PAPER_STEP_BUDGET, 3), 3)
    print(f"latent {args.latent}x{args.latent}x16 ({8 * args.latent} px), {args.steps} steps, {args.base}, CFG 4 "
          f"batched, {args.heads} heads x {args.head_dim}, {args.layers} blocks, random weights, "
          f"{args.threads} threads, medians of {args.repeats} alternating rounds\n")
    print("| model | parameters | method | model calls (full + low res) | s/image | speedup vs full |")
    print("|---|---|---|---|---|---|")
    for kind in args.models:
        transformer = make_model(kind, args.heads, args.head_dim, args.layers, args.latent)
        params = sum(p.numel() for p in transformer.parameters())
        model = DiffusionModel(DiffusersDiT(transformer), FlowSampling(shift=3.0))
        times, equal = time_model(model, base, bottleneck, args.steps, args.latent, args.repeats)
        rows = [(f"{args.base} full cost", f"{args.steps}", times["full"]),
                ("bottleneck defaults", f"{split[0] + split[2]} + {split[1]}", times["bottleneck"]),
                (f"{args.base} {equal} steps (equal time)", f"{equal}", times["equal"])]
        for label, calls, seconds in rows:
            print(f"| {kind} | {params / 1e6:.1f} M | {label} | {calls} | {seconds:.2f} | "
                  f"{times['full'] / seconds:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
