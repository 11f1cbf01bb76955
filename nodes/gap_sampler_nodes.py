"""SAMPLER nodes with the knobs of the methods no UI ships: EDM churn, GHVB / heavy-ball momentum, Time-Shift.

The registered samplers (``euler_churn``, ``ghvb``, ``euler_time_shift``, ...) carry the papers' defaults;
these nodes expose the parameters. Stand-alone they return a SamplerInfo, in ComfyUI a KSAMPLER.
"""

from __future__ import annotations

from ..samplers import churn, momentum, time_shift
from ..samplers.registry import SAMPLERS, SamplerInfo
from . import categories
from .spec import NodeInputError, NodeSpec, Output, Param

CATEGORY = categories.SAMPLERS


def churn_info(method: str, s_churn: float, s_tmin: float, s_tmax: float, s_noise: float) -> SamplerInfo:
    try:
        churn.check_churn(s_churn, s_tmin, s_tmax, s_noise)
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None
    return SamplerInfo(f"{method}_churn", churn.sample_churn, SAMPLERS[method].calls_per_step,
                       f"{method} with EDM churn", {"method": method, "s_churn": s_churn, "s_tmin": s_tmin,
                                                    "s_tmax": s_tmax, "s_noise": s_noise})


def momentum_info(method: str, order: int, beta: float) -> SamplerInfo:
    if not 0.0 < beta <= 1.0:
        raise NodeInputError(f"momentum beta must be in (0, 1], got {beta}")
    return SamplerInfo(method, momentum.sample_momentum, 1, f"{method} momentum",
                       {"method": method, "order": order, "beta": beta})


def time_shift_info(base_sampler: str, window: int, cutoff: int) -> SamplerInfo:
    try:
        time_shift.check_time_shift(window, cutoff)
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None
    return SamplerInfo(f"{base_sampler}_time_shift", time_shift.sample_time_shift,
                       SAMPLERS[base_sampler].calls_per_step, f"{base_sampler} with Time-Shift",
                       {"base": base_sampler, "window": window, "cutoff": cutoff})


def _standalone(make):
    return lambda **values: (make(**values),)


def _comfy(make):
    def run(**values) -> tuple:
        import comfy.samplers

        info = make(**values)
        return (comfy.samplers.KSAMPLER(info.fn, extra_options=dict(info.options)),)

    return run


def _plain_samplers() -> list[str]:
    return [n for n, i in SAMPLERS.items() if "base" not in i.options and "method" not in i.options]


SAMPLER_OUT = (Output("SAMPLER", "SAMPLER"),)
NODES: tuple[NodeSpec, ...] = (
    NodeSpec("TurboSampleChurnSampler", "TurboSample EDM Churn Sampler", CATEGORY,
             "Euler / Heun / DPM-2 with EDM stochastic churn (Karras et al. 2022, Alg. 2); churn 0 = the plain "
             "sampler. On flow models the churn acts on the equivalent noise level.",
             (Param("method", "COMBO", "heun", choices=lambda: list(churn.METHODS), tooltip="Base solver."),
              Param("s_churn", "FLOAT", churn.EDM_DEFAULTS["s_churn"], 0.0, 1000.0, 0.1,
                    tooltip="Total churn over the run (0 = deterministic)."),
              Param("s_tmin", "FLOAT", churn.EDM_DEFAULTS["s_tmin"], 0.0, 1000.0, 0.01,
                    tooltip="Churn only at noise levels >= this."),
              Param("s_tmax", "FLOAT", churn.EDM_DEFAULTS["s_tmax"], 0.0, 1e6, 0.1,
                    tooltip="Churn only at noise levels <= this."),
              Param("s_noise", "FLOAT", churn.EDM_DEFAULTS["s_noise"], 0.5, 2.0, 0.001,
                    tooltip="Scale of the added noise (slightly > 1 counters detail loss).")),
             SAMPLER_OUT, _standalone(churn_info), comfy_fn=_comfy(churn_info)),
    NodeSpec("TurboSampleMomentumSampler", "TurboSample Momentum Sampler", CATEGORY,
             "GHVB (generalised heavy ball) or PLMS with heavy-ball momentum (Wizadwongsa & Suwajanakorn 2023); "
             "beta 1 = plain Adams-Bashforth of that order; one model call per step.",
             (Param("method", "COMBO", "ghvb", choices=lambda: list(momentum.METHODS), tooltip="ghvb or hb."),
              Param("order", "INT", 4, 1, 5, tooltip="Adams-Bashforth order."),
              Param("beta", "FLOAT", 0.8, 0.01, 1.0, 0.01, tooltip="Momentum (1 = none, smaller = more damping).")),
             SAMPLER_OUT, _standalone(momentum_info), comfy_fn=_comfy(momentum_info)),
    NodeSpec("TurboSampleTimeShiftSampler", "TurboSample Time-Shift Sampler", CATEGORY,
             "Time-Shift (Li et al. 2024): each model call uses the timestep whose noise level matches the current "
             "sample's variance, within a window; wraps any sampler, no extra calls.",
             (Param("base_sampler", "COMBO", "dpmpp_2m", choices=_plain_samplers, tooltip="Sampler to wrap."),
              Param("window", "INT", time_shift.DEFAULT_WINDOW, 0, 1000,
                    tooltip="Search window in timesteps (0 = the base sampler)."),
              Param("cutoff", "INT", time_shift.DEFAULT_CUTOFF, 0, 1000,
                    tooltip="Shift only above this timestep (of 1000).")),
             SAMPLER_OUT, _standalone(time_shift_info), comfy_fn=_comfy(time_shift_info)),
)
