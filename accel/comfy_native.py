"""MagCache on ComfyUI's own Flux, SD3 (MMDiT) and Wan models through ComfyUI's block patches.

No forward is rebuilt: every block of the stack gets a ``patches_replace["dit"]`` entry (``("double_block", i)``,
Flux also ``("single_block", i)``), which each model's forward consults in place of the block.

* The first block sees the stack input (image tokens) and decides per CFG branch with the shared MagCache rule
  (``accel.magcache.plan_step`` / ``decide_branches``: retention, K, threshold, per-branch state).
* All branches skip: every block passes its input through and the last block returns the stack input plus the
  cached residual. Some skip: the computing branches' batch rows alone run through the blocks (every tensor
  argument with the full batch is row-sliced; Wan's batch-1 rope table is left as is) and the last block
  puts the batch back together. None skip: the blocks run as usual and the last block caches the residual.
* Flux's single blocks work on ``cat(txt, img)``: the residual covers the trailing image tokens only (the
  text part of the stack output is cut away by Flux before the head; skipped rows get zeros there).
* A block patch already on the model (another node's) is kept: ours calls it in place of the bare block. RAS's
  patches (``accel.comfy_native_ras``) always sit inside MagCache's, whichever node came first: MagCache decides
  per call whether the stack runs, RAS runs it on the active tokens (``split_magcache`` / ``turbosample_rebuild``).

Run state (``state_of(transformer_options)``) is the per-run dict of the ComfyUI wrapper; without it (or with
a ControlNet, whose residuals live inside the skipped stack) every block runs as usual. Only the exact classes
in ``SUPPORTED`` are patched: subclasses that add work between blocks (VACE, S2V, Humo, Chroma ...) are refused.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .magcache import MagCacheSettings, decide_branches, plan_step, step_index

SUPPORTED = {
    "comfy.ldm.flux.model.Flux": "ComfyUI Flux",
    "comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper": "ComfyUI SD3 (MMDiT)",
    "comfy.ldm.modules.diffusionmodules.mmdit.MMDiT": "ComfyUI SD3 (MMDiT)",
    "comfy.ldm.wan.model.WanModel": "ComfyUI Wan 2.1/2.2 (WanModel)",
}
PATCH_NAME = "dit"
CALL_KEY = "native_call"  # per-call plan in the run state, set by the first block and read by the others
PLAIN_OPTION = "turbosample_magcache_plain"  # transformer option: run every block as usual for this call
Key = tuple[str, int]
StateOf = Callable[[dict], dict | None]


def class_path(model: object) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def is_native(model: object) -> bool:
    """True for the ComfyUI diffusion-model classes patched here."""
    return class_path(model) in SUPPORTED


def supported_names() -> str:
    return ", ".join(sorted(set(SUPPORTED.values())))


def block_keys(model: torch.nn.Module) -> list[Key]:
    """The ``patches_replace["dit"]`` keys of the whole block stack, in the order the forward runs them."""
    path = class_path(model)
    if path == "comfy.ldm.flux.model.Flux":
        keys = [("double_block", i) for i in range(len(model.double_blocks))]
        return keys + [("single_block", i) for i in range(len(model.single_blocks))]
    if path.startswith("comfy.ldm.modules.diffusionmodules.mmdit."):
        return [("double_block", i) for i in range(len(model.joint_blocks))]
    if path == "comfy.ldm.wan.model.WanModel":
        return [("double_block", i) for i in range(len(model.blocks))]
    raise TypeError(f"{type(model).__name__} is not one of {supported_names()}")


def existing_patches(model_options: dict) -> dict:
    return (model_options.get("transformer_options") or {}).get("patches_replace", {}).get(PATCH_NAME, {})


def call_inner(inner: Callable | None, args: dict, extra: dict) -> dict:
    """The block as the model would run it: another node's patch if there was one, else the block itself."""
    return inner(args, extra) if inner is not None else extra["original_block"](args)


def slice_rows(args: dict, batch: int, rows: torch.Tensor) -> dict:
    """``args`` with every tensor of the full batch cut to ``rows`` (already-cut tensors stay)."""
    return {k: v.index_select(0, rows.to(v.device)) if torch.is_tensor(v) and v.ndim and v.shape[0] == batch
            else v for k, v in args.items()}


def begin_call(store: dict, options: dict, img: torch.Tensor, settings: MagCacheSettings,
               curve_for: Callable | None, record: list | None) -> dict:
    """First block: the plan of this model call (mode plain / compute / skip / rows)."""
    plan = plan_step(settings, {"run_state": store, "sigmas": options.get("sigmas"),
                                "sample_sigmas": options.get("sample_sigmas"),
                                "cond_or_uncond": options.get("cond_or_uncond")}, img.shape[0], curve_for)
    if plan is None or options.get(PLAIN_OPTION):
        return {"mode": "plain"}
    n = len(plan.keys)
    skips = decide_branches(plan, [c.shape for c in img.chunk(n)], record)
    call = {"mode": "compute", "plan": plan, "skips": skips, "stack_in": img, "batch": img.shape[0]}
    if all(skips):
        call["mode"] = "skip"
    elif any(skips):
        b = img.shape[0] // n
        call["mode"] = "rows"
        call["rows"] = torch.cat([torch.arange(i * b, (i + 1) * b) for i, s in enumerate(skips) if not s])
    return call


def cached(call: dict, i: int) -> torch.Tensor:
    """Stack input plus cached residual of branch chunk ``i``."""
    chunk = call["stack_in"].chunk(len(call["skips"]))[i]
    return chunk + call["plan"].states[call["plan"].keys[i]].residual.to(chunk)


