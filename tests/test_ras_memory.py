"""RAS's memory: one set of K/V caches per run, of exactly blocks x tokens x inner width x 2 x bytes x batch, the
int8 low-memory cache, and the CUDA-graph sparse path's bookkeeping.

Oracles: the formula (counted on production configs built on the ``meta`` device, no weights allocated), plain
int8 rounding bounds, and the eager pass (the graph path must feed a replay exactly the inputs an eager pass gets).
"""

import pytest
import torch

from turbosample.accel.kv_cache import KVCache, cached_attention, fill_cache, quantize
from turbosample.accel.ras import BranchState, apply_ras, dense_blocks, dense_forward, ras_parts
from turbosample.accel.ras_graph import SparseGraph
from turbosample.accel.ras_select import RASConfig


def test_int8_cache_rounds_within_half_a_step_per_token_and_head():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(2, 3, 10, 16, generator=g) * torch.rand(2, 3, 10, 1, generator=g) * 5
    q, scale = quantize(k)
    assert q.dtype == torch.int8 and scale.shape == (2, 3, 10, 1)
    err = (q.float() * scale - k).abs()
    assert (err <= scale / 2 + 1e-6).all()  # round to nearest of absmax / 127 steps
    assert err.max() > 0  # it does round


def test_int8_cache_write_scatter_take_put_follow_the_full_cache():
    g = torch.Generator().manual_seed(1)
    k, v = torch.randn(2, 2, 12, 8, generator=g), torch.randn(2, 2, 12, 8, generator=g)
    full, small = fill_cache(k, v), fill_cache(k, v, "int8")
    index = torch.tensor([[0, 5, 7], [1, 2, 11]])
    k2, v2 = torch.randn(2, 2, 3, 8, generator=g), torch.randn(2, 2, 3, 8, generator=g)
    full.scatter(index, k2, v2)
    small.scatter(index, k2, v2)
    for a, b in zip(full, small, strict=True):
        assert (a - b).abs().max() < 0.02 * a.abs().max()  # 1/254 of each row's absmax at most
    rows = torch.tensor([1])
    part = small.take(rows)
    part.write(k[rows] * 0, v[rows] * 0)
    small.put(rows, part)
    assert small[0][1].abs().max() == 0 and small[0][0].abs().max() > 0
    assert small.nbytes < 0.6 * full.nbytes  # int8 values + one scale per (token, head) vs float32: ~1/4 + scales


def test_cached_attention_over_int8_cache_is_close_to_exact():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 16, 32, generator=g) for _ in range(3))
    index = torch.arange(16)[None]
    exact = cached_attention(q, k, v, fill_cache(k, v), index)
    approx = cached_attention(q, k, v, fill_cache(k * 0, v * 0, "int8"), index)
    assert (approx - exact).abs().max() < 0.02


def dense_cache_bytes(model, x, t, ctx, repeats: int = 2) -> list[int]:
    """Cache bytes after each of ``repeats`` dense passes writing into one run's caches."""
    parts = ras_parts(model)
    tokens, c, _ = parts.embed(x, t, ctx)
    caches, sizes = [], []
    for _ in range(repeats):
        _, caches = dense_blocks(parts, tokens, c, caches, None, x.shape[0])
        sizes.append(sum(cache.nbytes for cache in caches))
    return sizes


PRODUCTION = {  # public configs: (class, config, latent, text tokens, batch with CFG)
    "flux": ("FluxTransformer2DModel", dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                            attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                            pooled_projection_dim=768, guidance_embeds=True,
                                            axes_dims_rope=(16, 56, 56)), (1, 16, 128, 128), 512),
    "wan": ("WanTransformer3DModel", dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128,
                                          in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
                                          ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                                          qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
            (2, 16, 9, 60, 104), 512),
}


@pytest.mark.parametrize("name", list(PRODUCTION))
def test_ras_cache_bytes_on_production_configs_equal_the_formula(name):
    """Built on ``meta`` (shapes only): Flux-dev at 1024x1024, Wan2.1-1.3B at 480x832x33 frames with CFG batch 2.
    A second dense pass writes into the same caches: the run holds one set (was two: +6.0 GiB Flux, +9.8 Wan)."""
    diffusers = pytest.importorskip("diffusers")
    cls, cfg, latent, text = PRODUCTION[name]
    with torch.device("meta"):
        model = getattr(diffusers, cls)(**cfg).to(torch.bfloat16)
    b = latent[0]
    x = torch.zeros(latent, device="meta", dtype=torch.bfloat16)
    ctx = {"encoder_hidden_states": torch.zeros(b, text, 4096, device="meta", dtype=torch.bfloat16),
           "pooled_projections": torch.zeros(b, 768, device="meta", dtype=torch.bfloat16),
           "guidance": torch.zeros(b, device="meta")}
    sizes = dense_cache_bytes(model, x, torch.zeros(b, device="meta"), ctx)
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    if name == "flux":
        blocks, tokens = 19 + 38, 64 * 64 + text
    else:
        blocks, tokens = 30, 9 * 30 * 52
    formula = blocks * tokens * inner * 2 * 2 * b  # blocks x tokens x inner width x 2 (K, V) x bytes x batch
    assert sizes == [formula, formula]
    assert round(formula / 2**30, 1) == {"flux": 3.0, "wan": 4.8}[name]


