"""RAS on ComfyUI's own Flux, SD3 (MMDiT) and Wan models through ComfyUI's hooks (no forward is rebuilt).

* ``APPLY_MODEL`` wrapper: per call picks the step, dense or sparse mode and (``accel.ras_select``) the active image
  tokens, shared by the CFG branches of an image. After the call, inactive pixels of a sparse call get the
  previous call's model output (velocity / eps, as in ``accel.ras``): ComfyUI returns the denoised image, which is
  affine in the model output (``model_sampling.calculate_denoised``), so the model output is recovered from it.
* ``patches_replace["dit"]`` on every block: the first block keeps only the active image tokens (text tokens stay)
  and every block gets RoPE (``pe``) cut to the kept tokens (Wan 2.2's per-frame modulation ``vec`` too, spread
  to the tokens the way Wan's ``repeat_e`` does first); the last block scatters its output into the previous
  call's full stack output (``prev_tokens``), so the head sees the whole layout.
* ``transformer_options["optimized_attention_override"]``: at dense calls every block attention's K/V is cached;
  at sparse calls the active queries attend over all keys/values, the cache refreshed at the active positions
  (``accel.kv_cache.cached_attention``). Attention calls are keyed by (block, call within the block), so SD3.5's
  second (image-only) attention gets its own cache; leading text/context tokens are always active. Wan's blocks
  route their self-attention only (the first call); its cross-attention to the text runs as is on the kept queries.
* Tokens form a grid of the latent's spatial dims over the patch: (rows, cols) for Flux / SD3, (frames, rows,
  cols) for Wan (patch ``(1, 2, 2)``), so token choice and the pixel merge work on videos too.
* Calls with a ControlNet, an attention mask, reference-latent tokens (Flux Kontext) or a size not divisible by
  the patch run plain (and the next sparse step runs dense first). Run state is fresh per run (``SAMPLER_SAMPLE``).
* With MagCache (``accel.comfy_native``) on the same model RAS's block patches sit inside MagCache's, whichever
  node came first. MagCache computing every CFG branch: RAS runs the stack as above. MagCache skipping the whole
  stack: RAS's blocks do not run, its K/V caches stay as they were, the call's output is recorded as the previous
  output, a skipped dense step moves to the next computed step. MagCache computing some branches only: that call
  runs every token of those rows (plain) and the next computed step is dense.

Subclasses with work between blocks (VACE, camera, S2V ... Wan, Chroma) are refused (``UnsupportedModel``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .adapter import UnsupportedModel
from .comfy_native import PLAIN_OPTION, block_keys, call_inner, class_path, existing_patches, split_magcache
from .kv_cache import cached_attention, fill_cache, gather_dim, gather_tokens, scatter_tokens
from .ras import WRAPPER_KEY, branch_state, stack_index
from .ras_select import Patch, RASConfig, patch_dims, pixel_mask, select_tokens, token_grid
from .stacking import check_one_sigma

SUPPORTED = {
    "comfy.ldm.flux.model.Flux": "ComfyUI Flux",
    "comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper": "ComfyUI SD3 (MMDiT)",
    "comfy.ldm.wan.model.WanModel": "ComfyUI Wan 2.1/2.2 (WanModel)",
}
WAN = "comfy.ldm.wan.model.WanModel"
RUN_OPTION = "turbosample_ras_run"
CALL_KEY = "ras_call"
OVERRIDE = "optimized_attention_override"


class RunState:
    """Per-run holder (not a dict: ComfyUI copies nested dicts of the transformer options per call)."""

    def __init__(self) -> None:
        self.data: dict = {}


def supported_names() -> str:
    return ", ".join(SUPPORTED.values())


def check_supported(diffusion_model: object) -> None:
    """UnsupportedModel unless RAS can patch ``diffusion_model`` through ComfyUI's block hooks."""
    if class_path(diffusion_model) not in SUPPORTED:
        raise UnsupportedModel(f"RAS cannot run ComfyUI's {type(diffusion_model).__name__}: no block hooks for it "
                               "are implemented")


def patch_size(diffusion_model: torch.nn.Module) -> Patch:
    """Square patch side (Flux, SD3) or (frames, rows, cols) patch (Wan)."""
    path = class_path(diffusion_model)
    if path == WAN:
        return tuple(int(p) for p in diffusion_model.patch_size)
    if path == "comfy.ldm.flux.model.Flux":
        return int(diffusion_model.patch_size)
    return int(diffusion_model.x_embedder.patch_size[0])


def run_data(transformer_options: dict | None) -> dict | None:
    run = (transformer_options or {}).get(RUN_OPTION)
    return run.data if run is not None else None


def current_call(transformer_options: dict | None) -> dict | None:
    store = run_data(transformer_options)
    return None if store is None else store.get(CALL_KEY)


def sampler_sample_wrapper(executor, guider, sigmas, extra_args, *args, **kwargs):
    """A fresh run state for every sampling run, dropped when it ends or fails."""
    options = extra_args.setdefault("model_options", {}).setdefault("transformer_options", {})
    options[RUN_OPTION] = RunState()
    try:
        return executor(guider, sigmas, extra_args, *args, **kwargs)
    finally:
        options.pop(RUN_OPTION, None)


