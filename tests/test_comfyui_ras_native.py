"""RAS on ComfyUI's own Flux, SD3 (MMDiT) and Wan through block patches and the attention override
(accel/comfy_native_ras.py).

The ComfyUI part runs tests/comfy_native_ras.py under ComfyUI's Python (COMFYUI_DIR / COMFYUI_PYTHON; skipped
without them) on tiny random-weight models sampled by ComfyUI's CFGGuider + KSAMPLER (euler, 6 steps; 64 image
tokens, Wan 2 frames x 64). The rest checks the helpers without ComfyUI.
"""

from __future__ import annotations

import pytest
import torch
from comfy_run import requires_comfy, run_comfy_script

from turbosample.accel import comfy_native_ras as native
from turbosample.accel.adapter import UnsupportedModel

needs_comfy = requires_comfy()
KINDS = ("flux", "sd3", "wan")
TOKENS = {"flux": 64, "sd3": 64, "wan": 128}


# float32, and bf16 as users run these models: exact equalities hold in both; sums compared across different
# call orders agree to float32 rounding (1e-5) or to bf16's 8-bit mantissa (2e-2 relative)
TOL = {"fp32": 1e-5, "bf16": 2e-2}


@pytest.fixture(scope="module", params=list(TOL))
def comfy_results(request) -> dict:
    return {**run_comfy_script("comfy_native_ras.py", dtype=request.param), "tol": TOL[request.param]}


@needs_comfy
@pytest.mark.parametrize("kind", KINDS)
def test_ratio_one_equals_unpatched_exactly(comfy_results, kind):
    r, n = comfy_results[kind], TOKENS[kind]
    assert r["plain_finite"] and r["plain_counts"] == [n] * 6  # cond+uncond in one call per step
    assert r["ratio1_max_abs_diff"] == 0.0  # every block and attention runs with the same arguments
    assert r["ratio1_counts"] == [n] * 6


@needs_comfy
@pytest.mark.parametrize("kind", KINDS)
def test_sparse_steps_run_half_the_image_tokens_and_change_only_them(comfy_results, kind):
    r, n = comfy_results[kind], TOKENS[kind]
    assert r["sparse_counts"] == [n] * 2 + [n // 2] * 4  # warm-up 2, then ratio 0.5
    assert r["warmup_max_abs_diff"] == 0.0
    # the CFG-combined model output of a sparse step differs from the step before at exactly the active tokens
    assert r["sparse_changed_tokens"] == [n // 2] * 4
    assert r["plain_changed_tokens"] == [n] * 4  # without RAS every token changes
    assert r["sparse_finite"] and r["sparse_differs"] and r["sparse_rel_err"] < 0.6  # random weights
    assert r["rerun_max_abs_diff"] == 0.0  # per-run state is fresh: a second run is identical


@needs_comfy
@pytest.mark.parametrize("kind, case", [(k, "direct") for k in KINDS] + [("wan", "direct_per_frame")])
def test_sparse_call_over_exact_caches_equals_the_dense_call(comfy_results, kind, case):
    """``direct_per_frame``: Wan 2.2's per-frame timestep, whose modulation must follow the kept tokens."""
    d = comfy_results[kind][case]
    assert d["dense_vs_plain"] == 0.0  # caching K/V changes nothing
    assert d["n_caches"] == {"flux": 4, "sd3": 2, "wan": 3}[kind]  # one self-attention per block
    tol = comfy_results["tol"] * d["dense_abs_max"]
    assert d["half_vs_dense"] <= tol  # a random half per batch row over caches of the same input
    assert d["shuffled_vs_dense"] <= tol  # all tokens in shuffled order: RoPE follows the kept tokens
    assert d["stale_vs_dense"] > 1e-2  # stale inactive K/V do reach the active queries ...
    assert d["stale_inactive_vs_dense"] == 0.0  # ... and inactive tokens keep the previous stack output


@needs_comfy
@pytest.mark.parametrize("kind", KINDS)
def test_original_untouched(comfy_results, kind):
    r = comfy_results[kind]
    assert r["original_untouched"] and r["original_rerun_max_abs_diff"] == 0.0


@needs_comfy
@pytest.mark.parametrize("kind", KINDS)
def test_magcache_and_ras_stack_in_either_order(comfy_results, kind):
    s, n = comfy_results[kind]["stack"], TOKENS[kind]
    assert s["neutral_vs_plain"] == 0.0  # MagCache computing every step + RAS at ratio 1 = the plain model
    assert s["orders_max_abs_diff"] == 0.0 and s["counts"] == s["counts_other_order"]  # RAS always inside
    # MagCache skips whole steps (blocks not run at all), RAS halves the tokens of the steps it computes
    assert len(s["counts"]) == len(s["magcache_counts"]) < 6
    assert s["counts"][:2] == [n, n] and s["counts"][2:] and all(c == n // 2 for c in s["counts"][2:])
    assert s["finite"] and s["rerun_max_abs_diff"] == 0.0
    assert s["vs_magcache_only"] > 1e-3 and s["vs_ras_only"] > 1e-3 and s["rel_err"] < 0.8  # both act (random weights)
    # cond skips alone: MagCache runs the uncond row by itself, RAS runs it with every token; the next step is dense
    assert s["split_finite"] and [1, n] in s["split_counts"]
    after_split = [s["split_counts"][i + 1] for i, c in enumerate(s["split_counts"][:-1]) if c == [1, n]]
    assert after_split and all(c == n for c in after_split)


@needs_comfy
def test_wan_subclass_is_refused_with_a_reason(comfy_results):
    u = comfy_results["unsupported"]
    assert "VaceWanModel" in u["message"] and "no block hooks" in u["message"] and "Wan 2.1/2.2" in u["message"]
    assert u["untouched"]


def test_unknown_class_is_refused_by_name():
    with pytest.raises(UnsupportedModel, match="Linear"):
        native.check_supported(torch.nn.Linear(2, 2))


def test_per_token_spreads_frames_over_their_tokens_like_wan():
    vec = torch.arange(2.0).reshape(1, 2, 1, 1)  # two frames
    assert native.per_token(vec, 6).flatten().tolist() == [0, 0, 0, 1, 1, 1]
    assert native.per_token(vec, 5).flatten().tolist() == [0, 0, 0, 1, 1]  # uneven: repeat one more, cut


def test_gather_dim_follows_each_rows_index_and_broadcasts_batch_one():
    pe = torch.arange(2 * 5 * 3.0).reshape(1, 1, 10, 3)  # a batch-1 RoPE table over 10 positions
    index = torch.tensor([[0, 4, 9], [9, 1, 2]])
    out = native.gather_dim(pe, 2, index)
    assert out.shape == (2, 1, 3, 3)
    for b in range(2):
        assert torch.equal(out[b, 0], pe[0, 0, index[b]])
