"""Load and save the built-in model's weights (safetensors with the config in the metadata)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from .dit import DiTConfig, TinyDiT

MODEL_ID = "turbosample-builtin-emoji-v1"
WEIGHTS = Path(__file__).with_name("builtin_emoji.safetensors")
TRAINED_SIZES = (32, 64)
DEFAULT_SIZE = 64


def save_weights(model: TinyDiT, path: Path, info: dict, dtype: str = "fp32") -> None:
    """Weights (``fp16`` halves the file; the loader copies them into a float32 model) with config and record."""
    import torch
    from safetensors.torch import save_file

    cast = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    meta = {"turbosample.model_id": MODEL_ID, "turbosample.config": json.dumps(model.config.to_dict()),
            "turbosample.info": json.dumps(info)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", cast).contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)  # never a half-written file under the real name


def read_metadata(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc


def load_model(path: str | Path | None = None) -> TinyDiT:
    """The built-in DiT in eval mode; raises ValueError naming the problem for a foreign/corrupt file."""
    from safetensors.torch import load_file

    path = Path(path or os.environ.get("TURBOSAMPLE_BUILTIN_WEIGHTS") or WEIGHTS)
    if not path.exists():
        raise FileNotFoundError(f"built-in model weights not found at {path}")
    meta = read_metadata(path)
    if meta.get("turbosample.model_id") != MODEL_ID:
        raise ValueError(f"{path} is not a {MODEL_ID} checkpoint (model id: {meta.get('turbosample.model_id')!r})")
    model = TinyDiT(DiTConfig(**json.loads(meta["turbosample.config"])))
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


@functools.lru_cache(maxsize=2)
def cached_model(path: str | None = None) -> TinyDiT:
    """Shared read-only instance (the model holds no per-run state); pixel-space weights only."""
    model = load_model(path)
    if model.config.in_channels != 3:
        raise ValueError(f"these built-in weights are latent-space ({model.config.in_channels} channels, "
                         "models/train.py --autoencoder, an ablation): the app and nodes run pixel-space weights")
    return model


@functools.lru_cache(maxsize=2)
def placed_model(device, dtype) -> TinyDiT | None:
    """A copy of the shared model on ``device`` in ``dtype`` (same weights fingerprint); None for the CPU in float32,
    where the shared instance itself serves."""
    import copy

    import torch

    from ..samplers.fingerprint import to_precision

    if torch.device(device).type == "cpu" and dtype == torch.float32:
        return None
    return to_precision(copy.deepcopy(cached_model()), device, dtype)
