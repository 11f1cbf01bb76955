"""Section (a2) of bench/gpu_check.py: the ComfyUI-native patches (accel/comfy_native*.py: MagCache, RAS and their
stack on ComfyUI's own Flux, SD3 and Wan classes) on the checked device in bf16 and fp16.

Runs the acceptance scripts tests/comfy_native_magcache.py and tests/comfy_native_ras.py under a ComfyUI checkout
(``--comfyui DIR``; the ComfyUI source and the wheels it adds can travel with this repository) with
TURBOSAMPLE_COMFY_DEVICE / _DTYPE set, and checks what must hold in any precision: threshold 0 / ratio 1 give the
unpatched output exactly, either stacking order gives the same image, a rerun is identical, skipped steps run no
blocks, sparse steps run the planned token counts, every output is finite. Rounding-level values (reuse errors,
relative errors against the unpatched run) are recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXACT = {  # script -> (path in its JSON per model kind, wanted value)
    "comfy_native_magcache.py": [("t0_max_abs_diff", 0.0), ("rerun_max_abs_diff", 0.0), ("twice_max_abs_diff", 0.0),
                                 ("original_rerun_max_abs_diff", 0.0), ("cal_max_abs_diff_vs_plain", 0.0),
                                 ("plain_finite", True), ("skip_finite", True), ("node_finite", True)],
    "comfy_native_ras.py": [("ratio1_max_abs_diff", 0.0), ("rerun_max_abs_diff", 0.0), ("sparse_finite", True),
                            ("stack.neutral_vs_plain", 0.0), ("stack.orders_max_abs_diff", 0.0),
                            ("stack.finite", True), ("direct.dense_vs_plain", 0.0),
                            ("direct.stale_inactive_vs_dense", 0.0)],
}
RECORDED = {"comfy_native_magcache.py": ["skip_reuse_err", "skip_rel_err", "split_rel_err", "calibrated_rel_err"],
            "comfy_native_ras.py": ["sparse_rel_err", "stack.rel_err", "direct.half_vs_dense", "direct.dense_abs_max"]}


def lookup(result: dict, path: str):
    for key in path.split("."):
        result = result.get(key) if isinstance(result, dict) else None
    return result


def run(args, rec) -> None:
    if not args.comfyui:
        rec.write(section="comfy", skipped=True, reason="no --comfyui checkout given (ComfyUI is not installed in CI)")
        return
    comfy_dir = Path(args.comfyui).resolve()
    for dtype in args.dtypes:
        for script in EXACT:
            if rec.out_of_time(f"comfy {script} {dtype}"):
                return
            env = {**os.environ, "TURBOSAMPLE_COMFY_DEVICE": args.device, "TURBOSAMPLE_COMFY_DTYPE": dtype}
            row = {"section": "comfy", "script": script, "dtype": dtype, "device": args.device}
            try:
                proc = subprocess.run([sys.executable, str(ROOT / "tests" / script), str(ROOT)], cwd=comfy_dir,
                                      env=env, capture_output=True, text=True, timeout=max(30, rec.left_s()))
                if proc.returncode != 0:
                    rec.write(**row, ok=False, error=proc.stderr[-3000:])
                    continue
                result = json.loads(proc.stdout.strip().splitlines()[-1])
            except Exception as exc:  # noqa: BLE001
                rec.write(**row, ok=False, error=rec.error_text(exc))
                continue
            for kind in ("flux", "sd3", "wan"):
                r = result.get(kind, {})
                failed = {p: lookup(r, p) for p, want in EXACT[script] if lookup(r, p) != want}
                rec.write(**row, model=kind, ok=not failed and bool(r), failed=failed,
                          values={p: lookup(r, p) for p in RECORDED[script]})
