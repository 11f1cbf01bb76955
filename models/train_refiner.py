"""Distil the FlowTurbo refiner from the built-in model.

    python -m turbosample.models.train_refiner --out models/builtin_refiner.safetensors


Official recipe (``shiml20/FlowTurbo`` ``transport/transport.py`` ``training_losses``, snapshot 361b16b, read via
the fetch tool): x_t on the data/noise path, dt ~ U(0, 0.12) (one per batch), x' = x_t + dt v_t with the teacher's
v_t, loss = MSE(refiner(x', t + dt, v_t, y) + v_t, teacher(x', t + dt)), labels dropped 10 %, no CFG.

Here (as the brief asks, and because our refiner is text-free and must reproduce *guided* velocities): points x_t
come from Euler trajectories of the built-in model with CFG (scale ~ U[cfg-min, cfg-max]) on emoji-name prompts
(step counts in [min-steps, max-steps], uniform sigma grid); from every point one pair, dt ~ U(0, max-dt) per sample
toward sigma = 0, x' = x_t + dt v_t, target = the guided velocity at (x', sigma - dt);
loss = MSE(v_t + refiner(x', sigma - dt, v_t), target). Small dt covers the R block's first call (the passed
velocity is at the same sigma), larger dt its second call and the step after.
Sized for one CPU thread (defaults: about 4 minutes on the built-in model); ``--device cuda`` for a GPU.

Other flow models: ``--diffusers DIR`` distils from a diffusers SD3 / Flux transformer saved in DIR
(``save_pretrained`` layout, loaded offline) through ``accel.diffusers_adapters.DiffusersDiT``. Those models
need their own text encoders, which this command does not run: ``--context FILE`` is a safetensors file of
prompt embeddings, ``encoder_hidden_states`` (N, L, D) and ``pooled_projections`` (N, P), optionally
``negative_encoder_hidden_states`` / ``negative_pooled_projections`` (one row; zeros when absent). The refiner
gets the latent channels, patch 2 and the transformer's heads (``--width`` sets its width, default the
transformer's inner width) and is tied to the transformer's weights like the built-in one.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..samplers.denoiser import DiffusionModel, cfg_denoiser
from ..samplers.model_sampling import FlowSampling
from .builtin import DEFAULT_SIZE, MODEL_ID, cached_model, latent_space
from .emoji_data import fetch_package
from .refiner import RefinerConfig, VelocityRefiner, save_refiner
from .text import encode_prompts


def emoji_names(data_cache: Path) -> list[str]:
    entries = json.loads((fetch_package(data_cache) / "emoji.json").read_text())
    return sorted({(e.get("name") or e["short_name"]).lower().strip() for e in entries} - {""})


@dataclass
class Teacher:
    """What the distillation needs of a base flow model: the model, its latent channels, the refiner shape and a
    draw of (positive, negative) CONDITIONING for a batch of trajectories."""

    model: DiffusionModel
    channels: int
    config: RefinerConfig
    conditions: Callable[[int, torch.Generator], tuple[list, list]]


@torch.no_grad()
def distillation_pairs(teacher: Teacher, args: argparse.Namespace, gen: torch.Generator,
                       device: torch.device) -> tuple[torch.Tensor, ...]:
    """(x', sigma', v_t, v(x', sigma')) for x' = x_t + dt v_t one random step (dt ~ U(0, max-dt)) off an Euler
    trajectory point (x_t, sigma_t, v_t); every velocity is the base model's with CFG."""
    xs, ss, us, ts = [], [], [], []
    for _ in range(args.batches):
        b = args.traj_batch
        positive, negative = teacher.conditions(b, gen)
        cfg = args.cfg_min + (args.cfg_max - args.cfg_min) * torch.rand(1, generator=gen).item()
        steps = int(torch.randint(args.min_steps, args.max_steps + 1, (1,), generator=gen))
        denoise = cfg_denoiser(teacher.model, positive, negative, cfg)

        def velocity(x: torch.Tensor, sigma: torch.Tensor, denoise=denoise) -> torch.Tensor:
            return (x - denoise(x, sigma)) / sigma[:, None, None, None]

        sigmas = torch.linspace(1, 0, steps + 1, device=device)
        x = torch.randn(b, teacher.channels, args.size, args.size, generator=gen).to(device)
        for i in range(steps):  # the trajectory never visits sigma = 0
            sigma = sigmas[i] * x.new_ones(b)
            v = velocity(x, sigma)
            dt = (args.max_dt * torch.rand(b, generator=gen).to(device)).minimum(sigma - args.min_sigma).clamp_min(0)
            x_next, sigma_next = x - dt[:, None, None, None] * v, sigma - dt
            xs.append(x_next)
            ss.append(sigma_next)
            us.append(v)
            ts.append(velocity(x_next, sigma_next))
            x = x + v * (sigmas[i + 1] - sigmas[i])
    return tuple(torch.cat(t) for t in (xs, ss, us, ts))


