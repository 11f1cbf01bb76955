"""MagCache: skip rule, per-run/per-branch state, calibration, resampling, nodes; diffusers as the oracle."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from turbosample.accel.adapter import UnsupportedModel, transformer_parts
from turbosample.accel.magcache import MagCacheSettings, magcache_forward, magcache_model, step_index
from turbosample.accel.magcache_calibration import (
    Calibration,
    CalibrationMismatch,
    calibrate,
    check_model,
    load_calibration,
    published_curve,
    ratio_stats,
    resample_curve,
    run_settings,
    save_calibration,
    weights_fingerprint,
)
from turbosample.models.dit import TinyDiT
from turbosample.samplers.denoiser import DiffusionModel
from turbosample.samplers.model_sampling import FlowSampling
from turbosample.samplers.registry import get_sampler
from turbosample.samplers.run import Interrupted, sample
from turbosample.samplers.schedulers import compute_sigmas

STEPS = 8


def small_dit(seed: int = 0) -> TinyDiT:
    torch.manual_seed(seed)
    model = TinyDiT(width=32, depth=2, heads=2).eval()
    for p in model.parameters():  # adaLN-Zero starts at zero: randomise so every block matters
        p.data.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def setup():
    model = DiffusionModel(small_dit(), FlowSampling(), name="tiny")
    torch.manual_seed(1)
    pos, neg = [[torch.randn(1, 1, 384), {}]], [[torch.randn(1, 1, 384), {}]]
    sigmas = compute_sigmas(model.model_sampling, "simple", STEPS, 1.0)
    return model, pos, neg, torch.zeros(1, 3, 16, 16), sigmas


def run(model, setup, sampler="euler", cfg=4.0, sigmas=None, **kw):
    _, pos, neg, latent, default_sigmas = setup
    return sample(model, pos, neg, latent, get_sampler(sampler), default_sigmas if sigmas is None else sigmas, 3,
                  cfg, **kw)


def patched(setup, ratios, threshold, k=2, retention=0.0, record=None):
    settings = MagCacheSettings({b: tuple(v) for b, v in ratios.items()}, threshold, k, retention)
    return magcache_model(setup[0], settings, record=record)


def skipped(record, branch=(0, 0)):
    return [step for key, step, skip in record if key == branch and skip]


@pytest.mark.parametrize("sampler, cfg", [("euler", 4.0), ("euler", 1.0), ("heun", 4.0)])
def test_threshold_zero_reproduces_the_plain_output_exactly(setup, sampler, cfg):
    # ratios of exactly 1.0 would make diffusers' `err <= threshold` skip at threshold 0; ours must not
    record = []
    model = patched(setup, {0: [1.0] * STEPS, 1: [1.0] * STEPS}, threshold=0.0, record=record)
    assert torch.equal(run(model, setup, sampler, cfg), run(setup[0], setup, sampler, cfg))
    assert record and not any(skip for *_, skip in record)


def test_skip_reuses_the_cached_residual_with_fresh_embed_and_head(setup):
    model = setup[0]
    parts = transformer_parts(model.diffusion_model)
    settings = MagCacheSettings({0: (1.0,) * 4}, threshold=1.0, max_skip_steps=3, retention_ratio=0.0)
    sigmas, ctx, state = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]), torch.randn(1, 1, 384), {}
    x0, x1 = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)

    def call(x, s):
        opts = {"sigmas": torch.tensor([s]), "sample_sigmas": sigmas, "cond_or_uncond": [0], "run_state": state}
        return magcache_forward(parts, settings, x, torch.tensor([s * 1000]), ctx, opts, lambda: None)

    out0 = call(x0, 1.0)
    assert torch.equal(out0, parts.forward(x0, torch.tensor([1000.0]), ctx))  # first step computes
    tok0, c0, _ = parts.embed(x0, torch.tensor([1000.0]), ctx)
    residual = parts.blocks[1](parts.blocks[0](tok0, c0), c0) - tok0
    tok1, c1, grid = parts.embed(x1, torch.tensor([750.0]), ctx)
    torch.testing.assert_close(call(x1, 0.75), parts.head(tok1 + residual, c1, grid), rtol=0, atol=1e-6)


def test_consecutive_and_interrupted_runs_do_not_share_state(setup):
    record = []
    model = patched(setup, {0: [1.0] * STEPS}, threshold=0.5, record=record)
    first = run(model, setup)
    assert skipped(record)  # the rule is active
    cancel, seen = threading.Event(), []

    def stop_at_step_3(info):
        seen.append(info["i"])
        if info["i"] == 3:
            cancel.set()

    with pytest.raises(Interrupted):
        run(model, setup, callback=stop_at_step_3, cancel=cancel)
    assert torch.equal(run(model, setup), first)
    assert torch.equal(run(model, setup), first)


def test_reused_run_state_starts_over_when_the_schedule_restarts(setup):
    """State handed to a second pass over the schedule (step index going back) is reset, not reused."""
    parts = transformer_parts(setup[0].diffusion_model)
    settings = MagCacheSettings({0: (1.0,) * 4}, threshold=1.0, max_skip_steps=3, retention_ratio=0.0)
    sigmas, ctx = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]), torch.randn(1, 1, 384)
    xs = [torch.randn(1, 3, 16, 16) for _ in range(4)]

    def pass_over(state):
        return [magcache_forward(parts, settings, x, torch.tensor([s * 1000]), ctx,
                                 {"sigmas": torch.tensor([s]), "sample_sigmas": sigmas, "run_state": state},
                                 lambda: None) for x, s in zip(xs, sigmas[:-1].tolist(), strict=True)]

    shared = {}
    pass_over(shared)
    for a, b in zip(pass_over(shared), pass_over({}), strict=True):
        assert torch.equal(a, b)


def test_cfg_branches_keep_separate_state(setup):
    # cond's curve allows skipping, uncond's never does: in one batched call only cond may skip
    record = []
    model = patched(setup, {0: [1.0] * STEPS, 1: [3.0] * STEPS}, threshold=0.5, k=2, record=record)
    run(model, setup, cfg=4.0)
    assert skipped(record, (0, 0)) and not skipped(record, (1, 0))
    # the cond branch decides the same with or without an uncond branch next to it in the batch
    solo = []
    run(patched(setup, {0: [1.0] * STEPS, 1: [3.0] * STEPS}, threshold=0.5, k=2, record=solo), setup, cfg=1.0)
    assert skipped(solo, (0, 0)) == skipped(record, (0, 0))


def test_k_limits_consecutive_skips(setup):
    """Regression for ComfyUI-MagCache#17 (`accumulated_steps += accumulated_steps + 1` made K ineffective)."""
    for k in (1, 2, 3):
        record = []
        run(patched(setup, {0: [1.0] * STEPS}, threshold=10.0, k=k, retention=0.25, record=record), setup, cfg=1.0)
        decisions = [skip for *_, skip in record]
        # retention int(0.25 * 8 + 0.5) = 2 computed steps, then k skips and one compute, repeating
        expected = [False, False] + ([True] * k + [False]) * STEPS
        assert decisions == expected[:STEPS]


