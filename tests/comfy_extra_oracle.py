"""Run under ComfyUI's Python (cwd = ComfyUI checkout): our SA-Solver, ER-SDE, SEEDS-2/3, heunpp2 and DPM-2 ancestral
against ComfyUI's functions of the same names, on the analytic Gaussian models and the built-in DiT (with CFG).

Both sides get the same seeded Brownian noise (our BrownianNoise injected as ``noise_sampler``), float64 throughout.
Prints one JSON object {"<model>/<sampler>": max_abs_difference}. Used by test_comfyui_extra_samplers.py.
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

root = Path(sys.argv[1])
sys.path.insert(0, str(root / "tests"))
from comfy_pack import load_pack  # noqa: E402

load_pack(root)

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True

import comfy.k_diffusion.sampling as kds  # noqa: E402
import comfy.model_sampling as cms  # noqa: E402
from analytic import GaussianFlow, GaussianVE  # noqa: E402

from turbosample.models.builtin import load_model  # noqa: E402
from turbosample.samplers import model_sampling as ours  # noqa: E402
from turbosample.samplers.denoiser import DiffusionModel, cfg_denoiser  # noqa: E402
from turbosample.samplers.noise_sources import BrownianNoise  # noqa: E402
from turbosample.samplers.registry import SAMPLERS  # noqa: E402
from turbosample.samplers.schedulers import compute_sigmas  # noqa: E402

NAMES = ("sa_solver", "sa_solver_pece", "er_sde", "seeds_2", "seeds_3", "heunpp2", "dpm_2_ancestral")
NOISY = set(NAMES) - {"heunpp2"}


class Discrete(cms.ModelSamplingDiscrete, cms.EPS):
    pass


class Flow(cms.ModelSamplingDiscreteFlow, cms.CONST):
    pass


def flow_config(shift):
    return SimpleNamespace(sampling_settings={"shift": shift, "multiplier": 1000})


class Shim:
    """A plain denoiser where ComfyUI's samplers look for the KSAMPLER model's model_sampling."""

    def __init__(self, fn, ms):
        self.fn = fn
        self.inner_model = SimpleNamespace(inner_model=SimpleNamespace(model_sampling=ms),
                                           model_patcher=SimpleNamespace(get_model_object=lambda _: ms))

    def __call__(self, x, sigma, **_):
        return self.fn(x, sigma)


result = {}


def compare(label, denoise, theirs_ms, mine_ms, x, sigmas, names=NAMES):
    for name in names:
        kw_t, kw_m = {}, {}
        if name in NOISY:
            kw_t["noise_sampler"], kw_m["noise_sampler"] = BrownianNoise(x, 7), BrownianNoise(x, 7)
        theirs = getattr(kds, f"sample_{name}")(Shim(denoise, theirs_ms), x.clone(), sigmas.clone(), extra_args={},
                                                disable=True, **kw_t)
        mine = SAMPLERS[name].fn(denoise, x.clone(), sigmas.clone(), extra_args={"model_sampling": mine_ms}, **kw_m)
        result[f"{label}/{name}"] = float((theirs - mine).abs().max())
        result[f"{label}/{name}/scale"] = float(mine.abs().max())
    # SA-Solver as an ODE solver (tau = 0) and with noise everywhere (tau = 1): ComfyUI's tau_func, our eta / tau_func
    for tag, tau in (("ode", 0.0), ("sde_all", 1.0)):
        for name in ("sa_solver", "sa_solver_pece"):
            fn = getattr(kds, f"sample_{name}")
            theirs = fn(Shim(denoise, theirs_ms), x.clone(), sigmas.clone(), extra_args={}, disable=True,
                        tau_func=lambda _s, tau=tau: tau, noise_sampler=BrownianNoise(x, 3))
            mine = SAMPLERS[name].fn(denoise, x.clone(), sigmas.clone(), extra_args={"model_sampling": mine_ms},
                                     tau_func=lambda _s, tau=tau: tau, noise_sampler=BrownianNoise(x, 3))
            result[f"{label}/{name}_{tag}"] = float((theirs - mine).abs().max())


torch.set_default_dtype(torch.float64)
x = torch.randn(2, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
flow_ms = ours.FlowSampling(3.0)
compare("gaussian_flow", GaussianFlow().denoise, Flow(flow_config(3.0)), flow_ms, x,
        compute_sigmas(flow_ms, "simple", 10).double())
eps_ms = ours.DiscreteSampling()
eps_sigmas = compute_sigmas(eps_ms, "karras", 10).double()
compare("gaussian_eps", GaussianVE().denoise, Discrete(), eps_ms, x * eps_sigmas[0], eps_sigmas)
# 3 steps: every order-lowering branch at once
compare("gaussian_eps_3steps", GaussianVE().denoise, Discrete(), eps_ms, x * eps_sigmas[0],
        compute_sigmas(eps_ms, "karras", 3).double())

# the built-in DiT (rectified flow, shift 1) with CFG 3, a 32 px latent, a fixed random text context
net = load_model().double()
builtin_ms = ours.FlowSampling(1.0)
gen = torch.Generator().manual_seed(1)
context = [[torch.randn(1, 1, net.config.text_dim, generator=gen, dtype=torch.float64), {}]]
null = [[torch.zeros(1, 1, net.config.text_dim, dtype=torch.float64), {}]]
builtin = cfg_denoiser(DiffusionModel(net, builtin_ms), context, null, 3.0)
compare("builtin", builtin, Flow(flow_config(1.0)), builtin_ms,
        torch.randn(1, net.config.in_channels, 4, 4, generator=gen, dtype=torch.float64),
        compute_sigmas(builtin_ms, "simple", 6).double())
print(json.dumps(result))
