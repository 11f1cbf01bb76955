"""Attention backend setting: resolution (auto / sdpa / xformers), fallbacks, and patched copies of models."""

import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from turbosample.accel import attention
from turbosample.accel.attention import AttentionBackendError, apply_attention_backend, resolve_backend
from turbosample.accel.magcache import MagCacheSettings, magcache_model
from turbosample.models.dit import TinyDiT, sdpa_attention
from turbosample.nodes.registry import NODE_BY_ID
from turbosample.nodes.spec import NodeInputError
from turbosample.samplers.denoiser import DiffusionModel
from turbosample.samplers.model_sampling import FlowSampling


@pytest.fixture(autouse=True)
def fresh_cache():
    attention.clear_cache()
    yield
    attention.clear_cache()


def fake_xformers(monkeypatch, memory_efficient_attention, calls=None):
    """Install a fake ``xformers`` package whose ``ops.memory_efficient_attention`` is the given function."""
    pkg, ops = types.ModuleType("xformers"), types.ModuleType("xformers.ops")

    def mea(q, k, v):
        if calls is not None:
            calls.append(q.shape)
        return memory_efficient_attention(q, k, v)

    ops.memory_efficient_attention = mea
    pkg.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", pkg)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)


def exact_bmhk(q, k, v):  # xformers' layout is (B, N, heads, head_dim)
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def broken(q, k, v):
    raise NotImplementedError("No operator found for `memory_efficient_attention_forward`")


def pretend_cuda(monkeypatch):
    """Let the CPU stand in for a CUDA device so the probe and timing paths run here."""
    monkeypatch.setattr(attention, "device_problem", lambda device: None)


def records(caplog):
    return [r for r in caplog.records if r.name == "turbosample.attention"]


def small_dit():
    torch.manual_seed(0)
    model = TinyDiT(width=32, depth=2, heads=2).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    return model


def test_auto_without_xformers_uses_sdpa_and_says_why_once(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="turbosample.attention")
    monkeypatch.setitem(sys.modules, "xformers", None)  # import fails
    name, fn, reason = resolve_backend("auto", "cpu")
    assert name == "sdpa" and fn is attention.sdpa and "not importable" in reason
    resolve_backend("auto", "cpu")  # cached: no second probe, no second line
    assert [r.getMessage() for r in records(caplog)] == [f"attention backend: {reason}"]


def test_auto_on_cpu_with_working_xformers_still_uses_sdpa(monkeypatch):
    fake_xformers(monkeypatch, exact_bmhk)
    name, _fn, reason = resolve_backend("auto", "cpu")
    assert name == "sdpa" and "needs a CUDA device" in reason


@pytest.mark.parametrize("kernel, message", [(broken, "failed its probe call on cpu: NotImplementedError: No operator"),
                                             (lambda q, k, v: torch.zeros_like(q), "differs from SDPA")])
def test_broken_xformers_falls_back_in_auto_and_errors_when_requested(monkeypatch, caplog, kernel, message):
    caplog.set_level(logging.INFO, logger="turbosample.attention")
    fake_xformers(monkeypatch, kernel)
    pretend_cuda(monkeypatch)
    name, fn, reason = resolve_backend("auto", "cpu")
    assert name == "sdpa" and fn is attention.sdpa and message in reason
    assert len(records(caplog)) == 1 and message in records(caplog)[0].getMessage()
    with pytest.raises(AttentionBackendError, match=f"'xformers' was requested but cannot be used: .*{message}"):
        resolve_backend("xformers", "cpu")


def test_working_xformers_is_used_when_requested_and_timed_in_auto(monkeypatch):
    calls = []
    fake_xformers(monkeypatch, exact_bmhk, calls)
    pretend_cuda(monkeypatch)
    name, fn, _reason = resolve_backend("xformers", "cpu")
    q, k, v = torch.randn(3, 2, 2, 5, 8).unbind(0)
    assert name == "xformers" and torch.allclose(fn(q, k, v), F.scaled_dot_product_attention(q, k, v), atol=1e-6)
    name, _fn, reason = resolve_backend("auto", "cpu")
    assert name in ("sdpa", "xformers") and "ms per call" in reason and calls


