"""MagCache on ComfyUI's own Flux, SD3 (MMDiT) and Wan through per-block ``patches_replace`` (accel/comfy_native.py).

The ComfyUI part runs tests/comfy_native_magcache.py under ComfyUI's Python (COMFYUI_DIR / COMFYUI_PYTHON; skipped
without them) on tiny random-weight models sampled by ComfyUI's CFGGuider + KSAMPLER. The rest checks the block
patches on a stand-in stack that consults ``patches_replace`` the way Flux's forward does, without ComfyUI.
"""

from __future__ import annotations

import pytest
import torch
from comfy_run import requires_comfy, run_comfy_script

from turbosample.accel import comfy_native
from turbosample.accel.adapter import UnsupportedModel
from turbosample.accel.magcache import MagCacheSettings

needs_comfy = requires_comfy()
KINDS = ("flux", "sd3", "wan")


# float32, and bf16 as users run these models: exact equalities hold in both; sums compared across different
# call orders agree to float32 rounding (1e-5) or to bf16's 8-bit mantissa (2e-2 relative)
TOL = {"fp32": 1e-5, "bf16": 2e-2}


@pytest.fixture(scope="module", params=list(TOL))
def comfy_results(request) -> dict:
    return {**run_comfy_script("comfy_native_magcache.py", dtype=request.param), "tol": TOL[request.param]}


@needs_comfy
@pytest.mark.parametrize("kind", KINDS)
def test_threshold_zero_equals_unpatched_exactly(comfy_results, kind):
    r = comfy_results[kind]
    assert r["plain_finite"] and r["model_calls"] == 6  # euler, 6 steps, cond+uncond batched in one call
    assert r["t0_max_abs_diff"] == 0.0  # every block runs with the same arguments: bit-identical
    assert r["t0_block_calls"] == r["plain_block_calls"] == 6 * r["n_blocks"]


@needs_comfy
@pytest.mark.parametrize("kind", KINDS)
def test_skipped_steps_run_no_blocks_and_reuse_the_cached_residual(comfy_results, kind):
    r = comfy_results[kind]
    skipped_steps = sorted({s for _b, s, d in r["skip_decisions"] if d})
    assert skipped_steps == [1, 2, 4, 5]  # retention 1 step, K = 2, flat curve under the threshold
    assert r["skip_block_calls"] == r["skip_expected_block_calls"] == 2 * r["n_blocks"]
    # skipped output - last computed output == stack input - its stack input, per branch (to rounding)
    assert r["skip_reuse_checked"] == 8 and r["skip_reuse_err"] < comfy_results["tol"]
    assert r["skip_finite"] and r["skip_rel_err"] < 0.5  # random weights change a lot between steps
    assert r["rerun_max_abs_diff"] == 0.0  # per-run state is fresh: a second run is identical


@needs_comfy
@pytest.mark.parametrize("kind", KINDS)
def test_one_branch_skipping_runs_only_the_other_branch_rows(comfy_results, kind):
    r = comfy_results[kind]
    assert {(b, s) for b, s, d in r["split_decisions"] if d} == {(1, 1), (1, 2), (1, 4), (1, 5)}
    assert r["split_block_batches"] == [1, 2]  # cond alone on uncond's skipped steps, both otherwise
    assert r["split_reuse_checked"] == 4 and r["split_reuse_err"] < comfy_results["tol"]
    assert r["split_rel_err"] < 0.5


@needs_comfy
@pytest.mark.parametrize("kind", KINDS)
def test_calibration_through_block_patches(comfy_results, kind):
    r = comfy_results[kind]
    assert r["cal_max_abs_diff_vs_plain"] == 0.0  # recording never changes the output
    assert r["cal_branches"] == [0, 1]
    # ratios match residuals measured independently by hooks
    assert r["cal_ratio_max_diff_vs_hooks"] < comfy_results["tol"]
    assert r["calibrated_block_calls"] < r["plain_block_calls"] and r["calibrated_rel_err"] < 0.5
    # the calibrate node (ComfyUI path) records the same ratios, tied to these weights, and its file applies
    assert r["node_cal_ratio_max_diff"] < 1e-6 and r["node_cal_fingerprint_ok"]
    assert r["node_cal_finite"] and r["node_cal_block_calls"] < r["plain_block_calls"]


@needs_comfy
@pytest.mark.parametrize("kind", KINDS)
def test_node_path_reapply_and_original_untouched(comfy_results, kind):
    r = comfy_results[kind]
    assert r["node_finite"] and r["node_block_calls"] < r["plain_block_calls"]  # published curve, resampled
    assert r["twice_max_abs_diff"] == 0.0  # threshold 0 over the skipping clone replaces its patches
    assert r["twice_patches_wrap_bare_blocks"]  # not MagCache around MagCache
    assert r["original_untouched"] and r["original_rerun_max_abs_diff"] == 0.0


@needs_comfy
def test_unsupported_comfy_class_is_refused_with_the_supported_list(comfy_results):
    r = comfy_results["unsupported"]
    assert "VaceWanModel is not supported" in r["message"]
    assert "ComfyUI Flux" in r["message"] and "ComfyUI SD3 (MMDiT)" in r["message"] and "Wan" in r["message"]
    assert r["untouched"]


# ---- without ComfyUI: a stand-in Flux stack (double blocks on img/txt, single blocks on cat(txt, img)) ----

class Block(torch.nn.Module):
    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(dim, dim, generator=g) / dim ** 0.5)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return x + torch.tanh(x @ self.w) * vec[:, None, :]


Flux = type("Flux", (torch.nn.Module,), {"__module__": "comfy.ldm.flux.model"})


