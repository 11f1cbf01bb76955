"""Run under ComfyUI's Python (cwd = ComfyUI checkout): MagCache on tiny random-weight ComfyUI Flux, SD3 (MMDiT)
and Wan models, sampled through ComfyUI's own CFGGuider and KSAMPLER (euler). Prints one JSON object of
measurements; tests/test_comfyui_magcache_native.py asserts on them.

Hooks on the diffusion model (instrumentation only, removed after each run) see each call's cond_or_uncond and
sigma, the embedding output (stack input up to a constant position term), the final layer's input (stack output)
and every block call with its batch size.

``TURBOSAMPLE_COMFY_DEVICE`` (cpu, cuda) and ``TURBOSAMPLE_COMFY_DTYPE`` (fp32, bf16, fp16) choose where and in which
precision the tiny models run (default: CPU, float32); bench/gpu_check.py runs this script on CUDA in bf16 / fp16.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

root = Path(sys.argv[1])
sys.path.insert(0, str(root / "tests"))
from comfy_pack import load_pack  # noqa: E402

load_pack(root)

import comfy.cli_args  # noqa: E402

DEVICE = torch.device(os.environ.get("TURBOSAMPLE_COMFY_DEVICE", "cpu"))
DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
    os.environ.get("TURBOSAMPLE_COMFY_DTYPE", "fp32")]
comfy.cli_args.args.cpu = DEVICE.type == "cpu"

import comfy.model_patcher  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.supported_models as sm  # noqa: E402

from turbosample.accel.adapter import UnsupportedModel  # noqa: E402
from turbosample.accel.magcache import MagCacheSettings, step_index  # noqa: E402
from turbosample.accel.magcache_calibration import (  # noqa: E402
    Calibration,
    load_calibration,
    ratio_stats,
    records_to_ratios,
    run_settings,
    weights_fingerprint,
)
from turbosample.nodes import comfy_magcache  # noqa: E402
from turbosample.nodes.magcache_model_calibrate import comfy_calibrate_model  # noqa: E402
from turbosample.nodes.magcache_nodes import comfy_apply_magcache  # noqa: E402

torch.set_num_threads(1)
STEPS = 6
CTX, POOLED = 16, 8

CONFIGS = {
    "flux": (sm.Flux, {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": POOLED,
                       "context_in_dim": CTX, "hidden_size": 32, "mlp_ratio": 2.0, "num_heads": 2, "depth": 2,
                       "depth_single_blocks": 2, "axes_dim": [4, 6, 6], "theta": 10000, "patch_size": 2,
                       "qkv_bias": True, "guidance_embed": True}, (1, 16, 8, 8)),
    "sd3": (sm.SD3, {"in_channels": 16, "pos_embed_scaling_factor": None, "patch_size": 2, "depth": 2,
                     "adm_in_channels": POOLED, "pos_embed_max_size": 8, "num_patches": 64,
                     "context_embedder_config": {"target": "torch.nn.Linear",
                                                 "params": {"in_features": CTX, "out_features": 128}}},
            (1, 16, 8, 8)),
    "wan": (sm.WAN21_T2V, {"image_model": "wan2.1", "model_type": "t2v", "dim": 32, "ffn_dim": 64, "freq_dim": 32,
                           "text_dim": CTX, "num_heads": 2, "num_layers": 3, "in_dim": 16, "out_dim": 16,
                           "patch_size": (1, 2, 2), "text_len": 8}, (1, 16, 2, 8, 8)),
}


def tiny_model(kind: str, dtype: torch.dtype):
    cls, unet_config, _shape = CONFIGS[kind]
    config = cls(dict(unet_config))
    config.set_inference_dtype(dtype, None)
    return config.get_model({}, device=torch.device("cpu"))


def tiny_patcher(kind: str):
    """The tiny model with random weights drawn in float32 on the CPU (the same on every device), then cast to
    DTYPE and moved to DEVICE."""
    torch.manual_seed(0)
    model = tiny_model(kind, torch.float32)
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0, p[0].numel() ** -0.5)
            elif "norm" in name or name.endswith("scale"):
                p.fill_(1.0)
            else:
                p.normal_(0, 0.05)
        for name, b in model.diffusion_model.named_buffers():
            if name == "pos_embed":
                b.normal_(0, 0.1)
    if DTYPE != torch.float32:
        reference, model = model, tiny_model(kind, DTYPE)
        model.diffusion_model.load_state_dict(reference.diffusion_model.state_dict())
    model.to(DEVICE)
    return comfy.model_patcher.ModelPatcher(model, DEVICE, torch.device("cpu"))


def conds(kind: str):
    g = torch.Generator().manual_seed(1)
    make = lambda: [[torch.randn(1, 6, CTX, generator=g), {"pooled_output": torch.randn(1, POOLED, generator=g)}]]  # noqa: E731
    return make(), make()


def parts_of(dm, kind: str):
    """(embedding module, final module, block modules, embed-output -> tokens)."""
    if kind == "flux":
        return dm.img_in, dm.final_layer, [*dm.double_blocks, *dm.single_blocks], lambda o: o
    if kind == "sd3":
        return dm.x_embedder, dm.final_layer, list(dm.joint_blocks), lambda o: o
    return dm.patch_embedding, dm.head, list(dm.blocks), lambda o: o.flatten(2).transpose(1, 2)


def sample(patcher, kind: str, sigmas=None, cfg: float = 3.0, seed: int = 0):
    """(denoised latent, per-call log) from ComfyUI's CFGGuider + KSAMPLER euler."""
    dm = patcher.get_model_object("diffusion_model")
    embed, final, blocks, to_tokens = parts_of(dm, kind)
    calls: list[dict] = []

    def on_call(_m, args, kwargs):
        to = kwargs.get("transformer_options") or {}
        calls.append({"branches": list(to.get("cond_or_uncond") or [0]), "sigma": float(to["sigmas"][0]),
                      "blocks": []})

    hooks = [dm.register_forward_pre_hook(on_call, with_kwargs=True),
             embed.register_forward_hook(lambda _m, _a, out: calls[-1].__setitem__("embed", to_tokens(out))),
             final.register_forward_pre_hook(lambda _m, args: calls[-1].__setitem__("final_in", args[0]))]
    for blk in blocks:
        def on_block(_m, args, kwargs):
            first = kwargs.get("img", kwargs.get("x", args[1] if kind == "sd3" and len(args) > 1 else
                                                 (args[0] if args else None)))
            calls[-1]["blocks"].append((first.shape[0], first))
        hooks.append(blk.register_forward_pre_hook(on_block, with_kwargs=True))
    positive, negative = conds(kind)
    guider = comfy.samplers.CFGGuider(patcher)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    ms = patcher.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, "simple", STEPS) if sigmas is None else sigmas
    shape = CONFIGS[kind][2]
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    try:
        out = guider.sample(noise, torch.zeros(shape), comfy.samplers.sampler_object("euler"), sigmas, seed=seed,
                            disable_pbar=True)
    finally:
        for h in hooks:
            h.remove()
    for c in calls:
        c["step"] = step_index(c["sigma"], sigmas)
    return out, calls, sigmas


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def residual_reuse_error(calls: list[dict], decisions: dict) -> tuple[float, int]:
    """Max error of 'skipped output = stack input + last computed residual', per branch chunk, relative to the
    largest stack value (at least 1), and how many skipped chunks were checked. Differences between two calls cancel
    the constant position term."""
    last: dict = {}
    worst, checked = 0.0, 0
    scale = max([1.0] + [float(c[k].abs().max()) for c in calls for k in ("embed", "final_in")])
    for c in calls:
        n = len(c["branches"])
        for i, br in enumerate(c["branches"]):
            emb, fin = c["embed"].chunk(n)[i], c["final_in"].chunk(n)[i]
            if decisions[(br, c["step"])]:
                e0, f0 = last[br]
                worst = max(worst, float(((fin - f0) - (emb - e0)).abs().max()) / scale)
                checked += 1
            else:
                last[br] = (emb, fin)
    return worst, checked


