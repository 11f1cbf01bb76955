"""Train the built-in model: ``python -m turbosample.models.train --out models/builtin_emoji.safetensors``.

Rectified flow (x_t = (1 - s) x0 + s noise, target v = noise - x0), logit-normal s, 10 % of prompts
dropped to the null condition for CFG, AdamW with warm-up and cosine decay, EMA weights saved.
Phase 1 trains at 32x32 only; phase 2 mixes in 64x64 batches so both resolutions are learned.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .builtin import MODEL_ID, load_model, read_metadata, save_weights
from .dit import DiTConfig, TinyDiT
from .emoji_data import PACKAGE, fetch_package, load_emoji
from .text import TEXT_ENCODER_ID, encode_prompts


def build_text_table(prompts: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All prompt variants encoded once: embeddings (V, D), first variant index and count per image."""
    flat = [v for variants in prompts for v in variants]
    emb = torch.cat([encode_prompts(flat[i:i + 256]) for i in range(0, len(flat), 256)])
    counts = torch.tensor([len(v) for v in prompts])
    starts = torch.cumsum(counts, 0) - counts
    return emb, starts, counts


def sample_batch(images: torch.Tensor, text: tuple, batch: int, size: int, drop: float, gen: torch.Generator):
    emb, starts, counts = text
    idx = torch.randint(0, images.shape[0], (batch,), generator=gen).to(images.device)
    x0 = images[idx]
    if size != x0.shape[-1]:
        x0 = F.interpolate(x0, size=(size, size), mode="area")
    pick = starts[idx] + (torch.rand(batch, generator=gen).to(emb.device) * counts[idx]).long()
    cond = emb[pick] * (torch.rand(batch, 1, generator=gen).to(emb.device) >= drop)
    return x0, cond[:, None, :]


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images, prompts, _ = load_emoji(fetch_package(Path(args.data_cache)))
    text = tuple(t.to(device) for t in build_text_table(prompts))
    images = images.to(device)
    print(f"{images.shape[0]} images, {text[0].shape[0]} prompt variants", flush=True)
    config = DiTConfig(width=args.width, depth=args.depth, heads=args.heads)
    model = TinyDiT(config)
    if args.init:
        model.load_state_dict(load_model(args.init).state_dict())
    model.to(device)
    ema = TinyDiT(config).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    total = args.steps_low + args.steps_mixed
    start, seen, log = time.time(), 0, []
    for step in range(total):
        high = step >= args.steps_low and torch.rand(1, generator=gen).item() < args.p_high
        size = 64 if high else 32
        batch = args.batch_high if high else args.batch
        x0, cond = sample_batch(images, text, batch, size, args.cond_drop, gen)
        s = torch.sigmoid(torch.randn(batch, generator=gen)).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        xt = (1 - s)[:, None, None, None] * x0 + s[:, None, None, None] * noise
        loss = F.mse_loss(model(xt, s * 1000, cond), noise - x0)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, args.lr, args.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        seen += batch
        if step % 50 == 0 or step == total - 1:
            entry = {"step": step, "size": size, "loss": round(loss.item(), 4),
                     "minutes": round((time.time() - start) / 60, 2)}
            log.append(entry)
            print(json.dumps(entry), flush=True)
        if args.checkpoint_every and step and step % args.checkpoint_every == 0:
            save_weights(ema, Path(args.out).with_suffix(".partial.safetensors"), {"steps_done": step})
    minutes = (time.time() - start) / 60
    info = {"model_id": MODEL_ID, "data": PACKAGE, "init": args.init and read_info(args.init),
            "text_encoder": TEXT_ENCODER_ID, "steps": total,
            "images_seen": seen, "train_minutes": round(minutes, 1),
            "device": f"cpu x{args.threads} threads" if device.type == "cpu" else torch.cuda.get_device_name(device),
            "args": vars(args)}
    save_weights(ema, Path(args.out), info)
    print(json.dumps(info), flush=True)


def read_info(path: str) -> dict:
    """Training record of the weights a stage starts from (kept in the new file's metadata)."""
    return json.loads(read_metadata(Path(path)).get("turbosample.info", "{}"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="models/builtin_emoji.safetensors")
    ap.add_argument("--data-cache", default=str(Path.home() / ".cache" / "turbosample" / "emoji"))
    ap.add_argument("--steps-low", type=int, default=1200, help="phase 1 steps at 32x32")
    ap.add_argument("--steps-mixed", type=int, default=1300, help="phase 2 steps mixing 32x32 and 64x64")
    ap.add_argument("--p-high", type=float, default=0.4, help="share of 64x64 batches in phase 2")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batch-high", type=int, default=48)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--cond-drop", type=float, default=0.1)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint-every", type=int, default=250)
    ap.add_argument("--init", help="start from these built-in weights (a fine-tuning stage)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (random draws stay on the CPU generator)")
    return ap.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
