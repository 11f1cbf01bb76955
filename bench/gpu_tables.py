"""Section (b) of bench/gpu_check.py: time and memory of the accelerators on diffusers Flux, SD3 and Wan at
production shapes with random weights (only time and memory mean anything; MagCache's skips follow the curve and
the step index, RAS's token choice the random outputs).

Per model: ms per forward (diffusers' own call, our wrapper, the rebuilt block stack MagCache runs; median of
``--repeats``), then whole Euler runs through ``samplers.run.sample``: baseline, MagCache (library defaults and the
curve's published settings), RAS 0.5 / 0.25, RAS 0.5 with the int8 K/V cache and with the CUDA-graph sparse path,
and MagCache + RAS. Each run records wall time, its speed-up against the baseline, per-step times, peak memory and
RAS's K/V cache bytes next to the formula blocks x tokens x inner width x 2 x bytes x batch.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time

import torch
from gpu_models import DTYPES, build_network, conditioning, diffusion_model, negative, spec


def ras_cache_bytes(run_state: dict) -> int:
    """Bytes held by RAS's K/V caches in a run's state."""
    from turbosample.accel.ras import BranchState

    return sum(c.nbytes for st in run_state.values() if isinstance(st, BranchState) for c in st.caches)


def formula_bytes(s, transformer, batch: int, element: int) -> int:
    """blocks x tokens (text + image for dual-stream models) x inner width x 2 (K and V) x bytes x batch."""
    cfg = transformer.config
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    blocks = {"flux": cfg.get("num_layers", 0) + cfg.get("num_single_layers", 0)}.get(s.name, cfg.num_layers)
    tokens = s.image_tokens + (s.text_tokens if s.name in ("flux", "sd3") else 0)
    return blocks * tokens * inner * 2 * element * batch


class Timer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**30, 3) if self.cuda else None

    def times_ms(self, fn, repeats: int, warmup: int) -> list[float]:
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(repeats):
            self.sync()
            t = time.perf_counter()
            fn()
            self.sync()
            out.append((time.perf_counter() - t) * 1e3)
        return out


def forwards(name, s, model, t: Timer, rec, repeats: int) -> dict:
    """ms per forward: diffusers' own call, our DiffusionModel wrapper, the rebuilt block stack."""
    from turbosample.accel.adapter import transformer_parts
    from turbosample.accel.diffusers_adapters import own_forward
    from turbosample.samplers.denoiser import network_placement

    net = model.diffusion_model
    device, dtype = network_placement(net)
    batch = 1 if s.cfg == 1.0 or s.guidance is not None else 2
    g = torch.Generator().manual_seed(3)
    x = torch.randn((batch, *s.latent[1:]), generator=g).to(device, dtype)
    ctx = {k: torch.cat([v] * batch).to(device) for k, v in conditioning(s, 1)[0][0].items()}
    ctx = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ctx.items()}
    ts = torch.full((batch,), 500.0, device=device)
    parts = transformer_parts(net)
    paths = {"diffusers_own": lambda: own_forward(net.transformer, x, ts, ctx),
             "wrapper": lambda: model.forward(x, ts, ctx, {}),
             "rebuilt_stack": lambda: parts.forward(x, ts, ctx)}
    result = {}
    with torch.no_grad():
        for path, fn in paths.items():
            t.reset_peak()
            ms = t.times_ms(fn, repeats, 2)
            result[path] = statistics.median(ms)
            row = {"ms_median": round(result[path], 3), "ms_all": [round(v, 3) for v in ms], "batch": batch}
            if path != "diffusers_own":
                row["overhead_pct"] = round(100 * (result[path] / result["diffusers_own"] - 1), 2)
            rec.write(section="tables", model=name, config=f"forward/{path}", peak_gib=t.peak_gib(), **row)
    return result


