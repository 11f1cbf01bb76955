"""Bottleneck Sampling: stage plans, schedules and hand-over.

Oracles: the base sampler itself (one full-size stage, or stages stopped early at one size with the estimated noise,
must join into the plain run exactly), average pooling (area resize), the paper's step split, the Gaussian data
statistics through a resize, and white-noise statistics of the resized noise.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from analytic import GaussianVE

from turbosample.models.dit import TinyDiT
from turbosample.samplers.bottleneck import (
    PAPER_STEP_BUDGET,
    allowed_multiple,
    budget_steps,
    model_size_factor,
    resize,
    resized_noise,
    sample_bottleneck,
    split_steps,
    stage_sigmas,
    stage_size,
)
from turbosample.samplers.denoiser import DiffusionModel
from turbosample.samplers.model_sampling import DiscreteSampling, FlowSampling, time_snr_shift
from turbosample.samplers.noise import seeded_noise
from turbosample.samplers.registry import SAMPLERS, SamplerInfo
from turbosample.samplers.run import sample
from turbosample.samplers.schedulers import compute_sigmas

ROOT = Path(__file__).resolve().parent.parent
SIGMAS = compute_sigmas(FlowSampling(), "simple", 8)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = DiffusionModel(TinyDiT(width=32, depth=2, heads=2).eval(), FlowSampling())
    cond = [[torch.randn(1, 1, 384), {}]]
    uncond = [[torch.zeros(1, 1, 384), {}]]
    return model, cond, uncond


def test_split_steps_follows_the_paper_ratio_and_sums_to_the_budget():
    assert split_steps(34, 3) == [6, 20, 8]  # FLUX.1-dev table
    for total in range(3, 60):
        parts = split_steps(total, 3)
        assert sum(parts) == total and min(parts) >= 1
    assert split_steps(7, 2) in ([4, 3], [3, 4])
    with pytest.raises(ValueError, match="at least one step per stage"):
        split_steps(2, 3)


def test_the_default_step_budget_is_the_papers_34_of_50_steps():
    assert budget_steps(50, PAPER_STEP_BUDGET, 3) == 34
    assert split_steps(budget_steps(50, PAPER_STEP_BUDGET, 3), 3) == [6, 20, 8]  # FLUX.1-dev "x3" row
    assert budget_steps(28, PAPER_STEP_BUDGET, 3) == 19 and budget_steps(28, 1.0, 3) == 28
    assert budget_steps(2, 0.5, 3) == 3  # at least one step per stage
    for bad in (0.0, -1.0, float("nan"), 5.0):
        with pytest.raises(ValueError, match="step budget must be in"):
            budget_steps(28, bad, 3)


@pytest.mark.parametrize(("options", "calls"), [({}, 19), ({"step_budget": 1.0}, 28), ({"step_budget": 0.5}, 14),
                                                ({"steps": [6, 20, 8]}, 34)])
def test_the_run_spends_its_step_budget_and_progress_ends_on_the_schedules_last_step(options, calls):
    sigmas = compute_sigmas(FlowSampling(), "simple", 28)
    shapes, steps = [], []

    def toy(x, sigma, **_):
        shapes.append(x.shape[-1])
        return 0.5 * x

    sample_bottleneck(toy, seeded_noise(1, (1, 3, 16, 16)), sigmas, callback=lambda info: steps.append(info["i"]),
                      **options)
    assert len(shapes) == calls and len(steps) == calls
    assert steps == sorted(steps) and steps[-1] == 27 and steps[0] >= 0  # monotone, last = the schedule's last
    expected = options.get("steps") or split_steps(calls, 3)
    assert shapes == [16] * expected[0] + [8] * expected[1] + [16] * expected[2]


def test_stage_sigmas_slice_and_reshift_the_incoming_schedule():
    assert torch.equal(stage_sigmas(SIGMAS, 1.0, 8, 1.0), SIGMAS)
    lin = torch.linspace(1, 0, 11)
    part = stage_sigmas(lin, 0.6, 3, 1.0)  # last 60 % of the schedule in 3 steps
    assert torch.allclose(part, torch.tensor([0.6, 0.4, 0.2, 0.0]))
    shifted = stage_sigmas(lin, 0.6, 3, 3.0)
    assert torch.allclose(shifted, time_snr_shift(3.0, torch.tensor([0.6, 0.4, 0.2, 0.0])))


def test_area_resize_matches_average_pooling_and_lanczos_keeps_shape_and_mean():
    x = seeded_noise(1, (2, 3, 16, 12))
    assert torch.allclose(resize(x, (8, 6), "area"), F.avg_pool2d(x, 2), atol=1e-6)
    smooth = torch.linspace(-1, 1, 16)[None, None, :, None].expand(1, 2, 16, 16).contiguous()
    up = resize(smooth, (32, 32), "lanczos")
    assert up.shape == (1, 2, 32, 32)
    assert abs(float(up.mean()) - float(smooth.mean())) < 1e-3
    for method in ("bicubic", "bilinear", "nearest"):
        assert resize(x, (8, 6), method).shape == (2, 3, 8, 6)
    with pytest.raises(ValueError, match="unknown resize method"):
        resize(x, (8, 6), "sinc")


@pytest.mark.parametrize("base", ["euler", "dpmpp_2m"])
def test_a_single_full_resolution_stage_is_the_base_sampler(tiny, base):
    model, cond, uncond = tiny
    latent = torch.zeros(1, 3, 32, 32)
    expected = sample(model, cond, uncond, latent, SAMPLERS[base], SIGMAS, seed=3, cfg=3.0)
    single = SamplerInfo("bn", sample_bottleneck, 1, "", {"base": base, "scales": [1.0], "noise": [1.0],
                                                        "shifts": [1.0], "step_budget": 1.0})
    assert torch.equal(sample(model, cond, uncond, latent, single, SIGMAS, seed=3, cfg=3.0), expected)


def test_three_stages_run_at_their_resolutions_and_return_the_input_shape(tiny):
    model, cond, uncond = tiny
    seen = []

    def spy(forward, x, timestep, context, options):
        seen.append((x.shape[-1], float(timestep[0]) / 1000))
        return forward(x, timestep, context, options)

    info = SamplerInfo("bn", sample_bottleneck, 1, "", {"steps": [2, 3, 2], "shifts": [1.0, 2.0, 1.0]})
    out = sample(model.with_wrapper("spy", spy), cond, uncond, torch.zeros(1, 3, 32, 32), info,
                 torch.linspace(1, 0, 8), seed=1, cfg=2.0)
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
    assert [s for s, _ in seen] == [32, 32, 16, 16, 16, 32, 32]
    # stage 1 starts at the re-shifted sigma of the last 80 % of the schedule, stage 2 at the last 60 %
    assert seen[2][1] == pytest.approx(float(time_snr_shift(2.0, torch.tensor(0.8))), abs=1e-5)
    assert seen[5][1] == pytest.approx(0.6, abs=1e-5)


def test_the_clean_estimate_carries_across_stages():
    # a denoiser that always predicts the same image (resized to the current size): every stage ends on it,
    # so the output is exactly that image at full resolution, whatever the re-introduced noise
    target = seeded_noise(2, (1, 3, 16, 16))

    def constant(x, sigma, **_):
        return resize(target, tuple(x.shape[-2:]), "area")

    out = sample_bottleneck(constant, seeded_noise(9, (1, 3, 16, 16)), SIGMAS, resize_method="bilinear")
    assert torch.allclose(out, target, atol=1e-5)


def test_fresh_renoise_is_seeded_and_the_default_is_deterministic():
    def toy(x, sigma, **_):
        return torch.tanh(x) * (1 - sigma.reshape(-1, 1, 1, 1))

    x = seeded_noise(4, (1, 3, 16, 16))
    fresh = {"noise_source": "fresh"}
    a = sample_bottleneck(toy, x.clone(), SIGMAS, seed=1, **fresh)
    assert torch.equal(a, sample_bottleneck(toy, x.clone(), SIGMAS, seed=1, **fresh))
    assert not torch.allclose(a, sample_bottleneck(toy, x.clone(), SIGMAS, seed=2, **fresh))
    assert torch.equal(sample_bottleneck(toy, x.clone(), SIGMAS, **fresh),
                       sample_bottleneck(toy, x.clone(), SIGMAS, **fresh))
    # estimated noise (default): the low-res -> full-res detail comes from the starting noise, not a seed
    assert torch.equal(sample_bottleneck(toy, x.clone(), SIGMAS, seed=1), sample_bottleneck(toy, x.clone(), SIGMAS,
                                                                                          seed=2))


def never_called(x, sigma, **_):
    raise AssertionError("the model must not run when the stage plan is invalid")


@pytest.mark.parametrize("size, options, message", [
    (36, {}, "stage 1: height 36 x scale 0.5 = 18 is not a positive multiple of the model's patch size 4; "
             "allowed latent heights and widths for scales 1, 0.5, 1: multiples of 8 "),
    (32, {"scales": [1.0, 0.3, 1.0]}, "9.6 is not a positive multiple.*multiples of 40 "),
    (32, {"multiple": 32}, "16 is not a positive multiple of the size factor 32.*multiples of 64 "),
    (32, {"scales": [0.5, 1.0, 1.0]}, "first and last bottleneck stage must be at full resolution"),
    (32, {"noise": [0.9, 0.8, 0.6]}, "first must be 1"),
    (32, {"shifts": [1.0, 2.0]}, "stages disagree"),
    (32, {"steps": [2, 0, 2]}, "whole numbers >= 1"),
    (32, {"resize_method": "sinc"}, "unknown resize method"),
    (32, {"base": "nope"}, "unknown base sampler"),
])
def test_bad_stage_plans_give_clear_errors(size, options, message):
    with pytest.raises(ValueError, match=message):
        sample_bottleneck(never_called, torch.zeros(1, 3, size, size), SIGMAS, **options)


def test_truncated_schedules_flow_sigmas_above_one_and_masks_are_refused():
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="rectified-flow sigmas must be <= 1"):
        sample_bottleneck(never_called, x, torch.tensor([14.6, 3.0, 0.0]), {"model_sampling": FlowSampling()})
    with pytest.raises(ValueError, match="pure noise"):
        sample_bottleneck(never_called, x, SIGMAS[2:])
    eps = DiscreteSampling()
    with pytest.raises(ValueError, match=r"pure noise \(sigma 14.6"):
        sample_bottleneck(never_called, x, compute_sigmas(eps, "karras", 8, denoise=0.5), {"model_sampling": eps})
    with pytest.raises(ValueError, match="inpainting mask"):
        sample_bottleneck(never_called, x, SIGMAS, extra_args={"denoise_mask": torch.ones(1, 1, 32, 32)})


COMFY_SCRIPT = r"""
import importlib.util, json, os, sys
from pathlib import Path
root = Path(sys.argv[1])
sys.path.insert(0, str(root / "tests")); from comfy_pack import load_pack; load_pack(root)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import torch, comfy.sample, comfy.samplers
from turbosample.models.dit import TinyDiT
from turbosample.nodes.comfy_model import builtin_model_patcher
from turbosample.samplers.bottleneck import sample_bottleneck
from turbosample.samplers.denoiser import DiffusionModel
from turbosample.samplers.model_sampling import FlowSampling
from turbosample.samplers.registry import SamplerInfo
from turbosample.samplers.run import sample
from turbosample.samplers.schedulers import compute_sigmas
torch.manual_seed(0)
dit = TinyDiT(width=32, depth=2, heads=2).eval()
cond, uncond = torch.randn(1, 1, 384), torch.zeros(1, 1, 384)
latent = torch.zeros(1, 3, 32, 32)
opts = {"base": "dpmpp_2m", "seed": 11}
sigmas = compute_sigmas(FlowSampling(), "simple", 9)
mine = sample(DiffusionModel(dit, FlowSampling()), [[cond, {}]], [[uncond, {}]], latent,
              SamplerInfo("bn", sample_bottleneck, 1, "", opts), sigmas, seed=5, cfg=3.0)
