"""diffusers SD3 / Flux / Wan adapters: the parts rebuild each model's own forward, and MagCache runs on them."""

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
    WanTransformer3DModel,
)
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline  # noqa: E402

from turbosample.accel.adapter import UnsupportedModel, transformer_parts  # noqa: E402
from turbosample.accel.diffusers_adapters import BlockCond, DiffusersDiT  # noqa: E402
from turbosample.accel.magcache import MagCacheSettings, magcache_model  # noqa: E402
from turbosample.samplers.denoiser import DiffusionModel  # noqa: E402
from turbosample.samplers.model_sampling import FlowSampling  # noqa: E402


def tiny_sd3():
    torch.manual_seed(0)
    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                 num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                 pooled_projection_dim=16, out_channels=4, pos_embed_max_size=16).eval()


def tiny_flux(guidance: bool = False):
    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2,
                                  attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                  pooled_projection_dim=16, axes_dims_rope=(2, 2, 4),
                                  guidance_embeds=guidance).eval()


def tiny_wan():
    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                                 out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()


def inputs(batch=2, video=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 4, 3, 8, 12) if video else (batch, 4, 8, 12)
    ctx = {"encoder_hidden_states": torch.randn(batch, 5, 16, generator=g),
           "pooled_projections": torch.randn(batch, 16, generator=g)}
    return torch.randn(shape, generator=g), torch.tensor([700.0, 300.0])[:batch], ctx


def own_output(model, x, t, ctx):
    """The model's own forward, called the way the diffusers pipelines call it."""
    text, pooled = ctx["encoder_hidden_states"], ctx["pooled_projections"]
    if isinstance(model, SD3Transformer2DModel):
        return model(x, text, pooled, t, return_dict=False)[0]
    if isinstance(model, FluxTransformer2DModel):
        b, c, h, w = x.shape
        packed = FluxPipeline._pack_latents(x, b, c, h, w)
        ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
        guidance = ctx.get("guidance")
        out = model(packed, text, pooled, t / 1000, img_ids=ids, txt_ids=torch.zeros(text.shape[1], 3),
                    guidance=guidance, return_dict=False)[0]
        return FluxPipeline._unpack_latents(out, h * 8, w * 8, 8)  # vae_scale_factor 8: pixel size = 8 x latent
    return model(x, t, text, return_dict=False)[0]


CASES = [("sd3", tiny_sd3, False), ("flux", tiny_flux, False), ("wan", tiny_wan, True)]


@pytest.fixture(scope="module")
def models():
    return {name: make() for name, make, _ in CASES}


@pytest.mark.parametrize("name, video", [(n, v) for n, _, v in CASES])
@torch.no_grad()
def test_parts_rebuild_the_models_own_forward(models, name, video):
    model = models[name]
    x, t, ctx = inputs(video=video)
    parts = transformer_parts(model)
    want = own_output(model, x, t, ctx)
    assert torch.allclose(parts.forward(x, t, ctx), want, atol=1e-5)
    assert torch.allclose(DiffusersDiT(model)(x, t, context=ctx), want, atol=1e-5)
    tokens, cond, _grid = parts.embed(x, t, ctx)
    out = tokens
    for block in parts.blocks:
        out = block(out, cond)
    assert out.shape == tokens.shape and (out - tokens).abs().max() > 1e-3  # every block keeps the layout
    assert len(parts.blocks) == {"sd3": 2, "flux": 3, "wan": 2}[name]


@torch.no_grad()
def test_flux_guidance_and_wan_per_token_timestep():
    flux = tiny_flux(guidance=True)
    x, t, ctx = inputs()
    ctx = {**ctx, "guidance": torch.tensor([3.5, 2.0])}
    assert torch.allclose(transformer_parts(flux).forward(x, t, ctx), own_output(flux, x, t, ctx), atol=1e-5)
    with pytest.raises(ValueError, match="guidance"):
        transformer_parts(flux).forward(x, t, {k: v for k, v in ctx.items() if k != "guidance"})
    wan = tiny_wan()
    x, _t, ctx = inputs(video=True)
    t2 = torch.linspace(900, 100, 2 * 3 * 4 * 6).reshape(2, -1)  # Wan 2.2: one timestep per token
    want = wan(x, t2, ctx["encoder_hidden_states"], return_dict=False)[0]
    assert torch.allclose(transformer_parts(wan).forward(x, t2, ctx["encoder_hidden_states"]), want, atol=1e-5)


