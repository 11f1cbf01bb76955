"""SA-Solver (PEC/PECE), ER-SDE, SEEDS-2/3, heunpp2 and DPM-2 ancestral against ComfyUI's own functions.

Guarded: needs COMFYUI_DIR (a ComfyUI checkout) and COMFYUI_PYTHON (its interpreter). Runs tests/comfy_extra_oracle.py
there: Gaussian flow (shift 3, 10 steps), Gaussian EPS (karras, 10 and 3 steps) and the built-in DiT with CFG 3
(6 steps), float64, the same seeded Brownian noise injected on both sides. Tolerance 1e-6 absolute (outputs are
O(1)); measured <= 5e-8 (ER-SDE: ComfyUI builds its quadrature points in float32), all others <= 3e-13.
"""

from __future__ import annotations

import pytest
from comfy_run import requires_comfy, run_comfy_script

pytestmark = requires_comfy("comfy/k_diffusion/sa_solver.py",
                            "COMFYUI_DIR is not set to a ComfyUI checkout with SA-Solver")

NAMES = ("sa_solver", "sa_solver_pece", "er_sde", "seeds_2", "seeds_3", "heunpp2", "dpm_2_ancestral")
MODELS = ("gaussian_flow", "gaussian_eps", "gaussian_eps_3steps", "builtin")


@pytest.fixture(scope="module")
def diffs() -> dict:
    return run_comfy_script("comfy_extra_oracle.py")


def test_every_sampler_was_compared_on_every_model(diffs):
    for model in MODELS:
        for name in NAMES + ("sa_solver_ode", "sa_solver_pece_ode", "sa_solver_sde_all", "sa_solver_pece_sde_all"):
            assert f"{model}/{name}" in diffs, f"{model}/{name}"


@pytest.mark.parametrize("model", MODELS)
def test_same_outputs_as_comfyui(diffs, model):
    bad = {k: v for k, v in diffs.items() if k.startswith(f"{model}/") and not k.endswith("/scale") and not v <= 1e-6}
    assert not bad, bad
    assert all(diffs[f"{model}/{name}/scale"] > 0.1 for name in NAMES)  # non-trivial outputs were compared
