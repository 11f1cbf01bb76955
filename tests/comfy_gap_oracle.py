"""Run under ComfyUI's Python (cwd = ComfyUI checkout): AYS and the flow-shift control against ComfyUI's own code.

Prints one JSON object {case: max_abs_difference}. Used by tests/test_ays.py.
"""

import json
import sys
from pathlib import Path

root = Path(sys.argv[1])
sys.path.insert(0, str(root / "tests"))
from comfy_pack import load_pack  # noqa: E402

load_pack(root)

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True

import comfy.model_sampling as cms  # noqa: E402
import comfy.samplers as cs  # noqa: E402
from comfy_extras.nodes_align_your_steps import AlignYourStepsScheduler  # noqa: E402

from turbosample.samplers.ays import ays_sigmas  # noqa: E402
from turbosample.samplers.flow_shift import resolution_mu, shifted_schedule  # noqa: E402

result = {}
for model_type in ("SD1", "SDXL", "SVD"):
    for steps in (1, 3, 5, 10, 16, 20, 37):
        theirs = AlignYourStepsScheduler.execute(model_type, steps, 1.0).result[0].float()
        ours = ays_sigmas(model_type, steps)
        result[f"ays/{model_type}/{steps}"] = float((theirs - ours).abs().max()) if theirs.shape == ours.shape \
            else float("inf")


class Flux(cms.ModelSamplingFlux, cms.CONST):
    pass


class SD3(cms.ModelSamplingDiscreteFlow, cms.CONST):
    pass


SHAPES = ("simple", "normal", "sgm_uniform", "karras", "exponential", "beta", "kl_optimal", "linear_quadratic",
          "ddim_uniform")
cases = [(f"sd3_{s}", SD3(), s, {"shift": s}) for s in (1.0, 3.0)]
cases += [(f"flux_{t}", Flux(), resolution_mu(t), {"image_seq_len": t}) for t in (256, 1024, 4096)]
for label, ms, param, kw in cases:
    ms.set_parameters(shift=param)
    for name in SHAPES:
        for steps in (4, 10, 28):
            theirs = cs.calculate_sigmas(ms, name, steps).float()
            ours = shifted_schedule(name, steps, **kw)
            result[f"shift/{label}/{name}/{steps}"] = float((theirs - ours).abs().max()) \
                if theirs.shape == ours.shape else float("inf")
print(json.dumps(result))
