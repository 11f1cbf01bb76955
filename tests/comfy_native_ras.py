"""Run under ComfyUI's Python (cwd = ComfyUI checkout): RAS on tiny random-weight ComfyUI Flux, SD3 (MMDiT) and
Wan 2.1 models through the TurboSampleRAS node, sampled by ComfyUI's CFGGuider + KSAMPLER (euler, CFG 3). Prints
one JSON object of measurements; tests/test_comfyui_ras_native.py asserts on them.

The sampler callback gives each step's CFG-combined denoised image; the models are flow models, so the combined
model output (velocity) is ``(x - x0) / sigma``. Block pre-hooks record how many image tokens enter the stack.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(sys.argv[1]) / "tests"))
import comfy_native_magcache as tiny  # noqa: E402  (loads the pack, puts ComfyUI on CPU, imports comfy.samplers)

from turbosample.accel import comfy_native_ras as native  # noqa: E402
from turbosample.accel.magcache import MagCacheSettings  # noqa: E402
from turbosample.accel.ras import BranchState  # noqa: E402
from turbosample.accel.ras_select import pixel_mask, token_grid  # noqa: E402
from turbosample.nodes import comfy_magcache  # noqa: E402
from turbosample.nodes.ras_nodes import comfy_patch_ras  # noqa: E402
from turbosample.nodes.spec import NodeInputError  # noqa: E402

torch.set_num_threads(1)
STEPS = 6
SHAPES = {"flux": (1, 16, 16, 16), "sd3": (1, 16, 16, 16),  # 8 x 8 = 64 image tokens at patch 2
          "wan": (1, 16, 2, 16, 16)}  # 2 frames x 8 x 8 = 128 tokens at patch (1, 2, 2)
TOKENS = {"flux": 64, "sd3": 64, "wan": 128}


def sample(patcher, kind: str, cfg: float = 3.0, seed: int = 0) -> tuple[torch.Tensor, list, list]:
    """(denoised latent, per-step model outputs (B, C, H, W), image tokens entering the first block per call;
    [rows, tokens] when not both CFG rows run the blocks)."""
    dm = patcher.get_model_object("diffusion_model")
    first = getattr(dm, {"flux": "double_blocks", "sd3": "joint_blocks", "wan": "blocks"}[kind])[0]
    counts: list[int] = []
    shape = SHAPES[kind]

    def on_block(_m, args, kwargs):
        img = {"flux": lambda: kwargs["img"], "sd3": lambda: args[1], "wan": lambda: args[0]}[kind]()
        counts.append(int(img.shape[1]) if img.shape[0] == 2 else [int(img.shape[0]), int(img.shape[1])])

    hook = first.register_forward_pre_hook(on_block, with_kwargs=True)
    positive, negative = tiny.conds(kind)
    guider = tiny.comfy.samplers.CFGGuider(patcher)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    sigmas = tiny.comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "simple", STEPS)
    outputs: list[torch.Tensor] = []

    def callback(i, x0, x, _total):
        outputs.append((x - x0) / float(sigmas[i]))

    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    try:
        out = guider.sample(noise, torch.zeros(shape), tiny.comfy.samplers.sampler_object("euler"), sigmas,
                            callback=callback, seed=seed, disable_pbar=True)
    finally:
        hook.remove()
    return out, outputs, counts


def changed_tokens(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, N) tokens (2x2 pixel patches, per frame for videos) whose output differs by more than float rounding."""
    diff = (a - b).abs().amax(1, keepdim=True)
    pooled = torch.nn.functional.max_pool2d(diff, 2) if diff.ndim == 4 else \
        torch.nn.functional.max_pool3d(diff, (1, 2, 2))
    return (pooled > 1e-4).flatten(1)