def test_unknown_setting_is_named():
    with pytest.raises(AttentionBackendError, match="unknown attention backend 'flash'.*auto, sdpa, xformers"):
        resolve_backend("flash")


@torch.no_grad()
def test_patched_copy_matches_and_leaves_the_original_untouched(monkeypatch):
    dit = small_dit()
    base = DiffusionModel(dit, FlowSampling())
    blocks_before = list(dit.blocks)
    x, t, ctx = torch.randn(2, 3, 32, 32), torch.tensor([600.0, 200.0]), torch.randn(2, 1, 384)
    plain = base.forward(x, t, ctx)
    patched, (name, _fn, _reason) = apply_attention_backend(base, "sdpa")
    assert name == "sdpa" and torch.allclose(patched.forward(x, t, ctx), plain, atol=1e-6)

    calls = []
    fake_xformers(monkeypatch, exact_bmhk, calls)
    pretend_cuda(monkeypatch)
    fast, (name, _fn, _reason) = apply_attention_backend(base, "xformers")
    assert name == "xformers" and torch.allclose(fast.forward(x, t, ctx), plain, atol=1e-5)
    calls.clear()
    fast.forward(x, t, ctx)
    assert len(calls) == 2  # one per block
    calls.clear()
    assert torch.equal(base.forward(x, t, ctx), plain) and not calls  # the original still runs its own SDPA
    assert list(dit.blocks) == blocks_before and all(b.attention is sdpa_attention for b in dit.blocks)
    assert fast.diffusion_model.blocks[0].qkv.weight is dit.blocks[0].qkv.weight  # weights are shared


def test_applying_after_a_block_stack_accelerator_is_refused():
    base = DiffusionModel(small_dit(), FlowSampling())
    cached = magcache_model(base, MagCacheSettings({0: (1.0,) * 4}))
    with pytest.raises(AttentionBackendError, match="before MagCache"):
        apply_attention_backend(cached, "sdpa")
    assert all(b.attention is sdpa_attention for b in cached.diffusion_model.blocks)


@torch.no_grad()
def test_diffusers_models_run_inside_the_dispatcher_context(monkeypatch):
    pytest.importorskip("diffusers")
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    from turbosample.accel.diffusers_adapters import DiffusersDiT

    torch.manual_seed(0)
    flux = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                  attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                  pooled_projection_dim=16, axes_dims_rope=(2, 2, 4)).eval()
    base = DiffusionModel(DiffusersDiT(flux), FlowSampling())
    seen = []

    def spy(forward, x, t, ctx, options):
        seen.append(_AttentionBackendRegistry.get_active_backend()[0])
        return forward(x, t, ctx, options)

    x, t = torch.randn(1, 4, 4, 4), torch.tensor([500.0])
    ctx = {"encoder_hidden_states": torch.randn(1, 3, 16), "pooled_projections": torch.randn(1, 16)}
    before = _AttentionBackendRegistry.get_active_backend()[0]
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", "_native_math")
    plain = base.forward(x, t, ctx)
    patched, _ = apply_attention_backend(base.with_wrapper("spy", spy), "sdpa")  # applied last, runs outermost
    assert torch.allclose(patched.forward(x, t, ctx), plain, atol=1e-5)
    assert seen == ["native"] and _AttentionBackendRegistry.get_active_backend()[0] == "_native_math"
    assert [k for k, _ in patched.wrappers] == ["turbosample.attention", "spy"] and base.wrappers == ()
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", before)

    sd3 = SD3Transformer2DModel(sample_size=4, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                pooled_projection_dim=16, out_channels=4, pos_embed_max_size=8)
    fake_xformers(monkeypatch, exact_bmhk)
    pretend_cuda(monkeypatch)
    with pytest.raises(AttentionBackendError, match="SD3Transformer2DModel's attention processors call SDPA"):
        apply_attention_backend(DiffusionModel(DiffusersDiT(sd3), FlowSampling()), "xformers")