def finish_call(call: dict, out: dict, passthrough: dict) -> dict:
    """Last block: cache the computed residuals and put skipped branches' cached output in place."""
    plan, skips, stack_in = call["plan"], call["skips"], call["stack_in"]
    n_tok, n = stack_in.shape[1], len(skips)
    if call["mode"] == "skip":
        img = passthrough["img"]
        tail = torch.cat([cached(call, i) for i in range(n)])
        return {**passthrough, "img": torch.cat((img[:, :-n_tok], tail), 1) if img.shape[1] > n_tok else tail}
    img = out["img"]
    if call["mode"] == "compute":
        for key, r in zip(plan.keys, (img[:, -n_tok:] - stack_in).chunk(n), strict=True):
            plan.states[key].residual = r
        return out
    rows, batch = call["rows"], call["batch"]
    b = batch // n
    computed = [i for i, s in enumerate(skips) if not s]
    sub_in = stack_in.index_select(0, rows.to(stack_in.device))
    for j, i in enumerate(computed):
        plan.states[plan.keys[i]].residual = img[j * b:(j + 1) * b, -n_tok:] - sub_in[j * b:(j + 1) * b]
    full = {}
    for k, v in out.items():
        if torch.is_tensor(v) and v.ndim and v.shape[0] == rows.numel():
            w = v.new_zeros((batch, *v.shape[1:]))
            w[rows.to(v.device)] = v
            full[k] = w
        else:
            full[k] = v
    for i, s in enumerate(skips):
        if s:
            full["img"][i * b:(i + 1) * b, -n_tok:] = cached(call, i)
    return full


def magcache_block_patches(model: torch.nn.Module, settings: MagCacheSettings, state_of: StateOf,
                           curve_for: Callable | None = None, record: list | None = None,
                           existing: dict | None = None) -> dict[Key, Callable]:
    """``{key: patch}`` for every block of ``model``'s stack, running MagCache; ``existing`` = the model's
    current ``patches_replace["dit"]`` (kept as the inner block; earlier MagCache patches are unwrapped)."""
    keys = block_keys(model)
    existing = existing or {}
    first, last = keys[0], keys[-1]

    def rebuild(inner_patches: dict) -> dict[Key, Callable]:
        return magcache_block_patches(model, settings, state_of, curve_for, record, inner_patches)

    def make(key: Key) -> Callable:
        inner = existing.get(key)
        if getattr(inner, "turbosample_kind", None) == "magcache":  # MagCache applied again: replace, never nest
            inner = inner.turbosample_inner

        def patch(args: dict, extra: dict) -> dict:
            options = args.get("transformer_options") or {}
            store = state_of(options)
            if store is None:
                return call_inner(inner, args, extra)
            if key == first:
                store[CALL_KEY] = begin_call(store, options, args["img"], settings, curve_for, record)
            call = store.get(CALL_KEY) or {"mode": "plain"}
            mode = call["mode"]
            passthrough = {k: args[k] for k in ("img", "txt") if k in args}
            if mode == "plain":
                out = call_inner(inner, args, extra)
            elif mode == "skip":
                out = passthrough
            elif mode == "rows":
                out = call_inner(inner, slice_rows(args, call["batch"], call["rows"]), extra)
            else:
                out = call_inner(inner, args, extra)
            if key == last:
                store.pop(CALL_KEY, None)
                if mode != "plain":
                    out = finish_call(call, out, passthrough)
            return out

        patch.turbosample_inner = inner
        patch.turbosample_kind = "magcache"
        patch.turbosample_rebuild = rebuild  # the same MagCache around other inner patches (RAS goes inside)
        return patch

    return {key: make(key) for key in keys}


def split_magcache(existing: dict) -> tuple[Callable | None, dict]:
    """(MagCache's ``rebuild`` or None, the patches inside MagCache's): lets RAS go inside MagCache's patches."""
    found = [p for p in existing.values() if getattr(p, "turbosample_kind", None) == "magcache"]
    if not found:
        return None, existing
    inner = {k: getattr(p, "turbosample_inner", p) for k, p in existing.items()}
    return found[0].turbosample_rebuild, {k: p for k, p in inner.items() if p is not None}


def recording_block_patches(model: torch.nn.Module, records: dict, state_of: StateOf,
                            existing: dict | None = None) -> dict[Key, Callable]:
    """Block patches that run the full stack and record, per branch and step, the residual magnitude ratio
    (as ``accel.magcache_calibration.recording_wrapper`` does for our own models)."""
    from .magcache_calibration import record_residuals

    keys = block_keys(model)
    existing = existing or {}

    def make(key: Key) -> Callable:
        inner = existing.get(key)
        inner = getattr(inner, "turbosample_inner", inner)

        def patch(args: dict, extra: dict) -> dict:
            options = args.get("transformer_options") or {}
            store = state_of(options)
            if store is not None and key == keys[0]:
                store[CALL_KEY] = args["img"]
            out = call_inner(inner, args, extra)
            if store is None or key != keys[-1] or CALL_KEY not in store:
                return out
            stack_in = store.pop(CALL_KEY)
            step = step_index(float(torch.as_tensor(options["sigmas"]).reshape(-1)[0]), options["sample_sigmas"])
            branches = list(options.get("cond_or_uncond") or [0])
            record_residuals(records, branches, step, out["img"][:, -stack_in.shape[1]:] - stack_in)
            return out

        patch.turbosample_inner = inner
        return patch

    return {key: make(key) for key in keys}

