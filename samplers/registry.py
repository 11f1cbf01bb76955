"""Sampler names the UI offers, with their cost in model calls per step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import multistep, solvers, stochastic
from .sampler_table import TABLE


@dataclass(frozen=True)
class SamplerInfo:
    name: str
    fn: Callable
    calls_per_step: float
    description: str
    options: dict = field(default_factory=dict)


def is_cfg_pp(name: str) -> bool:
    """CFG++ samplers read cfg as the paper's guidance lambda (0.5-2), not as a CFG scale."""
    return name.endswith("_cfg_pp")


SAMPLERS: dict[str, SamplerInfo] = TABLE  # samplers that run another by name look it up there
SAMPLERS.update({
    "euler": SamplerInfo("euler", solvers.sample_euler, 1, "first-order Euler (DDIM for flow models)"),
    "heun": SamplerInfo("heun", solvers.sample_heun, 2, "second-order Heun (EDM), Euler onto sigma = 0"),
    "dpm_2": SamplerInfo("dpm_2", solvers.sample_dpm_2, 2, "DPM-Solver-2 midpoint in log sigma"),
    "dpmpp_2m": SamplerInfo("dpmpp_2m", solvers.sample_dpmpp_2m, 1, "DPM-Solver++(2M) multistep"),
    "lms": SamplerInfo("lms", solvers.sample_lms, 1, "linear multistep (order 4) on the sigma grid"),
    "ipndm": SamplerInfo("ipndm", solvers.sample_ipndm, 1, "improved PNDM (Adams-Bashforth, order 4)"),
    "ipndm_v": SamplerInfo("ipndm_v", multistep.sample_ipndm_v, 1, "improved PNDM with variable-step coefficients"),
    "deis": SamplerInfo("deis", multistep.sample_deis, 1, "DEIS tAB multistep (order 3)"),
    "res_multistep": SamplerInfo("res_multistep", multistep.sample_res_multistep, 1,
                                 "RES second-order multistep exponential integrator"),
    "uni_pc": SamplerInfo("uni_pc", multistep.sample_uni_pc, 1, "UniPC predictor-corrector, B(h) = h (order 3)"),
    "uni_pc_bh2": SamplerInfo("uni_pc_bh2", multistep.sample_uni_pc_bh2, 1,
                              "UniPC predictor-corrector, B(h) = e^h - 1 (order 3)"),
    "ddim": SamplerInfo("ddim", stochastic.sample_ddim, 1, "DDIM (eta = 0: deterministic, same as Euler)"),
    "euler_ancestral": SamplerInfo("euler_ancestral", stochastic.sample_euler_ancestral, 1,
                                   "Euler with ancestral noise (rectified-flow noise on flow models)"),
    "dpmpp_2s_ancestral": SamplerInfo("dpmpp_2s_ancestral", stochastic.sample_dpmpp_2s_ancestral, 2,
                                      "DPM-Solver++(2S) with ancestral noise"),
    "dpmpp_sde": SamplerInfo("dpmpp_sde", stochastic.sample_dpmpp_sde, 2, "DPM-Solver++ SDE (Brownian-tree noise)"),
    "dpmpp_2m_sde": SamplerInfo("dpmpp_2m_sde", stochastic.sample_dpmpp_2m_sde, 1,
                                "DPM-Solver++(2M) SDE (Brownian-tree noise)"),
    "dpmpp_3m_sde": SamplerInfo("dpmpp_3m_sde", stochastic.sample_dpmpp_3m_sde, 1,
                                "DPM-Solver++(3M) SDE (Brownian-tree noise)"),
    "ddpm": SamplerInfo("ddpm", stochastic.sample_ddpm, 1, "DDPM ancestral sampling (posterior draws)"),
    "lcm": SamplerInfo("lcm", stochastic.sample_lcm, 1, "latent consistency: x0 estimate, then re-noise"),
})


def get_sampler(name: str) -> SamplerInfo:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]

# DualFast variants (samplers/dualfast.py): the base solver plus the zero-extra-call approximation-error correction
from . import dualfast  # noqa: E402

for _base in ("euler", "dpmpp_2m", "uni_pc"):
    SAMPLERS[f"{_base}_dualfast"] = SamplerInfo(
        f"{_base}_dualfast", dualfast.sample_dualfast, 1, f"{_base} with the DualFast error correction",
        {"base": _base, "coefficient": dualfast.DEFAULT_COEFFICIENT[_base]})

