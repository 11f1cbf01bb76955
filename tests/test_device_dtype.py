"""Device and dtype hygiene: half-precision models get their own dtype at every call, nothing made on the CPU meets
a tensor on the model's device.

Oracles: the same model in float32 (a bf16 run must land within bf16 rounding of it), and the ``meta`` device (any
tensor created on the CPU inside a forward raises "is not on the expected device"), which stands in for CUDA here.
"""

import pytest
import torch

from turbosample.models.dit import TinyDiT
from turbosample.samplers.denoiser import DiffusionModel, network_placement
from turbosample.samplers.model_sampling import FlowSampling
from turbosample.samplers.registry import SAMPLERS
from turbosample.samplers.run import sample
from turbosample.samplers.schedulers import compute_sigmas


def small_dit(dtype=torch.float32) -> TinyDiT:
    torch.manual_seed(0)
    model = TinyDiT(width=32, depth=2, heads=2).eval().requires_grad_(False)
    for p in model.parameters():  # adaLN-Zero starts at zero: randomise so every block matters
        p.data.normal_(0, 0.1)
    return model.to(dtype)


def conds():
    g = torch.Generator().manual_seed(1)
    return [[torch.randn(1, 1, 384, generator=g), {}]], [[torch.zeros(1, 1, 384), {}]]


def dtype_spy(seen: list):
    """A DiffusionModel wrapper recording what the network call receives."""

    def wrapper(forward, x, timestep, context, options):
        seen.append((x.dtype, timestep.dtype, context.dtype if torch.is_tensor(context) else
                     {k: v.dtype for k, v in context.items()}))
        return forward(x, timestep, context, options)

    return wrapper


