"""Align Your Steps: NVIDIA's lists, log-linear interpolation (re-derived, diffusers' copy, ComfyUI's node)."""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from turbosample.samplers.ays import NOISE_LEVELS, ays_sigmas, loglinear_interp
from turbosample.samplers.model_sampling import DiscreteSampling, FlowSampling
from turbosample.samplers.schedulers import SCHEDULERS, compute_sigmas

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("model_type", list(NOISE_LEVELS))
def test_ten_steps_are_the_published_list_ending_in_zero(model_type):
    sigmas = ays_sigmas(model_type, 10)
    torch.testing.assert_close(sigmas[:-1], torch.tensor(NOISE_LEVELS[model_type][:-1]), rtol=0, atol=0)
    assert float(sigmas[-1]) == 0.0


def test_lists_agree_with_diffusers_rounded_copy():
    schedules = pytest.importorskip("diffusers.schedulers").AysSchedules
    for ours, theirs in (("SD1", "StableDiffusionSigmas"), ("SDXL", "StableDiffusionXLSigmas"),
                         ("SVD", "StableDiffusionVideoSigmas")):
        # diffusers keeps 3 decimals; its SDXL list is off NVIDIA's by up to 0.0034
        torch.testing.assert_close(ays_sigmas(ours, 10), torch.tensor(schedules[theirs]), rtol=2e-3, atol=4e-3)


@pytest.mark.parametrize("model_type", list(NOISE_LEVELS))
def test_interpolation_is_log_linear_over_the_step_index(model_type):
    """20 steps = 21 points over the 11 of the list: even points are the list, odd ones geometric means."""
    levels = NOISE_LEVELS[model_type]
    sigmas = ays_sigmas(model_type, 20).double()
    for k in range(10):
        assert float(sigmas[2 * k]) == pytest.approx(levels[k], rel=1e-6)
        assert float(sigmas[2 * k + 1]) == pytest.approx(math.sqrt(levels[k] * levels[k + 1]), rel=1e-6)
    assert float(sigmas[-1]) == 0.0
    for steps in (1, 3, 7, 37):
        s = ays_sigmas(model_type, steps)
        assert s.shape == (steps + 1,) and float(s[0]) == pytest.approx(levels[0]) and (s[1:] < s[:-1]).all()


def test_scheduler_registration_and_flow_mapping():
    assert {"ays_sd1", "ays_sdxl", "ays_svd"} <= set(SCHEDULERS)
    eps = compute_sigmas(DiscreteSampling(), "ays_sdxl", 12)
    torch.testing.assert_close(eps, ays_sigmas("SDXL", 12))
    flow = compute_sigmas(FlowSampling(), "ays_sdxl", 12)
    assert float(flow[0]) == 1.0 and float(flow[-1]) == 0.0
    v = ays_sigmas("SDXL", 12)[1:-1]
    torch.testing.assert_close(flow[1:-1], v / (1 + v))  # same noise-to-signal ratio sigma / (1 - sigma) = v


def test_bad_input():
    with pytest.raises(ValueError, match="model type"):
        ays_sigmas("SD3", 10)
    with pytest.raises(ValueError, match="steps"):
        ays_sigmas("SD1", 0)
    with pytest.raises(ValueError, match="positive"):
        loglinear_interp([1.0, 0.0], 5)


COMFYUI_DIR, COMFYUI_PYTHON = os.environ.get("COMFYUI_DIR"), os.environ.get("COMFYUI_PYTHON")


@pytest.mark.skipif(not COMFYUI_DIR or not COMFYUI_PYTHON or not (Path(COMFYUI_DIR or ".") / "main.py").exists(),
                    reason="set COMFYUI_DIR (a ComfyUI checkout) and COMFYUI_PYTHON (its interpreter) to compare "
                           "with ComfyUI's AlignYourStepsScheduler and ModelSamplingSD3/Flux")
def test_ays_and_flow_shift_match_comfyui():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([COMFYUI_PYTHON, str(ROOT / "tests" / "comfy_gap_oracle.py"), str(ROOT)], cwd=COMFYUI_DIR,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = {k: v for k, v in result.items() if not v <= (1e-5 if k.startswith("ays/SVD") else 1e-6)}
    assert not bad, bad
    assert len(result) == 3 * 7 + 5 * 9 * 3
