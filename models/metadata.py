"""The metadata of a safetensors file (every weights file of this project keeps its config and record there)."""

from __future__ import annotations

from pathlib import Path


def read_metadata(path: str | Path) -> dict:
    """The header's metadata; ValueError naming the file when it is not a readable safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
