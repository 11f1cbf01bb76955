"""MagCache calibration: one full run records, per CFG branch and step, the mean magnitude ratio of the
block-stack residual ``r_t = blocks(tokens) - tokens``: ``ratio_t = mean_tokens(||r_t|| / ||r_{t-1}||)`` (L2 over
the hidden dim), ``ratio_0 = 1`` (official ``magcache_calibration`` in ``MagCache4Wan2.1/magcache_generate.py``;
diffusers ``_perform_calibration_step``). Saved as JSON with the model, step count and sigmas it belongs to.

A calibration is refused for another model (weights fingerprint) and, unless resampling is asked for, for another
step count or schedule. Resampling maps the curve to another step count per branch by nearest neighbour in
normalised step position (official ``nearest_interp``) or, on request, linear interpolation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..samplers.fingerprint import model_id_of, weights_fingerprint  # noqa: F401  (re-exported)
from .adapter import transformer_parts
from .magcache import MagCacheSettings, branch_keys, run_blocks, step_index

FORMAT = "turbosample-magcache-calibration"
VERSION = 1
DATA = Path(__file__).with_name("data")
BUILTIN_CALIBRATION = DATA / "magcache_builtin_emoji_28.json"
PUBLISHED_CURVES = DATA / "magcache_curves.json"
SIGMA_TOLERANCE = 1e-4


class CalibrationMismatch(ValueError):
    """A calibration was used with a model, step count or schedule it was not made for."""


@dataclass(frozen=True)
class Calibration:
    """Per-branch ratio curves (0 = cond, 1 = uncond) of one model, step count and schedule."""

    model_id: str
    steps: int
    ratios: dict[int, tuple[float, ...]]
    fingerprint: str | None = None  # None: a published family curve (not tied to one checkpoint)
    sigmas: tuple[float, ...] | None = None
    meta: dict = field(default_factory=dict)  # sampler, scheduler, cfg, size, prompt, seed, std, cos_dist ...

    def __post_init__(self) -> None:
        if self.steps < 1 or any(len(v) != self.steps for v in self.ratios.values()) or 0 not in self.ratios:
            raise ValueError(f"calibration for {self.model_id!r}: need a cond curve (branch 0) and "
                             f"{self.steps} ratios per branch, got lengths "
                             f"{ {b: len(v) for b, v in self.ratios.items()} }")
        if self.sigmas is not None and len(self.sigmas) != self.steps + 1:
            raise ValueError(f"calibration for {self.model_id!r}: {len(self.sigmas)} sigmas for {self.steps} steps")

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model_id": self.model_id, "fingerprint": self.fingerprint,
                "steps": self.steps, "sigmas": list(self.sigmas) if self.sigmas is not None else None,
                "ratios": {str(b): list(v) for b, v in sorted(self.ratios.items())}, "meta": self.meta}

    @classmethod
    def from_dict(cls, data: dict, where: str = "calibration") -> Calibration:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{where} is not a TurboSample MagCache calibration (format {FORMAT!r})")
        if data.get("version") != VERSION:
            raise ValueError(f"{where}: unsupported calibration version {data.get('version')!r}")
        try:
            ratios = {int(b): tuple(float(r) for r in v) for b, v in data["ratios"].items()}
            sigmas = data.get("sigmas")
            return cls(model_id=str(data["model_id"]), steps=int(data["steps"]), ratios=ratios,
                       fingerprint=data.get("fingerprint"),
                       sigmas=tuple(float(s) for s in sigmas) if sigmas is not None else None,
                       meta=dict(data.get("meta") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: malformed calibration ({exc})") from None


def save_calibration(calibration: Calibration, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration.to_dict(), indent=1))
    return path


def load_calibration(path: str | Path) -> Calibration:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MagCache calibration file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    return Calibration.from_dict(data, str(path))


def published_curve(name: str) -> Calibration:
    """A published curve (Flux / Wan 2.1) from ``data/magcache_curves.json`` with its recommended defaults."""
    curves = json.loads(PUBLISHED_CURVES.read_text())["curves"]
    if name not in curves:
        raise KeyError(f"no published MagCache curve {name!r}; available: {', '.join(sorted(curves))}")
    c = curves[name]
    return Calibration(model_id=name, steps=c["steps"], ratios={int(b): tuple(v) for b, v in c["ratios"].items()},
                       meta={"defaults": c["defaults"], "source": "published"})


def resample_curve(values: tuple[float, ...], steps: int, mode: str = "nearest") -> tuple[float, ...]:
    """A curve mapped to ``steps`` entries by normalised step position (``nearest`` as the official code)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    src = np.asarray(values, dtype=np.float64)
    if steps == 1:
        return (float(src[-1]),)
    pos = np.arange(steps) * (len(src) - 1) / (steps - 1)
    if mode == "nearest":
        return tuple(float(v) for v in src[np.round(pos).astype(int)])
    if mode == "linear":
        return tuple(float(v) for v in np.interp(pos, np.arange(len(src)), src))
    raise ValueError(f"unknown resampling mode {mode!r}; use 'nearest' or 'linear'")