patcher = builtin_model_patcher(dit, 1.0)
noise = comfy.sample.prepare_noise(latent, 5)
theirs = comfy.sample.sample_custom(patcher, noise, 3.0, comfy.samplers.KSAMPLER(sample_bottleneck, extra_options=opts),
                                    sigmas, [[cond, {}]], [[uncond, {}]], latent, disable_pbar=True, seed=5)
bad = None
try:
    comfy.sample.sample_custom(patcher, comfy.sample.prepare_noise(torch.zeros(1, 3, 36, 36), 5), 3.0,
                               comfy.samplers.KSAMPLER(sample_bottleneck, extra_options=opts), sigmas,
                               [[cond, {}]], [[uncond, {}]], torch.zeros(1, 3, 36, 36), disable_pbar=True, seed=5)
except ValueError as exc:
    bad = str(exc)
from turbosample.samplers.dualfast import sample_dualfast
df = {"base": "euler", "coefficient": 0.3}
mine_df = sample(DiffusionModel(dit, FlowSampling()), [[cond, {}]], [[uncond, {}]], latent,
                 SamplerInfo("df", sample_dualfast, 1, "", df), sigmas, seed=5, cfg=3.0)
theirs_df = comfy.sample.sample_custom(patcher, noise, 3.0, comfy.samplers.KSAMPLER(sample_dualfast, extra_options=df),
                                       sigmas, [[cond, {}]], [[uncond, {}]], latent, disable_pbar=True, seed=5)
