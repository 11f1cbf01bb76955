"""Run under ComfyUI's Python (cwd = ComfyUI checkout): compare our schedules and samplers with ComfyUI's.

Prints one JSON object {case: max_abs_difference}. Used by test_comfyui_acceptance.py.
"""

import json
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch

root = Path(sys.argv[1])
sys.path.insert(0, str(root / "tests"))
from comfy_pack import load_pack  # noqa: E402

load_pack(root)

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True

import comfy.k_diffusion.deis as deis_module  # noqa: E402
import comfy.k_diffusion.sampling as kds  # noqa: E402
import comfy.model_sampling as cms  # noqa: E402
import comfy.samplers  # noqa: E402
from analytic import GaussianFlow, GaussianVE  # noqa: E402
from comfy.extra_samplers import uni_pc  # noqa: E402

from turbosample.models.builtin import load_model  # noqa: E402
from turbosample.samplers import model_sampling as ours  # noqa: E402
from turbosample.samplers.denoiser import DiffusionModel, cfg_denoiser  # noqa: E402
from turbosample.samplers.noise_sources import BrownianNoise  # noqa: E402
from turbosample.samplers.registry import SAMPLERS  # noqa: E402
from turbosample.samplers.schedulers import SCHEDULERS, compute_sigmas  # noqa: E402


class Discrete(cms.ModelSamplingDiscrete, cms.EPS):
    pass


class Flow(cms.ModelSamplingDiscreteFlow, cms.CONST):
    pass


class FlowConfig:
    sampling_settings = {"shift": 3.0, "multiplier": 1000}


pairs = {"discrete": (Discrete(), ours.DiscreteSampling()), "flow_shift3": (Flow(FlowConfig()), ours.FlowSampling(3.0))}
result = {}
for label, (theirs, mine) in pairs.items():
    result[f"{label}/table"] = float((theirs.sigmas.float() - mine.sigmas).abs().max())
    for name in SCHEDULERS:
        for steps in (1, 4, 10, 28):
            if name not in comfy.samplers.SCHEDULER_NAMES:
                continue
            if name == "kl_optimal" and steps == 1:
                continue  # ComfyUI divides by steps - 1 and returns NaN there; ours gives [sigma_max, 0]
            a = comfy.samplers.calculate_sigmas(theirs, name, steps).float()
            b = compute_sigmas(mine, name, steps)
            result[f"{label}/{name}/{steps}"] = float((a - b).abs().max()) if a.shape == b.shape else float("inf")

    lo, hi = float(mine.sigma_min), float(mine.sigma_max)
    for steps in (2, 10):
        result[f"{label}/polyexponential/{steps}"] = float(
            (kds.get_sigmas_polyexponential(steps, lo, hi, rho=1.0) - compute_sigmas(mine, "polyexponential", steps))
            .abs().max())
        vp = kds.get_sigmas_vp(steps) - compute_sigmas(mine, "vp", steps)
        result[f"{label}/vp/{steps}"] = float(vp.abs().max())



class Shim:
    """A plain denoiser dressed as ComfyUI's KSAMPLER model (model_sampling where ComfyUI's samplers look)."""

    def __init__(self, fn, ms):
        self.fn = fn
        inner = SimpleNamespace(model_sampling=ms)
        patcher = SimpleNamespace(get_model_object=lambda _: ms)
        self.inner_model = SimpleNamespace(inner_model=inner, model_patcher=patcher)

    def __call__(self, x, sigma, **_):
        return self.fn(x, sigma)


# ComfyUI integrates DEIS's coefficients with a 10^4-point Riemann sum (error ~1e-4 of a step); ours uses exact
# Gauss-Legendre quadrature. Compare the same method at a quadrature fine enough to show the solver agrees (on the
# built-in model the DEIS difference was 2.1e-5 at N = 10^6 and 2.1e-6 at 10^7: ComfyUI's quadrature error).
deis_module.get_deis_coeff_list = partial(deis_module.get_deis_coeff_list, N=10 ** 7)

# our name -> ComfyUI's function; "ddim" is ComfyUI's Euler, ddpm's ComfyUI formula is the EPS/V one only
# names compared by their own scripts: comfy_cfgpp_oracle.py (CFG++ needs ComfyUI's CFGGuider; res_multistep_ancestral
# differs on flow by design) and comfy_extra_oracle.py (SA-Solver, ER-SDE, SEEDS, heunpp2, dpm_2_ancestral)
OWN_ORACLE = {"res_multistep_ancestral", "sa_solver", "sa_solver_pece", "er_sde", "seeds_2", "seeds_3", "heunpp2",
              "dpm_2_ancestral"}
COMFY = {name: getattr(kds, f"sample_{name}") for name in SAMPLERS if hasattr(kds, f"sample_{name}")
         and not name.endswith("_cfg_pp") and name not in OWN_ORACLE}
COMFY.update(ddim=kds.sample_euler, uni_pc=uni_pc.sample_unipc, uni_pc_bh2=uni_pc.sample_unipc_bh2)
EPS_ONLY = {"ddpm"}
NOISY = {"euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "lcm"}


def compare(label, denoise, theirs_ms, mine_ms, x, sigmas):
    for name, fn in COMFY.items():
        if name in EPS_ONLY and isinstance(theirs_ms, cms.CONST):
            continue
        kw_t, kw_m = {}, {}
        if name in NOISY:  # identical noise on both sides: the same seeded Brownian path
            kw_t["noise_sampler"] = BrownianNoise(x, 7)
            kw_m["noise_sampler"] = BrownianNoise(x, 7)
        theirs = fn(Shim(denoise, theirs_ms), x.clone(), sigmas.clone(), extra_args={}, disable=True, **kw_t)
        mine = SAMPLERS[name].fn(denoise, x.clone(), sigmas.clone(), extra_args={"model_sampling": mine_ms}, **kw_m)
        result[f"sampler/{label}/{name}"] = float((theirs - mine).abs().max())


# float64 throughout (also ComfyUI's internal tensors, e.g. UniPC's coefficients), so that the differences measure
# the methods, not float32 rounding amplified by the network
torch.set_default_dtype(torch.float64)
x = torch.randn(2, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
flow_ms = ours.FlowSampling(3.0)
compare("gaussian_flow", GaussianFlow().denoise, Flow(FlowConfig()), flow_ms, x,
        compute_sigmas(flow_ms, "simple", 10).double())
eps_ms = ours.DiscreteSampling()
eps_sigmas = compute_sigmas(eps_ms, "karras", 10).double()
compare("gaussian_eps", GaussianVE().denoise, Discrete(), eps_ms, x * eps_sigmas[0], eps_sigmas)

# the built-in DiT (rectified flow, shift 1) with CFG, a 32 px latent, a fixed random text context
net = load_model().double()
builtin_ms = ours.FlowSampling(1.0)
gen = torch.Generator().manual_seed(1)
context = [[torch.randn(1, 1, net.config.text_dim, generator=gen, dtype=torch.float64), {}]]
null = [[torch.zeros(1, 1, net.config.text_dim, dtype=torch.float64), {}]]
builtin = cfg_denoiser(DiffusionModel(net, builtin_ms), context, null, 3.0)


class FlowConfig1:
    sampling_settings = {"shift": 1.0, "multiplier": 1000}


compare("builtin", builtin, Flow(FlowConfig1()), builtin_ms,
        torch.randn(1, net.config.in_channels, 4, 4, generator=gen, dtype=torch.float64),
        compute_sigmas(builtin_ms, "simple", 8).double())
print(json.dumps(result))