def runs(name, s, model, t: Timer, rec, steps: int, step_est_s: float) -> None:
    """Whole sampling runs: baseline, MagCache, RAS variants and the stack."""
    from turbosample.accel.magcache import MagCacheSettings, magcache_model
    from turbosample.accel.magcache_calibration import published_curve, run_settings
    from turbosample.accel.ras import apply_ras
    from turbosample.samplers.registry import SAMPLERS
    from turbosample.samplers.run import sample
    from turbosample.samplers.schedulers import compute_sigmas

    pos, neg = conditioning(s, 1), negative(s)
    latent = torch.zeros(s.latent)
    cfg = 1.0 if s.guidance is not None else s.cfg
    sigmas = compute_sigmas(model.model_sampling, "simple", steps)
    curve = published_curve(s.curve)
    resample = None if steps == curve.steps else "nearest"
    defaults = {f.name: f.default for f in dataclasses.fields(MagCacheSettings)
                if f.name in ("threshold", "max_skip_steps", "retention_ratio")}
    published = dict(curve.meta["defaults"])

    def mag(m, settings):
        template, curve_for = run_settings(curve, settings["threshold"], settings["max_skip_steps"],
                                           settings["retention_ratio"], resample)
        return magcache_model(m, template, curve_for=curve_for)

    configs = {
        "baseline": lambda: model,
        "magcache_defaults": lambda: mag(model, defaults),
        "magcache_published": lambda: mag(model, published),
        "ras_0.5": lambda: apply_ras(model, sample_ratio=0.5),
        "ras_0.25": lambda: apply_ras(model, sample_ratio=0.25),
        "ras_0.5_int8": lambda: apply_ras(model, sample_ratio=0.5, kv_cache="int8"),
        "magcache+ras_0.5": lambda: apply_ras(mag(model, defaults), sample_ratio=0.5),
        "ras_0.5_cuda_graph": lambda: apply_ras(model, sample_ratio=0.5, cuda_graph=True),  # last: new on CUDA
    }
    base_wall = None
    for label, make in configs.items():
        if rec.out_of_time(f"tables {name} {label}", need_s=steps * step_est_s * 1.2 + 2):
            return
        stamps: list[float] = []

        def callback(_info, stamps=stamps):
            t.sync()
            stamps.append(time.perf_counter())

        try:
            state: dict = {}
            patched = make()
            t.reset_peak()
            t.sync()
            start = time.perf_counter()
            with torch.no_grad():
                out = sample(patched, pos, neg, latent, SAMPLERS["euler"], sigmas, 0, cfg, callback=callback,
                             run_state=state)
            t.sync()
            wall = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001
            rec.write(section="tables", model=name, config=label, error=rec.error_text(exc))
            continue
        step_ms = [round((b - a) * 1e3, 2) for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]
        row = {"steps": steps, "wall_s": round(wall, 3), "step_ms": step_ms, "peak_gib": t.peak_gib(),
               "finite": bool(torch.isfinite(out).all())}
        base_wall = wall if label == "baseline" else base_wall
        if base_wall and label != "baseline":
            row["speedup"] = round(base_wall / wall, 3)
        if label.startswith(("ras", "magcache+ras")):
            from turbosample.accel.ras import BranchState

            row["ras_cache_bytes"] = ras_cache_bytes(state)
            row["ras_cache_gib"] = round(row["ras_cache_bytes"] / 2**30, 3)
            graphs = [st.graph for st in state.values() if isinstance(st, BranchState)]
            if graphs and label.endswith("cuda_graph"):
                row["cuda_graph_replays"] = sum(g.replays for g in graphs)
                row["cuda_graph_error"] = next((g.error for g in graphs if g.error), None)
        if "magcache" in label:
            row["magcache_settings"] = published if label == "magcache_published" else defaults
        rec.write(section="tables", model=name, config=label, **row)
        del state, patched, out
        gc.collect()


def run(args, rec) -> None:
    device = torch.device(args.device)
    t = Timer(device)
    dtype = DTYPES[args.table_dtype]
    for name in [f for f in args.families if f != "builtin"]:
        if rec.out_of_time(f"tables {name} build"):
            return
        s = spec(name, tiny=args.tiny, wan_frames=args.wan_frames)
        try:
            t.reset_peak()
            net = build_network(s, device, dtype)
            model = diffusion_model(s, net)
            rec.write(section="tables", model=name, config="build", dtype=args.table_dtype,
                      params_m=round(sum(p.numel() for p in net.parameters()) / 1e6, 1), peak_gib=t.peak_gib(),
                      latent=list(s.latent), text_tokens=s.text_tokens, image_tokens=s.image_tokens)
            batch = 1 if s.guidance is not None else 2
            formula = formula_bytes(s, net.transformer, batch, torch.finfo(dtype).bits // 8)
            rec.write(section="tables", model=name, config="ras_cache_formula", batch=batch, bytes=formula,
                      gib=round(formula / 2**30, 3))
            fwd = forwards(name, s, model, t, rec, args.repeats)
            steps = args.steps_wan if name == "wan" else args.steps
            runs(name, s, model, t, rec, steps, fwd["wrapper"] / 1e3)  # CFG branches run in one batched call
        except Exception as exc:  # noqa: BLE001
            rec.write(section="tables", model=name, config="model", error=rec.error_text(exc))
        finally:
            model = net = None
            gc.collect()
            if t.cuda:
                torch.cuda.empty_cache()
