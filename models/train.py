"""Train the built-in model: ``python -m turbosample.models.train --out models/builtin_emoji.safetensors``.

Rectified flow (x_t = (1 - s) x0 + s noise, target v = noise - x0), logit-normal s, prompts dropped to the null
condition for CFG, the unit-length prompt embedding scaled to unit-size components (``--text-scale``; a fine-tune
from weights of another scale folds the ratio into the first text layer), AdamW with warm-up and cosine decay, EMA
weights saved (float16 by default, the training record in the metadata); ``--grow`` deepens ``--init`` weights
with new zero-gated blocks, so a fine-tune can add capacity without changing where it starts. Phase 1 trains at
32x32 only; phase 2 mixes in 64x64 batches so both resolutions are learned. ``--autoencoder`` trains on the 8x8
latents of the 64 px images instead (``models/train_autoencoder.py``; the shipped weights' recipe), and with
``--latent-low-res`` the plan's 32 px steps on the 4x4 latents of the 32 px images.

On a GPU the whole data set lives on the device and every random draw (images, prompt variants, CFG drop, s,
noise) comes from one seeded generator on the device; the 32/64 px plan of all steps is drawn up front, the model
runs under bf16 autocast and the loop only syncs with the host when it logs. ``--minutes`` fits the step counts to a
wall-clock budget after timing a few steps of each size. A GPU box without npm or the text encoder gets the data
from ``--data-pack`` (written here by ``--write-data-pack``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .builtin import MODEL_ID, load_model, read_metadata, save_weights
from .dit import DiTConfig, TinyDiT
from .text import TEXT_DIM
from .train_data import TEMPLATE_SETS, TrainingData, build_training_data, load_pack, save_pack


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def size_plan(steps_low: int, steps_mixed: int, p_high: float, seed: int) -> torch.Tensor:
    """(steps,) bool, True = a 64 px batch; drawn up front on the CPU so the loop never asks the device."""
    gen = torch.Generator().manual_seed(seed)
    mixed = torch.rand(steps_mixed, generator=gen) < p_high
    return torch.cat([torch.zeros(steps_low, dtype=torch.bool), mixed])


class DeviceData:
    """The training set on the device, drawn from with a device generator."""

    def __init__(self, data: TrainingData, device: torch.device, seed: int, tone_weight: float = 1.0,
                 latents: tuple[torch.Tensor, torch.Tensor] | None = None):
        if latents is None:
            self.high = data.images_float(device)
            self.low = F.interpolate(self.high, size=(32, 32), mode="area")
        else:  # latent space: (64 px latents, 32 px latents or the same 64 px ones again)
            self.high, self.low = (t.to(device) for t in latents)
        self.emb = data.embeddings.to(device).float()
        self.starts, self.counts = data.starts.to(device), data.counts.to(device)
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.device = device
        self.draw_weights = None  # uniform over images unless skin-tone variants are weighted
        if tone_weight != 1.0:
            if data.tone is None:
                raise ValueError("--tone-weight needs a data pack with skin-tone flags (write it again with "
                                 "--write-data-pack)")
            self.draw_weights = torch.where(data.tone, tone_weight, 1.0).float().to(device)

    def batch(self, size: int, high: bool, drop: float) -> tuple[torch.Tensor, ...]:
        """x_t, s * 1000, the prompt condition (B, 1, D) and the velocity target of one batch."""
        g, d = self.gen, self.device
        images = self.high if high else self.low
        if self.draw_weights is None:
            idx = torch.randint(0, images.shape[0], (size,), generator=g, device=d)
        else:
            idx = torch.multinomial(self.draw_weights, size, replacement=True, generator=g)
        x0 = images[idx]
        pick = self.starts[idx] + (torch.rand(size, generator=g, device=d) * self.counts[idx]).long()
        keep = torch.rand(size, 1, generator=g, device=d) >= drop
        cond = (self.emb[pick] * keep)[:, None, :]
        s = torch.sigmoid(torch.randn(size, generator=g, device=d))
        noise = torch.randn(x0.shape, generator=g, device=d)
        sv = s[:, None, None, None]
        return (1 - sv) * x0 + sv * noise, s * 1000, cond, noise - x0


def make_step(model: TinyDiT, opt: torch.optim.Optimizer, autocast: bool, device: torch.device):
    """One optimiser step; returns the loss as a device tensor (no host sync)."""
    params = [p for p in model.parameters() if p.requires_grad]

    def step(xt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            pred = model(xt, t, cond)
        loss = F.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.detach()

    return step


def fit_steps(args: argparse.Namespace, timing: dict[str, float]) -> tuple[int, int]:
    """(steps_low, steps_mixed) for ``--minutes``: the phases keep the ratio of the given step counts."""
    per_low, per_high = timing["low"], timing["high"]
    per_mixed = (1 - args.p_high) * per_low + args.p_high * per_high
    total = args.steps_low + args.steps_mixed
    frac_low = args.steps_low / total if total else 0.5
    budget = args.minutes * 60 - timing.get("setup", 0.0)
    per_step = frac_low * per_low + (1 - frac_low) * per_mixed
    steps = max(2, int(budget / per_step))
    low = int(round(steps * frac_low))
    return low, steps - low


def time_steps(step, data: DeviceData, args: argparse.Namespace, sync, n: int = 20) -> dict[str, float]:
    """Seconds per step at 32 and 64 px, measured on throw-away steps (after a warm-up of each size)."""
    out = {}
    for name, high, batch in (("low", False, args.batch), ("high", True, args.batch_high)):
        step(*data.batch(batch, high, args.cond_drop))
        sync()
        start = time.perf_counter()
        for _ in range(n):
            step(*data.batch(batch, high, args.cond_drop))
        sync()
        out[name] = (time.perf_counter() - start) / n
    return out


def training_data(args: argparse.Namespace) -> TrainingData:
    data = load_pack(Path(args.data_pack)) if args.data_pack else build_training_data(Path(args.data_cache),
                                                                                       args.templates)
    if args.subset:
        gen = torch.Generator().manual_seed(args.seed + 1)
        data = data.subset(torch.randperm(len(data.images), generator=gen)[:args.subset].sort().values)
    return data


def grown_block_slots(old_depth: int, new_depth: int) -> list[int]:
    """Where each of ``old_depth`` blocks goes in a ``new_depth`` stack: spread evenly, the new blocks between."""
    return [i * new_depth // old_depth for i in range(old_depth)]


def grow_depth(state: dict[str, torch.Tensor], model: TinyDiT, old_depth: int) -> dict[str, torch.Tensor]:
    """``state`` of a shallower model mapped onto ``model``: the old blocks keep their weights at
    ``grown_block_slots``, the new blocks keep ``model``'s fresh init, whose adaLN-Zero gates are zero, so the
    grown model computes the same function as the old one until training moves the gates."""
    grown = model.state_dict()
    slots = grown_block_slots(old_depth, model.config.depth)
    for key, value in state.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            key = f"blocks.{slots[int(index)]}.{rest}"
        grown[key] = value
    return grown


def encoded_latents(path: str, data: TrainingData, low_res: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images as unit-scale latents of the autoencoder at ``path`` (computed once, CPU): those of the
    64 px images, and for the plan's low-resolution steps those of the 32 px images (``low_res``) or the same."""
    from .autoencoder import encode_all, load_autoencoder

    ae, images = load_autoencoder(path), data.images_float()
    high = encode_all(ae, images)
    return high, encode_all(ae, F.interpolate(images, size=(32, 32), mode="area")) if low_res else high


