"""Text-to-image (and Wan text-to-video) runs for the app and the CLI: settings -> workflow -> images, PNGs and
videos with their workflow."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .app_graph import is_folder_model, run_prompt, to_api_prompt, to_ui_workflow
from .builtin_nodes import latent_to_image
from .txt2img import Settings
from .workflow import WorkflowError, output_images, run_api

StepCallback = Callable[[int, int, torch.Tensor], None]
FPS = 16.0  # Wan's frame rate


@dataclass(frozen=True)
class RunOptions:
    """Where the model runs (not part of a workflow): device auto | cuda | mps | cpu, dtype auto | bf16 | fp16 | fp32,
    and diffusers' model CPU offload for model folders."""

    device: str = "auto"
    dtype: str = "auto"
    offload: bool = False


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """ComfyUI IMAGE (B, H, W, 3) in [0, 1] -> PIL images."""
    arr = (images.clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def latent_preview(samples: torch.Tensor) -> torch.Tensor:
    """A model folder's latent (B, C, H, W) or (B, C, F, H, W) as a rough preview IMAGE: its first three channels
    stretched to [0, 1] (the middle frame of a video), 8x larger. A preview only: the VAE makes the image."""
    x = samples.detach().float()
    if x.ndim == 5:
        x = x[:, :, x.shape[2] // 2]
    rgb = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
    low, high = rgb.amin(dim=(2, 3), keepdim=True), rgb.amax(dim=(2, 3), keepdim=True)
    rgb = (rgb - low) / (high - low).clamp_min(1e-6)
    return torch.nn.functional.interpolate(rgb, scale_factor=8, mode="nearest").permute(0, 2, 3, 1).cpu()


def generate(settings: Settings, on_step: StepCallback | None = None, cancel: threading.Event | None = None,
             options: RunOptions | None = None) -> list[Image.Image]:
    """Run the settings' graph; ``on_step(i, total, denoised_preview_images)`` after each step. A video model's
    frames come one after another (``group_frames`` splits them per video)."""
    api = run_prompt(settings)
    total = settings.steps
    preview = latent_preview if is_folder_model(settings) else latent_to_image
    placement = asdict(options or RunOptions())

    def callback(info: dict) -> None:
        if on_step is not None:
            on_step(info["i"] + 1, total, preview(info["denoised"]))

    hooks = {"TurboSampleSample": lambda _nid: {"callback": callback, "cancel": cancel},
             "TurboSampleBuiltinModelLoader": lambda _nid: placement,
             "TurboSampleFolderModel": lambda _nid: placement}
    results = run_api(api, hooks)
    return [img for batch in output_images(api, results) for img in tensor_to_pil(batch)]


def is_video(settings: Settings) -> bool:
    """Whether the settings make videos (a video model folder)."""
    if not is_folder_model(settings):
        return False
    from .folder_graph import folder_of

    return folder_of(settings).video


def group_frames(images: list[Image.Image], settings: Settings) -> list[list[Image.Image]]:
    """Outputs one per image, or one list of ``settings.frames`` frames per video."""
    n = settings.frames if is_video(settings) else 1
    return [images[i:i + n] for i in range(0, len(images), n)]


def metadata(settings: Settings) -> dict[str, str]:
    """``prompt`` (API JSON) and ``workflow`` (UI JSON) as ComfyUI writes them, when the settings have a ComfyUI
    graph (a two-expert Wan 2.2 folder has none), and ``parameters`` (the settings)."""
    out = {}
    try:
        out.update(prompt=json.dumps(to_api_prompt(settings)), workflow=json.dumps(to_ui_workflow(settings)))
    except WorkflowError:
        if not is_folder_model(settings):
            raise
    out["parameters"] = json.dumps(settings.to_dict())
    return out


def png_info(settings: Settings) -> PngInfo:
    """tEXt chunks as ComfyUI writes them (``prompt`` API JSON, ``workflow`` UI JSON) plus ``parameters``."""
    info = PngInfo()
    for key, value in metadata(settings).items():
        info.add_text(key, value)
    return info


def save_outputs(images: list[Image.Image], settings: Settings, folder: str | Path, stem: str,
                 video_suffix: str | None = None) -> list[Path]:
    """PNGs (``stem_001.png`` ...) or videos (``stem_001.mp4``; ``video_suffix`` or the best available) carrying
    the settings; one file when there is one output (``stem.png`` / ``stem.mp4``)."""
    from .media import default_video_suffix

    groups = group_frames(images, settings)
    suffix = (video_suffix or default_video_suffix()) if is_video(settings) else ".png"
    names = [f"{stem}{suffix}"] if len(groups) == 1 else [f"{stem}_{k + 1:03d}{suffix}" for k in range(len(groups))]
    return [save_output(frames, Path(folder) / name, settings) for frames, name in zip(groups, names, strict=True)]


def save_output(frames: list[Image.Image], path: str | Path, settings: Settings) -> Path:
    """One output with the settings' metadata: a PNG of one image, or a video (.mp4, .webp or .gif) of frames."""
    from .media import save_video

    path = Path(path)
    if path.suffix.lower() == ".png":
        return save_png(frames[0], path, settings)
    return save_video(frames, path, FPS, metadata(settings))


def save_png(image: Image.Image, path: str | Path, settings: Settings) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, pnginfo=png_info(settings))
    return path


def settings_from_file(path: str | Path) -> Settings:
    """The settings of a workflow JSON (UI or API format), a PNG or a video written by this app or by ComfyUI."""
    from .app_graph import settings_from_api
    from .media import VIDEO_SUFFIXES, metadata_json, read_video_metadata
    from .workflow import parse_json, to_api

    path = Path(path)
    if not path.is_file():
        raise WorkflowError(f"workflow file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        try:
            found = read_video_metadata(path)
        except (OSError, ValueError) as exc:
            raise WorkflowError(f"cannot read the metadata of {path.name}: {exc}") from None
        for key in ("workflow", "prompt"):
            data = metadata_json(found, key)
            if data is not None:
                return settings_from_api(to_api(data))
        data = metadata_json(found, "parameters")
        if data is None:
            raise WorkflowError(f"{path.name} carries no workflow or settings")
        return Settings.from_dict(data)
    if suffix == ".png":
        try:
            text = Image.open(path).text  # type: ignore[attr-defined]
        except Exception as exc:
            raise WorkflowError(f"cannot read PNG metadata from {path.name}: {exc}") from None
        if "workflow" not in text and "prompt" not in text and "parameters" in text:
            return Settings.from_dict(parse_json(text["parameters"]))
        return settings_from_api(to_api(workflow_from_png(path)))
    return settings_from_api(to_api(parse_json(path.read_bytes())))


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
