"""The app's and the CLI's graph for any settings: the built-in model's (``txt2img``) or a model folder's
(``folder_graph``), as the API prompt the app runs, the ComfyUI workflow it saves, and the settings read back."""

from __future__ import annotations

from . import folder_graph, txt2img
from .txt2img import Settings

EXPORT_LOADERS = ("CheckpointLoaderSimple", "UNETLoader")  # a model folder's ComfyUI export starts at one of them


def is_folder_model(settings: Settings) -> bool:
    """Whether the settings run a model folder (not the built-in model)."""
    return settings.model != txt2img.BUILTIN


def run_prompt(settings: Settings) -> dict:
    """The checked API prompt the app and the CLI run (a model folder runs on the app's own folder nodes)."""
    return folder_graph.run_api_prompt(settings) if is_folder_model(settings) else txt2img.to_api_prompt(settings)


def to_api_prompt(settings: Settings) -> dict:
    """The ComfyUI API prompt (a model folder: its export on ComfyUI's core loaders)."""
    return folder_graph.export_api(settings) if is_folder_model(settings) else txt2img.to_api_prompt(settings)


def to_ui_workflow(settings: Settings) -> dict:
    """The ComfyUI UI workflow (a model folder: its export on ComfyUI's core loaders)."""
    return folder_graph.export_ui(settings) if is_folder_model(settings) else txt2img.to_ui_workflow(settings)


def settings_from_api(api: dict) -> Settings:
    """The settings of an API prompt of the built-in graph or of a model folder's export."""
    if any(isinstance(node, dict) and node.get("class_type") in EXPORT_LOADERS for node in api.values()):
        return folder_graph.settings_from_export(api)
    return txt2img.settings_from_api(api)