@pytest.mark.parametrize("sampler", ["heun", "dpm_2"])
def test_sub_step_samplers_decide_once_per_schedule_step(setup, sampler):
    """Regression for ComfyUI-MagCache#5/#13: sub-step sigmas never find an empty residual cache."""
    record = []
    out = run(patched(setup, {0: [1.0] * STEPS, 1: [1.0] * STEPS}, threshold=10.0, k=3, record=record), setup,
              sampler)
    assert torch.isfinite(out).all()
    for branch in ((0, 0), (1, 0)):
        steps = [step for key, step, _ in record if key == branch]
        assert steps == list(range(STEPS))  # one decision per schedule step, even with two calls per step
        assert skipped(record, branch)


def test_step_index_maps_sub_step_sigmas_and_rejects_bad_schedules():
    s = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0])
    assert [step_index(v, s) for v in (1.0, 0.9, 0.8, 0.65, 0.5, 0.2, 0.1, 1.3)] == [0, 0, 1, 1, 2, 3, 3, 0]
    assert step_index(0.5, torch.zeros(5)) is None  # RES4LYF passes zero sample_sigmas (ComfyUI-MagCache#38)
    assert step_index(0.5, torch.tensor([1.0])) is None
    assert step_index(0.5, torch.tensor([1.0, float("nan"), 0.0])) is None


