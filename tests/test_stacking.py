"""MagCache + RAS on one model: both orders agree, each reduces to the other or to the plain model when the
other is off, and one call follows the stacked rule (in ComfyUI: tests/test_comfyui_acceptance.py for the built-in
model, tests/test_comfyui_ras_native.py for ComfyUI's own Flux / SD3 / Wan)."""

import pytest
import torch
from test_ras import small_dit

from turbosample.accel.adapter import transformer_parts
from turbosample.accel.magcache import MagCacheSettings, magcache_model
from turbosample.accel.ras import WRAPPER_KEY, apply_ras, dense_forward, sparse_forward
from turbosample.accel.stacking import BlockStackWrapper, Handover
from turbosample.nodes.txt2img import Settings, to_api_prompt
from turbosample.samplers.denoiser import DiffusionModel
from turbosample.samplers.model_sampling import FlowSampling
from turbosample.samplers.registry import SAMPLERS
from turbosample.samplers.run import sample
from turbosample.samplers.schedulers import compute_sigmas

STEPS = 10


@pytest.fixture(scope="module")
def base():
    return DiffusionModel(small_dit(), FlowSampling())


def mag(model, threshold, record=None):
    curve = tuple(0.97 + 0.005 * i for i in range(STEPS))
    return magcache_model(model, MagCacheSettings({0: curve, 1: curve}, threshold, 2, 0.2), record=record)


def run(model, sampler="euler", cfg=3.0):
    g = torch.Generator().manual_seed(1)
    pos, neg = [[torch.randn(1, 1, 384, generator=g), {}]], [[torch.zeros(1, 1, 384), {}]]
    sigmas = compute_sigmas(model.model_sampling, "simple", STEPS)
    return sample(model, pos, neg, torch.zeros(1, 3, 32, 32), SAMPLERS[sampler], sigmas, 0, cfg)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_both_orders_agree_and_both_accelerators_act(base, sampler):
    record = []
    mag_then_ras = apply_ras(mag(base, 0.1, record), sample_ratio=0.5, warmup_steps=2)
    ras_then_mag = mag(apply_ras(base, sample_ratio=0.5, warmup_steps=2), 0.1)
    stacked = run(mag_then_ras, sampler)
    assert any(skip for *_, skip in record)
    assert torch.equal(stacked, run(ras_then_mag, sampler))
    assert torch.isfinite(stacked).all()
    for alone in (mag(base, 0.1), apply_ras(base, sample_ratio=0.5, warmup_steps=2)):
        assert not torch.equal(stacked, run(alone, sampler))


@pytest.mark.parametrize("sampler, cfg", [("euler", 3.0), ("heun", 3.0), ("euler", 1.0)])
def test_threshold_zero_and_ratio_one_is_the_plain_model_exactly(base, sampler, cfg):
    for model in (apply_ras(mag(base, 0.0), sample_ratio=1.0), mag(apply_ras(base, sample_ratio=1.0), 0.0)):
        assert torch.equal(run(model, sampler, cfg), run(base, sampler, cfg))


def test_each_reduces_to_the_other_alone_when_one_is_off(base):
    ras_alone = run(apply_ras(base, sample_ratio=0.5, warmup_steps=2))
    torch.testing.assert_close(run(apply_ras(mag(base, 0.0), sample_ratio=0.5, warmup_steps=2)), ras_alone,
                               rtol=0, atol=1e-5)
    rec_alone, rec_stacked = [], []
    mag_alone = run(mag(base, 0.1, rec_alone))
    torch.testing.assert_close(run(apply_ras(mag(base, 0.1, rec_stacked), sample_ratio=1.0)), mag_alone,
                               rtol=0, atol=1e-5)
    assert rec_stacked == rec_alone and any(skip for *_, skip in rec_alone)


def test_one_run_skips_then_computes_sparsely_with_the_residual_over_all_tokens(base):
    # ratios 1, 1, 3: step 0 computes (RAS dense), step 1 is skipped (residual reuse), step 2 computes because the
    # accumulated error jumps, with RAS sparse over the caches of step 0 and step 1's output for inactive tokens
    settings = MagCacheSettings({0: (1.0, 1.0, 3.0, 1.0)}, threshold=0.5, max_skip_steps=3, retention_ratio=0.0)
    model = apply_ras(magcache_model(base, settings), sample_ratio=0.5, warmup_steps=1, dense_every=0)
    parts = transformer_parts(base.diffusion_model)
    sigmas, ctx, state = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]), torch.randn(1, 1, 384), {}
    xs = [torch.randn(1, 3, 32, 32) for _ in range(3)]

    def call(i):
        s = float(sigmas[i])
        opts = {"sigmas": torch.tensor([s]), "sample_sigmas": sigmas, "cond_or_uncond": [0], "run_state": state}
        return model.forward(xs[i], torch.tensor([s * 1000]), ctx, opts)

    t = [torch.tensor([float(s) * 1000]) for s in sigmas[:3]]
    out0, caches0 = dense_forward(parts, xs[0], t[0], ctx)
    assert torch.equal(call(0), out0)
    tok0, c0, _ = parts.embed(xs[0], t[0], ctx)
    residual0 = parts.blocks[2](parts.blocks[1](parts.blocks[0](tok0, c0), c0), c0) - tok0
    tok1, c1, grid = parts.embed(xs[1], t[1], ctx)
    out1 = call(1)
    torch.testing.assert_close(out1, parts.head(tok1 + residual0, c1, grid), rtol=0, atol=1e-5)

    out2 = call(2)
    active = state[(WRAPPER_KEY, (0,))].active
    assert active.shape == (1, 32)  # half of the 64 tokens
    torch.testing.assert_close(out2, sparse_forward(parts, xs[2], t[2], ctx, caches0, active, out1),
                               rtol=0, atol=1e-5)
    tok2, _, _ = parts.embed(xs[2], t[2], ctx)
    inactive = torch.ones(64, dtype=torch.bool)
    inactive[active[0]] = False
    residual2 = state["magcache"]["branches"][(0, 0)].residual
    torch.testing.assert_close(residual2[:, inactive], (tok1 + residual0 - tok2)[:, inactive], rtol=0, atol=1e-5)


