"""The auto-tuner's backend inside ComfyUI: every candidate runs through ``comfy.sample.sample_custom`` on the
connected MODEL (a ModelPatcher), MagCache and RAS applied by the same functions as their nodes.

MagCache's calibration: the built-in model's shipped one (when it fits the weights), or one Euler run through the
recording block patches on ComfyUI's own Flux / SD3 / Wan (``nodes.comfy_magcache.recording_clone``); another
class tunes without MagCache. Model calls are counted by an ``APPLY_MODEL`` wrapper on the tuner's own clone.
"""

from __future__ import annotations

import threading

import torch

from ..samplers.run import Interrupted
from ..tune.space import MAGCACHE_RETENTION, Candidate, SearchSpace, Support, sampler_info
from .autotune_io import image_tensor, seeds_from, target_of, write_node_report
from .spec import NodeInputError

COUNT_KEY = "turbosample.tune.count"
RESAMPLE = "nearest"


class ComfyBackend:
    """``tune.search.Backend`` over a ComfyUI MODEL with its conditioning and latent."""

    def __init__(self, model, positive, negative, latent_image: dict, cfg: float, reference: Candidate,
                 scheduler: str):
        import comfy.patcher_extension as pe
        import comfy.sample

        self.model, self.positive, self.negative, self.cfg = model, positive, negative, float(cfg)
        self.reference, self.scheduler = reference, scheduler
        self.latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"][:1])
        self.model_calls = 0
        self.dc_records: dict[int, dict] = {}
        self.calibration = None
        self.images = self.is_builtin()
        self.base = model.clone()
        self.base.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, COUNT_KEY, self._count)

    def _count(self, executor, *args, **kwargs):
        self.model_calls += 1
        return executor(*args, **kwargs)

    def diffusion_model(self):
        return self.model.get_model_object("diffusion_model")

    def is_builtin(self) -> bool:
        from ..accel.adapter import UnsupportedModel, transformer_parts
        from ..accel.comfy_native import is_native
        from .autotune_model import is_builtin_latent

        dm = self.diffusion_model()
        if is_native(dm):
            return False
        try:
            return transformer_parts(dm).name == "turbosample TinyDiT" and is_builtin_latent(self.latent)
        except UnsupportedModel:
            return False

    def support(self) -> Support:
        from ..accel.adapter import UnsupportedModel
        from ..accel.comfy_native import is_native
        from .autotune_model import builtin_calibration
        from .comfy_magcache import check_supported
        from .ras_nodes import comfy_patch_ras

        notes, magcache = [], True
        try:
            check_supported(self.diffusion_model())
        except UnsupportedModel as exc:
            magcache = False
            notes.append(f"MagCache: {exc}")
        if magcache and not is_native(self.diffusion_model()):
            self.calibration, why = builtin_calibration(_Weights(self.diffusion_model()))
            if self.calibration is None:
                magcache = False
                notes.append(f"MagCache: {why}; in ComfyUI only Flux / SD3 / Wan record a calibration here")
        try:
            comfy_patch_ras(self.model, sample_ratio=0.5)
            ras = True
        except NodeInputError as exc:
            ras = False
            notes.append(f"RAS: {exc}")
        bottleneck = self.latent.ndim == 4
        if not bottleneck:
            notes.append("Bottleneck Sampling: needs an image latent (B, C, H, W)")
        return Support(magcache, ras, bottleneck, tuple(notes))

    def needs_magcache_calibration(self) -> bool:
        return self.calibration is None

    def sigmas(self, steps: int) -> torch.Tensor:
        import comfy.samplers

        from ..samplers.schedulers import compute_sigmas

        ms = self.model.get_model_object("model_sampling")
        if self.scheduler in comfy.samplers.SCHEDULER_NAMES:
            return comfy.samplers.calculate_sigmas(ms, self.scheduler, steps).float().cpu()
        return compute_sigmas(ms, self.scheduler, steps).float().cpu()

    def calibrate_magcache(self, seed: int, cancel: threading.Event | None = None) -> None:
        """One Euler run through MagCache's recording block patches (ComfyUI's Flux / SD3 / Wan)."""
        import comfy.sample
        import comfy.samplers

        from ..accel.magcache_calibration import Calibration, records_to_ratios, weights_fingerprint
        from ..samplers.registry import SAMPLERS
        from .comfy_magcache import recording_clone

        records: dict = {}
        guider = comfy.samplers.CFGGuider(recording_clone(self.base, records))
        guider.set_conds(self.positive, self.negative)
        guider.set_cfg(self.cfg)
        sigmas = self.sigmas(self.reference.steps)
        noise = comfy.sample.prepare_noise(self.latent, seed)
        guider.sample(noise, self.latent, comfy.samplers.KSAMPLER(SAMPLERS["euler"].fn), sigmas, seed=seed)
        ratios, extra = records_to_ratios(records, self.reference.steps)
        dm = self.diffusion_model()
        self.calibration = Calibration(type(dm).__name__, self.reference.steps, ratios, weights_fingerprint(dm),
                                       tuple(float(s) for s in sigmas), {"source": "auto-tune", **extra})

    def curves(self) -> dict | None:
        return dict(self.calibration.ratios) if self.calibration is not None else None

    def calibrate_dc(self, steps: int, seed: int) -> None:
        raise ValueError("DC-Solver is not searched inside ComfyUI (calibrate it with its own nodes)")

    def patched(self, c: Candidate, counted: bool = True):
        from ..accel.magcache_calibration import run_settings
        from . import comfy_magcache
        from .ras_nodes import comfy_patch_ras

        model = self.base if counted else self.model
        if c.magcache:
            template, curve_for = run_settings(self.calibration, c.magcache_threshold, c.magcache_k,
                                               MAGCACHE_RETENTION, RESAMPLE)
            model = comfy_magcache.patch_model_patcher(model, template, curve_for)
        if c.ras:
            (model,) = comfy_patch_ras(model, sample_ratio=c.ras_ratio)
        return model

    def comfy_sampler(self, c: Candidate):
        import comfy.samplers

        info = sampler_info(c, self.dc_records.get(c.steps))
        return comfy.samplers.KSAMPLER(info.fn, extra_options=dict(info.options))

    def run(self, c: Candidate, seed: int, cancel: threading.Event | None = None) -> torch.Tensor:
        import comfy.model_management as mm
        import comfy.sample

        def callback(*_args) -> None:
            if cancel is not None and cancel.is_set():
                raise Interrupted("auto-tune stopped")
            mm.throw_exception_if_processing_interrupted()

        noise = comfy.sample.prepare_noise(self.latent, seed)
        try:
            return comfy.sample.sample_custom(self.patched(c), noise, self.cfg, self.comfy_sampler(c),
                                              self.sigmas(c.steps), self.positive, self.negative, self.latent,
                                              callback=callback, disable_pbar=True, seed=seed).float().cpu()
        except mm.InterruptProcessingException:
            raise Interrupted("auto-tune cancelled in ComfyUI") from None

    def to_array(self, latent: torch.Tensor):
        if self.images:
            from .autotune_model import builtin_image

            return builtin_image(latent)
        return latent.numpy()