def test_unusable_schedule_falls_back_to_the_plain_forward(setup):
    """Regression for ComfyUI-MagCache#38 (zero sample_sigmas -> division by zero): no caching, no error."""
    parts = transformer_parts(setup[0].diffusion_model)
    settings = MagCacheSettings({0: (1.0,) * 4}, threshold=1.0)
    x, t, ctx = torch.randn(1, 3, 16, 16), torch.tensor([500.0]), torch.randn(1, 1, 384)
    plain = parts.forward(x, t, ctx)
    opts = {"sigmas": torch.tensor([0.5]), "sample_sigmas": torch.zeros(5), "run_state": {}}
    assert torch.equal(magcache_forward(parts, settings, x, t, ctx, opts, lambda: plain), plain)
    assert magcache_forward(parts, settings, x, t, ctx, {}, lambda: plain) is plain  # no run state: plain


def test_split_cond_uncond_calls_at_one_sigma_share_a_step(setup):
    """ComfyUI may run cond and uncond as separate calls (low VRAM): keyed by branch, one decision each."""
    parts = transformer_parts(setup[0].diffusion_model)
    settings = MagCacheSettings({0: (1.0,) * 4, 1: (1.0,) * 4}, threshold=1.0, max_skip_steps=3)
    sigmas, state, record = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]), {}, []
    x, ctx = torch.randn(1, 3, 16, 16), torch.randn(1, 1, 384)
    for s in sigmas[:-1].tolist():
        for branch in ([0], [1]):
            opts = {"sigmas": torch.tensor([s]), "sample_sigmas": sigmas, "cond_or_uncond": branch,
                    "run_state": state}
            magcache_forward(parts, settings, x, torch.tensor([s * 1000]), ctx, opts, lambda: None, record=record)
    assert [(k, step) for k, step, _ in record] == [(k, i) for i in range(4) for k in ((0, 0), (1, 0))]
    assert skipped(record, (0, 0)) == skipped(record, (1, 0)) == [1, 2, 3]


def test_residual_of_another_shape_is_never_applied(setup):
    parts = transformer_parts(setup[0].diffusion_model)
    settings = MagCacheSettings({0: (1.0,) * 4}, threshold=1.0, max_skip_steps=3)
    sigmas, state, ctx = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]), {}, torch.randn(1, 1, 384)
    opts = {"sample_sigmas": sigmas, "run_state": state}
    magcache_forward(parts, settings, torch.randn(1, 3, 16, 16), torch.tensor([1000.0]), ctx,
                     {**opts, "sigmas": torch.tensor([1.0])}, lambda: None)
    x = torch.randn(1, 3, 16, 24)  # another size with the same state: must compute
    out = magcache_forward(parts, settings, x, torch.tensor([750.0]), ctx, {**opts, "sigmas": torch.tensor([0.75])},
                           lambda: None)
    assert torch.equal(out, parts.forward(x, torch.tensor([750.0]), ctx))


