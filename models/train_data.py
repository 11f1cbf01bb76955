"""The built-in model's training set as tensors: emoji images and the embeddings of their prompt variants.

Built once on a machine with npm and the text encoder (``build_training_data``); ``save_pack`` / ``load_pack`` move
it as one compressed ``.npz`` (no pickle) to a machine that has neither, e.g. a GPU box:

    python -m turbosample.models.train --write-data-pack /tmp/emoji_pack.npz
    python -m turbosample.models.train --data-pack /tmp/emoji_pack.npz --device cuda ...

Prompt templates turn every name variant ("red apple") into the phrasings users type ("a red apple", "red apple
emoji", ...), so free-form prompts land near the names the model learnt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .emoji_data import PACKAGE, fetch_package, load_emoji
from .text import TEXT_ENCODER_ID, encode_prompts

TEMPLATE_SETS = {
    "none": ("{}",),
    "phrases": ("{}", "a {}", "{} emoji", "an image of {}"),
}


def apply_template(template: str, name: str) -> str:
    """``template`` filled with ``name``; "a" becomes "an" before a vowel."""
    text = template.format(name)
    if template.startswith("a {}") and name[:1] in "aeiou":
        text = "an" + text[1:]
    return text


@dataclass
class TrainingData:
    """images (N, 3, 64, 64) uint8; embeddings (V, D) float16; per image the first variant row and the count;
    tone: per image, whether it is a skin-tone variant (None in packs written before it existed)."""

    images: torch.Tensor
    embeddings: torch.Tensor
    starts: torch.Tensor
    counts: torch.Tensor
    info: dict
    tone: torch.Tensor | None = None

    def images_float(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The images in [-1, 1], float32, on ``device``."""
        return self.images.to(device).float().div_(127.5).sub_(1.0)

    def subset(self, indices: torch.Tensor) -> TrainingData:
        """The same data restricted to ``indices`` (images keep all their prompt variants)."""
        rows = torch.cat([torch.arange(int(s), int(s + c)) for s, c in zip(self.starts[indices], self.counts[indices],
                                                                            strict=True)])
        counts = self.counts[indices]
        return TrainingData(self.images[indices], self.embeddings[rows], torch.cumsum(counts, 0) - counts, counts,
                            {**self.info, "subset": len(indices)}, None if self.tone is None else self.tone[indices])


def is_skin_tone_variant(name: str) -> bool:
    """Whether an image's first name marks it as a skin-tone variant ("waving hand, medium skin tone")."""
    return "skin tone" in name


def build_training_data(data_cache: Path, templates: str = "phrases") -> TrainingData:
    """Images of the npm package and the embeddings of every (template x name variant) prompt."""
    if templates not in TEMPLATE_SETS:
        raise ValueError(f"unknown prompt templates {templates!r}; choose one of {', '.join(TEMPLATE_SETS)}")
    images, prompts, _ = load_emoji(fetch_package(data_cache))
    variants = [[apply_template(t, name) for name in names for t in TEMPLATE_SETS[templates]] for names in prompts]
    flat = [v for vs in variants for v in vs]
    emb = torch.cat([encode_prompts(flat[i:i + 512]) for i in range(0, len(flat), 512)])
    counts = torch.tensor([len(v) for v in variants])
    u8 = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    info = {"data": PACKAGE, "text_encoder": TEXT_ENCODER_ID, "templates": templates, "images": len(prompts),
            "prompt_variants": len(flat)}
    tone = torch.tensor([is_skin_tone_variant(names[0]) for names in prompts])
    return TrainingData(u8, emb.half(), torch.cumsum(counts, 0) - counts, counts, info, tone)


def save_pack(data: TrainingData, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=data.images.numpy(), embeddings=data.embeddings.numpy(),
                        starts=data.starts.numpy(), counts=data.counts.numpy(),
                        **({} if data.tone is None else {"tone": data.tone.numpy()}),
                        info=np.frombuffer(json.dumps(data.info).encode(), dtype=np.uint8))


def load_pack(path: Path) -> TrainingData:
    """A pack written by ``save_pack``; arrays only (``allow_pickle=False``), so a foreign file cannot run code."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("images", "embeddings", "starts", "counts", "info")}
            tone = torch.from_numpy(f["tone"]).bool() if "tone" in f.files else None
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path} is not a turbosample training-data pack: {exc}") from None
    info = json.loads(arrays.pop("info").tobytes().decode())
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    if t["images"].dtype != torch.uint8 or t["images"].ndim != 4 or len(t["starts"]) != len(t["images"]):
        raise ValueError(f"{path} holds arrays of the wrong shape or type for a training-data pack")
    if tone is not None and tone.shape != (len(t["images"]),):
        raise ValueError(f"{path} has a skin-tone flag array of the wrong shape")
    return TrainingData(t["images"], t["embeddings"], t["starts"].long(), t["counts"].long(), info, tone)
