"""Train the small autoencoder on the built-in model's images:
``python -m turbosample.models.train_autoencoder --data-pack PACK --out ae.safetensors``.

L1 + MSE reconstruction at 64 px, Gaussian noise on the latents (relative to their spread) so the decoder forgives
a diffusion model's errors, AdamW with warm-up and cosine decay. After training the latent scale is measured over
the whole set and stored in the config; the record holds the reconstruction PSNR and how often a reconstruction's
nearest training image (pixel MSE at 32x32, as ``bench/bench_builtin.py`` ranks) is its own original, the ceiling
of any latent model's top-1 on that benchmark.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .autoencoder import Autoencoder, AutoencoderConfig, decode_all, encode_all, save_autoencoder
from .train import lr_at
from .train_data import load_pack


@torch.no_grad()
def self_rank_rate(images: torch.Tensor, recon: torch.Tensor) -> float:
    """Share of reconstructions whose nearest image (MSE at 32x32) is their own original."""
    ref = F.interpolate(images, size=(32, 32), mode="area").flatten(1)
    rec = F.interpolate(recon, size=(32, 32), mode="area").flatten(1)
    hits = 0
    for i in range(0, len(rec), 512):
        d = torch.cdist(rec[i:i + 512], ref)
        own = d[torch.arange(len(d)), torch.arange(i, i + len(d))]
        hits += int(((d < own[:, None]).sum(1) == 0).sum())
    return hits / len(rec)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a, b).item()
    return float(10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-12))))  # range [-1, 1]: peak-to-peak 2


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    start = time.time()
    images = load_pack(Path(args.data_pack)).images_float()
    model = Autoencoder(AutoencoderConfig(latent_channels=args.latent_channels, downsample=args.downsample,
                                          channels=args.channels))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(args.seed)
    log = []
    for i in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(i, args.steps, args.lr, args.warmup)
        x = images[torch.randint(0, len(images), (args.batch,), generator=gen)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast):
            z = model.encoder(x)
            noise = torch.randn(z.shape, generator=gen) * (args.latent_noise * z.detach().float().std())
            out = model.decoder(z + noise.to(z.dtype)).float()
        loss = F.l1_loss(out, x) + F.mse_loss(out, x) + args.latent_penalty * z.float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i % args.log_every == 0 or i == args.steps - 1:
            entry = {"step": i, "loss": round(loss.item(), 4), "minutes": round((time.time() - start) / 60, 2)}
            log.append(entry)
            print(json.dumps(entry), flush=True)
    model.eval()
    raw = encode_all(model, images)
    model.config = replace(model.config, latent_scale=float(raw.std()))
    recon = decode_all(model, encode_all(model, images))
    info = {"data": args.data_pack, "images": len(images), "steps": args.steps, "batch": args.batch,
            "train_minutes": round((time.time() - start) / 60, 1), "final_loss": log[-1]["loss"],
            "psnr_db": round(psnr(recon, images), 2), "self_rank_top1": round(self_rank_rate(images, recon), 4),
            "args": vars(args)}
    save_autoencoder(model, Path(args.out), info)
    print(json.dumps(info), flush=True)
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-pack", required=True, help="a pack written by models/train.py --write-data-pack")
    ap.add_argument("--out", required=True)
    ap.add_argument("--latent-channels", type=int, default=8)
    ap.add_argument("--downsample", type=int, default=8)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--latent-noise", type=float, default=0.1, help="latent noise, relative to the latents' std")
    ap.add_argument("--latent-penalty", type=float, default=1e-4, help="weight of the latents' mean square")
    ap.add_argument("--autocast", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=100)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