def measure(kind: str) -> dict:
    res: dict = {}
    base = tiny.tiny_patcher(kind)
    before = tiny.snapshot(base)
    plain, plain_out, plain_counts = sample(base, kind)
    res["plain_finite"] = bool(torch.isfinite(plain).all())
    res["plain_counts"] = plain_counts

    (dense,) = comfy_patch_ras(base, sample_ratio=1.0, warmup_steps=1)
    out1, _, counts1 = sample(dense, kind)
    res["ratio1_max_abs_diff"] = float((out1 - plain).abs().max())
    res["ratio1_counts"] = counts1

    (ras,) = comfy_patch_ras(base, sample_ratio=0.5, warmup_steps=2, dense_every=0)
    out2, outs2, counts2 = sample(ras, kind)
    res["sparse_counts"] = counts2
    res["sparse_finite"] = bool(torch.isfinite(out2).all())
    res["sparse_rel_err"] = float((out2 - plain).norm() / plain.norm())
    res["sparse_differs"] = bool((out2 - plain).abs().max() > 1e-4)
    # warm-up steps equal the plain run; each sparse step changes exactly the active tokens of the last output
    res["warmup_max_abs_diff"] = max(float((a - b).abs().max()) for a, b in zip(outs2[:2], plain_out[:2],
                                                                                  strict=True))
    res["sparse_changed_tokens"] = [int(changed_tokens(outs2[s], outs2[s - 1]).sum()) for s in range(2, STEPS)]
    res["plain_changed_tokens"] = [int(changed_tokens(plain_out[s], plain_out[s - 1]).sum())
                                   for s in range(2, STEPS)]
    again, _, _ = sample(ras, kind)
    res["rerun_max_abs_diff"] = float((again - out2).abs().max())

    res["stack"] = stacked(base, kind, plain, out2)
    res["original_untouched"] = tiny.snapshot(base) == before
    plain2, _, _ = sample(base, kind)
    res["original_rerun_max_abs_diff"] = float((plain2 - plain).abs().max())
    return res


def stacked(base, kind: str, plain: torch.Tensor, ras_only: torch.Tensor) -> dict:
    """MagCache + RAS on one ComfyUI model (RAS's block patches inside MagCache's, whichever node came first)."""
    neutral = MagCacheSettings({0: (1.0,) * STEPS}, threshold=0.0, retention_ratio=0.0)  # computes every step
    (dense_ras,) = comfy_patch_ras(comfy_magcache.patch_model_patcher(base, neutral), sample_ratio=1.0,
                                   warmup_steps=1)
    out0, _, _ = sample(dense_ras, kind)
    # flat curves: both branches skip steps 3 and 5 (K = 1 between computed steps); RAS sparse from step 2
    skipping = MagCacheSettings({0: (1.0,) * STEPS}, threshold=0.5, max_skip_steps=1, retention_ratio=0.4)
    ras = {"sample_ratio": 0.5, "warmup_steps": 2, "dense_every": 0}
    (mag_then_ras,) = comfy_patch_ras(comfy_magcache.patch_model_patcher(base, skipping), **ras)
    (ras_only_model,) = comfy_patch_ras(base, **ras)
    ras_then_mag = comfy_magcache.patch_model_patcher(ras_only_model, skipping)
    a, _, counts_a = sample(mag_then_ras, kind)
    b, _, counts_b = sample(ras_then_mag, kind)
    again, _, _ = sample(mag_then_ras, kind)
    mag_only, _, mag_counts = sample(comfy_magcache.patch_model_patcher(base, skipping), kind)
    # the cond branch skips, the uncond one never does: MagCache runs the uncond rows alone, RAS runs them plain
    split = MagCacheSettings({0: (1.0,) * STEPS, 1: (1.0,) + (3.0,) * (STEPS - 1)}, threshold=0.5,
                             max_skip_steps=1, retention_ratio=0.4)
    (split_model,) = comfy_patch_ras(comfy_magcache.patch_model_patcher(base, split), **ras)
    c, _, counts_c = sample(split_model, kind)
    return {"neutral_vs_plain": float((out0 - plain).abs().max()), "orders_max_abs_diff": float((a - b).abs().max()),
            "counts": counts_a, "counts_other_order": counts_b, "magcache_counts": mag_counts,
            "rerun_max_abs_diff": float((again - a).abs().max()), "finite": bool(torch.isfinite(a).all()),
            "vs_magcache_only": float((a - mag_only).abs().max()), "vs_ras_only": float((a - ras_only).abs().max()),
            "rel_err": float((a - plain).norm() / plain.norm()), "split_counts": counts_c,
            "split_finite": bool(torch.isfinite(c).all())}


