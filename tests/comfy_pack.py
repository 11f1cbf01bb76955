"""Loads this repository as the package ``turbosample`` inside ComfyUI's interpreter (for guarded tests).

Scripts run by ComfyUI's Python do: ``sys.path.insert(0, <repo>/tests); from comfy_pack import load_pack``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def load_pack(root: str | Path):
    """Import the repo at ``root`` as ``turbosample`` and put ComfyUI's folder (the cwd) on the import path."""
    root = Path(root)
    spec = importlib.util.spec_from_file_location("turbosample", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["turbosample"] = pkg
    spec.loader.exec_module(pkg)
    sys.path.insert(0, os.getcwd())
    return pkg
