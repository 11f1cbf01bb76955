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
