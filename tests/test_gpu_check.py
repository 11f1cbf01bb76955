"""bench/gpu_check.py end to end on tiny shapes on the CPU (what CI can run of the GPU check): every section
writes its JSON lines, the half-precision correctness checks pass, RAS's cache bytes equal the formula."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("gpu_check") / "check.jsonl"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--device", "cpu",
                           "--out", str(out), "--budget-s", "3000"], capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_every_section_reports_and_nothing_failed(rows):
    assert rows[0]["section"] == "env" and rows[-1]["section"] == "done" and rows[-1]["failed_checks"] == 0
    assert not [r for r in rows if r.get("ok") is False or "error" in r]
    comfy = [r for r in rows if r.get("section") == "comfy"]
    assert comfy and comfy[0]["skipped"] and "--comfyui" in comfy[0]["reason"]  # no ComfyUI in CI: said so


def test_correctness_covers_each_family_with_samplers_and_accelerators(rows):
    checked = [r for r in rows if r.get("section") == "correctness" and "rel_l2" in r]
    for family in ("builtin", "sd3", "flux", "wan"):
        cases = {r["case"] for r in checked if r["model"] == family}
        assert {"sampler/euler", "accel/magcache", "accel/ras", "accel/ras_int8", "accel/magcache+ras"} <= cases
        judged = [r for r in checked if r["model"] == family and "tolerance" in r]  # EMS is reported, not judged
        assert judged and all(r["dtype"] == "bf16" and r["rel_l2"] <= r["tolerance"] for r in judged)
    builtin = {r["case"] for r in checked if r["model"] == "builtin"}
    assert {"sampler/dc_solver", "sampler/dpm_solver_v3", "accel/bottleneck", "accel/flowturbo_refiner"} <= builtin


def test_tables_measure_every_config_and_ras_caches_equal_the_formula(rows):
    tables = [r for r in rows if r.get("section") == "tables"]
    for model in ("sd3", "flux", "wan"):
        by = {r["config"]: r for r in tables if r["model"] == model}
        assert {"baseline", "magcache_defaults", "ras_0.5", "ras_0.5_int8", "magcache+ras_0.5",
                "ras_0.5_cuda_graph", "forward/rebuilt_stack"} <= set(by)
        assert by["ras_0.5"]["ras_cache_bytes"] == by["ras_cache_formula"]["bytes"] > 0
        assert 0 < by["ras_0.5_int8"]["ras_cache_bytes"] < 0.75 * by["ras_0.5"]["ras_cache_bytes"]
        assert by["ras_0.5_cuda_graph"]["cuda_graph_replays"] == 0  # no CUDA here: the eager pass ran