def new_model(args: argparse.Namespace, latents: torch.Tensor | None = None) -> TinyDiT:
    pixel = latents is None
    channels, side = (3, 32) if pixel else (latents.shape[1], latents.shape[-1])
    if side % args.patch:
        raise ValueError(f"--patch {args.patch} does not divide the {side}x{side} training grid")
    grid = {} if pixel else {"base_grid": side // args.patch}  # pixel: DiTConfig's 32 px grid, as before
    config = DiTConfig(in_channels=channels, width=args.width, depth=args.depth, heads=args.heads,
                       patch_size=args.patch, text_scale=args.text_scale, **grid)
    model = TinyDiT(config)
    if args.init:
        start = load_model(args.init)
        deeper = args.grow and config.depth > start.config.depth
        # what may differ: the text scale always, the depth when growing
        allowed = {"text_scale": config.text_scale, **({"depth": config.depth} if deeper else {})}
        if replace(start.config, **allowed) != config:
            hint = " (--grow deepens a shallower model)" if start.config.depth < config.depth else ""
            raise ValueError(f"--init weights have config {start.config}, not {config}{hint}")
        state = start.state_dict()
        # same function under a new text scale: the first text layer absorbs the ratio
        state["text_mlp.0.weight"] = state["text_mlp.0.weight"] * (start.config.text_scale / config.text_scale)
        if deeper:
            state = grow_depth(state, model, start.config.depth)
        model.load_state_dict(state)
    return model


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    start = time.time()
    data = training_data(args)
    if args.latent_low_res and not args.autoencoder:
        raise ValueError("--latent-low-res needs --autoencoder")
    latents = encoded_latents(args.autoencoder, data, args.latent_low_res) if args.autoencoder else None
    dev = DeviceData(data, device, args.seed, args.tone_weight, latents)
    print(f"{len(data.images)} images, {len(data.embeddings)} prompt variants", flush=True)
    model = new_model(args, None if latents is None else latents[0]).to(device)
    ema = TinyDiT(model.config).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99), fused=cuda or None)
    net = model
    if args.compile:
        net = torch.compile(model, dynamic=False)
    step = make_step(net, opt, args.autocast if args.autocast is not None else cuda, device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    timing = {}
    if args.minutes or args.compile:
        snapshot = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            timing = time_steps(step, dev, args, sync, 20 if args.minutes else 1)
        except Exception as exc:  # noqa: BLE001 - a compiler that fails here must not cost the run
            if not args.compile:
                raise
            print(json.dumps({"compile_failed": f"{type(exc).__name__}: {str(exc)[:300]}"}), flush=True)
            args.compile = False
            model.load_state_dict(snapshot)
            step = make_step(model, opt, args.autocast if args.autocast is not None else cuda, device)
            timing = time_steps(step, dev, args, sync, 20 if args.minutes else 1)
        model.load_state_dict(snapshot)  # throw-away steps: start from the initial weights again
        opt.state.clear()
    if args.minutes:
        timing["setup"] = time.time() - start
        args.steps_low, args.steps_mixed = fit_steps(args, timing)
        print(json.dumps({"timing_s_per_step": {k: round(v, 5) for k, v in timing.items()},
                          "steps_low": args.steps_low, "steps_mixed": args.steps_mixed}), flush=True)
    plan = size_plan(args.steps_low, args.steps_mixed, args.p_high, args.seed).tolist()
    low_size = 32 if latents is None or args.latent_low_res else "latent"  # what a low-resolution step logs as
    total, seen, log = len(plan), 0, []
    model_params, ema_params = list(model.parameters()), list(ema.parameters())
    loop_start = time.time()
    for i, high in enumerate(plan):
        batch = args.batch_high if high else args.batch
        for group in opt.param_groups:
            group["lr"] = lr_at(i, total, args.lr, args.warmup)
        loss = step(*dev.batch(batch, high, args.cond_drop))
        decay = min(args.ema, (1 + i) / (10 + i))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, model_params, 1 - decay)
        seen += batch
        if i % args.log_every == 0 or i == total - 1:
            entry = {"step": i, "size": 64 if high else low_size, "loss": round(loss.item(), 4),
                     "minutes": round((time.time() - start) / 60, 2)}
            log.append(entry)
            print(json.dumps(entry), flush=True)
        if args.checkpoint_every and i and i % args.checkpoint_every == 0:
            save_weights(ema, Path(args.out).with_suffix(".partial.safetensors"), {"steps_done": i, "args": vars(args)},
                         dtype=args.save_dtype)
    sync()
    minutes = (time.time() - start) / 60
    device_name = f"cpu x{args.threads} threads" if not cuda else torch.cuda.get_device_name(device)
    info = {"model_id": MODEL_ID, **data.info, "init": args.init and read_info(args.init), "steps": total,
            "images_seen": seen, "train_minutes": round(minutes, 1),
            "loop_minutes": round((time.time() - loop_start) / 60, 2), "device": device_name,
            "seconds_per_step": {k: round(v, 5) for k, v in timing.items()} or None,
            "final_loss": log[-1]["loss"] if log else None, "args": vars(args)}
    save_weights(ema, Path(args.out), info, dtype=args.save_dtype)
    print(json.dumps(info), flush=True)
    return info