print(json.dumps({"shape": list(theirs.shape), "diff": float((theirs.cpu() - mine).abs().max()), "error": bad,
                  "dualfast_diff": float((theirs_df.cpu() - mine_df).abs().max())}))
"""


@pytest.mark.skipif(not os.environ.get("COMFYUI_DIR"), reason="COMFYUI_DIR is not set to a ComfyUI checkout")
def test_comfyui_ksampler_runs_bottleneck_and_dualfast_like_the_standalone_loop():
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    out = subprocess.run([python, "-c", COMFY_SCRIPT, str(ROOT)], cwd=os.environ["COMFYUI_DIR"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shape"] == [1, 3, 32, 32]
    assert result["diff"] < 1e-4
    assert "not a positive multiple of the model's patch size 4" in (result["error"] or "")
    assert result["dualfast_diff"] < 1e-4


def test_nodes_build_samplers_and_name_bad_inputs():
    from turbosample.nodes.registry import NODE_BY_ID
    from turbosample.nodes.spec import NodeInputError

    node = NODE_BY_ID["TurboSampleBottleneckSampler"]
    (info,) = node.run(**{**node.defaults(), "steps": "2, 3, 2", "base_sampler": "dpmpp_2m"})
    assert info.fn is sample_bottleneck and info.options["steps"] == [2, 3, 2]
    assert info.options["base"] == "dpmpp_2m" and info.options["scales"] == [1.0, 0.5, 1.0]
    with pytest.raises(NodeInputError, match="scales must be a comma-separated list"):
        node.run(**{**node.defaults(), "scales": "1, half, 1"})
    with pytest.raises(NodeInputError, match="stages disagree"):
        node.run(**{**node.defaults(), "noise": "1, 0.8"})
    (df,) = NODE_BY_ID["TurboSampleDualFastSampler"].run(base_sampler="dpmpp_2m", coefficient=0.2,
                                                         schedule="constant", scope="auto")
    assert df.options == {"base": "dpmpp_2m", "coefficient": 0.2, "schedule": "constant"}
    (df,) = NODE_BY_ID["TurboSampleDualFastSampler"].run(base_sampler="uni_pc", coefficient=0.4,
                                                         schedule="decay", scope="all")
    assert df.options == {"base": "uni_pc", "coefficient": 0.4, "schedule": "decay", "scope": "all"}


# --- EPS / V models (k-diffusion sigma space) -------------------------------------------------------------

EPS = DiscreteSampling()
KARRAS = compute_sigmas(EPS, "karras", 12)


def test_eps_stage_sigmas_shift_the_flow_equivalent_time_and_keep_the_model_range():
    assert torch.allclose(stage_sigmas(KARRAS, 1.0, 12, 1.0, flow=False), KARRAS, rtol=1e-6, atol=0)
    t = KARRAS.double() / (1 + KARRAS.double())  # x0 + s eps over (1 + s) = (1 - t) x0 + t eps
    shifted = stage_sigmas(KARRAS, 1.0, 12, 3.0, flow=False).double()
    top = float(t[0])
    assert torch.allclose(shifted / (1 + shifted), top * time_snr_shift(3.0, t / top), rtol=1e-6, atol=1e-9)
    assert shifted[0] == pytest.approx(float(KARRAS[0]), rel=1e-6) and shifted[-1] == 0  # sigma_max and 0 stay
    assert (shifted[1:-1] > KARRAS[1:-1].double()).all() and (shifted.diff() < 0).all()  # shift > 1: more noise
    half = stage_sigmas(KARRAS, 0.5, 4, 1.0, flow=False).double()  # strength 0.5 starts at the middle step
    assert float(half[0]) == pytest.approx(float(KARRAS[6]), rel=1e-6) and half[-1] == 0


@pytest.mark.parametrize("base", ["euler", "dpmpp_2m"])
def test_eps_single_full_stage_is_the_base_sampler(base):
    model = GaussianVE()
    x = seeded_noise(5, (1, 4, 16, 16)) * float(KARRAS[0])
    args = {"model_sampling": EPS}
    expected = SAMPLERS[base].fn(model.denoise, x.clone(), KARRAS, extra_args=dict(args), callback=None,
                                 disable=True)
    out = sample_bottleneck(model.denoise, x.clone(), KARRAS, dict(args), base=base, scales=[1.0], noise=[1.0],
                            shifts=[1.0], step_budget=1.0)
    assert torch.allclose(out, expected, rtol=0, atol=1e-6)


def test_eps_stages_at_full_scale_compose_base_runs_with_variance_exploding_renoise():
    model = GaussianVE()
    x = seeded_noise(5, (1, 4, 16, 16)) * float(KARRAS[0])
    plan = {"scales": [1.0, 1.0, 1.0], "noise": [1.0, 0.7, 0.4], "shifts": [2.0, 1.0, 3.0], "steps": [4, 5, 3]}
    out = sample_bottleneck(model.denoise, x.clone(), KARRAS, {"seed": 7}, noise_source="fresh", stop_early=False,
                            **plan)  # EPS from sigmas[0] > 1
    euler = SAMPLERS["euler"].fn
    y = x.clone()
    for k in range(3):
        stage = stage_sigmas(KARRAS, plan["noise"][k], plan["steps"][k], plan["shifts"][k], flow=False)
        if k:
            y = y + stage[0] * seeded_noise(7 + k, tuple(y.shape))  # x = x0 + sigma eps (no 1 - sigma)
        y = euler(model.denoise, y, stage, extra_args={}, callback=None, disable=True)
    assert torch.allclose(out, y, rtol=0, atol=1e-6)


def test_eps_bottleneck_keeps_the_gaussian_statistics_through_the_resize():
    # exact denoiser of N(m, s^2) data, each stage solved exactly: the ODE maps x - m linearly, so a stage's
    # output variance is s^2 (v_in + sigma_k^2) / (sigma_k^2 + s^2), v_in the variance of the resized x0
    # (area: 2x2 mean of independent pixels = v / 4 going down, copies going up)
    model = GaussianVE(mean=0.3, std=0.5)

    def exact(m, x, sigmas, extra_args=None, callback=None, disable=None):
        out = model.exact(x, float(sigmas[0]), float(sigmas[-1]))
        callback({"x": out, "i": 0, "sigma": sigmas[0], "sigma_hat": sigmas[0], "denoised": out})
        return out

    plan = {"scales": [1.0, 0.5, 1.0], "noise": [1.0, 0.45, 0.3], "shifts": [3.0, 1.0, 1.2],
            "steps": [4, 4, 4], "resize_method": "area", "noise_source": "fresh", "stop_early": False}
    x = seeded_noise(100, (1, 4, 96, 96)) * float(KARRAS[0])  # not a re-noise seed (1 + k)
    seen = []
    out = sample_bottleneck(model.denoise, x, KARRAS, {"model_sampling": EPS, "seed": 1}, base=exact,
                            callback=lambda info: seen.append(info["x"].shape[-1]), **plan)
    assert out.shape == x.shape and torch.isfinite(out).all() and seen == [96, 48, 96]
    var = model.std ** 2
    for k, reduce in ((1, 4.0), (2, 1.0)):
        first = float(stage_sigmas(KARRAS, plan["noise"][k], 4, plan["shifts"][k], flow=False)[0])
        var = model.std ** 2 * (var / reduce + first ** 2) / (first ** 2 + model.std ** 2)
    assert var < 0.9 * model.std ** 2  # the resize leaves a mark large enough for the check to see
    assert float(out.mean()) == pytest.approx(model.mean, abs=0.01)
    assert float(out.std()) == pytest.approx(var ** 0.5, rel=0.015)


class _Wrapped:
    """A k-diffusion denoiser shaped like ComfyUI's KSamplerX0Inpaint -> guider -> BaseModel chain."""

    def __init__(self, diffusion_model=None, unet_config=None):
        from types import SimpleNamespace

        base = SimpleNamespace(diffusion_model=diffusion_model,
                               model_config=SimpleNamespace(unet_config=unet_config or {}))
        self.inner_model = SimpleNamespace(inner_model=base)

    def __call__(self, x, sigma, **_):
        raise AssertionError("the model must not run when the stage sizes are invalid")


