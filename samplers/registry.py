"""Sampler names the UI offers, with their cost in model calls per step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import solvers


@dataclass(frozen=True)
class SamplerInfo:
    name: str
    fn: Callable
    calls_per_step: float
    description: str
    options: dict = field(default_factory=dict)


SAMPLERS: dict[str, SamplerInfo] = {
    "euler": SamplerInfo("euler", solvers.sample_euler, 1, "first-order Euler (DDIM for flow models)"),
    "heun": SamplerInfo("heun", solvers.sample_heun, 2, "second-order Heun (EDM), Euler onto sigma = 0"),
    "dpm_2": SamplerInfo("dpm_2", solvers.sample_dpm_2, 2, "DPM-Solver-2 midpoint in log sigma"),
    "dpmpp_2m": SamplerInfo("dpmpp_2m", solvers.sample_dpmpp_2m, 1, "DPM-Solver++(2M) multistep"),
    "lms": SamplerInfo("lms", solvers.sample_lms, 1, "linear multistep (order 4) on the sigma grid"),
    "ipndm": SamplerInfo("ipndm", solvers.sample_ipndm, 1, "improved PNDM (Adams-Bashforth, order 4)"),
}


def get_sampler(name: str) -> SamplerInfo:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