def builtin_teacher(args: argparse.Namespace, device: torch.device) -> Teacher:
    """The built-in model on emoji-name prompts (the shipped refiner's recipe)."""
    net = cached_model(args.base).to(device)
    model = DiffusionModel(net, FlowSampling(shift=1.0), name=MODEL_ID)
    names = emoji_names(Path(args.data_cache))
    chosen = random.sample(names, min(args.prompts, len(names)))
    emb = torch.cat([encode_prompts(chosen[i:i + 256]) for i in range(0, len(chosen), 256)])
    null = [[encode_prompts([""])[:, None, :].to(device), {}]]

    def conditions(b: int, gen: torch.Generator) -> tuple[list, list]:
        idx = torch.randint(0, emb.shape[0], (b,), generator=gen)
        return [[emb[idx][:, None, :].to(device), {}]], null

    channels = net.config.in_channels
    config = RefinerConfig(channels=channels, width=args.width or net.config.width, heads=net.config.heads,
                           patch_size=net.config.patch_size, base_grid=net.config.base_grid)
    if args.size is None:  # the latent side of a default-size image
        args.size = latent_space(args.base).latent_shape(1, DEFAULT_SIZE, DEFAULT_SIZE)[-1]
    return Teacher(model, channels, config, conditions)


def load_diffusers_transformer(folder: Path) -> torch.nn.Module:
    """A diffusers SD3 / Flux transformer from a local ``save_pretrained`` folder (class read from config.json)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} is not a diffusers model folder (no config.json)")
    class_name = json.loads(config_file.read_text()).get("_class_name")
    if class_name not in ("SD3Transformer2DModel", "FluxTransformer2DModel"):
        raise ValueError(f"{folder}: {class_name!r} is not a supported flow transformer; use an "
                         "SD3Transformer2DModel or FluxTransformer2DModel folder")
    import diffusers

    return getattr(diffusers, class_name).from_pretrained(folder, local_files_only=True).eval()


def diffusers_teacher(args: argparse.Namespace, device: torch.device) -> Teacher:
    """A diffusers SD3 / Flux transformer on the prompt embeddings of ``--context``."""
    from safetensors.torch import load_file

    from ..accel.diffusers_adapters import DiffusersDiT

    if args.size is None:
        raise ValueError("--diffusers needs --size: the latent side to distil at (image side / the VAE's factor)")
    if not args.context:
        raise ValueError("--diffusers needs --context: a safetensors file of prompt embeddings "
                         "(encoder_hidden_states, pooled_projections), since this command runs no text encoder")
    transformer = load_diffusers_transformer(Path(args.diffusers)).to(device)
    ctx = load_file(args.context)
    missing = {"encoder_hidden_states", "pooled_projections"} - set(ctx)
    if missing:
        raise ValueError(f"{args.context} lacks {', '.join(sorted(missing))}")
    keys = ("encoder_hidden_states", "pooled_projections")
    negative = {k: ctx.get(f"negative_{k}", torch.zeros_like(ctx[k][:1]))[:1].to(device) for k in keys}
    model = DiffusionModel(DiffusersDiT(transformer), FlowSampling(shift=args.shift),
                           name=f"diffusers:{type(transformer).__name__}")
    cfg = transformer.config
    flux = type(transformer).__name__ == "FluxTransformer2DModel"
    channels = cfg.in_channels // 4 if flux else cfg.in_channels
    heads = cfg.num_attention_heads

    def conditions(b: int, gen: torch.Generator) -> tuple[list, list]:
        idx = torch.randint(0, ctx["encoder_hidden_states"].shape[0], (b,), generator=gen)
        return [[{k: ctx[k][idx].to(device) for k in keys}, {}]], [[negative, {}]]

    config = RefinerConfig(channels=channels, patch_size=2, width=args.width or heads * cfg.attention_head_dim,
                           heads=heads, base_grid=max(1, args.size // 2))
    return Teacher(model, channels, config, conditions)


def pairs(data: tuple, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A random batch of (x', sigma', v_t, target)."""
    idx = torch.randint(0, data[0].shape[0], (batch,), generator=gen).to(data[0].device)
    return tuple(t[idx] for t in data)


