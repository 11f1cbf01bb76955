"""Run one of the tests/comfy_*.py scripts under ComfyUI's Python and read the JSON it prints last.

Tests that compare with a real ComfyUI are guarded by ``requires_comfy(...)``: COMFYUI_DIR must point at a checkout
(COMFYUI_PYTHON at its interpreter; default: this one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")


def requires_comfy(marker_file: str = "comfy", reason: str = "COMFYUI_DIR is not set to a ComfyUI checkout"):
    """A skip marker unless COMFYUI_DIR holds ``marker_file`` (a path inside the checkout)."""
    return pytest.mark.skipif(not COMFYUI_DIR or not (Path(COMFYUI_DIR) / marker_file).exists(), reason=reason)


def run_comfy_script(script: str, timeout: int = 600, dtype: str = "fp32") -> dict:
    """The last stdout line of ``tests/<script> <repo root>`` run with ComfyUI's Python in COMFYUI_DIR, as JSON
    (``dtype``: the tiny models' precision, see tests/comfy_native_magcache.py)."""
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    env = {**os.environ, "TURBOSAMPLE_COMFY_DTYPE": dtype}
    out = subprocess.run([python, str(ROOT / "tests" / script), str(ROOT)], cwd=COMFYUI_DIR, capture_output=True,
                         text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
