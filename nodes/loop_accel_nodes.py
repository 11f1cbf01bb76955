"""Sampler-level accelerators as SAMPLER nodes: Bottleneck Sampling and DualFast.

Both produce a SAMPLER for TurboSample Sample (stand-alone) or SamplerCustom/SamplerCustomAdvanced (ComfyUI,
where the same sampler function runs inside ``comfy.samplers.KSAMPLER``).
"""

from __future__ import annotations

from ..samplers.bottleneck import (
    DEFAULT_NOISE,
    DEFAULT_SCALES,
    DEFAULT_SHIFTS,
    NOISE_SOURCES,
    PAPER_STEP_BUDGET,
    RESIZERS,
    check_stages,
    check_step_budget,
    sample_bottleneck,
)
from ..samplers.dualfast import DEFAULT_COEFFICIENT, DEFAULT_SCHEDULE, SCHEDULES, SCOPES, sample_dualfast
from ..samplers.registry import SAMPLERS, SamplerInfo
from . import categories
from .spec import NodeInputError, NodeSpec, Output, Param

CATEGORY = categories.SAMPLERS


def numbers(text: str, name: str, kind: type = float) -> list:
    """'1, 0.5, 1' -> [1.0, 0.5, 1.0], or NodeInputError naming the input."""
    try:
        values = [kind(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise NodeInputError(f"{name} must be a comma-separated list of {kind.__name__} values, got {text!r}") from None
    if not values:
        raise NodeInputError(f"{name} must list one value per stage, got {text!r}")
    return values


def _fmt(values) -> str:
    return ", ".join(f"{v:g}" for v in values)


def bottleneck_info(base_sampler: str, scales: str, noise: str, shifts: str, steps: str,
                    resize_method: str, noise_source: str = "estimated", stop_early: bool = True,
                    step_budget: float = PAPER_STEP_BUDGET) -> SamplerInfo:
    options = {"base": base_sampler, "scales": numbers(scales, "scales"), "noise": numbers(noise, "noise"),
               "shifts": numbers(shifts, "shifts"), "resize_method": resize_method,
               "steps": numbers(steps, "steps", int) if steps.strip() else None,
               "noise_source": noise_source, "stop_early": bool(stop_early), "step_budget": float(step_budget)}
    if noise_source not in NOISE_SOURCES:
        raise NodeInputError(f"unknown noise source {noise_source!r}; choose one of {', '.join(NOISE_SOURCES)}")
    try:
        check_step_budget(options["step_budget"])
        check_stages(options["scales"], options["noise"], options["shifts"], options["steps"], resize_method)
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None
    calls = SAMPLERS[base_sampler].calls_per_step
    return SamplerInfo(f"bottleneck_{base_sampler}", sample_bottleneck, calls,
                       "Bottleneck Sampling (high -> low -> high resolution)", options)


def dualfast_info(base_sampler: str, coefficient: float, schedule: str, scope: str = "auto") -> SamplerInfo:
    options = {"base": base_sampler, "coefficient": coefficient, "schedule": schedule}
    if scope != "auto":
        options["scope"] = scope
    return SamplerInfo(f"{base_sampler}_dualfast", sample_dualfast, 1, "DualFast error correction", options)


def bottleneck_sampler(**values) -> tuple:
    return (bottleneck_info(**values),)


def dualfast_sampler(**values) -> tuple:
    return (dualfast_info(**values),)


def _ksampler(info: SamplerInfo) -> tuple:
    import comfy.samplers

    return (comfy.samplers.KSAMPLER(info.fn, extra_options=dict(info.options)),)


def comfy_bottleneck_sampler(**values) -> tuple:
    return _ksampler(bottleneck_info(**values))


def comfy_dualfast_sampler(**values) -> tuple:
    return _ksampler(dualfast_info(**values))


def _one_call_samplers() -> list[str]:
    return [n for n, i in SAMPLERS.items() if i.calls_per_step == 1 and i.fn is not sample_dualfast]


BASE = Param("base_sampler", "COMBO", "euler", choices=lambda: list(SAMPLERS),
             tooltip="Sampler run in every stage on that stage's sigmas.")

NODES: tuple[NodeSpec, ...] = (
    NodeSpec("TurboSampleBottleneckSampler", "TurboSample Bottleneck Sampling", CATEGORY,
             "Bottleneck Sampling (arXiv 2503.18940): full -> low -> full resolution stages; the clean estimate is "
             "resized and re-noised between stages. Flow (SD3, Flux, built-in) and EPS/V (SD1.5, SDXL) models; "
             "latent sides must divide by the model's patch size or UNet factor at every scale (else an error "
             "names the allowed sizes). Unless steps are given, the stages take step_budget x the SIGMAS' steps "
             "(default 0.68: the paper's 34 steps for a 50-step run), split 6 : 20 : 8.",
             (BASE,
              Param("scales", "STRING", _fmt(DEFAULT_SCALES), tooltip="Resolution scale per stage; first and last 1."),
              Param("noise", "STRING", _fmt(DEFAULT_NOISE),
                    tooltip="Noise re-introduction strength per stage (fraction of the stage schedule); first 1."),
              Param("shifts", "STRING", _fmt(DEFAULT_SHIFTS),
                    tooltip="Timestep shift per stage, on top of the model's own (1 = unchanged)."),
              Param("steps", "STRING", "", tooltip="Steps per stage, e.g. '6, 20, 8'; empty = split the SIGMAS."),
              Param("resize_method", "COMBO", "lanczos", choices=lambda: list(RESIZERS),
                    tooltip="How the clean estimate is resized between stages."),
              Param("noise_source", "COMBO", "estimated", choices=lambda: list(NOISE_SOURCES),
                    tooltip="Noise put back at a stage change: estimated = the noise the trajectory holds (closest "
                            "to the full-cost image), initial = the run's starting noise, fresh = new seeded noise."),
              Param("stop_early", "BOOLEAN", True,
                    tooltip="On: a stage stops at the next stage's noise level and hands over its clean estimate "
                            "(the authors' method figure). Off: every stage runs to the end of the schedule."),
              Param("step_budget", "FLOAT", round(PAPER_STEP_BUDGET, 2), 0.05, 4.0, 0.01,
                    tooltip="Steps run in all, as a fraction of the SIGMAS' steps, when steps is empty (0.68 = the "
                            "paper's 34 for 50; 1 = as many as the SIGMAS). Progress still ends at the last step.")),
             (Output("SAMPLER", "SAMPLER"),), bottleneck_sampler, comfy_fn=comfy_bottleneck_sampler),
    NodeSpec("TurboSampleDualFastSampler", "TurboSample DualFast", CATEGORY,
             "DualFast (arXiv 2506.13058): mixes the model output with the previous step's, "
             "out = (1 + c) out_t - c out_prev, at no extra model call; c = 0 is the base sampler.",
             (Param("base_sampler", "COMBO", "euler", choices=_one_call_samplers,
                    tooltip="A one-call-per-step sampler."),
              Param("coefficient", "FLOAT", DEFAULT_COEFFICIENT["euler"], -2.0, 2.0, 0.05,
                    tooltip="Correction strength c (0 = off)."),
              Param("schedule", "COMBO", DEFAULT_SCHEDULE, choices=lambda: list(SCHEDULES),
                    tooltip="decay: c at the first corrected step, falling to 0 at the last (best measured); "
                            "constant: c at every step; linear: grows from 0 to c toward low noise."),
              Param("scope", "COMBO", "auto", choices=lambda: ["auto", *SCOPES],
                    tooltip="Where the corrected output is used: all = everywhere the sampler reads it; corrector "
                            "= only UniPC's corrector (its predictor keeps the raw history); auto = the measured "
                            "choice per sampler (corrector for UniPC, all otherwise).")),
             (Output("SAMPLER", "SAMPLER"),), dualfast_sampler, comfy_fn=comfy_dualfast_sampler),
)