def snapshot(patcher) -> str:
    to = patcher.model_options.get("transformer_options", {})
    return repr((sorted(to.get("patches_replace", {}).get("dit", {})), sorted(
        (k, sorted(v)) for k, v in to.get("wrappers", {}).items()), patcher.wrappers and sorted(patcher.wrappers)))


def measure(kind: str) -> dict:
    res: dict = {}
    base = tiny_patcher(kind)
    n_blocks = len(parts_of(base.get_model_object("diffusion_model"), kind)[2])
    before = snapshot(base)
    plain, plain_calls, sigmas = sample(base, kind)
    res["plain_finite"] = bool(torch.isfinite(plain).all())
    res["plain_block_calls"] = sum(len(c["blocks"]) for c in plain_calls)
    res["model_calls"] = len(plain_calls)
    res["n_blocks"] = n_blocks

    flat = {0: (1.0,) * STEPS}
    t0 = comfy_magcache.patch_model_patcher(base, MagCacheSettings(flat, threshold=0.0, retention_ratio=0.0))
    out0, calls0, _ = sample(t0, kind)
    res["t0_max_abs_diff"] = float((out0 - plain).abs().max())
    res["t0_block_calls"] = sum(len(c["blocks"]) for c in calls0)

    # same curve for both branches: whole-batch skips (steps 1, 2, 4, 5 of 6 with K = 2, retention 1 step)
    record: list = []
    skip = comfy_magcache.patch_native(base, MagCacheSettings(flat, threshold=0.1, max_skip_steps=2,
                                                              retention_ratio=0.2), record=record)
    out1, calls1, _ = sample(skip, kind)
    decisions = {(k[0], s): d for k, s, d in record}
    res["skip_decisions"] = sorted([k[0], s, d] for k, s, d in record)
    res["skip_block_calls"] = sum(len(c["blocks"]) for c in calls1)
    res["skip_expected_block_calls"] = sum(n_blocks for c in calls1 if not all(
        decisions[(b, c["step"])] for b in c["branches"]))
    res["skip_rel_err"] = rel(out1, plain)
    res["skip_finite"] = bool(torch.isfinite(out1).all())
    res["skip_reuse_err"], res["skip_reuse_checked"] = residual_reuse_error(calls1, decisions)
    again, _, _ = sample(skip, kind)
    res["rerun_max_abs_diff"] = float((again - out1).abs().max())

    # cond and uncond curves differ: the uncond branch skips alone, its rows are cut out of the batch
    record2: list = []
    split = MagCacheSettings({0: (1.0, 3.0, 3.0, 3.0, 3.0, 3.0), 1: flat[0]}, threshold=0.1, max_skip_steps=2,
                             retention_ratio=0.2)
    out2, calls2, _ = sample(comfy_magcache.patch_native(base, split, record=record2), kind)
    decisions2 = {(k[0], s): d for k, s, d in record2}
    res["split_decisions"] = sorted([k[0], s, d] for k, s, d in record2)
    res["split_block_batches"] = sorted({b for c in calls2 for b, _ in c["blocks"]})
    res["split_reuse_err"], res["split_reuse_checked"] = residual_reuse_error(calls2, decisions2)
    res["split_rel_err"] = rel(out2, plain)

    # calibration through the same block patches, checked against an independent measurement from the hooks
    records: dict = {}
    out_cal, cal_calls, _ = sample(comfy_magcache.recording_clone(base, records), kind)
    ratios, _extra = records_to_ratios(records, STEPS)
    res["cal_max_abs_diff_vs_plain"] = float((out_cal - plain).abs().max())
    res["cal_branches"] = sorted(ratios)
    hook_ratios: dict = {}
    prev: dict = {}
    for c in cal_calls:
        n, first = len(c["branches"]), c["blocks"][0][1]
        for i, br in enumerate(c["branches"]):
            r = c["final_in"].chunk(n)[i] - first.chunk(n)[i][:, -c["final_in"].shape[1]:]
            hook_ratios.setdefault(br, []).append(1.0 if c["step"] == 0 else ratio_stats(r, prev[br])[0])
            prev[br] = r
    res["cal_ratio_max_diff_vs_hooks"] = max(abs(a - b) for br in ratios for a, b in zip(
        ratios[br], hook_ratios[br], strict=True))
    cal = Calibration(model_id=f"tiny-{kind}", steps=STEPS, ratios=ratios,
                      sigmas=tuple(float(s) for s in sigmas))
    template, curve_for = run_settings(cal, 0.3, 2, 0.2)
    out3, calls3, _ = sample(comfy_magcache.patch_native(base, template, curve_for), kind)
    res["calibrated_block_calls"] = sum(len(c["blocks"]) for c in calls3)
    res["calibrated_rel_err"] = rel(out3, plain)

    # the calibrate node on this MODEL (ComfyUI path): same run -> same ratios; the file applies to these weights
    os.environ["TURBOSAMPLE_MAGCACHE_DIR"] = tempfile.mkdtemp()
    positive, negative = conds(kind)
    (path,) = comfy_calibrate_model(base, positive, negative, {"samples": torch.zeros(CONFIGS[kind][2])},
                                    comfy.samplers.sampler_object("euler"), sigmas, 0, 3.0, f"node-{kind}")
    node_cal = load_calibration(path)
    res["node_cal_ratio_max_diff"] = max(abs(a - b) for br in ratios for a, b in zip(
        ratios[br], node_cal.ratios[br], strict=True))
    res["node_cal_fingerprint_ok"] = node_cal.fingerprint == weights_fingerprint(
        base.get_model_object("diffusion_model"))
    (from_file,) = comfy_apply_magcache(base, path, 0.3, 2, 0.2, "off")
    out6, calls6, _ = sample(from_file, kind)
    res["node_cal_block_calls"] = sum(len(c["blocks"]) for c in calls6)
    res["node_cal_finite"] = bool(torch.isfinite(out6).all())

    # the node function, with a published curve resampled to this run's steps
    (node_model,) = comfy_apply_magcache(base, "flux" if kind == "flux" else "wan2.1_t2v_1.3B", 0.5, 2, 0.2,
                                         "nearest")
    out4, calls4, _ = sample(node_model, kind)
    res["node_block_calls"] = sum(len(c["blocks"]) for c in calls4)
    res["node_finite"] = bool(torch.isfinite(out4).all())

    # MagCache (threshold 0) on the skipping clone replaces its patches (nested ones would still skip),
    # and the original patcher stays as it was
    twice = comfy_magcache.patch_model_patcher(skip, MagCacheSettings(flat, threshold=0.0, retention_ratio=0.0))
    out5, _, _ = sample(twice, kind)
    res["twice_max_abs_diff"] = float((out5 - plain).abs().max())
    dit = twice.model_options["transformer_options"]["patches_replace"]["dit"]
    res["twice_patches_wrap_bare_blocks"] = len(dit) == n_blocks and all(
        getattr(p, "turbosample_inner", "missing") is None for p in dit.values())
    res["original_untouched"] = snapshot(base) == before
    plain2, _, _ = sample(base, kind)
    res["original_rerun_max_abs_diff"] = float((plain2 - plain).abs().max())
    return res


def unsupported() -> dict:
    import comfy.ldm.wan.model as wan_model

    base = tiny_patcher("wan")
    vace = object.__new__(wan_model.VaceWanModel)  # a Wan subclass with work between blocks: refused
    torch.nn.Module.__init__(vace)
    base.add_object_patch("diffusion_model", vace)
    before = snapshot(base)
    try:
        comfy_magcache.patch_model_patcher(base, MagCacheSettings({0: (1.0,) * STEPS}))
        message = ""
    except UnsupportedModel as exc:
        message = str(exc)
    return {"message": message, "untouched": snapshot(base) == before}


if __name__ == "__main__":
    kinds = sys.argv[2:] or list(CONFIGS)
    result = {kind: measure(kind) for kind in kinds}
    result["unsupported"] = unsupported()
    print(json.dumps(result))