def stand_in(dim: int = 8) -> torch.nn.Module:
    m = Flux()
    m.double_blocks = torch.nn.ModuleList(Block(dim, i) for i in range(2))
    m.single_blocks = torch.nn.ModuleList(Block(dim, 10 + i) for i in range(2))
    return m


def forward(m, img, txt, vec, options):
    """Flux's block loop as ComfyUI writes it: replacements get args and the original block."""
    replace = options.get("patches_replace", {}).get("dit", {})
    for i, block in enumerate(m.double_blocks):
        def wrap(a, block=block):
            return {"img": block(a["img"], a["vec"]), "txt": block(a["txt"], a["vec"])}
        args = {"img": img, "txt": txt, "vec": vec, "transformer_options": options}
        out = replace[("double_block", i)](args, {"original_block": wrap}) if ("double_block", i) in replace \
            else wrap(args)
        img, txt = out["img"], out["txt"]
    img = torch.cat((txt, img), 1)
    for i, block in enumerate(m.single_blocks):
        def wrap(a, block=block):
            return {"img": block(a["img"], a["vec"])}
        args = {"img": img, "vec": vec, "transformer_options": options}
        img = (replace[("single_block", i)](args, {"original_block": wrap}) if ("single_block", i) in replace
               else wrap(args))["img"]
    return img[:, txt.shape[1]:]


def run(m, patches, sigmas, plain_option=False):
    g = torch.Generator().manual_seed(3)
    img, txt = torch.randn(2, 5, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    outs = []
    for s in sigmas[:-1]:
        options = {"patches_replace": {"dit": patches}, "sigmas": torch.full((2,), float(s)),
                   "sample_sigmas": sigmas, "cond_or_uncond": [1, 0], comfy_native.PLAIN_OPTION: plain_option}
        vec = torch.full((2, 8), float(s))
        outs.append(forward(m, img * (1 + s), txt, vec, options))
    return outs


def patches_for(m, settings, record=None):
    store: dict = {}
    return comfy_native.magcache_block_patches(m, settings, lambda _o: store, record=record)


def test_stand_in_flux_stack_skips_with_image_token_residual_only():
    m, sigmas = stand_in(), torch.linspace(1, 0, 7)
    plain = run(m, {}, sigmas)
    record: list = []
    out = run(m, patches_for(m, MagCacheSettings({0: (1.0,) * 6}, 0.1, 2, 0.2), record), sigmas)
    skipped = sorted({s for _k, s, d in record if d})
    assert skipped == [1, 2, 4, 5]
    assert m.double_blocks[0].calls.count(2) == 2 * 6 + 2 * 2  # img+txt per call: 6 plain calls, 2 computed
    inputs = run_inputs(sigmas)
    for step in range(6):
        last = max(j for j in (0, 3) if j <= step)  # skipped: stack input + residual of the last computed step
        want = plain[step] if step == last else plain[last] + inputs[step] - inputs[last]
        assert torch.allclose(out[step], want, atol=1e-6), step


def run_inputs(sigmas):
    g = torch.Generator().manual_seed(3)
    img = torch.randn(2, 5, 8, generator=g)
    return [img * (1 + s) for s in sigmas[:-1]]


def test_stand_in_plain_option_and_zero_threshold_run_every_block_unchanged():
    m, sigmas = stand_in(), torch.linspace(1, 0, 5)
    plain = run(m, {}, sigmas)
    for settings, plain_option in ((MagCacheSettings({0: (1.0,) * 4}, 0.0, 2, 0.0), False),
                                   (MagCacheSettings({0: (1.0,) * 4}, 0.5, 3, 0.0), True)):
        out = run(m, patches_for(m, settings), sigmas, plain_option)
        assert all(torch.equal(a, b) for a, b in zip(out, plain, strict=True))


def test_stand_in_one_branch_skip_slices_rows_and_restores_the_batch():
    m, sigmas = stand_in(), torch.linspace(1, 0, 5)
    plain = run(m, {}, sigmas)
    settings = MagCacheSettings({0: (1.0, 3.0, 3.0, 3.0), 1: (1.0,) * 4}, 0.1, 2, 0.0)
    for b in m.single_blocks:
        b.calls.clear()
    out = run(m, patches_for(m, settings), sigmas)
    assert sorted(set(m.single_blocks[1].calls)) == [1, 2]
    inputs = run_inputs(sigmas)
    # batch row 0 is uncond (cond_or_uncond [1, 0]): it skips steps 1 and 2, the cond row never skips
    for step in range(4):
        assert torch.allclose(out[step][1], plain[step][1], atol=1e-6)
        want = plain[step][0] if step in (0, 3) else plain[0][0] + inputs[step][0] - inputs[0][0]
        assert torch.allclose(out[step][0], want, atol=1e-6), step


def test_unsupported_module_is_not_native_and_keeps_the_message():
    from turbosample.nodes.comfy_magcache import check_supported

    assert not comfy_native.is_native(torch.nn.Linear(2, 2))
    with pytest.raises(UnsupportedModel, match=r"Linear is not supported.*ComfyUI Flux.*ComfyUI SD3 \(MMDiT\)"):
        check_supported(torch.nn.Linear(2, 2))


def test_control_net_calls_run_unaccelerated():
    from turbosample.nodes.comfy_magcache import plain_with_control_wrapper

    seen = []
    executor = lambda *a, **k: seen.append(a[5])  # noqa: E731
    plain_with_control_wrapper(executor, 0, 0, None, None, None, {"a": 1})
    plain_with_control_wrapper(executor, 0, 0, None, None, {"input": []}, {"a": 1})
    assert comfy_native.PLAIN_OPTION not in seen[0] and seen[1][comfy_native.PLAIN_OPTION] is True