def begin_call(cfg: RASConfig, patch: Patch, x: torch.Tensor, options: dict, store: dict,
               self_attention_only: bool = False) -> dict | None:
    """The plan of one model call (mode dense / sparse / plain), or None outside a sampling run.
    ``self_attention_only``: only a block's first attention call is cached and routed (Wan)."""
    if x.ndim != 2 + (2 if isinstance(patch, int) else len(patch)):
        return None
    dims = patch_dims(patch, x.ndim - 2)
    found = branch_state(patch, cfg, x, {**options, "run_state": store})
    if found is None:
        return None
    state, step, n_drop, n_chunks = found
    call = {"state": state, "step": step, "n_img": state.drops.shape[1], "mode": "dense", "block": None,
            "self_attention_only": self_attention_only, "kv_cache": cfg.kv_cache}
    if any(size % p for size, p in zip(x.shape[2:], dims, strict=True)) or options.get(PLAIN_OPTION):
        call["mode"] = "plain"
    elif (n_drop > 0 and state.prev_out is not None and state.prev_tokens is not None and bool(state.filled.all())
          and state.caches):
        if state.active is None or state.selected != step:
            state.active = select_tokens(state.prev_out, patch, state.drops, n_drop, n_chunks, cfg)
            state.selected = step
        call["mode"] = "sparse"
    if call["mode"] == "dense":
        state.caches = {}
    return call


def finish_call(call: dict, denoised: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, model_sampling,
                patch: Patch) -> torch.Tensor:
    """Inactive pixels of a sparse call from the previous model output; records this call's model output."""
    state = call["state"]
    d0 = model_sampling.calculate_denoised(sigma, torch.zeros_like(denoised), x).to(denoised)
    slope = model_sampling.calculate_denoised(sigma, torch.ones_like(denoised), x).to(denoised) - d0
    state.step = call["step"]
    if bool((slope == 0).any()):  # sigma 0: the model output cannot be recovered; start over densely
        state.filled.zero_()
        state.prev_out = None
        return denoised
    output = (denoised - d0) / slope
    if not call.get("entered"):  # MagCache skipped the whole stack: K/V caches unchanged, output taken as is
        if call["mode"] == "dense":  # its caches were dropped: the next computed step runs dense
            state.filled.zero_()
    elif call["mode"] == "sparse":
        mask = pixel_mask(state.active, token_grid(x.shape, patch), patch)
        output = torch.where(mask, output, state.prev_out.to(output))
        denoised = torch.where(mask, denoised, d0 + slope * output)
    elif call["mode"] == "dense" and call["complete"]:
        state.filled.fill_(True)
    else:  # plain, or a dense call whose caches were not all filled
        state.filled.zero_()
    state.prev_out = output.detach()
    return denoised


def per_token(vec: torch.Tensor, n: int) -> torch.Tensor:
    """Wan's per-frame modulation (B, F, 6, D) spread over its ``n`` tokens as Wan's ``repeat_e`` does."""
    repeats = n // vec.shape[1]
    if repeats * vec.shape[1] != n:
        repeats += 1
    return vec.repeat_interleave(repeats, dim=1)[:, :n]


def start_sparse(call: dict, args: dict) -> dict:
    """First block of a sparse call: keep the text and active image tokens; cut RoPE (and Wan's per-frame
    modulation) to them. ``call["cut"]`` holds what every later block gets in place of the full tensors."""
    active = call["state"].active.to(args["img"].device)
    txt = args.get("txt")
    wan = call["self_attention_only"]  # Wan: ``txt`` is the cross-attention context, not part of the stack
    n_txt = txt.shape[1] if torch.is_tensor(txt) and not wan else 0
    call["img_index"], cut = active, {}
    if torch.is_tensor(args.get("pe")):  # Flux / SD3: (1, 1, S, ...) over [txt; img]; Wan: (1, N, 1, ...)
        cut["pe"] = gather_dim(args["pe"], 1 if wan else 2, stack_index(active, n_txt + call["n_img"], call["n_img"]))
    vec = args.get("vec")
    if wan and torch.is_tensor(vec) and vec.ndim == 4 and vec.shape[1] > 1:
        cut["vec"] = gather_dim(per_token(vec, call["n_img"]), 1, active)
    call["cut"] = cut
    return {**args, "img": gather_tokens(args["img"], active)}