def check_model(calibration: Calibration, fingerprint: str | None) -> None:
    """Refuse a checkpoint-specific calibration for other weights."""
    if calibration.fingerprint is not None and fingerprint is not None and calibration.fingerprint != fingerprint:
        raise CalibrationMismatch(f"MagCache calibration was made for model {calibration.model_id!r} (weights "
                                  f"{calibration.fingerprint}); this model's weights are {fingerprint}. Run "
                                  f"TurboSample MagCache Calibrate for this model")


def curve_for_run(calibration: Calibration, sample_sigmas: torch.Tensor, resample: str | None = None
                  ) -> dict[int, tuple[float, ...]]:
    """The curves for a run's schedule; CalibrationMismatch unless the schedule matches or ``resample`` is set."""
    steps = int(sample_sigmas.numel()) - 1
    if resample:
        return {b: resample_curve(v, steps, resample) for b, v in calibration.ratios.items()}
    if steps != calibration.steps:
        raise CalibrationMismatch(f"MagCache calibration {calibration.model_id!r} is for {calibration.steps} steps, "
                                  f"this run has {steps}: calibrate for {steps} steps or enable resampling")
    if calibration.sigmas is not None:
        run = sample_sigmas.detach().float().cpu()
        cal = torch.tensor(calibration.sigmas, dtype=torch.float32)
        if not torch.allclose(run, cal, atol=SIGMA_TOLERANCE, rtol=0):
            raise CalibrationMismatch(f"MagCache calibration {calibration.model_id!r} was made for another schedule "
                                      f"(scheduler/shift/denoise) with the same {steps} steps: calibrate with this "
                                      f"schedule or enable resampling")
    return dict(calibration.ratios)


def run_settings(calibration: Calibration, threshold: float, max_skip_steps: int, retention_ratio: float,
                 resample: str | None = None):
    """(template settings, per-run resolver) for ``magcache_model`` / the ComfyUI wrapper."""
    template = MagCacheSettings(dict(calibration.ratios), threshold, max_skip_steps, retention_ratio)

    def curve_for(sample_sigmas: torch.Tensor) -> MagCacheSettings:
        return MagCacheSettings(curve_for_run(calibration, sample_sigmas, resample), threshold, max_skip_steps,
                                retention_ratio)

    return template, curve_for


def ratio_stats(current: torch.Tensor, previous: torch.Tensor) -> tuple[float, float, float]:
    """(mean, std) of the per-token norm ratio and the mean per-token cosine distance."""
    cur, prev = current.float(), previous.float()
    ratio = torch.linalg.vector_norm(cur, dim=-1) / torch.linalg.vector_norm(prev, dim=-1)
    cos = 1 - torch.nn.functional.cosine_similarity(cur, prev, dim=-1, eps=1e-8)
    return float(ratio.mean()), float(ratio.std()), float(cos.mean())


