"""FlowTurbo: schedule parsing, H = Heun, model-call counts of P and R blocks, refiner files and the node.

Oracles here: sample_heun (H blocks), hand-written Heun + reused velocity (P), straight lines for a zero refiner
(R). The R block with a non-zero refiner (a fixed linear map) is checked step by step in
tests/test_step_formulas.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from turbosample.models.dit import DiTConfig, TinyDiT
from turbosample.models.refiner import BUILTIN_REFINER, RefinerConfig, VelocityRefiner, load_refiner, save_refiner
from turbosample.nodes.flowturbo_nodes import NODES
from turbosample.nodes.spec import NodeInputError
from turbosample.samplers.denoiser import DiffusionModel
from turbosample.samplers.flowturbo import expand_schedule, model_calls, parse_schedule, sample_flowturbo
from turbosample.samplers.model_sampling import FlowSampling
from turbosample.samplers.registry import SAMPLERS
from turbosample.samplers.solvers import sample_heun

ROOT = Path(__file__).resolve().parents[1]
SIGMAS = torch.linspace(1, 0, 7)  # ends on 0, as every ComfyUI schedule
OPEN = torch.linspace(1, 0.1, 7)  # does not end on 0: every step is a full Heun-type step


class Counting:
    """A nonlinear toy denoiser recording every (sigma) it is called at."""

    def __init__(self):
        self.sigmas: list[float] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        self.sigmas.append(float(sigma[0]))
        return torch.tanh(x) * (1 - sigma[:, None, None, None]) + 0.1 * x.roll(1, dims=-1)


class FakeRefiner:
    def __init__(self, value: float = 0.0):
        self.value, self.calls = value, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.full_like(x, self.value)


def start() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("schedule", "expected"), [
    ("H2P4R3", [("H", 2), ("P", 4), ("R", 3)]),
    ("h1 p5 r3", [("H", 1), ("P", 5), ("R", 3)]),
    ((8, 9, 5), [("H", 8), ("P", 9), ("R", 5)]),
    ((2, 0, 3), [("H", 2), ("R", 3)]),
    ("H1P*", [("H", 1), ("P", None)]),
])
def test_parse_schedule(schedule, expected):
    assert parse_schedule(schedule) == expected


@pytest.mark.parametrize(("schedule", "message"), [
    ("", "must look like"), ("H2X3", "must look like"), ("H2P", "must look like"), ("P2H1", "must start with an H"),
    ("R3", "must start with an H"), ("H2P0", "0 steps"), ("H*P*", "only once"), ((1, 2), "three integers"),
    ((1, -1, 2), ">= 0"), ((0, 0, 0), "no steps"), (5, "string like"),
])
def test_parse_schedule_errors(schedule, message):
    with pytest.raises(ValueError, match=message):
        parse_schedule(schedule)


def test_expand_schedule_checks_step_count():
    assert expand_schedule("H1P2R1") == ["H", "P", "P", "R"]
    assert expand_schedule("H1P*R1", 5) == ["H", "P", "P", "P", "R"]
    assert model_calls("H2P4R3") == 2 * 2 + 4
    with pytest.raises(ValueError, match="has 9 steps but the sigmas have 6"):
        sample_flowturbo(Counting(), start(), SIGMAS, schedule="H2P4R3", refiner=FakeRefiner())
    with pytest.raises(ValueError, match="no refiner"):
        sample_flowturbo(Counting(), start(), SIGMAS, schedule="H3R3")


@pytest.mark.parametrize("sigmas", [SIGMAS, OPEN])
def test_only_heun_blocks_equal_heun(sigmas):
    expected = sample_heun(Counting(), start(), sigmas)
    assert torch.equal(sample_flowturbo(Counting(), start(), sigmas, schedule="H6"), expected)
    assert torch.equal(sample_flowturbo(Counting(), start(), sigmas, schedule=(6, 0, 0)), expected)


def test_pseudo_corrector_block_calls_the_model_once_per_step():
    model = Counting()
    sample_flowturbo(model, start(), OPEN, schedule="H1P5")
    # H: s0 and s1; each P step only at its end point
    assert model.sigmas == pytest.approx([float(s) for s in OPEN[:2]] + [float(s) for s in OPEN[2:]])
    model = Counting()
    sample_flowturbo(model, start(), SIGMAS, schedule="H1P5")
    assert len(model.sigmas) == 2 + 4 and min(model.sigmas) > 0  # last P step is an Euler step onto sigma = 0


def test_pseudo_corrector_reuses_the_passed_velocity():
    """P's first velocity is H's second one: with 2 steps, H1P1 equals a hand-written Heun + reused velocity."""
    model, x, s = Counting(), start(), OPEN[:3]
    d0 = (x - model(x, s[0:1].expand(2))) / s[0]
    xe = x + d0 * (s[1] - s[0])
    d1 = (xe - model(xe, s[1:2].expand(2))) / s[1]
    x1 = x + (d0 + d1) / 2 * (s[1] - s[0])
    xe2 = x1 + d1 * (s[2] - s[1])
    d2 = (xe2 - model(xe2, s[2:3].expand(2))) / s[2]
    expected = x1 + (d1 + d2) / 2 * (s[2] - s[1])
    torch.testing.assert_close(sample_flowturbo(Counting(), start(), s, schedule="H1P1"), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sigmas", [SIGMAS, OPEN])
def test_refiner_block_makes_no_model_calls(sigmas):
    model, refiner = Counting(), FakeRefiner()
    out = sample_flowturbo(model, start(), sigmas, schedule="H2R4", refiner=refiner)
    assert len(model.sigmas) == 4 and min(model.sigmas) > 0  # the two H steps only
    assert refiner.calls == 8 - int(float(sigmas[-1]) == 0)
    # a zero refiner keeps the passed velocity: the R steps move along H's last velocity in straight lines
    x, d = start(), None
    for i in range(2):
        d0 = (x - Counting()(x, sigmas[i:i + 1].expand(2))) / sigmas[i]
        xe = x + d0 * (sigmas[i + 1] - sigmas[i])
        d = (xe - Counting()(xe, sigmas[i + 1:i + 2].expand(2))) / sigmas[i + 1]
        x = x + (d0 + d) / 2 * (sigmas[i + 1] - sigmas[i])
    torch.testing.assert_close(out, x + d * (sigmas[-1] - sigmas[2]), rtol=0, atol=1e-5)


def tiny_base(seed: int) -> DiffusionModel:
    torch.manual_seed(seed)
    net = TinyDiT(DiTConfig(width=16, depth=1, heads=2, text_dim=8))
    torch.nn.init.normal_(net.final.linear.weight)
    return DiffusionModel(net, FlowSampling(), name=f"tiny-{seed}")


def tiny_refiner() -> VelocityRefiner:
    return VelocityRefiner(RefinerConfig(width=16, heads=2))


def test_refiner_round_trip_and_zero_init(tmp_path):
    base, refiner = tiny_base(0), tiny_refiner()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(refiner(x, torch.rand(2), torch.randn_like(x)), torch.zeros_like(x))  # adaLN-Zero
    torch.nn.init.normal_(refiner.final.linear.weight)
    save_refiner(refiner, tmp_path / "r.safetensors", base, {})
    loaded = load_refiner(tmp_path / "r.safetensors", tiny_base(0))
    v, s = torch.randn_like(x), torch.tensor([0.3, 0.7])
    torch.testing.assert_close(loaded(x, s, v), refiner(x, s, v))


def test_refiner_for_another_model_is_refused(tmp_path):
    save_refiner(tiny_refiner(), tmp_path / "r.safetensors", tiny_base(0), {})
    with pytest.raises(ValueError, match="was trained for base model 'tiny-0'"):
        load_refiner(tmp_path / "r.safetensors", tiny_base(1))


def test_corrupt_or_foreign_refiner_file_is_refused(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_refiner(tmp_path / "bad.safetensors", tiny_base(0))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a FlowTurbo refiner"):
        load_refiner(tmp_path / "other.safetensors", tiny_base(0))
    with pytest.raises(FileNotFoundError):
        load_refiner(tmp_path / "missing.safetensors", tiny_base(0))


def test_node_builds_a_checked_sampler(tmp_path):
    (node,) = NODES
    base = tiny_base(0)
    save_refiner(tiny_refiner(), tmp_path / "r.safetensors", base, {})
    (info,) = node.run(model=base, refiner=str(tmp_path / "r.safetensors"), schedule="H1P2R1", compile="off")
    assert info.fn is sample_flowturbo and info.options["schedule"] == "H1P2R1"
    assert isinstance(info.options["refiner"], VelocityRefiner)
    assert info.calls_per_step == pytest.approx((2 + 2) / 4)
    with pytest.raises(NodeInputError, match="refiner: .*trained for"):
        node.run(model=tiny_base(1), refiner=str(tmp_path / "r.safetensors"), schedule="H1R1", compile="auto")
    with pytest.raises(NodeInputError, match="must start with an H"):
        node.run(model=base, refiner="builtin", schedule="P3", compile="auto")
    # no R block: the refiner is not needed
    (info,) = node.run(model=tiny_base(1), refiner="no such file", schedule="H1P3", compile="off")
    assert info.options["refiner"] is None


@pytest.mark.skipif(not BUILTIN_REFINER.exists(), reason="shipped refiner not trained yet")
def test_shipped_refiner_fits_the_builtin_model_only():
    from turbosample.nodes.builtin_nodes import load_builtin_model

    (builtin,) = load_builtin_model(1.0)
    refiner = load_refiner("builtin", builtin)
    assert sum(p.numel() for p in refiner.parameters()) < 0.25 * sum(
        p.numel() for p in builtin.diffusion_model.parameters())
    with pytest.raises(ValueError, match="trained for base model 'turbosample-builtin-emoji-v1'"):
        load_refiner("builtin", tiny_base(0))


def test_registered_hp_sampler_runs_any_step_count():
    info = SAMPLERS["flowturbo_hp"]
    model = Counting()
    info.fn(model, start(), SIGMAS, **info.options)
    assert len(model.sigmas) == 2 + 4


COMFY_SCRIPT = r"""
import importlib.util, json, os, sys
from pathlib import Path
root, refiner_path = Path(sys.argv[1]), sys.argv[2]
sys.path.insert(0, str(root / "tests")); from comfy_pack import load_pack; load_pack(root)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import torch, comfy.sample
from turbosample.models.dit import TinyDiT
from turbosample.models.refiner import BUILTIN_REFINER, RefinerConfig, VelocityRefiner, save_refiner
from turbosample.nodes.comfy_model import builtin_model_patcher
from turbosample.nodes.flowturbo_nodes import comfy_flowturbo_sampler, flowturbo_info
from turbosample.samplers.denoiser import DiffusionModel
from turbosample.samplers.model_sampling import FlowSampling
from turbosample.samplers.run import sample
from turbosample.samplers.schedulers import compute_sigmas
torch.manual_seed(0)
dit = TinyDiT(width=32, depth=2, heads=2).eval()
refiner = VelocityRefiner(RefinerConfig(width=32, heads=2))
torch.nn.init.normal_(refiner.final.linear.weight, std=0.01)
ours = DiffusionModel(dit, FlowSampling())
save_refiner(refiner, Path(refiner_path), ours, {})
cond, uncond = torch.randn(1, 1, 384), torch.zeros(1, 1, 384)
latent = torch.zeros(1, 3, 32, 32)
sigmas = compute_sigmas(FlowSampling(), "simple", 6)
values = {"refiner": refiner_path, "schedule": "H2P2R2"}
mine = sample(ours, [[cond, {}]], [[uncond, {}]], latent, flowturbo_info(model=ours, **values), sigmas, seed=5, cfg=3.0)
patcher = builtin_model_patcher(dit, 1.0)
(ksampler,) = comfy_flowturbo_sampler(model=patcher, **values)
theirs = comfy.sample.sample_custom(patcher, comfy.sample.prepare_noise(latent, 5), 3.0, ksampler, sigmas,
                                    [[cond, {}]], [[uncond, {}]], latent, disable_pbar=True, seed=5)