def block_patches(model: torch.nn.Module, cfg: RASConfig, existing: dict | None = None) -> dict:
    """``{key: patch}`` for every block of ``model``'s stack, running RAS's token dropping."""
    keys = block_keys(model)
    existing = existing or {}
    first, last = keys[0], keys[-1]

    def make(j: int, key: tuple) -> Callable:
        inner = existing.get(key)
        if getattr(inner, "turbosample_kind", None) == "ras":  # RAS applied again: replace, never nest
            inner = inner.turbosample_inner

        def patch(args: dict, extra: dict) -> dict:
            call = current_call(args.get("transformer_options"))
            if call is not None and key == first:
                call["entered"] = True
            if call is None or call["mode"] == "plain":
                return call_inner(inner, args, extra)
            if key == first and (args["img"].shape[1] != call["n_img"] or args.get("attn_mask") is not None
                                 or args["img"].shape[0] != call["state"].shape[0]):
                # extra tokens (reference latents), a mask, or MagCache running some CFG branches only: as usual
                call["mode"] = "plain"
                return call_inner(inner, args, extra)
            call["block"], call["attention"] = j, 0
            if call["mode"] == "sparse":
                if key == first:
                    args = start_sparse(call, args)
                args = {**args, **call.get("cut", {})}
            out = call_inner(inner, args, extra)
            call["block"] = None
            if key == last:
                state = call["state"]
                if call["mode"] == "sparse":
                    prev = state.prev_tokens
                    index = stack_index(call["img_index"], prev.shape[1], call["n_img"])
                    out = {**out, "img": scatter_tokens(prev.to(out["img"]), index, out["img"])}
                state.prev_tokens = out["img"].detach()
                call["complete"] = call["mode"] == "dense" and {b for b, _ in state.caches} == set(range(len(keys)))
            return out

        patch.turbosample_inner = inner
        patch.turbosample_kind = "ras"
        return patch

    return {key: make(j, key) for j, key in enumerate(keys)}


def attention_override(previous: Callable | None) -> Callable:
    """``optimized_attention_override``: K/V caching at dense calls, cached attention at sparse ones."""

    def override(func, *args, **kwargs):
        def attend(*a, **k):
            return previous(func, *a, **k) if previous is not None else func(*a, **k)

        call = current_call(kwargs.get("transformer_options"))
        if call is None or call["mode"] == "plain" or call["block"] is None or kwargs.get("mask") is not None:
            return attend(*args, **kwargs)
        key = (call["block"], call["attention"])
        call["attention"] += 1
        if call["self_attention_only"] and key[1] > 0:  # Wan's cross-attention: per query, nothing to cache
            return attend(*args, **kwargs)
        q, k, v, *rest = args
        heads = rest[0] if rest else kwargs["heads"]
        if not kwargs.get("skip_reshape", False):  # (B, L, heads * dim) -> (B, heads, L, dim)
            q, k, v = (t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
        kw = {**kwargs, "skip_reshape": True}
        state = call["state"]
        if call["mode"] == "dense":
            state.caches[key] = fill_cache(k, v, call["kv_cache"])
            return attend(q, k, v, *rest, **kw)
        active = call["img_index"]
        index = stack_index(active, q.shape[2] - active.shape[1] + call["n_img"], call["n_img"])
        return cached_attention(q, k, v, state.caches[key], index, lambda q, k, v: attend(q, k, v, *rest, **kw))

    override.turbosample_previous = previous
    return override


def apply_model_wrapper(cfg: RASConfig, patch: Patch, self_attention_only: bool = False) -> Callable:
    def wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        options = transformer_options if transformer_options is not None else {}
        store = run_data(options)

        def plain():
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

        if store is None or control is not None:  # ControlNet residuals are added to full-size block outputs
            return plain()
        check_one_sigma(options, "RAS")
        call = begin_call(cfg, patch, x, options, store, self_attention_only)
        if call is None:
            return plain()
        call["complete"] = False
        store[CALL_KEY] = call
        try:
            denoised = plain()
        finally:
            store.pop(CALL_KEY, None)
        return finish_call(call, denoised, x, t, executor.class_obj.model_sampling, patch)

    return wrapper


def patch_model_patcher(model, cfg: RASConfig):
    """A clone of a ComfyUI ModelPatcher holding Flux / SD3 / Wan running RAS; the original stays untouched."""
    import comfy.patcher_extension as pe

    diffusion_model = model.get_model_object("diffusion_model")
    check_supported(diffusion_model)
    patched = model.clone()
    rebuild_magcache, inner = split_magcache(existing_patches(patched.model_options))
    patches = block_patches(diffusion_model, cfg, inner)
    if rebuild_magcache is not None:  # MagCache already on: RAS goes inside its patches (MagCache decides first)
        patches = rebuild_magcache(patches)
    for (block, i), p in patches.items():
        patched.set_model_patch_replace(p, "dit", block, i)
    options = patched.model_options.setdefault("transformer_options", {})
    previous = options.get(OVERRIDE)
    options[OVERRIDE] = attention_override(getattr(previous, "turbosample_previous", previous))
    apply_model = apply_model_wrapper(cfg, patch_size(diffusion_model), class_path(diffusion_model) == WAN)
    for kind, wrapper in ((pe.WrappersMP.SAMPLER_SAMPLE, sampler_sample_wrapper),
                          (pe.WrappersMP.APPLY_MODEL, apply_model)):
        patched.remove_wrappers_with_key(kind, WRAPPER_KEY)
        patched.add_wrapper_with_key(kind, WRAPPER_KEY, wrapper)
    return patched
