"""RAS on diffusers SD3 / Flux / Wan (tiny random-weight configs) and CFG through our loop with dict contexts."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

from diffusers import SD3Transformer2DModel, UNet2DConditionModel  # noqa: E402
from test_diffusers_adapters import inputs, tiny_flux, tiny_sd3, tiny_wan  # noqa: E402

from turbosample.accel.adapter import UnsupportedModel  # noqa: E402
from turbosample.accel.diffusers_adapters import DiffusersDiT, own_forward  # noqa: E402
from turbosample.accel.kv_cache import fill_cache  # noqa: E402
from turbosample.accel.magcache import MagCacheSettings, magcache_model  # noqa: E402
from turbosample.accel.ras import apply_ras, dense_forward, ras_parts, sparse_forward, stack_index  # noqa: E402
from turbosample.samplers.denoiser import DiffusionModel, cfg_denoiser  # noqa: E402
from turbosample.samplers.model_sampling import FlowSampling  # noqa: E402
from turbosample.samplers.registry import SAMPLERS  # noqa: E402
from turbosample.samplers.run import sample  # noqa: E402

TEXT = 5
GRID = {"sd3": (4, 6), "flux": (4, 6), "wan": (3, 4, 6)}  # token grids: images 8x12, Wan 3 frames x 8x12
PATCH = {"sd3": (2, 2), "flux": (2, 2), "wan": (1, 2, 2)}
NAMES = ["sd3", "flux", "wan"]


@pytest.fixture(scope="module")
def models():
    return {"sd3": tiny_sd3(), "flux": tiny_flux(), "wan": tiny_wan()}


def processors(model):
    if hasattr(model, "blocks"):  # Wan: self- and cross-attention
        return [a.processor for b in model.blocks for a in (b.attn1, b.attn2)]
    return [b.attn.processor for b in (*model.transformer_blocks, *getattr(model, "single_transformer_blocks", ()))]


def model_inputs(name, seed=1):
    """(x, t, ctx) for ``name``: Wan gets a 3-frame video and its text tensor alone."""
    x, t, ctx = inputs(video=name == "wan", seed=seed)
    return x, t, (ctx["encoder_hidden_states"] if name == "wan" else ctx)


def n_text(name):
    return 0 if name == "wan" else TEXT


def n_tokens(name):
    n = 1
    for size in GRID[name]:
        n *= size
    return n


def token_pixels(mask, name, like):
    """(rows, tokens) bool -> the latent pixels of those tokens, shaped like ``like``."""
    out = mask.reshape(mask.shape[0], 1, *GRID[name])
    for axis, p in enumerate(PATCH[name], start=2):
        out = out.repeat_interleave(p, dim=axis)
    return out.expand_as(like)


def changed_tokens(a, b, name):
    """(rows, tokens) bool: tokens with any latent pixel that differs between outputs ``a`` and ``b``."""
    grid, patch = GRID[name], PATCH[name]
    shape = [a.shape[0], a.shape[1]]
    for g, p in zip(grid, patch, strict=True):
        shape += [g, p]
    reduce = (1, *range(3, 2 + 2 * len(grid), 2))
    return (a != b).reshape(shape).any(dim=reduce).flatten(1)


def test_stack_index_keeps_leading_text_tokens():
    active = torch.tensor([[0, 4], [1, 2]])
    assert torch.equal(stack_index(active, 8, 8), active)
    assert torch.equal(stack_index(active, 11, 8), torch.tensor([[0, 1, 2, 3, 7], [0, 1, 2, 4, 5]]))


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_run_block_with_plain_attention_is_the_block_and_restores_processors(models, name):
    model = models[name]
    parts = ras_parts(model)
    before = processors(model)
    x, t, ctx = model_inputs(name)
    tokens, cond, _ = parts.embed(x, t, ctx)
    for i, block in enumerate(parts.blocks):
        torch.testing.assert_close(parts.run_block(i, tokens, cond, F.scaled_dot_product_attention),
                                   block(tokens, cond), atol=1e-5, rtol=1e-5)

    def broken(q, k, v):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):  # the routed attention is the one used
        parts.run_block(0, tokens, cond, broken)
    assert all(a is b for a, b in zip(processors(model), before, strict=True))


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_dense_and_all_active_sparse_forward_equal_the_model(models, name):
    model = models[name]
    parts = ras_parts(model)
    x, t, ctx = model_inputs(name)
    want = own_forward(model, x, t, ctx)
    out, caches = dense_forward(parts, x, t, ctx)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert caches[0][0].shape[2] == n_text(name) + n_tokens(name)  # text and image keys in one cache
    _, stale = dense_forward(parts, torch.randn_like(x), t * 0.5, ctx)
    every = torch.arange(n_tokens(name)).repeat(2, 1)
    torch.testing.assert_close(sparse_forward(parts, x, t, ctx, stale, every, torch.zeros_like(x)), want,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, per_token", [("sd3", False), ("flux", False), ("wan", False), ("wan", True)])
@torch.no_grad()
def test_sparse_forward_updates_the_cache_at_text_and_active_positions_only(models, name, per_token):
    model = models[name]
    parts = ras_parts(model)
    x, t, ctx = model_inputs(name)
    n_img, lead = n_tokens(name), n_text(name)
    if per_token:  # Wan 2.2: one timestep per token; the kept tokens keep their own modulation
        t = torch.linspace(900, 100, 2 * n_img).reshape(2, n_img)
    full, fresh = dense_forward(parts, x, t, ctx)
    _, stale = dense_forward(parts, torch.randn_like(x), t * 0.5, ctx)
    old_k, old_v = (c.clone() for c in stale[0])
    g = torch.Generator().manual_seed(0)
    active = torch.stack([torch.randperm(n_img, generator=g)[:n_img // 4].sort().values for _ in range(2)])
    sparse_forward(parts, x, t, ctx, stale, active, torch.zeros_like(x))
    index = stack_index(active, lead + n_img, n_img)
    hit = torch.zeros(2, lead + n_img, dtype=torch.bool).scatter_(1, index, True)[:, None, :, None]
    # block 0 sees exact inputs for every active token: its cache holds the full pass's K/V there, stale elsewhere
    for new, full_kv, old in ((stale[0][0], fresh[0][0], old_k), (stale[0][1], fresh[0][1], old_v)):
        torch.testing.assert_close(new, torch.where(hit, full_kv, old), atol=1e-5, rtol=1e-5)
    # with a fresh cache the active tokens come out exactly as in the full forward; the others keep prev
    prev = torch.full_like(full, 7.0)
    out = sparse_forward(parts, x, t, ctx, [fill_cache(k, v) for k, v in fresh], active, prev)
    mask = token_pixels(torch.zeros(2, n_img, dtype=torch.bool).scatter_(1, active, True), name, full)
    torch.testing.assert_close(out[mask], full[mask], atol=1e-5, rtol=1e-5)
    assert torch.equal(out[~mask], prev[~mask])


def conditioning(name, seed):
    g = torch.Generator().manual_seed(seed)
    ctx = {"encoder_hidden_states": torch.randn(1, TEXT, 16, generator=g),
           "pooled_projections": torch.randn(1, 16, generator=g)}
    return [[ctx, {}]]


def latent_shape(name):
    return (1, 4, 3, 8, 12) if name == "wan" else (1, 4, 8, 12)


def run(model, name, steps=6, cfg=3.0, sampler="euler"):
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    return sample(model, conditioning(name, 1), conditioning(name, 2), torch.zeros(latent_shape(name)),
                  SAMPLERS[sampler], sigmas, 0, cfg)


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_ras_ratio_one_through_the_cfg_loop_equals_the_plain_model(models, name):
    base = DiffusionModel(DiffusersDiT(models[name]), FlowSampling())
    want = run(base, name)
    assert torch.isfinite(want).all() and want.shape == latent_shape(name)
    torch.testing.assert_close(run(apply_ras(base, sample_ratio=1.0, warmup_steps=1), name), want,
                               atol=1e-5, rtol=1e-5)
    sparse = run(apply_ras(base, sample_ratio=0.5, warmup_steps=2, dense_every=0), name)
    assert torch.isfinite(sparse).all() and not torch.allclose(sparse, want, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_sparse_step_changes_only_the_selected_tokens_of_both_cfg_branches(models, name):
    base = DiffusionModel(DiffusersDiT(models[name]), FlowSampling())
    ras = apply_ras(base, sample_ratio=0.25, warmup_steps=1, dense_every=0)
    x, _t, ctx = model_inputs(name, seed=4)  # rows: [cond; uncond] of one image
    sigmas, state = torch.tensor([1.0, 0.75, 0.5, 0.0]), {}
    outs = []
    for i in range(3):
        opts = {"sigmas": sigmas[i].repeat(2), "sample_sigmas": sigmas, "cond_or_uncond": [0, 1], "run_state": state}
        outs.append(ras.forward(x, (sigmas[i] * 1000).repeat(2), ctx, opts))
        assert outs[-1].shape == x.shape and torch.isfinite(outs[-1]).all()
        x = x + (sigmas[i + 1] - sigmas[i]) * outs[-1]
    for prev, out in zip(outs[:-1], outs[1:], strict=True):  # steps 1 and 2 are sparse
        changed = changed_tokens(out, prev, name)  # (rows, tokens)
        assert changed.sum(1).tolist() == [n_tokens(name) // 4] * 2
        assert torch.equal(changed[0], changed[1])  # one selection shared by the image's CFG branches


@torch.no_grad()
def test_cfg_with_dict_contexts_is_the_guided_combination(models):
    model = DiffusionModel(DiffusersDiT(models["sd3"]), FlowSampling())
    pos, neg = conditioning("sd3", 1), conditioning("sd3", 2)
    x, sigma = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(5)), torch.tensor([0.6, 0.6])
    expand = {k: v.expand(2, *v.shape[1:]) for k, v in pos[0][0].items()}
    c = model.denoise(x, sigma, expand)
    u = model.denoise(x, sigma, {k: v.expand(2, *v.shape[1:]) for k, v in neg[0][0].items()})
    torch.testing.assert_close(cfg_denoiser(model, pos, neg, 4.0)(x, sigma), u + 4.0 * (c - u), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cfg_denoiser(model, pos, neg, 1.0)(x, sigma), c, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="different keys"):
        cfg_denoiser(model, pos, [[{"encoder_hidden_states": expand["encoder_hidden_states"]}, {}]], 4.0)(x, sigma)
    with pytest.raises(ValueError, match="different keys"):
        cfg_denoiser(model, pos, [[expand["encoder_hidden_states"], {}]], 4.0)(x, sigma)


def test_ras_refuses_unet_and_dual_attention_sd3():
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
                                norm_num_groups=4, attention_head_dim=2)
    with pytest.raises(UnsupportedModel, match="UNet2DConditionModel is not supported"):
        apply_ras(DiffusionModel(unet, FlowSampling()))
    dual = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                 num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                 pooled_projection_dim=16, out_channels=4, pos_embed_max_size=16,
                                 dual_attention_layers=(0,))
    base = DiffusionModel(DiffusersDiT(dual), FlowSampling())
    with pytest.raises(UnsupportedModel, match="RAS needs per-block attention"):
        apply_ras(base)
    assert base.wrappers == ()


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_ras_stacks_with_magcache_on_diffusers_models(models, name):
    """MagCache skipping the cond branch makes RAS run the uncond rows alone (per-row caches and RoPE)."""
    base = DiffusionModel(DiffusersDiT(models[name]), FlowSampling())
    x, _t, ctx = model_inputs(name, seed=6)
    sigmas = torch.tensor([1.0, 0.7, 0.4, 0.0])

    def steps(model):
        state, outs, y = {}, [], x
        for i in range(3):
            opts = {"sigmas": sigmas[i].repeat(2), "sample_sigmas": sigmas, "cond_or_uncond": [0, 1],
                    "run_state": state}
            outs.append(model.forward(y, (sigmas[i] * 1000).repeat(2), ctx, opts))
            y = y + (sigmas[i + 1] - sigmas[i]) * outs[-1]
        return outs

    neutral = magcache_model(apply_ras(base, sample_ratio=1.0, warmup_steps=1),
                             MagCacheSettings({0: (1.0,) * 3}, threshold=0.0, retention_ratio=0.0))
    for a, b in zip(steps(neutral), steps(base), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    record = []
    settings = MagCacheSettings({0: (1.0,) * 3, 1: (1.0, 2.0, 2.0)}, threshold=0.5, max_skip_steps=5,
                                retention_ratio=0.0)
    both = magcache_model(apply_ras(base, sample_ratio=0.5, warmup_steps=1, dense_every=0), settings, record=record)
    outs = steps(both)
    assert all(o.shape == x.shape and torch.isfinite(o).all() for o in outs)
    assert [skip for *_, skip in record] == [False, False, True, False, True, False]
    changed = changed_tokens(outs[2][1:], outs[1][1:], name)
    assert int(changed.sum()) == n_tokens(name) // 2  # the uncond row ran sparsely on its own


@torch.no_grad()
def test_module_processors_are_refused_and_left_in_place():
    model = tiny_sd3()

    class ModuleProcessor(torch.nn.Module):  # like diffusers' IP-Adapter processors
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
            raise AssertionError("not reached")

    proc = ModuleProcessor()
    model.transformer_blocks[0].attn.set_processor(proc)
    parts = ras_parts(model)
    x, t, ctx = inputs()
    with pytest.raises(UnsupportedModel, match="ModuleProcessor"):
        dense_forward(parts, x, t, ctx)
    assert model.transformer_blocks[0].attn.processor is proc
