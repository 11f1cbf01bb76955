"""Load and save the built-in model's weights (safetensors with the config in the metadata), and the latent space
they work in: the image itself (3 channels) or the latents of the small autoencoder they were trained with."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .dit import DiTConfig, TinyDiT
from .metadata import read_metadata

MODEL_ID = "turbosample-builtin-emoji-v1"
WEIGHTS = Path(__file__).with_name("builtin_emoji.safetensors")
DEFAULT_SIZE = 64
MAX_SIZE = 256


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


def weights_path(path: str | Path | None = None) -> Path:
    """``path``, else ``$TURBOSAMPLE_BUILTIN_WEIGHTS``, else the shipped weights."""
    return Path(path or os.environ.get("TURBOSAMPLE_BUILTIN_WEIGHTS") or WEIGHTS)


def load_model(path: str | Path | None = None) -> TinyDiT:
    """The built-in DiT in eval mode; raises ValueError naming the problem for a foreign/corrupt file."""
    from safetensors.torch import load_file

    path = weights_path(path)
    if not path.exists():
        raise FileNotFoundError(f"built-in model weights not found at {path}")
    meta = read_metadata(path)
    if meta.get("turbosample.model_id") != MODEL_ID:
        raise ValueError(f"{path} is not a {MODEL_ID} checkpoint (model id: {meta.get('turbosample.model_id')!r})")
    model = TinyDiT(DiTConfig(**json.loads(meta["turbosample.config"])))
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


def cached_model(path: str | Path | None = None) -> TinyDiT:
    """Shared read-only instance of the weights at ``path`` (default: :func:`weights_path`, read at each call, so a
    changed ``$TURBOSAMPLE_BUILTIN_WEIGHTS`` never serves the previous weights); the model holds no per-run state."""
    return _shared_model(weights_path(path))


@functools.lru_cache(maxsize=2)
def _shared_model(path: Path) -> TinyDiT:
    return load_model(path)


@dataclass(frozen=True)
class LatentSpace:
    """Where built-in weights sample: ``channels`` x (H / ``factor``) x (W / ``factor``), tokens of ``patch`` cells;
    ``autoencoder`` decodes it (None: the latent is the image, 3 channels in [-1, 1])."""

    channels: int
    factor: int
    patch: int
    autoencoder: Path | None
    trained_sizes: tuple[int, ...]

    @property
    def pixel_multiple(self) -> int:
        """Image sides must divide by this (one token)."""
        return self.factor * self.patch

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        return (batch, self.channels, height // self.factor, width // self.factor)


def training_args(weights: Path) -> dict:
    """The ``models/train.py`` arguments in the weights' training record ({} when none are recorded)."""
    return json.loads(read_metadata(weights).get("turbosample.info", "{}")).get("args") or {}


def autoencoder_path(weights: Path) -> Path | None:
    """The autoencoder latent-space weights were trained with (``models/train.py --autoencoder``): the file of the
    recorded name beside the weights (a name only: never a path the record points elsewhere); None for pixel
    weights."""
    recorded = training_args(weights).get("autoencoder")
    return weights.parent / Path(recorded).name if recorded else None


def latent_space(path: str | Path | None = None) -> LatentSpace:
    """The latent space of the built-in weights at ``path`` (default: :func:`weights_path`), from their metadata."""
    return _latent_space(weights_path(path))


@functools.lru_cache(maxsize=4)
def _latent_space(weights: Path) -> LatentSpace:
    config = json.loads(read_metadata(weights).get("turbosample.config", "{}"))
    channels, patch = int(config.get("in_channels", 3)), int(config.get("patch_size", 4))
    ae = autoencoder_path(weights)
    if ae is None:
        if channels != 3:
            raise ValueError(f"{weights}: {channels}-channel weights without an autoencoder in their training record")
        return LatentSpace(3, 1, patch, None, (32, 64))
    if not ae.exists():
        raise FileNotFoundError(f"{weights.name} samples in the latent space of {ae.name}, which should sit beside "
                                f"it in {ae.parent}")
    ae_config = json.loads(read_metadata(ae).get("turbosample.config", "{}"))
    if int(ae_config.get("latent_channels", -1)) != channels:
        raise ValueError(f"{weights.name} takes {channels} channels but {ae.name} makes "
                         f"{ae_config.get('latent_channels')}")
    trained = (32, DEFAULT_SIZE) if training_args(weights).get("latent_low_res") else (DEFAULT_SIZE,)
    return LatentSpace(channels, int(ae_config["downsample"]), patch, ae, trained)


@functools.lru_cache(maxsize=2)
def cached_autoencoder(path: Path):
    """Shared read-only autoencoder (eval mode, float32, CPU)."""
    from .autoencoder import load_autoencoder

    return load_autoencoder(path)


def to_pixels(latents, path: str | None = None):
    """Built-in latents (B, C, h, w) -> images (B, 3, H, W) in [-1, 1], float32 on the CPU: the autoencoder's
    decode for latent-space weights, the latent itself for pixel-space ones. ValueError for another shape."""
    import torch

    space = latent_space(path)
    x = latents.detach().float().cpu()
    if x.ndim != 4 or x.shape[1] != space.channels:
        raise ValueError(f"the built-in model's latents have {space.channels} channels (B, {space.channels}, H, W); "
                         f"got shape {tuple(x.shape)}")
    if space.autoencoder is None:
        return x.clamp(-1, 1)
    with torch.no_grad():
        return cached_autoencoder(space.autoencoder).decode(x).clamp(-1, 1)


def placed_model(device, dtype) -> TinyDiT | None:
    """A copy of the shared model on ``device`` in ``dtype`` (same weights fingerprint); None for the CPU in float32,
    where the shared instance itself serves."""
    return _placed_model(weights_path(), device, dtype)


@functools.lru_cache(maxsize=2)
def _placed_model(path: Path, device, dtype) -> TinyDiT | None:
    import copy

    import torch

    from ..samplers.fingerprint import to_precision

    if torch.device(device).type == "cpu" and dtype == torch.float32:
        return None
    return to_precision(copy.deepcopy(cached_model(path)), device, dtype)
