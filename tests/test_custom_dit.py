"""A user's own DiT through the public adapter API, on a model unlike the built-in one: one channel, patch 2, a learned
position table for a fixed token grid, class labels instead of text (README, "Your own DiT")."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from turbosample.accel.adapter import (
    TransformerParts,
    UnsupportedModel,
    diffusion_model,
    register_adapter,
    swap_attention,
    transformer_parts,
    unregister_adapter,
)
from turbosample.accel.magcache import MagCacheSettings, magcache_model
from turbosample.accel.magcache_calibration import calibrate
from turbosample.accel.ras import apply_ras
from turbosample.samplers.bottleneck import sample_bottleneck
from turbosample.samplers.denoiser import DiffusionModel
from turbosample.samplers.model_sampling import FlowSampling
from turbosample.samplers.registry import SAMPLERS, SamplerInfo
from turbosample.samplers.run import sample
from turbosample.samplers.schedulers import compute_sigmas

CLASSES = 10  # label CLASSES is the null class (CFG's negative)


class Block(torch.nn.Module):
    """A pre-norm transformer block conditioned by adding the class + time vector; attention via ``self.attention``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.qkv, self.proj = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 2 * width), torch.nn.GELU(),
                                       torch.nn.Linear(2 * width, width))
        self.attention = F.scaled_dot_product_attention

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x) + c[:, None]).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(self.attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class LabelDiT(torch.nn.Module):
    """Velocity model on one-channel latents, 2x2 patches, class labels; ``fixed`` = a learned position table for an
    8x8 token grid (16x16 latents only)."""

    def __init__(self, fixed: bool = True, width: int = 32, depth: int = 3, grid: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.patch, self.grid = 2, grid
        self.proj_in, self.proj_out = torch.nn.Linear(4, width), torch.nn.Linear(width, 4)
        self.pos = torch.nn.Parameter(torch.randn(1, grid * grid, width)) if fixed else None
        self.label, self.time = torch.nn.Embedding(CLASSES + 1, width), torch.nn.Linear(1, width)
        self.blocks = torch.nn.ModuleList(Block(width, 2) for _ in range(depth))
        self.norm = torch.nn.LayerNorm(width)
        for p in self.proj_out.parameters():
            p.data.normal_(0, 0.3)

    def embed(self, x: torch.Tensor, timestep: torch.Tensor, labels: torch.Tensor):
        b, _, h, w = x.shape
        grid = (h // 2, w // 2)
        tokens = self.proj_in(x.view(b, 1, grid[0], 2, grid[1], 2).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, 4))
        if self.pos is not None:
            tokens = tokens + self.pos  # fails at any other grid
        c = self.label(labels.reshape(-1)) + self.time(timestep.reshape(-1, 1) / 1000)
        return tokens, c, grid

    def head(self, tokens: torch.Tensor, c: torch.Tensor, grid: tuple) -> torch.Tensor:
        out = self.proj_out(self.norm(tokens)).view(tokens.shape[0], grid[0], grid[1], 1, 2, 2)
        return out.permute(0, 3, 1, 4, 2, 5).reshape(tokens.shape[0], 1, grid[0] * 2, grid[1] * 2)

    def forward(self, x, timestep, context=None, **_):
        tokens, c, grid = self.embed(x, timestep, context)
        for block in self.blocks:
            tokens = block(tokens, c)
        return self.head(tokens, c, grid)


def label_dit_parts(model: LabelDiT) -> TransformerParts:
    blocks = list(model.blocks)
    return TransformerParts(name="LabelDiT", embed=model.embed, blocks=blocks, head=model.head, patch_size=model.patch,
                            attention_modules=blocks, run_block=swap_attention(blocks, blocks),
                            fixed_grid=(model.grid, model.grid) if model.pos is not None else None)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models


@pytest.fixture(autouse=True)
def adapter():
    register_adapter(LabelDiT, label_dit_parts)
    yield
    unregister_adapter(LabelDiT)


def labels(label: int) -> list:
    return [[torch.tensor([label]), {}]]


POSITIVE, NEGATIVE = labels(3), labels(CLASSES)
SIGMAS = compute_sigmas(FlowSampling(shift=2.0), "simple", 10)


def run(model, sampler="euler", seed=0, size=16, batch=1, **kwargs) -> torch.Tensor:
    info = SAMPLERS[sampler] if isinstance(sampler, str) else sampler
    return sample(model, POSITIVE, NEGATIVE, torch.zeros(batch, 1, size, size), info, SIGMAS, seed, 3.0, **kwargs)


def test_class_labels_reach_the_network_as_integers():
    seen = []

    def spy(forward, x, timestep, context, options):
        seen.append(context.dtype)
        return forward(x, timestep, context, options)

    model = diffusion_model(LabelDiT(), FlowSampling(shift=2.0), "labels").with_wrapper("spy", spy)
    out = run(model)
    assert torch.isfinite(out).all() and out.std() > 0.05
    assert seen and set(seen) == {torch.int64}  # the embedding table would refuse float indices


def test_magcache_and_ras_run_on_the_registered_dit():
    model = diffusion_model(LabelDiT(), FlowSampling(shift=2.0), "labels")
    plain = run(model)
    cal = calibrate(model, POSITIVE, NEGATIVE, torch.zeros(1, 1, 16, 16), SAMPLERS["euler"], SIGMAS, 0, 3.0)
    record: list = []
    cached = run(magcache_model(model, MagCacheSettings(cal.ratios, threshold=0.5), record=record))
    assert any(skipped for _key, _step, skipped in record)
    assert 0 < (cached - plain).abs().max() < plain.abs().max()
    ras = run(apply_ras(model, sample_ratio=0.5, warmup_steps=2, dense_every=0))
    assert torch.isfinite(ras).all() and 0 < (ras - plain).abs().max()


def test_ras_keeps_choosing_tokens_on_a_one_channel_model(monkeypatch):
    """std over one channel is NaN: the token choice froze on the same half. Now every sparse step scores by
    magnitude, the scores are finite and the starvation term moves the choice around."""
    from turbosample.accel import ras, ras_select

    chosen = []
    scores = []

    def recording(output, patch, drops, n_drop, n_chunks, cfg):
        scores.append(ras_select.token_metric(output, patch, cfg.metric))
        active = ras_select.select_tokens(output, patch, drops, n_drop, n_chunks, cfg)
        chosen.append(frozenset(active[0].tolist()))
        return active

    monkeypatch.setattr(ras, "select_tokens", recording)
    model = diffusion_model(LabelDiT(), FlowSampling(shift=2.0), "labels")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "degrees of freedom is <= 0" warning fails the test
        out = run(apply_ras(model, sample_ratio=0.5, warmup_steps=2, dense_every=0, metric="std"))
    assert torch.isfinite(out).all()
    assert len(chosen) == 8 and all(torch.isfinite(s).all() for s in scores)
    assert len(set(chosen)) > 1  # not one frozen half


def test_bottleneck_takes_the_adapters_patch_size_and_refuses_a_fixed_size_model():
    calls = []

    def counting(forward, x, timestep, context, options):
        calls.append(tuple(x.shape))
        return forward(x, timestep, context, options)

    bottleneck = SamplerInfo("bottleneck", sample_bottleneck, 1, "", {"base": "euler"})
    fixed = diffusion_model(LabelDiT(), FlowSampling(shift=2.0), "fixed").with_wrapper("count", counting)
    with pytest.raises(ValueError, match="runs at latent size 16x16 only .* Bottleneck Sampling needs a model that "
                                         "runs at other resolutions"):
        run(fixed, bottleneck)
    assert calls == []  # refused before any model call
    free = diffusion_model(LabelDiT(fixed=False), FlowSampling(shift=2.0), "free").with_wrapper("count", counting)
    out = run(free, bottleneck, size=12)  # a 6x6 stage: fine with patch 2 (the built-in's patch 4 would refuse it)
    assert out.shape == (1, 1, 12, 12) and {shape[-1] for shape in calls} == {12, 6}
    with pytest.raises(ValueError, match="7 is not a positive multiple of the model's size factor 2.*multiples of 4"):
        run(free, bottleneck, size=14)
    unknown = DiffusionModel(LabelDiT(fixed=False), FlowSampling(shift=2.0))  # built without diffusion_model()
    with pytest.raises(ValueError, match="cannot tell this model's patch size"):
        run(unknown, bottleneck, size=12)


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_sde"])
def test_per_image_seeds_reproduce_each_image_alone(sampler):
    model = diffusion_model(LabelDiT(fixed=False), FlowSampling(shift=2.0), "labels")
    batch = run(model, sampler, seed=[5, 9], batch=2)
    alone = torch.cat([run(model, sampler, seed=[5]), run(model, sampler, seed=9)])
    assert torch.allclose(batch, alone, atol=1e-5)
    assert not torch.allclose(batch[0], batch[1], atol=1e-2)
    with pytest.raises(ValueError, match="got 3 seeds for a batch of 2 images"):
        run(model, sampler, seed=[1, 2, 3], batch=2)


def test_an_unregistered_model_is_told_how_to_register():
    unregister_adapter(LabelDiT)
    with pytest.raises(UnsupportedModel, match="register_adapter"):
        transformer_parts(LabelDiT())
    with pytest.raises(UnsupportedModel, match="register_adapter"):
        apply_ras(DiffusionModel(LabelDiT(), FlowSampling()))


def test_the_readme_example_runs():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("## Your own DiT", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    try:
        exec(compile(code, "README.md (Your own DiT)", "exec"), namespace)
    finally:
        unregister_adapter("MyDiT")
    image = namespace["image"]
    assert image.shape == (2, 1, 16, 16) and torch.isfinite(image).all()
    assert not torch.allclose(image[0], image[1])  # two seeds, two images