def test_builtin_dit_runs_on_a_non_cpu_device():
    """Regression: sin-cos tables were built on the CPU (CUDA: 'Expected all tensors to be on the same device')."""
    model = small_dit().to("meta")
    out = model(torch.zeros(2, 3, 32, 32, device="meta"), torch.full((2,), 500.0, device="meta"),
                torch.zeros(2, 1, 384, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 3, 32, 32)


def test_network_placement_is_the_majority_dtype():
    model = small_dit(torch.bfloat16)
    model.final.linear.float()  # a module kept in float32 inside a bf16 model
    assert network_placement(model) == (torch.device("cpu"), torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_model_gets_its_dtype_and_returns_float32(dtype):
    seen = []
    model = DiffusionModel(small_dit(dtype), FlowSampling()).with_wrapper("spy", dtype_spy(seen))
    pos, neg = conds()
    sigmas = compute_sigmas(model.model_sampling, "simple", 4)
    out = sample(model, pos, neg, torch.zeros(1, 3, 16, 16), SAMPLERS["euler"], sigmas, 0, 3.0)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert seen and all(s == (dtype, torch.float32, dtype) for s in seen)
    assert all(p.dtype == dtype for p in model.diffusion_model.parameters())  # never upcast in place


# --- every sampler and accelerator on a bf16 model ------------------------------------------------------------

def bf16_pair():
    """The same small DiT in float32 and bf16 (the bf16 copy is what a user loads in half precision)."""
    ref = small_dit()
    half = small_dit().to(torch.bfloat16)
    return DiffusionModel(ref, FlowSampling()), DiffusionModel(half, FlowSampling())


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# bf16 rounds at 2^-9; a few steps of a randomised 2-block DiT under CFG 3 land within a few percent of float32
# (measured up to ~6 %); a wrong cast (float32 x into bf16 weights) raises, a wrong device raises, a wrong formula
# or a silently dropped branch moves the result by tens of percent.
BF16_TOL = 0.15


@pytest.fixture(scope="module")
def pair():
    return bf16_pair()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs_a_bf16_model_close_to_float32(pair, name):
    ref_model, half_model = pair
    seen = []
    spied = half_model.with_wrapper("spy", dtype_spy(seen))
    pos, neg = conds()
    sigmas = compute_sigmas(ref_model.model_sampling, "simple", 4)
    latent = torch.zeros(1, 3, 16, 16)
    ref = sample(ref_model, pos, neg, latent, SAMPLERS[name], sigmas, 0, 3.0)
    out = sample(spied, pos, neg, latent, SAMPLERS[name], sigmas, 0, 3.0)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert seen and all(x == torch.bfloat16 and c == torch.bfloat16 for x, _t, c in seen)
    assert rel_err(out, ref) < BF16_TOL


def accelerated(model, kind: str, steps: int):
    from turbosample.accel.magcache import MagCacheSettings, magcache_model
    from turbosample.accel.ras import apply_ras

    curve = (1.0,) * steps
    mag = lambda m: magcache_model(m, MagCacheSettings({0: curve, 1: curve}, 0.1, 2, 0.25))  # noqa: E731
    ras = lambda m, **kw: apply_ras(m, sample_ratio=0.5, warmup_steps=2, dense_every=0, **kw)  # noqa: E731
    return {"magcache": mag, "ras": ras, "ras_int8": lambda m: ras(m, kv_cache="int8"),
            "ras_cuda_graph": lambda m: ras(m, cuda_graph=True), "magcache+ras": lambda m: ras(mag(m))}[kind](model)


@pytest.mark.parametrize("kind", ["magcache", "ras", "ras_int8", "ras_cuda_graph", "magcache+ras"])
def test_block_stack_accelerators_run_a_bf16_model_close_to_float32(pair, kind):
    ref_model, half_model = pair
    pos, neg = conds()
    steps = 6
    sigmas = compute_sigmas(ref_model.model_sampling, "simple", steps)
    latent = torch.zeros(1, 3, 16, 16)
    state: dict = {}
    ref = sample(accelerated(ref_model, kind, steps), pos, neg, latent, SAMPLERS["euler"], sigmas, 0, 3.0)
    out = sample(accelerated(half_model, kind, steps), pos, neg, latent, SAMPLERS["euler"], sigmas, 0, 3.0,
                 run_state=state)
    assert torch.isfinite(out).all() and rel_err(out, ref) < BF16_TOL
    caches = [c for st in state.values() if hasattr(st, "caches") for c in st.caches]
    if "ras" in kind:  # the caches hold the model's dtype (int8 values and bf16 scales in the low-memory mode)
        want = {torch.int8, torch.bfloat16} if kind == "ras_int8" else {torch.bfloat16}
        assert caches and {t.dtype for c in caches for s in c.store for t in s} == want


def test_loop_accelerators_run_a_bf16_model(pair):
    from turbosample.nodes.flowturbo_nodes import flowturbo_info
    from turbosample.nodes.loop_accel_nodes import bottleneck_info, dualfast_info

    ref_model, half_model = pair
    pos, neg = conds()
    sigmas = compute_sigmas(ref_model.model_sampling, "simple", 8)
    latent = torch.zeros(1, 3, 32, 32)
    for info in (bottleneck_info("euler", "1, 0.5, 1", "1, 0.6, 0.4", "1, 2, 2", "", "bilinear"),
                 dualfast_info("dpmpp_2m", 0.2, "decay"), flowturbo_info(half_model, "", "H1P*", "off")):
        ref = sample(ref_model, pos, neg, latent, info, sigmas, 0, 3.0)
        out = sample(half_model, pos, neg, latent, info, sigmas, 0, 3.0)
        assert torch.isfinite(out).all() and rel_err(out, ref) < BF16_TOL, info.name


# --- diffusers transformers in bf16 -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def diffusers_models():
    pytest.importorskip("diffusers")
    from test_diffusers_adapters import tiny_flux, tiny_sd3, tiny_wan

    return {"sd3": tiny_sd3, "flux": lambda: tiny_flux(True), "wan": tiny_wan}


def diffusers_case(make, name: str):
    from turbosample.accel.diffusers_adapters import DiffusersDiT

    ref = DiffusionModel(DiffusersDiT(make()), FlowSampling(shift=3.0))
    half = DiffusionModel(DiffusersDiT(make().to(torch.bfloat16)), FlowSampling(shift=3.0))
    g = torch.Generator().manual_seed(1)
    ctx = {"encoder_hidden_states": torch.randn(1, 5, 16, generator=g),
           "pooled_projections": torch.randn(1, 16, generator=g)}
    if name == "flux":
        ctx["guidance"] = torch.tensor([3.5])
    latent = torch.zeros(1, 4, 3, 8, 8) if name == "wan" else torch.zeros(1, 4, 8, 8)  # Flux: 16 packed = 4 x 2x2
    neg = {k: v * 0 if k != "guidance" else v for k, v in ctx.items()}
    return ref, half, [[ctx, {}]], [[neg, {}]], latent


@pytest.mark.parametrize("name", ["sd3", "flux", "wan"])
@pytest.mark.parametrize("kind", ["plain", "magcache", "ras", "magcache+ras"])
@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m_sde"])
def test_diffusers_bf16_transformers_sample_close_to_float32(diffusers_models, name, kind, sampler):
    """Regression: float32 latents and contexts reached a bf16 diffusers transformer ('mat1 and mat2 must have
    the same dtype' on Flux, 'Input type (float) and bias type (c10::BFloat16)' on SD3 and Wan)."""
    ref, half, pos, neg, latent = diffusers_case(diffusers_models[name], name)
    steps = 6
    sigmas = compute_sigmas(ref.model_sampling, "simple", steps)
    patch = (lambda m: m) if kind == "plain" else (lambda m: accelerated(m, kind, steps))
    want = sample(patch(ref), pos, neg, latent, SAMPLERS[sampler], sigmas, 0, 3.0)
    out = sample(patch(half), pos, neg, latent, SAMPLERS[sampler], sigmas, 0, 3.0)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert rel_err(out, want) < BF16_TOL
    assert {p.dtype for p in half.diffusion_model.parameters()} == {torch.bfloat16}


# --- forwards on a non-CPU device: meta catches tensors created on the CPU ------------------------------------

@pytest.mark.parametrize("name", ["sd3", "flux", "wan"])
def test_rebuilt_forwards_and_ras_passes_run_on_the_meta_device(diffusers_models, name):
    from turbosample.accel.adapter import transformer_parts
    from turbosample.accel.ras import dense_forward, ras_parts, sparse_forward

    model = diffusers_models[name]().to("meta")
    parts = transformer_parts(model)
    video = name == "wan"
    x = torch.zeros((2, 4, 3, 8, 8) if video else (2, 4, 8, 8), device="meta")
    ctx = {"encoder_hidden_states": torch.zeros(2, 5, 16, device="meta"),
           "pooled_projections": torch.zeros(2, 16, device="meta")}
    if name == "flux":
        ctx["guidance"] = torch.zeros(2, device="meta")
    t = torch.zeros(2, device="meta")
    assert parts.forward(x, t, ctx).device.type == "meta"
    rparts = ras_parts(model)
    out, caches = dense_forward(rparts, x, t, ctx)
    n_img = (3 * 4 * 4) if video else 16
    active = torch.zeros(2, n_img // 2, dtype=torch.long, device="meta")
    assert sparse_forward(rparts, x, t, ctx, caches, active, out).device.type == "meta"


def test_builtin_ras_passes_run_on_the_meta_device():
    from turbosample.accel.ras import dense_forward, ras_parts, sparse_forward

    parts = ras_parts(small_dit().to("meta"))
    x, t, c = (torch.zeros(2, 3, 16, 16, device="meta"), torch.zeros(2, device="meta"),
               torch.zeros(2, 1, 384, device="meta"))
    out, caches = dense_forward(parts, x, t, c)
    active = torch.zeros(2, 8, dtype=torch.long, device="meta")
    assert sparse_forward(parts, x, t, c, caches, active, out).device.type == "meta"


# --- bad input: fp16 overflow and out of memory --------------------------------------------------------------

def test_fp16_overflow_is_named_and_nothing_is_returned():
    model = small_dit(torch.float16)
    with torch.no_grad():
        model.final.linear.weight.fill_(60000.0)  # every output overflows float16
        model.final.ada.bias.fill_(1.0)
    pos, neg = conds()
    sigmas = compute_sigmas(FlowSampling(), "simple", 3)
    with pytest.raises(FloatingPointError, match="fp16 overflow.*bf16 or fp32"):
        sample(DiffusionModel(model, FlowSampling()), pos, neg, torch.zeros(1, 3, 16, 16), SAMPLERS["euler"],
               sigmas, 0, 3.0)


def test_out_of_memory_names_the_sizes_and_what_to_lower():
    from turbosample.samplers.run import OutOfMemory

    def oom(forward, x, timestep, context, options):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    model = DiffusionModel(small_dit(), FlowSampling()).with_wrapper("oom", oom)
    pos, neg = conds()
    with pytest.raises(OutOfMemory, match=r"out of memory on cpu sampling a \(1, 3, 16, 16\) latent.*resolution.*"
                                          r"kv_cache int8.*--offload"):
        sample(model, pos, neg, torch.zeros(1, 3, 16, 16), SAMPLERS["euler"],
               compute_sigmas(FlowSampling(), "simple", 3), 0, 3.0)
