"""The RAS node: MODEL -> a patched copy that samples with region-adaptive token dropping."""

from __future__ import annotations

from ..accel import comfy_native_ras
from ..accel.adapter import UnsupportedModel
from ..accel.ras import WRAPPER_KEY, apply_ras, ras_call, ras_parts
from ..accel.ras_select import METRICS, STARVATION_MODES, RASConfig
from ..samplers.denoiser import DiffusionModel
from . import categories
from .comfy_block_stack import replace_block_stack_wrappers, roles_of, stacked_wrapper, tagged
from .comfy_magcache import RUN_STATE_OPTION
from .spec import NodeInputError, NodeSpec, Output, Param

CATEGORY = categories.ACCELERATORS


def patch_ras(model, **settings) -> tuple:
    """Standalone: our DiffusionModel -> RAS-patched copy."""
    if not isinstance(model, DiffusionModel):
        raise NodeInputError("TurboSample RAS outside ComfyUI patches the built-in model only")
    try:
        return (apply_ras(model, **settings),)
    except (UnsupportedModel, ValueError) as exc:
        raise NodeInputError(str(exc)) from None


def transformer_options_of(args: tuple, kwargs: dict) -> dict:
    """ComfyUI passes transformer_options by keyword or as a positional dict."""
    if isinstance(kwargs.get("transformer_options"), dict):
        return kwargs["transformer_options"]
    return next((a for a in reversed(args) if isinstance(a, dict)), {})


def comfy_patch_ras(model, **settings) -> tuple:
    """ComfyUI: ModelPatcher -> clone with a DIFFUSION_MODEL wrapper (RAS) and an OUTER_SAMPLE one (state reset);
    ComfyUI's own Flux / SD3 / Wan get block hooks instead (``accel.comfy_native_ras``)."""
    if not hasattr(model, "get_model_object"):
        raise NodeInputError(f"TurboSample RAS needs a ComfyUI MODEL, got {type(model).__name__}")
    try:
        cfg = RASConfig(**settings)
        dit = model.get_model_object("diffusion_model")
        if comfy_native_ras.class_path(dit).startswith("comfy."):  # ComfyUI's own models: Flux, SD3, Wan or refused
            comfy_native_ras.check_supported(dit)
            return (comfy_native_ras.patch_model_patcher(model, cfg),)
        parts = ras_parts(dit)
    except (UnsupportedModel, ValueError) as exc:
        raise NodeInputError(f"{exc} (TurboSample RAS supports the built-in model in ComfyUI, also "
                             f"{comfy_native_ras.supported_names()})") from None
    import comfy.patcher_extension as ext

    store: dict = {}

    def diffusion_model_wrapper(executor, x, timestep, context=None, *args, **kwargs):
        to = transformer_options_of(args, kwargs)
        options = {"sigmas": to.get("sigmas"), "sample_sigmas": to.get("sample_sigmas"),
                   "cond_or_uncond": to.get("cond_or_uncond"), "run_state": store}
        return ras_call(parts, cfg, lambda *_: executor(x, timestep, context, *args, **kwargs),
                        x, timestep, context, options)

    def outer_sample_wrapper(executor, *args, **kwargs):
        store.clear()
        try:
            return executor(*args, **kwargs)
        finally:
            store.clear()

    magcache = roles_of(model).get("magcache")  # MagCache already on the built-in model: one wrapper runs both
    wrapper = (stacked_wrapper(magcache, cfg, RUN_STATE_OPTION) if magcache is not None
               else tagged(diffusion_model_wrapper, {"ras": cfg}))
    patched = model.clone()
    replace_block_stack_wrappers(patched, WRAPPER_KEY, wrapper)  # applying RAS twice replaces, never stacks
    patched.remove_wrappers_with_key(ext.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY)
    patched.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, outer_sample_wrapper)
    return (patched,)


DEFAULTS = RASConfig()

NODES: tuple[NodeSpec, ...] = (
    NodeSpec("TurboSampleRAS", "TurboSample RAS", CATEGORY,
             "Region-Adaptive Sampling: at most steps only the most active image regions run through the "
             "transformer; the rest reuse the previous step's prediction. Built-in model; in ComfyUI also Flux, "
             "SD3 (MMDiT) and Wan 2.1/2.2 (video: tokens per frame).",
             (Param("model", "MODEL"),
              Param("sample_ratio", "FLOAT", DEFAULTS.sample_ratio, 0.05, 1.0, 0.05,
                    tooltip="Fraction of image tokens recomputed at a sparse step (1 = no acceleration)."),
              Param("warmup_steps", "INT", DEFAULTS.warmup_steps, 1, 1000,
                    tooltip="First steps that always run every token."),
              Param("dense_every", "INT", DEFAULTS.dense_every, 0, 1000,
                    tooltip="After warm-up, every n-th step runs every token to reset errors (0 = never)."),
              Param("starvation_scale", "FLOAT", DEFAULTS.starvation_scale, 0.0, 2.0, 0.01,
                    tooltip="Weight of the per-token drop counter in the selection score."),
              Param("starvation", "COMBO", DEFAULTS.starvation, choices=lambda: list(STARVATION_MODES),
                    tooltip="spread: often-dropped tokens get recomputed sooner (README intent, measured "
                            "better); official: the official code's sign (dropped tokens stay dropped)."),
              Param("high_ratio", "FLOAT", DEFAULTS.high_ratio, 0.0, 1.0, 0.05,
                    tooltip="Share of the dropped tokens taken from the highest scores (rest: lowest)."),
              Param("metric", "COMBO", DEFAULTS.metric, choices=lambda: list(METRICS),
                    tooltip="Per-token score of the last prediction: std or L2 norm over channels (a "
                            "one-channel model: its magnitude either way)."),
              Param("dynamic_step", "FLOAT", DEFAULTS.dynamic_step, 0.0, 0.5, 0.01,
                    tooltip="Dynamic ratio: extra fraction of tokens dropped per group of steps "
                            "(fewer early, more late)."),
              Param("dynamic_length", "INT", DEFAULTS.dynamic_length, 0, 1000,
                    tooltip="Steps per group of the dynamic ratio (0 = static ratio)."),
              Param("kv_cache", "COMBO", DEFAULTS.kv_cache, choices=lambda: ["full", "int8"],
                    tooltip="K/V cache of every token for the sparse steps: full (blocks x tokens x inner width x 2 "
                            "x bytes x batch) or int8 (about half of bf16, a quarter of float32; low memory)."),
              Param("cuda_graph", "BOOLEAN", DEFAULTS.cuda_graph,
                    tooltip="Replay the sparse steps as a CUDA graph (less launch overhead; CUDA only, falls back "
                            "to the eager pass elsewhere or if capture fails).")),
             (Output("MODEL", "MODEL"),), patch_ras, comfy_fn=comfy_patch_ras),
)