def test_node_returns_a_patched_copy_and_names_bad_input(monkeypatch):
    node = NODE_BY_ID["TurboSampleAttentionBackend"]
    base = DiffusionModel(small_dit(), FlowSampling())
    (patched,) = node.run(model=base, backend="sdpa")
    assert patched.diffusion_model is not base.diffusion_model
    with pytest.raises(NodeInputError, match="unknown value 'flash'"):
        node.run(model=base, backend="flash")
    monkeypatch.setitem(sys.modules, "xformers", None)
    with pytest.raises(NodeInputError, match="'xformers' was requested but cannot be used"):
        node.run(model=base, backend="xformers")


COMFY_SCRIPT = r'''
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import comfy.cli_args
comfy.cli_args.args.cpu = True
import torch
import comfy.ldm.modules.attention as attention
from turbosample.nodes import comfy_impl
from turbosample.nodes.attention_nodes import comfy_patch_attention
from turbosample.models.dit import sdpa_attention

(model,) = comfy_impl.load_builtin_model(1.0)
seen = []
def previous(func, *args, **kwargs):  # another pack's override: records the kernel it is handed, then runs it
    seen.append(func)
    return func(*args, **kwargs)
model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = previous
(patched,) = comfy_patch_attention(model, "sdpa")
(again,) = comfy_patch_attention(patched, "sdpa")  # re-applying replaces ours, keeps the other pack's
options = again.model_options["transformer_options"]
assert options["optimized_attention_override"].turbosample_previous is previous
q, k, v = torch.randn(3, 2, 5, 16).unbind(0)
out = attention.optimized_attention(q, k, v, 2, transformer_options=options)
assert seen == [attention.attention_pytorch.__wrapped__], seen
ref = attention.attention_pytorch(q, k, v, 2)
assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
special = lambda *a, **kw: "special"  # a non-dense kernel chosen elsewhere is passed through untouched
assert options["optimized_attention_override"](special, q, k, v, 2) == "special" and seen[-1] is special
assert model.model_options["transformer_options"]["optimized_attention_override"] is previous
keys = sorted(again.object_patches)
assert keys == [f"diffusion_model.blocks.{i}.attention" for i in range(len(keys))] and keys, keys
assert all(b.attention is sdpa_attention for b in model.model.diffusion_model.blocks)

import comfy.sample
from turbosample.accel.attention import sdpa
from turbosample.nodes.builtin_nodes import encode_text
pos, neg, latent = encode_text("cat face")[0], encode_text("")[0], torch.zeros(1, 8, 4, 4)
used = []
model.model.diffusion_model.blocks[0].register_forward_pre_hook(lambda m, a: used.append(m.attention))
def run(m):
    used.clear()
    noise = comfy.sample.prepare_noise(latent, 1)
    return comfy.sample.sample(m, noise, 2, 2.0, "euler", "simple", pos, neg, latent, disable_pbar=True, seed=1)
plain = run(model)
assert used and all(f is sdpa_attention for f in used)
fast = run(again)
assert used and all(f is sdpa for f in used), used  # the clone's object patch is live while it samples
assert torch.allclose(fast, plain, atol=1e-5)
run(model)
assert all(f is sdpa_attention for f in used)  # and undone afterwards
print("ATTENTION-COMFY-OK")
'''


@pytest.mark.skipif(not os.environ.get("COMFYUI_DIR"),
                    reason="COMFYUI_DIR is not set to a ComfyUI checkout (COMFYUI_PYTHON to its interpreter)")
def test_comfyui_node_chains_the_previous_override(tmp_path):
    root = Path(__file__).resolve().parent.parent
    (tmp_path / "turbosample").symlink_to(root, target_is_directory=True)
    script = tmp_path / "check.py"
    script.write_text(COMFY_SCRIPT)
    proc = subprocess.run([os.environ.get("COMFYUI_PYTHON", sys.executable), str(script), str(tmp_path),
                           os.environ["COMFYUI_DIR"]], cwd=os.environ["COMFYUI_DIR"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ATTENTION-COMFY-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
