"""Runs candidates on a loaded model: our ``DiffusionModel`` with CONDITIONING and a latent shape.

This is where any model loader plugs in: whatever builds a ``TuneProblem`` (the built-in model in
``nodes/autotune.py`` today, a diffusers folder tomorrow) gets the whole tuner. MagCache and RAS are applied as the
workflow's nodes apply them (MagCache then RAS, MagCache's curve resampled by nearest neighbour), the samplers are
built as its sampler nodes build them (``space.sampler_info``), so a saved workflow reruns what was measured.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..accel.adapter import UnsupportedModel, transformer_parts
from ..samplers.denoiser import DiffusionModel
from ..samplers.registry import SAMPLERS
from ..samplers.run import sample
from ..samplers.schedulers import compute_sigmas
from .space import MAGCACHE_RETENTION, Candidate, Support, sampler_info

RESAMPLE = "nearest"  # how the MagCache node in the app's workflow maps a calibration to another step count


@dataclass
class TuneProblem:
    """A loaded model and what the reference run is: conditioning, latent shape, CFG, sampler, steps, schedule.

    ``to_image(latent) -> (H, W, 3) array in [0, 1]`` decodes a sampled latent for the image metrics; without it
    fidelity is measured on the latents (PSNR only). ``magcache_calibration`` is the MagCache calibration the
    saved setting will use (e.g. the built-in model's shipped one); None records one from the model first.
    ``per_seed`` gives some tuning seeds their own (positive, negative) conditioning, so that one search covers
    several prompts; the other seeds use ``positive`` / ``negative``.
    """

    model: DiffusionModel
    positive: list
    negative: list
    latent_shape: tuple[int, ...]
    cfg: float
    sampler: str = "euler"
    steps: int = 28
    scheduler: str = "simple"
    to_image: Callable[[torch.Tensor], np.ndarray] | None = None
    magcache_calibration: object | None = None
    per_seed: dict[int, tuple[list, list]] = field(default_factory=dict)

    @property
    def reference(self) -> Candidate:
        return Candidate(self.sampler, self.steps)

    def conditioning(self, seed: int) -> tuple[list, list]:
        """(positive, negative) of the run with this seed."""
        return self.per_seed.get(seed, (self.positive, self.negative))


def patch_size_of(net) -> int | None:
    """A network's patch size: its config's (diffusers, read there so as not to trip its deprecation warning) or its
    own attribute (ours); None when it tells none."""
    config = getattr(net, "config", None)
    from_config = config.get("patch_size") if isinstance(config, dict) else getattr(config, "patch_size", None)
    return from_config or getattr(net, "patch_size", None)


class StandaloneBackend:
    """``search.Backend`` over a ``TuneProblem``: runs, calibrations and model-call counts."""

    def __init__(self, problem: TuneProblem):
        self.problem = problem
        self.reference = problem.reference
        self.calibration = problem.magcache_calibration
        self.dc_records: dict[int, dict] = {}
        self.model_calls = 0
        self.images = problem.to_image is not None
        self._counted = problem.model.with_wrapper("turbosample.tune.count", self._count)

    def _count(self, forward, x, timestep, context, options):
        self.model_calls += 1
        return forward(x, timestep, context, options)

    def support(self) -> Support:
        notes = []
        try:
            transformer_parts(self.problem.model.diffusion_model)
            block = True
        except UnsupportedModel as exc:
            block = False
            notes.append(f"MagCache and RAS: {exc}")
        net = self.problem.model.diffusion_model
        holders = (net, getattr(net, "transformer", None))  # ours, or diffusers' behind accel's DiffusersDiT
        patch = next((v for v in map(patch_size_of, holders) if v), None)
        bottleneck = len(self.problem.latent_shape) == 4 and patch is not None
        if not bottleneck:
            notes.append("Bottleneck Sampling: needs an image latent (B, C, H, W) and a model that tells its patch "
                         "size")
        return Support(magcache=block, ras=block, bottleneck=bottleneck, notes=tuple(notes))

    def sigmas(self, steps: int) -> torch.Tensor:
        return compute_sigmas(self.problem.model.model_sampling, self.problem.scheduler, steps)

    def needs_magcache_calibration(self) -> bool:
        return self.calibration is None

    def calibrate_magcache(self, seed: int, cancel: threading.Event | None = None) -> None:
        """One Euler run at the reference's steps recording MagCache's ratio curves (reused for every candidate)."""
        from ..accel.magcache_calibration import calibrate

        p = self.problem
        self.calibration = calibrate(self._counted, p.positive, p.negative, torch.zeros(p.latent_shape),
                                     SAMPLERS["euler"], self.sigmas(p.steps), seed, p.cfg,
                                     {"scheduler": p.scheduler, "source": "auto-tune"})

    def curves(self) -> dict[int, tuple[float, ...]] | None:
        return dict(self.calibration.ratios) if self.calibration is not None else None

    def calibrate_dc(self, steps: int, seed: int) -> None:
        """DC-Solver ratios for ``steps`` on this model, prompt and CFG (one sample, as the app's workflow)."""
        from ..samplers.dc_calibration import calibrate_for_model

        p = self.problem
        self.dc_records[steps] = calibrate_for_model(self._counted, p.positive, p.negative, p.cfg, steps,
                                                     tuple(p.latent_shape), samples=1, seed=seed,
                                                     scheduler=p.scheduler)

    def patched(self, c: Candidate, counted: bool = True) -> DiffusionModel:
        """The model with the candidate's MagCache and RAS, in the workflow's order (``counted``: with the tuner's
        model-call counter as its outermost wrapper)."""
        model = self._counted if counted else self.problem.model
        if c.magcache:
            from ..accel.magcache import magcache_model
            from ..accel.magcache_calibration import run_settings

            template, curve_for = run_settings(self.calibration, c.magcache_threshold, c.magcache_k,
                                               MAGCACHE_RETENTION, RESAMPLE)
            model = magcache_model(model, template, curve_for=curve_for)
        if c.ras:
            from ..accel.ras import apply_ras

            model = apply_ras(model, sample_ratio=c.ras_ratio)
        return model

    def run(self, c: Candidate, seed: int, cancel: threading.Event | None = None) -> torch.Tensor:
        """One sample of the candidate (the sampled latent, on the CPU)."""
        p = self.problem
        info = sampler_info(c, self.dc_records.get(c.steps))
        positive, negative = p.conditioning(seed)
        out = sample(self.patched(c), positive, negative, torch.zeros(p.latent_shape), info,
                     self.sigmas(c.steps), seed, p.cfg, cancel=cancel)
        return out.cpu()

    def to_array(self, latent: torch.Tensor) -> np.ndarray:
        """What fidelity is measured on: the decoded image, or the latent itself."""
        if self.problem.to_image is not None:
            return self.problem.to_image(latent)
        return latent.float().numpy()