@pytest.mark.parametrize("threshold, k, retention", [(0.05, 2, 0.2), (0.12, 4, 0.1), (0.3, 1, 0.0), (1.0, 3, 0.5)])
def test_decisions_match_diffusers_apply_mag_cache(setup, threshold, k, retention):
    """Same ratios and hyper-parameters: the skip sequence equals diffusers' on a tiny FluxTransformer2DModel."""
    diffusers = pytest.importorskip("diffusers")
    from diffusers.hooks.mag_cache import MagCacheConfig, apply_mag_cache

    gen = np.random.default_rng(int(threshold * 100) + k)
    ratios = [1.0] + list(np.round(gen.uniform(0.93, 1.05, STEPS - 1), 5))
    torch.manual_seed(0)
    flux = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                            pooled_projection_dim=8, axes_dims_rope=[2, 2, 4]).eval()
    apply_mag_cache(flux, MagCacheConfig(threshold=threshold, max_skip_steps=k, retention_ratio=retention,
                                         num_inference_steps=STEPS, mag_ratios=ratios))
    hook = flux.transformer_blocks[0]._diffusers_hook.get_hook("mag_cache_leader_block_hook")
    theirs = []
    with torch.no_grad():
        for i in range(STEPS):
            flux(hidden_states=torch.randn(1, 16, 4), encoder_hidden_states=torch.randn(1, 3, 16),
                 pooled_projections=torch.randn(1, 8), timestep=torch.tensor([1.0 - i / STEPS]),
                 img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(3, 3))
            theirs.append(not hook.state_manager.get_state().should_compute)
    record = []
    run(patched(setup, {0: ratios}, threshold, k, retention, record), setup, cfg=1.0)
    assert [skip for *_, skip in record] == theirs


def test_calibration_ratios_match_diffusers_formula_and_an_independent_trace(setup):
    pytest.importorskip("diffusers")
    from diffusers.hooks.mag_cache import MagCacheBlockHook, MagCacheState

    cur, prev = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    state = MagCacheState()
    state.previous_residual = prev
    MagCacheBlockHook(None)._perform_calibration_step(state, cur)
    assert ratio_stats(cur, prev)[0] == pytest.approx(state.calibration_ratios[0], rel=1e-5)

    # trace the block-stack residual of a plain run with forward hooks, then compare the curves
    model, pos, neg, latent, sigmas = setup
    blocks, trace = model.diffusion_model.blocks, []
    h_in = blocks[0].register_forward_pre_hook(lambda m, args: trace.append([args[0]]))
    h_out = blocks[-1].register_forward_hook(lambda m, args, out: trace[-1].append(out))
    try:
        run(model, setup)
    finally:
        h_in.remove()
        h_out.remove()
    residuals = [(o - i).chunk(2) for i, o in trace]
    cal = calibrate(model, pos, neg, latent, get_sampler("euler"), sigmas, 3, 4.0)
    for branch in (0, 1):
        expected = [1.0] + [ratio_stats(residuals[t][branch], residuals[t - 1][branch])[0] for t in range(1, STEPS)]
        assert cal.ratios[branch] == pytest.approx(expected, rel=1e-5)
    assert cal.steps == STEPS and cal.fingerprint == weights_fingerprint(model.diffusion_model)


def test_calibration_is_refused_for_another_model_steps_or_schedule(setup, tmp_path):
    model, pos, neg, latent, sigmas = setup
    cal = calibrate(model, pos, neg, latent, get_sampler("euler"), sigmas, 3, 4.0, {"scheduler": "simple"})
    path = save_calibration(cal, tmp_path / "cal.json")
    assert load_calibration(path) == cal
    with pytest.raises(CalibrationMismatch, match="this model's weights"):
        check_model(cal, weights_fingerprint(small_dit(seed=5)))
    template, curve_for = run_settings(cal, 0.3, 2, 0.2)
    patched_model = magcache_model(model, template, curve_for=curve_for)
    with pytest.raises(CalibrationMismatch, match="for 8 steps, this run has 6"):
        run(patched_model, setup, sigmas=compute_sigmas(model.model_sampling, "simple", 6, 1.0))
    with pytest.raises(CalibrationMismatch, match="another schedule"):
        run(patched_model, setup, sigmas=compute_sigmas(model.model_sampling, "karras", STEPS, 1.0))
    template, curve_for = run_settings(cal, 0.3, 2, 0.2, resample="nearest")
    out = run(magcache_model(model, template, curve_for=curve_for), setup,
              sigmas=compute_sigmas(model.model_sampling, "simple", 6, 1.0))
    assert torch.isfinite(out).all()
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a TurboSample MagCache calibration"):
        load_calibration(path)
    with pytest.raises(UnsupportedModel):
        magcache_model(DiffusionModel(torch.nn.Linear(2, 2), FlowSampling()), template)


