"""The attention-backend node: MODEL -> patched copy whose attention runs on SDPA or xformers.

ComfyUI side: the clone gets an ``optimized_attention_override`` in its transformer options (read by ComfyUI's
``wrap_attn`` around every core attention call) that swaps ComfyUI's dense kernel for the chosen one
(``attention_pytorch`` / ``attention_xformers``). An override already present (another pack's, or core's
attention selector) is chained: it is called with our kernel as its ``func``, so it still wraps the call. A kernel
that is not one of ComfyUI's registered dense kernels (e.g. a sparse one chosen by an outer override) is left
as is. The built-in model does not call ComfyUI's attention, so its blocks get the kernel through object patches
(per clone, undone when the clone is unloaded).
"""

from __future__ import annotations

import logging

from ..accel.adapter import UnsupportedModel
from ..accel.attention import SETTINGS, AttentionBackendError, apply_attention_backend, resolve_backend
from ..samplers.denoiser import DiffusionModel
from . import categories
from .spec import NodeInputError, NodeSpec, Output, Param

CATEGORY = categories.ACCELERATORS
COMFY_NAMES = {"sdpa": "pytorch", "xformers": "xformers"}
OVERRIDE_KEY = "optimized_attention_override"
logger = logging.getLogger("turbosample.attention")


def patch_attention(model, backend: str) -> tuple:
    """Standalone: DiffusionModel -> copy using the chosen attention backend."""
    if not isinstance(model, DiffusionModel):
        raise NodeInputError(f"TurboSample attention backend takes a MODEL, got {type(model).__name__}")
    try:
        return (apply_attention_backend(model, backend)[0],)
    except (UnsupportedModel, AttentionBackendError) as exc:
        raise NodeInputError(str(exc)) from None


def chained_override(kernel, previous=None):
    """``override(func, *args, **kwargs)`` for ComfyUI's ``wrap_attn``: ``kernel`` replaces a dense ``func``;
    ``previous`` (an existing override) is called with it so it composes."""
    import comfy.ldm.modules.attention as attention

    known = set(attention.REGISTERED_ATTENTION_FUNCTIONS.values()) | {
        attention.optimized_attention, attention.optimized_attention_masked, attention.attention_basic,
        attention.attention_pytorch, attention.attention_sub_quad, attention.attention_split}
    dense = known | {getattr(f, "__wrapped__", f) for f in known}  # wrap_attn hands over the undecorated kernel
    raw = getattr(kernel, "__wrapped__", kernel)

    def override(func, *args, **kwargs):
        chosen = raw if func in dense else func
        if previous is not None:
            return previous(chosen, *args, **kwargs)
        return chosen(*args, **kwargs)

    override.turbosample_previous = previous  # re-applying the node replaces our override, never stacks it
    return override


def comfy_kernel(name: str, setting: str):
    """ComfyUI's own kernel for a resolved backend name (it handles masks, precision and layouts)."""
    import comfy.ldm.modules.attention as attention

    kernel = attention.get_attention_function(COMFY_NAMES[name], default=None)
    if kernel is not None:
        return name, kernel
    why = "ComfyUI runs with xformers disabled (--disable-xformers, --use-pytorch-cross-attention or no GPU)"
    if setting == "xformers":
        raise NodeInputError(f"attention backend 'xformers' cannot be used: {why}; choose 'sdpa' or 'auto'")
    logger.info("attention backend: auto: using SDPA because %s", why)
    return "sdpa", attention.attention_pytorch


def comfy_patch_attention(model, backend: str) -> tuple:
    """ComfyUI: ModelPatcher -> clone with a chained attention override (+ object patches for the built-in)."""
    if not hasattr(model, "clone") or not hasattr(model, "get_model_object"):
        raise NodeInputError(f"TurboSample attention backend needs a ComfyUI MODEL, got {type(model).__name__}")
    import comfy.model_management

    try:
        resolved = resolve_backend(backend, comfy.model_management.get_torch_device())
    except AttentionBackendError as exc:
        raise NodeInputError(str(exc)) from None
    name, kernel = comfy_kernel(resolved.name, backend)
    fn = resolved.fn if name == resolved.name else resolve_backend("sdpa").fn
    patched = model.clone()
    options = patched.model_options.setdefault("transformer_options", {})
    previous = options.get(OVERRIDE_KEY)
    if previous is not None and hasattr(previous, "turbosample_previous"):
        previous = previous.turbosample_previous
    options[OVERRIDE_KEY] = chained_override(kernel, previous)
    blocks = getattr(patched.get_model_object("diffusion_model"), "blocks", None) or ()
    for i, block in enumerate(blocks):
        if hasattr(block, "attention"):  # the built-in DiT: its blocks call their own attention function
            patched.add_object_patch(f"diffusion_model.blocks.{i}.attention", fn)
    return (patched,)


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("TurboSampleAttentionBackend", "TurboSample Attention Backend", CATEGORY,
             "Chooses the attention kernel of a MODEL: auto (xformers only if it works on this device and is "
             "faster than SDPA), sdpa (torch), or xformers (error if unusable). Composes with other attention "
             "overrides.",
             (Param("model", "MODEL"),
              Param("backend", "COMBO", "auto", choices=lambda: list(SETTINGS),
                    tooltip="auto: probe and time xformers against SDPA once per device; sdpa: torch's fused "
                            "attention; xformers: memory-efficient attention, error if it cannot run here.")),
             (Output("MODEL", "MODEL"),), patch_attention, comfy_fn=comfy_patch_attention),
)
