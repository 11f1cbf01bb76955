"""MagCache on a ComfyUI MODEL: a patched clone, the original patcher untouched.

* ``WrappersMP.DIFFUSION_MODEL`` wrapper: rebuilds the diffusion model's forward from ``transformer_parts`` and
  runs the same skip rule as the standalone wrapper (``accel.magcache.magcache_forward``).
* ``WrappersMP.SAMPLER_SAMPLE`` wrapper: puts a fresh per-run state holder into the run's transformer options and
  drops it when the run ends or fails, so runs (also interrupted ones) never share caches. The holder is not a
  dict because ComfyUI copies nested dicts of the transformer options for every model call.
* The built-in model runs ``DIFFUSION_MODEL`` wrappers in its forward like ComfyUI's own models
  (``nodes.comfy_model.ComfyTinyDiT``).
* ComfyUI's own Flux, SD3 (MMDiT) and Wan get per-block ``patches_replace["dit"]`` entries instead
  (``accel.comfy_native``) plus an ``APPLY_MODEL`` wrapper that runs calls with a ControlNet unaccelerated.
"""

from __future__ import annotations

from collections.abc import Callable

from ..accel import comfy_native
from ..accel.adapter import UnsupportedModel, transformer_parts
from ..accel.magcache import MagCacheRun, MagCacheSettings, magcache_forward
from .comfy_block_stack import MAGCACHE_KEY, replace_block_stack_wrappers, roles_of, stacked_wrapper, tagged

WRAPPER_KEY = MAGCACHE_KEY
RUN_STATE_OPTION = "turbosample_magcache_run"


class RunState:
    """Per-run state shared by every model call of one sampling run."""

    def __init__(self) -> None:
        self.data: dict = {}


def sampler_sample_wrapper(executor, guider, sigmas, extra_args, *args, **kwargs):
    options = extra_args.setdefault("model_options", {}).setdefault("transformer_options", {})
    options[RUN_STATE_OPTION] = RunState()
    try:
        return executor(guider, sigmas, extra_args, *args, **kwargs)
    finally:
        options.pop(RUN_STATE_OPTION, None)


def diffusion_model_wrapper(settings: MagCacheSettings, curve_for: Callable | None = None):
    def wrapper(executor, x, timestep, context=None, control=None, transformer_options=None, **kwargs):
        transformer_options = transformer_options if transformer_options is not None else {}

        def plain():
            return executor(x, timestep, context, control, transformer_options, **kwargs)

        run = transformer_options.get(RUN_STATE_OPTION)
        if run is None or control is not None:  # ControlNet residuals live inside the skipped stack
            return plain()
        options = {"sigmas": transformer_options.get("sigmas"), "run_state": run.data,
                   "sample_sigmas": transformer_options.get("sample_sigmas"),
                   "cond_or_uncond": transformer_options.get("cond_or_uncond")}
        return magcache_forward(transformer_parts(executor.class_obj), settings, x, timestep, context, options,
                                plain, curve_for)

    return tagged(wrapper, {"magcache": MagCacheRun(settings, curve_for)})


def run_data(transformer_options: dict) -> dict | None:
    """The per-run state dict put in by ``sampler_sample_wrapper`` (None outside a sampling run)."""
    run = transformer_options.get(RUN_STATE_OPTION)
    return run.data if run is not None else None


def plain_with_control_wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None,
                               transformer_options=None, **kwargs):
    """APPLY_MODEL wrapper: a call with ControlNet residuals runs every block (they live inside the stack)."""
    transformer_options = transformer_options if transformer_options is not None else {}
    if control is not None:
        transformer_options = {**transformer_options, comfy_native.PLAIN_OPTION: True}
    return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


def check_supported(diffusion_model) -> None:
    """UnsupportedModel naming every supported class unless ``diffusion_model`` can run MagCache here."""
    if comfy_native.is_native(diffusion_model):
        return
    try:
        transformer_parts(diffusion_model)
    except UnsupportedModel as exc:
        raise UnsupportedModel(f"{exc}; in ComfyUI also: {comfy_native.supported_names()}") from None


def patch_native(model, settings: MagCacheSettings, curve_for: Callable | None = None, record: list | None = None):
    """A clone of a ModelPatcher holding ComfyUI's Flux/MMDiT/Wan with MagCache block patches."""
    import comfy.patcher_extension as pe

    patched = model.clone()
    patches = comfy_native.magcache_block_patches(
        model.get_model_object("diffusion_model"), settings, run_data, curve_for, record,
        comfy_native.existing_patches(patched.model_options))
    for (block, i), patch in patches.items():
        patched.set_model_patch_replace(patch, comfy_native.PATCH_NAME, block, i)
    for kind, wrapper in ((pe.WrappersMP.SAMPLER_SAMPLE, sampler_sample_wrapper),
                          (pe.WrappersMP.APPLY_MODEL, plain_with_control_wrapper)):
        patched.remove_wrappers_with_key(kind, WRAPPER_KEY)
        patched.add_wrapper_with_key(kind, WRAPPER_KEY, wrapper)
    return patched


def recording_clone(model, records: dict):
    """A clone of a ModelPatcher holding ComfyUI's Flux/MMDiT/Wan that records MagCache's calibration ratios into
    ``records`` during a full run (see ``accel.magcache_calibration.records_to_ratios``)."""
    import comfy.patcher_extension as pe

    diffusion_model = model.get_model_object("diffusion_model")
    if not comfy_native.is_native(diffusion_model):
        raise UnsupportedModel(f"MagCache calibration through block patches supports "
                               f"{comfy_native.supported_names()}, not {type(diffusion_model).__name__}")
    patched = model.clone()
    patches = comfy_native.recording_block_patches(diffusion_model, records, run_data,
                                                   comfy_native.existing_patches(patched.model_options))
    for (block, i), patch in patches.items():
        patched.set_model_patch_replace(patch, comfy_native.PATCH_NAME, block, i)
    patched.remove_wrappers_with_key(pe.WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY)
    patched.add_wrapper_with_key(pe.WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY, sampler_sample_wrapper)
    return patched


def patch_model_patcher(model, settings: MagCacheSettings, curve_for: Callable | None = None):
    """A clone of a ComfyUI ModelPatcher running MagCache; UnsupportedModel (nothing patched) otherwise."""
    import comfy.patcher_extension as pe

    if not hasattr(model, "clone") or not hasattr(model, "get_model_object"):
        raise UnsupportedModel(f"TurboSample MagCache in ComfyUI takes a MODEL, got {type(model).__name__}")
    diffusion_model = model.get_model_object("diffusion_model")
    check_supported(diffusion_model)  # raises UnsupportedModel before anything is patched
    if comfy_native.is_native(diffusion_model):
        return patch_native(model, settings, curve_for)
    ras_cfg = roles_of(model).get("ras")  # the built-in model with RAS on it: one wrapper runs both
    wrapper = (stacked_wrapper(MagCacheRun(settings, curve_for), ras_cfg, RUN_STATE_OPTION) if ras_cfg is not None
               else diffusion_model_wrapper(settings, curve_for))
    patched = model.clone()
    patched.remove_wrappers_with_key(pe.WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY)  # applying twice replaces
    patched.add_wrapper_with_key(pe.WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY, sampler_sample_wrapper)
    replace_block_stack_wrappers(patched, WRAPPER_KEY, wrapper)
    return patched