def direct(kind: str, per_frame: bool = False) -> dict:
    """One diffusion-model call with the RAS hooks and a hand-made call plan: a sparse call over the K/V caches of a
    dense call at the same input must give the dense output (inactive tokens' cached K/V are then exact), for a
    random half of the tokens per batch row and for all tokens in shuffled order (checks RoPE slicing).
    ``per_frame``: Wan 2.2's one timestep per frame (its modulation must follow the kept tokens)."""
    base = tiny.tiny_patcher(kind)
    (ras,) = comfy_patch_ras(base, sample_ratio=0.5)
    dm = base.get_model_object("diffusion_model")
    g = torch.Generator().manual_seed(3)
    shape, n = SHAPES[kind], TOKENS[kind]
    on = {"device": tiny.DEVICE, "dtype": tiny.DTYPE}  # as ComfyUI's apply_model passes them (timestep float32)
    x = torch.randn(2, *shape[1:], generator=g).to(**on)
    t = (torch.tensor([[0.7, 0.2], [0.5, 0.9]]) if per_frame else torch.full((2,), 0.7)).to(tiny.DEVICE)
    context, y = torch.randn(2, 6, tiny.CTX, generator=g).to(**on), torch.randn(2, tiny.POOLED, generator=g).to(**on)
    with torch.no_grad():
        plain = dm(x, t, context, y=y)
        options = dict(ras.model_options["transformer_options"])
        run = options[native.RUN_OPTION] = native.RunState()
        state = BranchState(shape=tuple(x.shape), drops=torch.zeros(2, n), filled=torch.zeros(2, dtype=bool))

        def call(mode: str) -> torch.Tensor:
            run.data[native.CALL_KEY] = {"state": state, "step": 0, "n_img": n, "mode": mode, "block": None,
                                         "complete": False, "self_attention_only": kind == "wan", "kv_cache": "full"}
            return dm(x, t, context, y=y, transformer_options=options)

        state.caches = {}
        dense = call("dense")
        res = {"dense_vs_plain": float((dense - plain).abs().max()), "n_caches": len(state.caches)}
        state.active = torch.stack([torch.randperm(n, generator=g)[:n // 2].sort().values for _ in range(2)])
        half = call("sparse")
        res["half_vs_dense"] = float((half - dense).abs().max())
        for _k, v in state.caches.values():  # stale values of the inactive tokens must show in the active ones
            v.mul_(0.5)
        stale = call("sparse")
        res["stale_vs_dense"] = float((stale - dense).abs().max())
        pixels = pixel_mask(state.active, token_grid(x.shape, native.patch_size(dm)), native.patch_size(dm))
        res["stale_inactive_vs_dense"] = float((stale - dense)[~pixels.expand_as(stale)].abs().max())
        state.active = torch.stack([torch.randperm(n, generator=g) for _ in range(2)])
        res["shuffled_vs_dense"] = float((call("sparse") - dense).abs().max())
        res["dense_abs_max"] = float(dense.abs().max())
    return res


def unsupported() -> dict:
    import comfy.ldm.wan.model as wan_model

    base = tiny.tiny_patcher("wan")
    vace = object.__new__(wan_model.VaceWanModel)  # a Wan subclass with work between blocks: refused
    torch.nn.Module.__init__(vace)
    base.add_object_patch("diffusion_model", vace)
    before = tiny.snapshot(base)
    try:
        comfy_patch_ras(base)
        message = ""
    except NodeInputError as exc:
        message = str(exc)
    return {"message": message, "untouched": tiny.snapshot(base) == before}


if __name__ == "__main__":
    kinds = sys.argv[2:] or ["flux", "sd3", "wan"]
    result = {kind: {**measure(kind), "direct": direct(kind)} for kind in kinds}
    if "wan" in kinds:
        result["wan"]["direct_per_frame"] = direct("wan", per_frame=True)
    result["unsupported"] = unsupported()
    print(json.dumps(result))