# Methods no UI ships (churn.py, restart.py, momentum.py, time_shift.py); see each module's docstring
from . import churn, momentum, restart, time_shift  # noqa: E402

for _base, _calls in (("euler", 1), ("heun", 2), ("dpm_2", 2)):
    SAMPLERS[f"{_base}_churn"] = SamplerInfo(
        f"{_base}_churn", churn.sample_churn, _calls, f"{_base} with EDM stochastic churn (ImageNet-64 settings)",
        {"method": _base, **churn.EDM_DEFAULTS})
SAMPLERS["restart"] = SamplerInfo("restart", restart.sample_restart, 2,
                                  "Restart: Heun with re-noised restart segments (steps = total Heun steps)")
SAMPLERS["ghvb"] = SamplerInfo("ghvb", momentum.sample_momentum, 1, "GHVB momentum Adams-Bashforth (order 4, beta 0.8)",
                               {"method": "ghvb", "order": 4, "beta": 0.8})
SAMPLERS["plms_hb"] = SamplerInfo("plms_hb", momentum.sample_momentum, 1, "PLMS with heavy-ball momentum (beta 0.8)",
                                  {"method": "hb", "order": 4, "beta": 0.8})
for _base in ("euler", "dpmpp_2m"):
    SAMPLERS[f"{_base}_time_shift"] = SamplerInfo(
        f"{_base}_time_shift", time_shift.sample_time_shift, 1, f"{_base} with the Time-Shift sampler",
        {"base": _base, "window": time_shift.DEFAULT_WINDOW, "cutoff": time_shift.DEFAULT_CUTOFF})

# FlowTurbo H/P blocks (samplers/flowturbo.py): one Heun step, then pseudo-corrector steps (the refiner comes from
# the TurboSampleFlowTurboSampler node)
from . import flowturbo  # noqa: E402

SAMPLERS["flowturbo_hp"] = SamplerInfo("flowturbo_hp", flowturbo.sample_flowturbo, 1,
                                       "FlowTurbo Heun + pseudo-corrector (H1P*: 1 call per step + 1)",
                                       {"schedule": "H1P*", "refiner": None})

# ParaDiGMS (samplers/paradigms.py): parallel Picard rounds over a window of Euler steps. calls_per_step = window:
# each round is one batched call on window grid points (batch = window * B) and advances at least one step, so
# window is the worst-case evaluations per step; the sequential rounds are <= steps (returned paradigms_stats)
from . import paradigms  # noqa: E402

SAMPLERS["paradigms"] = SamplerInfo("paradigms", paradigms.sample_paradigms, 8,
                                    "ParaDiGMS parallel Picard Euler (window 8, tolerance 0.1; 1 batched call/round)",
                                    {"window": 8, "tolerance": 0.1, "max_iters": None})

# Adaptive step size with error control (samplers/adaptive.py, Gotta Go Fast): calls_per_step is per attempted step;
# the step count, and so the total number of calls, is data-dependent (the schedule's interior sigmas are ignored)
from . import adaptive  # noqa: E402

SAMPLERS["adaptive_ode"] = SamplerInfo("adaptive_ode", adaptive.sample_adaptive, 2,
                                       "adaptive Euler/Heun ODE with error control (uses only the schedule's ends)")
SAMPLERS["adaptive_sde"] = SamplerInfo("adaptive_sde", adaptive.sample_adaptive_sde, 2,
                                       "adaptive Euler-Maruyama/improved-Euler SDE (Gotta Go Fast)")

# CFG++ (samplers/cfg_pp.py, gradient_estimation.py): step with the guided x0, re-noise with the uncond one. Here cfg
# is the paper's lambda (guided x0 = uncond + cfg (cond - uncond)); at n steps it acts like plain CFG at roughly
# cfg / (1 - exp(-h)) per step (h: the step in half-logSNR), so use cfg ~0.5-2 (1-1.5 typical), not 4-10
from . import cfg_pp, gradient_estimation  # noqa: E402