class _Weights:
    """Stands in for a DiffusionModel where only ``diffusion_model`` is read (the calibration's fingerprint)."""

    def __init__(self, diffusion_model):
        self.diffusion_model = diffusion_model


def comfy_autotune(model, positive, negative, latent_image, sampler_name: str, scheduler: str, steps: int,
                   cfg: float, seed: int, seeds: int, target_speedup: float, min_psnr: float, budget_runs: float,
                   report_filename: str) -> tuple:
    """ComfyUI: tune the connected MODEL; returns patched MODEL, SAMPLER, SIGMAS and the report IMAGE."""
    from ..tune.search import Budget, tune

    if not hasattr(model, "get_model_object"):
        raise NodeInputError(f"TurboSample Auto-Tune needs a ComfyUI MODEL, got {type(model).__name__}")
    target = target_of(target_speedup, min_psnr)
    backend = ComfyBackend(model, positive, negative, latent_image, cfg, Candidate(sampler_name, steps), scheduler)
    result = tune(backend, target, Budget(runs=budget_runs), SearchSpace(), seeds_from(seed, seeds))
    write_node_report(result, report_filename)
    c = result.chosen.candidate if result.chosen is not None else backend.reference
    return backend.patched(c, counted=False), backend.comfy_sampler(c), backend.sigmas(c.steps), image_tensor(result)
