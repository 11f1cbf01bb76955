"""Training data for the built-in model: Noto Emoji images (npm ``emoji-datasource-google``, Apache-2.0).

``fetch_package`` runs ``npm pack`` into a cache folder; ``load_emoji`` composites the 64x64 RGBA
images on white and returns them in [-1, 1] with the prompt variants of each image.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PACKAGE = "emoji-datasource-google@16.0.0"
SKIN_TONES = {"1F3FB": "light skin tone", "1F3FC": "medium-light skin tone", "1F3FD": "medium skin tone",
              "1F3FE": "medium-dark skin tone", "1F3FF": "dark skin tone"}


def fetch_package(cache_dir: Path) -> Path:
    """Download and unpack the npm package once; return its ``package`` folder."""
    root = cache_dir / "package"
    if (root / "emoji.json").exists():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = subprocess.run(["npm", "pack", PACKAGE], cwd=cache_dir, check=True, capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]
    with tarfile.open(cache_dir / name) as tar:
        tar.extractall(cache_dir, filter="data")
    return root


def prompt_variants(entry: dict, tone: str | None = None) -> list[str]:
    names = [entry.get("name") or ""] + [s.replace("_", " ").replace("-", " ") for s in entry["short_names"]]
    names = list(dict.fromkeys(n.lower().strip() for n in names if n and n.strip()))
    return [f"{n}, {tone}" for n in names] if tone else names


def load_emoji(package_dir: Path, size: int = 64) -> tuple[torch.Tensor, list[list[str]], list[str]]:
    """Images (N, 3, size, size) in [-1, 1], prompt variants per image, category per image."""
    entries = json.loads((package_dir / "emoji.json").read_text())
    folder = package_dir / "img" / "google" / "64"
    images, prompts, categories = [], [], []
    for entry in sorted(entries, key=lambda e: e["sort_order"]):
        items = [(entry["image"], None)]
        for key, var in (entry.get("skin_variations") or {}).items():
            tones = [SKIN_TONES[k] for k in key.split("-") if k in SKIN_TONES]
            items.append((var["image"], " and ".join(dict.fromkeys(tones)) or None))
        for filename, tone in items:
            path = folder / filename
            if not path.exists():
                continue
            rgba = Image.open(path).convert("RGBA").resize((size, size), Image.LANCZOS)
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgb = np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.float32)
            images.append(torch.from_numpy(rgb).permute(2, 0, 1) / 127.5 - 1.0)
            prompts.append(prompt_variants(entry, tone))
            categories.append(entry["category"])
    return torch.stack(images), prompts, categories