@pytest.mark.parametrize("src_len, steps", [(28, 20), (28, 50), (50, 28), (28, 1), (10, 10)])
def test_resampling_matches_official_nearest_and_torch_linear(src_len, steps):
    pytest.importorskip("diffusers")
    from diffusers.hooks.mag_cache import nearest_interp

    values = tuple(float(v) for v in np.linspace(1.2, 0.8, src_len) + np.sin(np.arange(src_len)) * 0.01)
    expected = nearest_interp(torch.tensor(values, dtype=torch.float64), steps)
    assert resample_curve(values, steps) == pytest.approx(expected.tolist())
    if steps > 1:
        linear = torch.nn.functional.interpolate(torch.tensor(values)[None, None], size=steps, mode="linear",
                                                 align_corners=True)[0, 0]
        assert resample_curve(values, steps, "linear") == pytest.approx(linear.tolist(), rel=1e-6)


def test_published_flux_curve_is_diffusers_one():
    pytest.importorskip("diffusers")
    from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

    flux = published_curve("flux")
    assert flux.steps == 28 and flux.ratios[0] == pytest.approx(FLUX_MAG_RATIOS.tolist())
    with pytest.raises(KeyError, match="available"):
        published_curve("sdxl")


# The official Wan 2.1 arrays: Zehong-Ma/MagCache, MagCache4Wan2.1/magcache_generate.py at commit df81cb1 (read
# through the fetch tool, 2026-12), ``mag_ratios = np.array([1.0]*2 + [...])`` per checkpoint, cond and uncond
# interleaved. Per curve: steps (half the array), the SHA-256 of the whole array written as
# " ".join(repr(float(v))), and its first and last measured pairs, transcribed from that file.
OFFICIAL_WAN = {
    "wan2.1_t2v_1.3B": (50, "60c8f754ac356b3e2966ca32a12f4206b8e201c64689e78945cf879baaa80438",
                        (1.0124, 1.02213), (0.81838, 0.81939)),
    "wan2.1_t2v_14B": (50, "b5b083e010ecb136f5d8acfb894d05664e9c122e2463bb3aa1c547565e3b337e",
                       (1.02504, 1.03017), (0.86111, 0.86189)),
    "wan2.1_i2v_480p_14B": (40, "96ac27e6f547bf180bf71266e2a406a44dc09754c7dbea83a12fecc3a216a23a",
                            (0.98783, 0.98993), (0.92617, 0.92616)),
    "wan2.1_i2v_720p_14B": (40, "b8df2dca5f87c9c2bab5d963677977805d0b2c78e649209810123d88551c9931",
                            (0.99428, 0.99498), (0.8679, 0.86768)),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_WAN))
def test_published_wan_curves_are_the_official_magcache_arrays(name):
    """Our data file stores each Wan curve de-interleaved (branch 0 = cond = even entries); re-interleaved it must be
    the official array value for value (digest), with the 1.0 pad first."""
    import hashlib

    steps, digest, first, last = OFFICIAL_WAN[name]
    curve = published_curve(name)
    assert curve.steps == steps and set(curve.ratios) == {0, 1}
    interleaved = [v for pair in zip(curve.ratios[0], curve.ratios[1], strict=True) for v in pair]
    assert interleaved[:2] == [1.0, 1.0] and tuple(interleaved[2:4]) == first and tuple(interleaved[-2:]) == last
    assert hashlib.sha256(" ".join(repr(float(v)) for v in interleaved).encode()).hexdigest() == digest