def test_a_run_keeps_one_set_of_caches_filled_in_place():
    from test_ras import conds, small_dit

    from turbosample.samplers.denoiser import DiffusionModel
    from turbosample.samplers.model_sampling import FlowSampling
    from turbosample.samplers.registry import SAMPLERS
    from turbosample.samplers.run import sample
    from turbosample.samplers.schedulers import compute_sigmas

    model = apply_ras(DiffusionModel(small_dit(), FlowSampling()), sample_ratio=0.5, warmup_steps=2, dense_every=3)
    state: dict = {}
    seen: dict[int, set] = {}

    def callback(_info):
        for st in state.values():
            if isinstance(st, BranchState):
                for j, cache in enumerate(st.caches):
                    seen.setdefault(j, set()).add(cache.store[0][0].data_ptr())

    pos, neg = conds()
    sample(model, pos, neg, torch.zeros(1, 3, 32, 32), SAMPLERS["euler"],
           compute_sigmas(model.model_sampling, "simple", 10), 0, 3.0, callback=callback, run_state=state)
    assert len(seen) == 3 and all(len(ptrs) == 1 for ptrs in seen.values())  # dense steps 0, 1, 5, 8: same buffers


class FakeGraph(SparseGraph):
    """The graph path without CUDA: 'capture' keeps the function, 'replay' reruns it on the static buffers."""

    @staticmethod
    def _usable(leaves):
        return True

    def _capture(self, sparse, leaves, spec, signature):
        from torch.utils import _pytree as pytree

        static = [t.clone() if torch.is_tensor(t) else t for t in leaves]
        args = pytree.tree_unflatten(static, spec)
        out = sparse(*args)
        self.signature, self.graph, self.static, self.spec = signature, (sparse, args), static, spec
        self.output = torch.empty_like(out)
        return out

    def _replay(self):
        sparse, args = self.graph
        self.output.copy_(sparse(*args))


def test_graph_replays_see_each_calls_new_inputs_and_shape_changes_fall_back():
    calls = []

    def sparse(tokens, scale):
        calls.append(float(tokens.sum()))
        return tokens * scale

    graph = FakeGraph()
    first = graph.run(sparse, torch.ones(2, 3), torch.tensor(2.0))
    second = graph.run(sparse, torch.full((2, 3), 3.0), torch.tensor(0.5))
    assert torch.equal(first, torch.full((2, 3), 2.0)) and torch.equal(second, torch.full((2, 3), 1.5))
    assert graph.replays == 1 and calls == [6.0, 18.0]
    third = graph.run(sparse, torch.ones(4, 3), torch.tensor(1.0))  # another shape: eager from now on
    assert torch.equal(third, torch.ones(4, 3)) and graph.error and graph.graph is None


def test_graph_path_is_eager_and_exact_off_cuda():
    from test_ras import run, small_dit

    from turbosample.samplers.denoiser import DiffusionModel
    from turbosample.samplers.model_sampling import FlowSampling

    base = DiffusionModel(small_dit(), FlowSampling())
    torch.testing.assert_close(run(apply_ras(base, sample_ratio=0.5, cuda_graph=True)),
                               run(apply_ras(base, sample_ratio=0.5)), rtol=0, atol=0)


def test_unknown_cache_mode_is_refused():
    with pytest.raises(ValueError, match="kv_cache must be 'full' or 'int8'"):
        RASConfig(kv_cache="fp4")
    with pytest.raises(ValueError, match="unknown K/V cache mode"):
        KVCache(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), "fp4")


def test_dense_forward_returns_caches_of_the_model_dtype():
    from test_ras import small_dit

    parts = ras_parts(small_dit().to(torch.bfloat16))
    x = torch.zeros(1, 3, 16, 16, dtype=torch.bfloat16)
    _, caches = dense_forward(parts, x, torch.zeros(1), torch.zeros(1, 1, 384, dtype=torch.bfloat16))
    assert {c[0].dtype for c in caches} == {torch.bfloat16}