other = builtin_model_patcher(TinyDiT(width=32, depth=2, heads=2).eval(), 1.0)
try:
    comfy_flowturbo_sampler(model=other, **values)
    bad = None
except ValueError as exc:
    bad = str(exc)
print(json.dumps({"diff": float((theirs.cpu() - mine).abs().max()), "error": bad}))
"""


@pytest.mark.skipif(not os.environ.get("COMFYUI_DIR"), reason="COMFYUI_DIR is not set to a ComfyUI checkout")
def test_comfyui_ksampler_runs_flowturbo_like_the_standalone_loop(tmp_path):
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    out = subprocess.run([python, "-c", COMFY_SCRIPT, str(ROOT), str(tmp_path / "r.safetensors")],
                         cwd=os.environ["COMFYUI_DIR"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["diff"] < 1e-4
    assert "trained for" in (result["error"] or "")


def test_compiled_refiner_block_gives_the_same_samples_and_is_cached():
    from turbosample.samplers.flowturbo import _COMPILED, compiled_block, sample_flowturbo

    torch.manual_seed(0)
    calls = []

    class Refiner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(0.1))

        def forward(self, x, sigma, v):
            calls.append(1)
            return self.scale * (v - x)

    refiner = Refiner()

    def model(x, sigma, **_):
        return 0.7 * x

    x, sigmas = torch.randn(1, 3, 8, 8), torch.linspace(1, 0, 7)
    plain = sample_flowturbo(model, x.clone(), sigmas, schedule="H2P1R3", refiner=refiner, compile_blocks=False)
    compiled = sample_flowturbo(model, x.clone(), sigmas, schedule="H2P1R3", refiner=refiner, compile_blocks=True,
                                compile_backend="eager")
    assert torch.allclose(plain, compiled, atol=1e-6)
    assert compiled_block(refiner, "eager") is compiled_block(refiner, "eager")
    assert any(key[1] == "eager" for key in _COMPILED)