def test_nodes_patch_the_builtin_model_and_refuse_foreign_calibrations(setup, tmp_path):
    from turbosample.nodes.builtin_nodes import load_builtin_model
    from turbosample.nodes.registry import NODE_BY_ID

    calib_node, node = NODE_BY_ID["TurboSampleMagCacheCalibrate"], NODE_BY_ID["TurboSampleMagCache"]
    assert calib_node.outputs[0].type == "STRING" and node.outputs[0].type == "MODEL"
    (builtin,) = load_builtin_model(1.0)
    (patched_model,) = node.run(model=builtin, calibration="builtin", threshold=0.2, max_skip_steps=2,
                                retention_ratio=0.2, resample="off")
    assert len(patched_model.wrappers) == 1 and builtin.wrappers == ()
    with pytest.raises(CalibrationMismatch, match="weights"):  # the shipped calibration belongs to the built-in
        node.run(model=setup[0], calibration="builtin", threshold=0.2, max_skip_steps=2, retention_ratio=0.2,
                 resample="off")
    cal = Calibration(model_id="x", steps=2, ratios={0: (1.0, 1.0)})
    save_calibration(cal, tmp_path / "mine.json")
    (p,) = node.run(model=setup[0], calibration=str(tmp_path / "mine.json"), threshold=0.2, max_skip_steps=2,
                    retention_ratio=0.2, resample="off")
    assert p.wrappers


def test_builtin_model_with_shipped_calibration_skips_steps():
    """Real weights, 32 px, the shipped 28-step calibration: the skip rule fires and the image stays finite."""
    from turbosample.nodes.builtin_nodes import encode_text, load_builtin_model
    from turbosample.nodes.magcache_nodes import resolve_calibration

    (model,) = load_builtin_model(1.0)
    cal = resolve_calibration("builtin")
    record = []
    template, curve_for = run_settings(cal, 0.25, 3, 0.2)
    sigmas = compute_sigmas(model.model_sampling, "simple", 28, 1.0)
    out = sample(magcache_model(model, template, curve_for=curve_for, record=record), encode_text("cat")[0],
                 encode_text("")[0], torch.zeros(1, 8, 4, 4), get_sampler("euler"), sigmas, 0, 4.0)
    assert torch.isfinite(out).all() and skipped(record)
    assert min(skipped(record)) >= 6  # retention int(0.2 * 28 + 0.5)


