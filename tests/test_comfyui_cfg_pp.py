"""Our CFG++ samplers against ComfyUI's own, through ComfyUI's CFGGuider (guarded: COMFYUI_DIR, COMFYUI_PYTHON).

Runs tests/comfy_cfgpp_oracle.py under ComfyUI's interpreter (float32, 8 steps, cfg 1.7, a toy model with distinct
cond/uncond outputs, the same seeded Brownian noise on both sides). Tolerance: 2e-6 of the output's magnitude
(float32 rounding; measured <= 7e-7). Where we deliberately differ from ComfyUI the test asserts that we do:
- dpmpp_2s_ancestral_cfg_pp: ComfyUI pairs the first call's guided x0 with the midpoint call's uncond x0;
- on flow models, the other ``_cfg_pp`` samplers but Euler: ComfyUI shifts by (D_g - D_u) without alpha_s = 1 - sigma;
- res_multistep_ancestral on flow: ComfyUI adds EPS-style noise (no rectified-flow rescale).
"""

from __future__ import annotations

import pytest
from comfy_run import requires_comfy, run_comfy_script

pytestmark = requires_comfy("comfy/k_diffusion/sampling.py")

DIFFERS = {f"{kind}/dpmpp_2s_ancestral_cfg_pp" for kind in ("eps", "v_prediction", "flow")} | {
    f"flow/{name}" for name in ("dpmpp_2m_cfg_pp", "res_multistep_cfg_pp", "res_multistep_ancestral_cfg_pp",
                                "gradient_estimation_cfg_pp", "res_multistep_ancestral")}


@pytest.fixture(scope="module")
def diffs() -> dict:
    return run_comfy_script("comfy_cfgpp_oracle.py")


def cases(diffs: dict) -> list[str]:
    return sorted(k.rsplit("/", 1)[0] for k in diffs if k.endswith("/theirs"))


def test_every_sampler_and_model_type_was_compared(diffs):
    got = cases(diffs)
    assert len(got) == 27 and {c.split("/")[0] for c in got} == {"eps", "v_prediction", "flow"}


def test_same_as_comfyui_where_the_formulas_agree(diffs):
    bad = {c: diffs[f"{c}/theirs"] for c in cases(diffs)
           if c not in DIFFERS and not diffs[f"{c}/theirs"] <= 2e-6 * max(1.0, diffs[f"{c}/scale"])}
    assert not bad, bad


def test_documented_differences_from_comfyui_are_real(diffs):
    same = {c: diffs[f"{c}/theirs"] for c in DIFFERS if not diffs[f"{c}/theirs"] > 1e-2 * diffs[f"{c}/scale"]}
    assert not same, same


def test_our_loop_matches_our_sampler_inside_comfyui(diffs):
    """run.sample + cfg_denoiser's post-CFG hook give what ComfyUI's CFGGuider gives the same function."""
    bad = {c: diffs[f"{c}/loop"] for c in cases(diffs)
           if not diffs[f"{c}/loop"] <= 2e-6 * max(1.0, diffs[f"{c}/scale"])}
    assert not bad, bad
