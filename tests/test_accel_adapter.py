"""The adapter interface and the wrapper chain that accelerators build on."""

import pytest
import torch

from turbosample.accel.adapter import UnsupportedModel, transformer_parts
from turbosample.models.dit import TinyDiT
from turbosample.samplers.denoiser import DiffusionModel
from turbosample.samplers.model_sampling import FlowSampling


def small_dit() -> TinyDiT:
    torch.manual_seed(0)
    model = TinyDiT(width=32, depth=2, heads=2).eval()
    for p in model.parameters():  # adaLN-Zero starts at zero: randomise so every block matters
        p.data.normal_(0, 0.1)
    return model


def test_parts_rebuild_the_forward_exactly():
    model = small_dit()
    x, t, ctx = torch.randn(2, 3, 32, 48), torch.tensor([500.0, 250.0]), torch.randn(2, 1, 384)
    parts = transformer_parts(model)
    assert len(parts.blocks) == 2 and parts.patch_size == 4
    assert torch.equal(parts.forward(x, t, ctx), model(x, t, ctx))


def test_unsupported_model_is_named():
    with pytest.raises(UnsupportedModel, match="Linear is not supported.*TinyDiT"):
        transformer_parts(torch.nn.Linear(2, 2))


def test_with_wrapper_returns_a_patched_copy_and_keys_replace():
    base = DiffusionModel(small_dit(), FlowSampling())
    seen = []

    def wrapper(tag):
        def wrap(forward, x, t, ctx, options):
            seen.append((tag, sorted(options)))
            return forward(x, t, ctx, options) * 2

        return wrap

    patched = base.with_wrapper("double", wrapper("a")).with_wrapper("double", wrapper("b"))
    x, sigma, ctx = torch.randn(1, 3, 32, 32), torch.tensor([0.5]), torch.zeros(1, 1, 384)
    plain = base.forward(x, sigma * 1000, ctx)
    assert base.wrappers == () and len(patched.wrappers) == 1
    assert torch.allclose(patched.forward(x, sigma * 1000, ctx), 2 * plain)
    patched.denoise(x, sigma, ctx, {"cond_or_uncond": [0]})
    assert seen == [("b", []), ("b", ["cond_or_uncond", "sigmas"])]
