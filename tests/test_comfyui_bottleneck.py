"""Bottleneck Sampling inside a real ComfyUI on tiny SD1.5- (EPS and V) and Flux-shaped models.

Set COMFYUI_DIR to a ComfyUI checkout (COMFYUI_PYTHON to its interpreter); runs tests/comfy_bottleneck_models.py
there: SamplerCustomAdvanced with CFGGuider and the TurboSampleBottleneckSampler node's KSAMPLER.
"""

from __future__ import annotations

import pytest
from comfy_run import requires_comfy, run_comfy_script

pytestmark = requires_comfy(
    "main.py", "COMFYUI_DIR is not set to a ComfyUI checkout; the ComfyUI bottleneck test needs one")


@pytest.fixture(scope="module")
def results() -> dict:
    return run_comfy_script("comfy_bottleneck_models.py")


@pytest.mark.parametrize("name, shape, flow", [
    ("sd15", [1, 4, 24, 16], False),
    ("sd15_v", [1, 4, 8, 16], False),
    ("flux", [1, 16, 12, 8], True),
])
def test_samplercustomadvanced_runs_every_stage_at_its_size_and_sigmas(results, name, shape, flow):
    result = results[name]
    assert "error" not in result, result.get("error")
    assert result["shape"] == shape and result["finite"] and result["flow"] is flow
    assert (result["sigma_max"] > 1) is not flow  # EPS/V models run in k-diffusion sigmas up to sigma_max
    full, half = shape[-2], shape[-2] // 2
    heights = [h for h, _ in result["seen"]]
    assert heights == [full] * 2 + [half] * 3 + [full] * 2  # steps "2, 3, 2"; one batched cond/uncond call
    sigmas = [s for _, s in result["seen"]]
    planned = [s for stage in result["planned"] for s in stage]
    assert sigmas == pytest.approx(planned, rel=1e-5)
    if not flow:  # every re-noised stage starts inside the EPS model's sigma range
        assert all(1 < stage[0] <= result["sigma_max"] for stage in result["planned"])


@pytest.mark.parametrize("name, message", [
    ("sd15_bad", "height 20 x scale 0.5 = 10 is not a positive multiple of the UNet's factor 4 = 2**2 "
                 "downsamples; allowed latent heights and widths for scales 1, 0.5, 1: multiples of 8"),
    ("flux_bad", "width 6 x scale 0.5 = 3 is not a positive multiple of the model's patch size 2; allowed "
                 "latent heights and widths for scales 1, 0.5, 1: multiples of 4"),
])
def test_bad_latent_sizes_get_an_error_naming_the_allowed_sizes(results, name, message):
    assert message in results[name].get("error", "")