_CFG_PP_NOTE = "; CFG++: use cfg 0.5-2 (cfg = the paper's lambda), uncond branch runs even at cfg 1"
for _name, _fn, _calls, _text in (
        ("euler_cfg_pp", cfg_pp.sample_euler_cfg_pp, 1, "Euler/DDIM CFG++"),
        ("euler_ancestral_cfg_pp", cfg_pp.sample_euler_ancestral_cfg_pp, 1, "Euler ancestral CFG++"),
        ("dpmpp_2m_cfg_pp", cfg_pp.sample_dpmpp_2m_cfg_pp, 1, "DPM-Solver++(2M) CFG++"),
        ("dpmpp_2s_ancestral_cfg_pp", cfg_pp.sample_dpmpp_2s_ancestral_cfg_pp, 2, "DPM-Solver++(2S) ancestral CFG++"),
        ("res_multistep_cfg_pp", cfg_pp.sample_res_multistep_cfg_pp, 1, "RES multistep CFG++"),
        ("res_multistep_ancestral_cfg_pp", cfg_pp.sample_res_multistep_ancestral_cfg_pp, 1,
         "RES multistep ancestral CFG++"),
        ("gradient_estimation_cfg_pp", gradient_estimation.sample_gradient_estimation_cfg_pp, 1,
         "gradient estimation (gamma 2) CFG++")):
    SAMPLERS[_name] = SamplerInfo(_name, _fn, _calls, _text + _CFG_PP_NOTE)
SAMPLERS["res_multistep_ancestral"] = SamplerInfo(
    "res_multistep_ancestral", cfg_pp.sample_res_multistep_ancestral, 1,
    "RES multistep with ancestral noise (rectified-flow noise on flow models)")
SAMPLERS["gradient_estimation"] = SamplerInfo(
    "gradient_estimation", gradient_estimation.sample_gradient_estimation, 1,
    "gradient estimation (Permenter & Yuan): Euler with direction 2 d_i - d_(i-1)")

# SA-Solver (samplers/sa_solver.py) and more ComfyUI stochastic samplers (samplers/extra_samplers.py); ComfyUI's own
# KSampler keeps its versions of these names (nodes/comfy_names.py skips names it already has)
from . import extra_samplers, sa_solver  # noqa: E402

for _name, _fn, _calls, _text in (
        ("sa_solver", sa_solver.sample_sa_solver, 1,
         "SA-Solver: stochastic Adams predictor (order 3) + corrector (order 4), SDE noise in the middle 20-80%"),
        ("sa_solver_pece", sa_solver.sample_sa_solver_pece, 2,
         "SA-Solver PECE: evaluates the corrected state again (2 calls per step after the first)"),
        ("er_sde", extra_samplers.sample_er_sde, 1, "ER-SDE-Solver-3 (extended reverse-time SDE, Brownian-tree noise)"),
        ("seeds_2", extra_samplers.sample_seeds_2, 2, "SEEDS-2 stochastic exponential Runge-Kutta (2 stages)"),
        ("seeds_3", extra_samplers.sample_seeds_3, 3, "SEEDS-3 stochastic exponential Runge-Kutta (3 stages)"),
        ("heunpp2", extra_samplers.sample_heunpp2, 3, "Heun++: slopes at 3 sigmas, sigma-weighted"),
        ("dpm_2_ancestral", extra_samplers.sample_dpm_2_ancestral, 2,
         "DPM-Solver-2 with ancestral noise (rectified-flow noise on flow models)")):
    SAMPLERS[_name] = SamplerInfo(_name, _fn, _calls, _text)

# DC-Solver (samplers/dc_solver.py): UniPC with dynamic compensation; without calibrated ratios it is plain UniPC
# (ratios come from samplers/dc_calibration.py, the TurboSample DC-Solver nodes)
from . import dc_solver  # noqa: E402

SAMPLERS["dc_solver"] = SamplerInfo("dc_solver", dc_solver.sample_dc_solver, 1,
                                    "DC-Solver: UniPC with calibrated dynamic compensation (all ratios 1 = UniPC)")

# DPM-Solver-v3 (samplers/dpm_solver_v3.py): without statistics l = 1, s = 0, b = 0 (exact-phi data-prediction
# multistep + corrector); the TurboSampleDPMSolverV3Sampler node loads statistics of the model (samplers/ems.py)
from . import dpm_solver_v3  # noqa: E402

SAMPLERS["dpm_solver_v3"] = SamplerInfo(
    "dpm_solver_v3", dpm_solver_v3.sample_dpm_solver_v3, 1,
    "DPM-Solver-v3 predictor-corrector (order 2); neutral statistics unless a DPM-Solver-v3 node gives the model's EMS")