def evaluate_loss(refiner: VelocityRefiner, batches: list) -> tuple[float, float]:
    """(refiner MSE, identity MSE = reusing v_k unchanged) on held-out pairs."""
    mine = base = 0.0
    with torch.no_grad():
        for x, s, u, t in batches:
            mine += F.mse_loss(u + refiner(x, s, u), t).item()
            base += F.mse_loss(u, t).item()
    return mine / len(batches), base / len(batches)


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start = time.time()
    teacher = diffusers_teacher(args, device) if args.diffusers else builtin_teacher(args, device)
    data = distillation_pairs(teacher, args, gen, device)
    cut = data[0].shape[0] // 10  # held-out pairs come from the first trajectory batches
    val = [tuple(t[k:k + args.batch] for t in data) for k in range(0, cut, args.batch)]
    data = tuple(t[cut:] for t in data)
    data_minutes = (time.time() - start) / 60
    print(json.dumps({"pairs": data[0].shape[0], "data_minutes": round(data_minutes, 2)}), flush=True)
    refiner = VelocityRefiner(teacher.config).to(device)
    opt = torch.optim.AdamW(refiner.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warmup)
                                              * 0.5 * (1 + math.cos(math.pi * k / args.steps)))
    for step in range(args.steps):
        x, s, u, t = pairs(data, args.batch, gen)
        loss = F.mse_loss(u + refiner(x, s, u), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(refiner.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(json.dumps({"step": step, "loss": round(loss.item(), 5),
                              "minutes": round((time.time() - start) / 60, 2)}), flush=True)
    refiner.eval()
    val_loss, identity_loss = evaluate_loss(refiner, val)
    info = {"base_model": teacher.model.name, "val_mse": round(val_loss, 6),
            "identity_val_mse": round(identity_loss, 6),
            "params": sum(p.numel() for p in refiner.parameters()),
            "train_minutes": round((time.time() - start) / 60, 1),
            "device": f"cpu x{args.threads} threads" if device.type == "cpu" else torch.cuda.get_device_name(device),
            "args": vars(args)}
    save_refiner(refiner.cpu(), Path(args.out), teacher.model, info)
    print(json.dumps(info), flush=True)
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="models/builtin_refiner.safetensors")
    ap.add_argument("--base", default=None, help="built-in model weights (default: the shipped ones)")
    ap.add_argument("--diffusers", default=None, metavar="DIR",
                    help="distil from a diffusers SD3 / Flux transformer folder instead of the built-in model")
    ap.add_argument("--context", default=None, metavar="FILE",
                    help="with --diffusers: safetensors of prompt embeddings (see the module docstring)")
    ap.add_argument("--shift", type=float, default=3.0, help="with --diffusers: the model's flow shift")
    ap.add_argument("--width", type=int, default=None, help="refiner width (default: the base model's)")
    ap.add_argument("--data-cache", default=str(Path.home() / ".cache" / "turbosample" / "emoji"))
    ap.add_argument("--prompts", type=int, default=400, help="emoji names drawn for the trajectories")
    ap.add_argument("--batches", type=int, default=200, help="trajectory batches")
    ap.add_argument("--traj-batch", type=int, default=8)
    ap.add_argument("--min-steps", type=int, default=6)
    ap.add_argument("--max-steps", type=int, default=12)
    ap.add_argument("--max-dt", type=float, default=0.15, help="largest sigma step off the trajectory")
    ap.add_argument("--min-sigma", type=float, default=0.02, help="no pair below this sigma")
    ap.add_argument("--cfg-min", type=float, default=1.0)
    ap.add_argument("--cfg-max", type=float, default=7.0)
    ap.add_argument("--size", type=int, default=None,
                    help="latent side (default: the built-in model's at 64 px; required with --diffusers)")
    ap.add_argument("--steps", type=int, default=4000, help="optimiser steps")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (random draws stay on the CPU generator)")
    return ap.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
