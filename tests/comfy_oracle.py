"""Run under ComfyUI's Python (cwd = ComfyUI checkout): compare our schedules and samplers with ComfyUI's.

Prints one JSON object {case: max_abs_difference}. Used by test_comfyui_acceptance.py.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

root = Path(sys.argv[1])
spec = importlib.util.spec_from_file_location("turbosample", root / "__init__.py",
                                              submodule_search_locations=[str(root)])
pkg = importlib.util.module_from_spec(spec)
sys.modules["turbosample"] = pkg
spec.loader.exec_module(pkg)
sys.path.insert(0, str(root / "tests"))
sys.path.insert(0, os.getcwd())

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True

import comfy.k_diffusion.sampling as kds  # noqa: E402
import comfy.model_sampling as cms  # noqa: E402
import comfy.samplers  # noqa: E402
from analytic import GaussianFlow  # noqa: E402

from turbosample.samplers import model_sampling as ours  # noqa: E402
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

model = GaussianFlow()
sigmas = compute_sigmas(ours.FlowSampling(), "simple", 10)
x = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
for name in SAMPLERS:
    theirs = getattr(kds, f"sample_{name}")(model.denoise, x.clone(), sigmas, disable=True)
    mine = SAMPLERS[name].fn(model.denoise, x.clone(), sigmas)
    result[f"sampler/{name}"] = float((theirs - mine).abs().max())
print(json.dumps(result))