def test_stacking_rewrites_only_the_new_copy(base):
    first = mag(base, 0.1)
    before = run(first)
    stacked = apply_ras(first, sample_ratio=0.5)
    assert [type(w) for _k, w in stacked.wrappers] == [Handover, BlockStackWrapper]
    assert [type(w) for _k, w in first.wrappers] == [BlockStackWrapper] and base.wrappers == ()
    assert torch.equal(run(first), before)  # the MagCache-only copy still runs MagCache alone


def test_the_app_graph_takes_the_pair():
    prompt = to_api_prompt(Settings(magcache_threshold=0.1, ras_ratio=0.5))
    ids = {n["class_type"]: i for i, n in prompt.items()}
    assert prompt[ids["TurboSampleRAS"]]["inputs"]["model"][0] == ids["TurboSampleMagCache"]


def test_a_dense_ras_step_skipped_by_magcache_runs_dense_at_the_next_computed_step(base):
    # RAS dense at steps 0 and 3 (warm-up 1, every 2); MagCache computes steps 0, 1, 4 and skips 2 and 3
    settings = MagCacheSettings({0: (1.0, 3.0, 1.0, 1.0, 3.0)}, threshold=0.5, max_skip_steps=3, retention_ratio=0.0)
    record = []
    model = magcache_model(apply_ras(base, sample_ratio=0.5, warmup_steps=1, dense_every=2), settings, record=record)
    parts = transformer_parts(base.diffusion_model)
    sigmas, ctx, state = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.0]), torch.randn(1, 1, 384), {}
    outs = []
    for i in range(5):
        x, s = torch.randn(1, 3, 32, 32), float(sigmas[i])
        opts = {"sigmas": torch.tensor([s]), "sample_sigmas": sigmas, "cond_or_uncond": [0], "run_state": state}
        outs.append(model.forward(x, torch.tensor([s * 1000]), ctx, opts))
        if i == 1:
            assert state[(WRAPPER_KEY, (0,))].selected == 1  # step 1 ran sparsely
    assert [skip for *_, skip in record] == [False, False, True, True, False]
    torch.testing.assert_close(outs[-1], parts.forward(x, torch.tensor([s * 1000]), ctx), rtol=0, atol=1e-6)
    assert state[(WRAPPER_KEY, (0,))].selected == 1  # no new selection: step 4 was dense


def test_samplers_that_batch_several_noise_levels_are_refused_by_step_caches():
    import torch

    from turbosample.accel.stacking import StackingError, check_one_sigma

    check_one_sigma({"sigmas": torch.tensor([0.5, 0.5])}, "MagCache")  # CFG batch: one level, fine
    with pytest.raises(StackingError, match="RAS needs one noise level per model call"):
        check_one_sigma({"sigmas": torch.tensor([0.9, 0.8])}, "RAS")


def test_magcache_stacks_with_bottleneck_sampling(base):
    # Bottleneck changes resolution between stages: MagCache never reuses a residual of another size (the first
    # call at each resolution runs the blocks), still skips some calls, keeps threshold 0 exact and leaves no state
    # for the next run. Its decisions are keyed on the incoming schedule's steps (calls in one step follow one
    # decision, see samplers/bottleneck.py).
    from turbosample.samplers.bottleneck import sample_bottleneck
    from turbosample.samplers.registry import SamplerInfo

    bottleneck = SamplerInfo("bn", sample_bottleneck, 1, "", {"base": "euler", "steps": [3, 4, 3]})
    g = torch.Generator().manual_seed(1)
    pos, neg = [[torch.randn(1, 1, 384, generator=g), {}]], [[torch.zeros(1, 1, 384), {}]]
    sigmas = compute_sigmas(base.model_sampling, "simple", STEPS)
    block_runs, calls = [], []
    hook = base.diffusion_model.blocks[0].register_forward_hook(lambda *_: block_runs.append(1))

    def spy(forward, x, timestep, context, options):
        before = len(block_runs)
        out = forward(x, timestep, context, options)
        calls.append((x.shape[-1], len(block_runs) > before))
        return out

    def go(model):
        return sample(model, pos, neg, torch.zeros(1, 3, 32, 32), bottleneck, sigmas, 0, 3.0)

    try:
        alone = go(base)
        assert torch.equal(go(mag(base, 0.0)), alone)
        cached = mag(base.with_wrapper("spy", spy), 0.5)  # spy outermost: sees every call
        out = go(cached)
        first = list(calls)
        assert torch.isfinite(out).all() and not torch.equal(out, alone)
        assert [size for size, _ in first] == [32] * 3 + [16] * 4 + [32] * 3
        ran = [r for _, r in first]
        assert ran[0] and ran[3] and ran[7] and not all(ran)
        assert torch.equal(go(cached), out) and calls[len(first):] == first  # a second run starts afresh
    finally:
        hook.remove()