def record_residuals(records: dict, branches: list, step: int, residual: torch.Tensor) -> None:
    """Add this call's per-branch ratio/std/cos-distance at ``step`` (batch chunks in ``branches`` order).

    Only the first chunk of a branch and the first call of a step index count (as the skip rule does); a step
    whose predecessor was never evaluated is a RuntimeError naming the fix.
    """
    for key, r in zip(branch_keys(branches), residual.chunk(len(branches)), strict=True):
        rec = records.setdefault(key[0], {"ratio": {}, "std": {}, "cos_dist": {}, "last": None})
        if key[1] or step in rec["ratio"]:
            continue
        last = rec["last"]
        if step == 0:
            stats = (1.0, 0.0, 0.0)
        elif last is None or last[0] != step - 1:
            raise RuntimeError(f"MagCache calibration: step {step - 1} was never evaluated; calibrate with a "
                               f"sampler that evaluates every schedule sigma (e.g. euler)")
        else:
            stats = ratio_stats(r, last[1])
        for name, v in zip(("ratio", "std", "cos_dist"), stats, strict=True):
            rec[name][step] = v
        rec["last"] = (step, r.detach().clone())


def recording_wrapper(parts, records: dict):
    """A model wrapper that runs the full forward and records per-branch, per-step residual ratios."""

    def wrapper(forward, x, timestep, context, options):
        step = step_index(float(torch.as_tensor(options["sigmas"]).reshape(-1)[0]), options["sample_sigmas"])
        branches = list(options.get("cond_or_uncond") or [0])
        tokens, cond, grid = parts.embed(x, timestep, context)
        out = run_blocks(parts, tokens, cond)
        record_residuals(records, branches, step, out - tokens)
        return parts.head(out, cond, grid)

    return wrapper


def records_to_ratios(records: dict, steps: int) -> tuple[dict[int, tuple[float, ...]], dict]:
    """(ratios per branch, extra stats) from recorded residuals; RuntimeError when a step is missing."""
    ratios, extra = {}, {"std": {}, "cos_dist": {}}
    for branch, rec in sorted(records.items()):
        if sorted(rec["ratio"]) != list(range(steps)):
            raise RuntimeError(f"MagCache calibration: branch {branch} saw steps {sorted(rec['ratio'])}, "
                               f"expected 0..{steps - 1}")
        ratios[branch] = tuple(rec["ratio"][i] for i in range(steps))
        for name in extra:
            extra[name][str(branch)] = [rec[name][i] for i in range(steps)]
    if not ratios or not all(math.isfinite(r) and r > 0 for v in ratios.values() for r in v):
        raise FloatingPointError("MagCache calibration produced no or non-finite ratios (a zero residual?)")
    return ratios, extra


def calibrate(model, positive: list, negative: list, latent: torch.Tensor, sampler, sigmas: torch.Tensor,
              seed: int, cfg: float, meta: dict | None = None) -> Calibration:
    """One full sampling run of a ``DiffusionModel`` recording the ratio curves (no step is skipped)."""
    from ..samplers.run import sample

    records: dict = {}
    parts = transformer_parts(model.diffusion_model)
    sample(model.with_wrapper("magcache_calibrate", recording_wrapper(parts, records)), positive, negative, latent,
           sampler, sigmas, seed, cfg)
    steps = int(sigmas.numel()) - 1
    ratios, extra = records_to_ratios(records, steps)
    return Calibration(model_id=model.name, steps=steps, ratios=ratios,
                       fingerprint=weights_fingerprint(model.diffusion_model),
                       sigmas=tuple(float(s) for s in sigmas.float().cpu()),
                       meta={**(meta or {}), "seed": seed, "cfg": cfg, "sampler": getattr(sampler, "name", ""),
                             **extra})