@pytest.mark.parametrize("model, factor", [
    (_Wrapped(SimpleNamespace(channel_mult=(1, 2, 4, 4))), 8),  # SD1.5: 3 downsamples
    (_Wrapped(SimpleNamespace(channel_mult=(1, 2, 4))), 4),  # SDXL: 2 downsamples
    (_Wrapped(SimpleNamespace(patch_size=2)), 2),  # Flux
    (_Wrapped(SimpleNamespace(patch_size=(1, 2, 2))), 2),  # Wan-style (t, h, w)
    (_Wrapped(None, {"patch_size": 2, "channel_mult": (1, 2)}), 2),  # unet_config only
    (_Wrapped(None, {"channel_mult": (1, 2, 4, 4)}), 8),
    (_Wrapped(SimpleNamespace()), None),
])
def test_model_size_factor_reads_comfyui_configs(model, factor):
    found = model_size_factor(model)
    assert (found[0] if found else None) == factor


def test_unet_sizes_must_divide_by_its_downsampling_factor():
    sd15 = _Wrapped(SimpleNamespace(channel_mult=(1, 2, 4, 4)))
    x = torch.zeros(1, 4, 40, 48)
    with pytest.raises(ValueError, match=r"stage 1: height 40 x scale 0.5 = 20 is not a positive multiple of the "
                                         r"UNet's factor 8 = 2\*\*3 downsamples; allowed latent heights and widths "
                                         r"for scales 1, 0.5, 1: multiples of 16 \(16, 32, 48"):
        sample_bottleneck(sd15, x, KARRAS, {"model_sampling": EPS})
    assert allowed_multiple([1.0, 0.75, 1.0], 8) == 32 and allowed_multiple([1.0, 1.5], 2) == 4
    for scales, factor in (([1.0, 0.5, 1.0], 8), ([1.0, 0.75, 1.0], 2), ([1.0, 0.3, 1.0], 4)):
        step = allowed_multiple(scales, factor)
        for side in range(1, 3 * step + 1):
            try:
                for k, s in enumerate(scales):
                    stage_size(side, side, s, factor, k)
                ok = True
            except ValueError:
                ok = False
            assert ok == (side % step == 0), (scales, factor, side)


