"""Text-to-image runs for the app and the CLI: settings -> workflow -> images, PNGs with their workflow."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .builtin_nodes import latent_to_image
from .txt2img import Settings, to_api_prompt, to_ui_workflow
from .workflow import output_images, run_api

StepCallback = Callable[[int, int, torch.Tensor], None]


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """ComfyUI IMAGE (B, H, W, 3) in [0, 1] -> PIL images."""
    arr = (images.clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def generate(settings: Settings, on_step: StepCallback | None = None,
             cancel: threading.Event | None = None) -> list[Image.Image]:
    """Run the text-to-image graph; ``on_step(i, total, denoised_preview_images)`` after each step."""
    api = to_api_prompt(settings)
    total = settings.steps

    def callback(info: dict) -> None:
        if on_step is not None:
            on_step(info["i"] + 1, total, latent_to_image(info["denoised"]))

    hooks = {"TurboSampleSample": lambda _nid: {"callback": callback, "cancel": cancel}}
    results = run_api(api, hooks)
    return [img for batch in output_images(api, results) for img in tensor_to_pil(batch)]


def png_info(settings: Settings) -> PngInfo:
    """tEXt chunks as ComfyUI writes them (``prompt`` API JSON, ``workflow`` UI JSON) plus ``parameters``."""
    info = PngInfo()
    info.add_text("prompt", json.dumps(to_api_prompt(settings)))
    info.add_text("workflow", json.dumps(to_ui_workflow(settings)))
    info.add_text("parameters", json.dumps(settings.to_dict()))
    return info


def save_png(image: Image.Image, path: str | Path, settings: Settings) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, pnginfo=png_info(settings))
    return path


def workflow_from_png(path: str | Path) -> dict:
    """The UI workflow (or API prompt) stored in a PNG written by this app or by ComfyUI."""
    from .workflow import WorkflowError, parse_json

    try:
        text = Image.open(path).text  # type: ignore[attr-defined]
    except Exception as exc:
        raise WorkflowError(f"cannot read PNG metadata from {path}: {exc}") from None
    for key in ("workflow", "prompt"):
        if key in text:
            return parse_json(text[key])
    raise WorkflowError(f"{path} carries no ComfyUI workflow or prompt")