def test_block_cond_indexes_batch_tensors_only():
    rotary = torch.randn(7, 4)
    cond = BlockCond({"temb": torch.arange(6.0).reshape(3, 2)}, {"rotary": rotary, "text_len": 5})
    sub = cond[torch.tensor([2, 0])]
    assert torch.equal(sub.batch["temb"], torch.tensor([[4.0, 5.0], [0.0, 1.0]]))
    assert sub.shared["rotary"] is rotary and sub.shared["text_len"] == 5


def test_unsupported_models_are_named():
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
                                norm_num_groups=4, attention_head_dim=2)
    for model in (unet, torch.nn.Linear(2, 2)):
        with pytest.raises(UnsupportedModel, match="not supported.*FluxTransformer2DModel.*SD3Transformer2DModel"):
            transformer_parts(model)
    with pytest.raises(UnsupportedModel, match="UNet2DConditionModel"):
        DiffusersDiT(unet)


def step_options(sigmas, i, state):
    return {"sigmas": sigmas[i].repeat(2), "sample_sigmas": sigmas, "cond_or_uncond": [0, 1], "run_state": state}


def run_steps(model: DiffusionModel, x, ctx, sigmas):
    """Euler over ``sigmas`` on a [cond; uncond] batch, recording every network output."""
    state, outs = {}, []
    for i in range(len(sigmas) - 1):
        out = model.forward(x, (sigmas[i] * 1000).repeat(x.shape[0]), ctx, step_options(sigmas, i, state))
        outs.append(out)
        x = x + (sigmas[i + 1] - sigmas[i]) * out
    return outs


@pytest.mark.parametrize("name, video", [(n, v) for n, _, v in CASES])
@torch.no_grad()
def test_magcache_threshold_zero_reproduces_the_plain_run(models, name, video):
    base = DiffusionModel(DiffusersDiT(models[name]), FlowSampling())
    x, _t, ctx = inputs(video=video)
    ctx = ctx["encoder_hidden_states"] if name == "wan" else ctx
    sigmas = torch.linspace(1.0, 0.0, 7)
    settings = MagCacheSettings({0: (1.0,) * 6}, threshold=0.0, retention_ratio=0.0)
    record = []
    cached = magcache_model(base, settings, record=record)
    for a, b in zip(run_steps(cached, x, ctx, sigmas), run_steps(base, x, ctx, sigmas), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert len(record) == 12 and not any(skip for *_, skip in record)


@torch.no_grad()
def test_magcache_skip_reuses_the_two_stream_residual_per_branch():
    """SD3: cond skips from step 1 (flat curve), uncond never (steep curve) and runs on its own rows."""
    sd3 = tiny_sd3()
    base = DiffusionModel(DiffusersDiT(sd3), FlowSampling())
    settings = MagCacheSettings({0: (1.0,) * 3, 1: (1.0, 2.0, 2.0)}, threshold=0.5, max_skip_steps=5,
                                retention_ratio=0.0)
    record = []
    cached = magcache_model(base, settings, record=record)
    x, _t, ctx = inputs(seed=3)
    sigmas = torch.tensor([1.0, 0.7, 0.4, 0.0])
    parts = transformer_parts(sd3)
    state, residual = {}, None
    for i in range(3):
        t = (sigmas[i] * 1000).repeat(2)
        got = cached.forward(x, t, ctx, step_options(sigmas, i, state))
        tokens, cond, grid = parts.embed(x, t, ctx)
        if i == 0:
            out = tokens
            for block in parts.blocks:
                out = block(out, cond)
            residual = (out - tokens)[:1]
            assert torch.allclose(got, parts.head(out, cond, grid), atol=1e-5)
        else:  # cond: embedding + the cached residual of text and image tokens; uncond: its plain forward
            want_cond = parts.head(tokens[:1] + residual, cond[:1], grid)
            assert torch.allclose(got[:1], want_cond, atol=1e-5)
            assert torch.allclose(got[1:], base.forward(x[1:], t[1:], {k: v[1:] for k, v in ctx.items()}),
                                  atol=1e-5)
        x = x + (sigmas[i + 1] - sigmas[i]) * got
    assert [(key[0], skip) for key, _step, skip in record] == [(0, False), (1, False), (0, True), (1, False),
                                                                 (0, True), (1, False)]