# --- stages handing over at the next stage's noise level (defaults) -------------------------------------------


@pytest.mark.parametrize("family", ["flow", "eps"])
def test_stopped_early_stages_with_estimated_noise_join_into_the_base_sampler(family):
    # scales and shifts 1, stage bounds on the incoming steps: each hand-over re-noises the last x0 estimate with
    # the noise it implies, which for Euler is exactly the state at the next sigma, so the stages are plain Euler
    if family == "flow":
        sigmas, args, x = SIGMAS, {}, seeded_noise(3, (1, 3, 16, 16))

        def model(x, sigma, **_):
            return torch.tanh(x) * (1 - sigma.reshape(-1, 1, 1, 1))
    else:
        gauss = GaussianVE(mean=0.2, std=0.6)
        sigmas, args, x = KARRAS, {"model_sampling": EPS}, seeded_noise(3, (1, 3, 16, 16)) * float(KARRAS[0])
        model = gauss.denoise
    n = len(sigmas) - 1
    plan = {"scales": [1.0, 1.0, 1.0], "noise": [1.0, 0.75, 0.25], "shifts": [1.0, 1.0, 1.0],
            "steps": [n // 4, n // 2, n // 4]}
    expected = SAMPLERS["euler"].fn(model, x.clone(), sigmas, extra_args=dict(args), callback=None, disable=True)
    out = sample_bottleneck(model, x.clone(), sigmas, dict(args), **plan)
    assert torch.allclose(out, expected, rtol=0, atol=1e-5)
    fresh = sample_bottleneck(model, x.clone(), sigmas, dict(args), noise_source="fresh", **plan)
    assert not torch.allclose(fresh, expected, atol=1e-3)  # the check can see a re-noise that is not consistent


def test_resized_noise_stays_white_with_unit_variance_and_pools_back_to_the_coarse_noise():
    fine = seeded_noise(1, (2, 4, 128, 128))
    coarse = resized_noise(fine, (64, 64))
    assert torch.allclose(coarse, F.avg_pool2d(fine, 2) * 2, atol=1e-6)  # exact mean of 4, times sqrt(4)
    assert float(coarse.std()) == pytest.approx(1.0, abs=0.02)
    detail = seeded_noise(2, (2, 4, 128, 128))
    grown = resized_noise(coarse, (128, 128), detail)
    assert torch.allclose(F.avg_pool2d(grown, 2) * 2, coarse, atol=1e-5)  # carries the coarse noise
    assert float(grown.std()) == pytest.approx(1.0, abs=0.02)
    neighbours = float((grown[..., :, 1:] * grown[..., :, :-1]).mean())  # nearest-copied noise would give ~0.5
    assert abs(neighbours) < 0.02
    with pytest.raises(ValueError, match="detail noise"):
        resized_noise(coarse, (128, 128))


def test_initial_noise_source_re_noises_full_resolution_stages_with_the_starting_noise():
    target = seeded_noise(2, (1, 3, 16, 16))
    seen = []

    def constant(x, sigma, **_):
        seen.append((x.clone(), float(sigma.reshape(-1)[0])))
        return resize(target, tuple(x.shape[-2:]), "area")

    x = seeded_noise(9, (1, 3, 16, 16))
    sample_bottleneck(constant, x.clone(), SIGMAS, noise_source="initial", scales=[1.0, 0.5, 1.0],
                      steps=[2, 2, 2], resize_method="area")
    x_in, s = seen[4]  # first call of the last (full-resolution) stage: the low-res x0 grown, plus the start noise
    x0 = resize(resize(target, (8, 8), "area"), (16, 16), "area")
    assert torch.allclose(x_in, (1 - s) * x0 + s * x, atol=1e-5)


def test_unknown_noise_source_is_refused():
    with pytest.raises(ValueError, match="noise source"):
        sample_bottleneck(lambda x, sigma, **_: x, torch.zeros(1, 3, 16, 16), SIGMAS, noise_source="pink")