def read_info(path: str) -> dict:
    """Training record of the weights a stage starts from (kept in the new file's metadata)."""
    return json.loads(read_metadata(Path(path)).get("turbosample.info", "{}"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="models/builtin_emoji.safetensors")
    ap.add_argument("--data-cache", default=str(Path.home() / ".cache" / "turbosample" / "emoji"))
    ap.add_argument("--data-pack", default=None, help="training data from a pack written by --write-data-pack")
    ap.add_argument("--write-data-pack", default=None, metavar="FILE",
                    help="only encode the training data into FILE (.npz) and exit")
    ap.add_argument("--templates", default="phrases", choices=list(TEMPLATE_SETS),
                    help="prompt phrasings per name variant")
    ap.add_argument("--subset", type=int, default=0, help="train on this many images only (ablations)")
    ap.add_argument("--steps-low", type=int, default=1200, help="phase 1 steps at 32x32")
    ap.add_argument("--steps-mixed", type=int, default=1300, help="phase 2 steps mixing 32x32 and 64x64")
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="fit the step counts (keeping their ratio) to this wall-clock budget")
    ap.add_argument("--p-high", type=float, default=0.4, help="share of 64x64 batches in phase 2")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batch-high", type=int, default=48)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--cond-drop", type=float, default=0.1)
    ap.add_argument("--tone-weight", type=float, default=1.0,
                    help="how often a skin-tone variant image is drawn relative to another image (half the images "
                         "are tone variants of 320 base emoji; 1 = uniform over images)")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--text-scale", type=float, default=round(math.sqrt(TEXT_DIM), 1),
                    help="multiply the unit-length prompt embedding by this before the text MLP (default "
                         "sqrt(384) ~ 19.6: inputs of unit size, so the prompt pathway learns as fast as the rest; "
                         "1 is the recipe of the first weights)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--checkpoint-every", type=int, default=250)
    ap.add_argument("--init", help="start from these built-in weights (a fine-tuning stage)")
    ap.add_argument("--grow", action="store_true",
                    help="with --init and a larger --depth: insert new zero-gated blocks between the old ones "
                         "(the grown model starts as the same function)")
    ap.add_argument("--autoencoder", default=None, metavar="FILE",
                    help="train in the latent space of this autoencoder (models/train_autoencoder.py; the shipped "
                         "weights use models/ae_f8c8.safetensors): every step uses the 64 px images' latents, so "
                         "the 32/64 px plan only sets the step count, unless --latent-low-res")
    ap.add_argument("--latent-low-res", action="store_true",
                    help="with --autoencoder: the plan's 32 px steps train on the latents of the 32 px images "
                         "(4x4 for a factor-8 autoencoder), so the model also draws at 32 px")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--autocast", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast (default: on for CUDA, off on the CPU; on a CPU with AVX512-BF16 or AMX it "
                         "makes a step 1.4-1.7x faster: bench/bench_train_step.py)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--save-dtype", default="fp16", choices=["fp16", "fp32"], help="dtype of the saved weights")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.write_data_pack:
        data = build_training_data(Path(args.data_cache), args.templates)
        save_pack(data, Path(args.write_data_pack))
        print(json.dumps(data.info), flush=True)
        return
    train(args)


if __name__ == "__main__":
    main()