COMFY_SCRIPT = r'''
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import comfy.cli_args
comfy.cli_args.args.cpu = True
import torch
import comfy.sample
from turbosample.accel.adapter import UnsupportedModel
from turbosample.nodes import comfy_impl, magcache_nodes
from turbosample.nodes.builtin_nodes import encode_text, load_builtin_model

(model,) = comfy_impl.load_builtin_model(1.0)
pos, neg, latent = encode_text("cat face")[0], encode_text("")[0], torch.zeros(1, 8, 4, 4)
rows = []
model.model.diffusion_model.blocks[0].register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0]))

def run(m):
    rows.clear()
    noise = comfy.sample.prepare_noise(latent, 3)
    out = comfy.sample.sample(m, noise, 28, 4.0, "euler", "simple", pos, neg, latent, disable_pbar=True, seed=3)
    return out, sum(rows)

plain, plain_rows = run(model)
(zero,) = magcache_nodes.comfy_apply_magcache(model, "builtin", 0.0, 2, 0.2, "off")
out, zero_rows = run(zero)
assert torch.equal(out, plain) and zero_rows == plain_rows == 56, (zero_rows, plain_rows)
(fast,) = magcache_nodes.comfy_apply_magcache(model, "builtin", 0.2, 2, 0.2, "off")
fast_out, fast_rows = run(fast)
assert fast_rows < plain_rows and torch.isfinite(fast_out).all(), fast_rows
again, _ = run(fast)
assert torch.equal(again, fast_out)  # fresh state per run
(standalone,) = magcache_nodes.apply_magcache(load_builtin_model(1.0)[0], "builtin", 0.2, 2, 0.2, "off")
from turbosample.nodes.builtin_nodes import sample as ts_sample, select_sampler, schedule
ref = ts_sample(standalone, pos, neg, select_sampler("euler")[0], schedule(standalone, "simple", 28, 1.0)[0],
                {"samples": latent}, 3, 4.0)[0]["samples"]
assert torch.allclose(fast_out, ref, atol=1e-3), (fast_out - ref).abs().max()
back, _ = run(model)
assert torch.equal(back, plain)  # the original MODEL is untouched
other = model.clone()
other.add_object_patch("diffusion_model", torch.nn.Linear(2, 2))
try:
    magcache_nodes.comfy_apply_magcache(other, "builtin", 0.2, 2, 0.2, "off")
    raise AssertionError("no UnsupportedModel")
except UnsupportedModel as exc:
    assert "Linear is not supported" in str(exc)
print("MAGCACHE-COMFY-OK", plain_rows, fast_rows)
'''


@pytest.mark.skipif(not __import__("os").environ.get("COMFYUI_DIR"),
                    reason="COMFYUI_DIR is not set to a ComfyUI checkout (COMFYUI_PYTHON to its interpreter)")
def test_comfyui_magcache_node_matches_standalone_and_leaves_the_model_untouched(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    (tmp_path / "turbosample").symlink_to(root, target_is_directory=True)
    script = tmp_path / "check.py"
    script.write_text(COMFY_SCRIPT)
    env = {**os.environ, "TURBOSAMPLE_MAGCACHE_DIR": str(tmp_path)}
    proc = subprocess.run([os.environ.get("COMFYUI_PYTHON", sys.executable), str(script), str(tmp_path),
                           os.environ["COMFYUI_DIR"]], cwd=os.environ["COMFYUI_DIR"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "MAGCACHE-COMFY-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_model_calibrate_node_records_the_same_curves_and_its_file_patches_that_model(setup, tmp_path, monkeypatch):
    from turbosample.nodes.registry import NODE_BY_ID
    from turbosample.nodes.spec import NodeInputError

    monkeypatch.setenv("TURBOSAMPLE_MAGCACHE_DIR", str(tmp_path))
    model, pos, neg, latent, sigmas = setup
    node = NODE_BY_ID["TurboSampleMagCacheCalibrateModel"]
    args = dict(positive=pos, negative=neg, latent_image={"samples": latent}, sampler=get_sampler("euler"),
                sigmas=sigmas, seed=3, cfg=4.0, filename="")
    (path,) = node.run(model=model, **args)
    direct = calibrate(model, pos, neg, latent, get_sampler("euler"), sigmas, 3, 4.0)
    saved = load_calibration(path)
    assert saved.ratios == direct.ratios and saved.fingerprint == weights_fingerprint(model.diffusion_model)
    (patched_model,) = NODE_BY_ID["TurboSampleMagCache"].run(model=model, calibration=path, threshold=0.0,
                                                             max_skip_steps=2, retention_ratio=0.2, resample="off")
    torch.testing.assert_close(run(patched_model, setup), run(model, setup), rtol=0, atol=0)
    with pytest.raises(NodeInputError, match="at least one step"):
        node.run(model=model, **{**args, "sigmas": sigmas[:1]})
    with pytest.raises(NodeInputError, match="built-in model"):
        node.run(model=object(), **args)
