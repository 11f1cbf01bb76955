"""A model folder's graph: what the app runs, and its ComfyUI export on ComfyUI's core loaders.

Both are the built-in graph of ``txt2img.graph`` (model patches, sampler or loop accelerator, sigmas, TurboSample
Sample) with other ends: the app runs the folder through its own nodes (``folder_nodes``: load, prompts, empty
latent, decode); the export loads the same model in ComfyUI with ``CheckpointLoaderSimple`` or ``UNETLoader``,
``TripleCLIPLoader`` / ``DualCLIPLoader`` / ``CLIPLoader`` and ``VAELoader``, samples with the pack's nodes and
decodes with ``VAEDecode``. The export names the model file after the folder (``<folder>.safetensors``; text
encoders and VAE by ComfyUI's usual file names), which is how a saved workflow names its model and loads back.

Differences from the built-in graph: MagCache is calibrated on the model first (TurboSample MagCache Calibrate
(model) feeds the MagCache node; standalone an existing calibration file of the same weights, sigmas and size is
reused, in ComfyUI its cache does that), and the sigmas are computed on the unpatched model.
"""

from __future__ import annotations

import math
import re

from ..models.diffusers_folder import FolderInfo, ModelFolderError, inspect_folder, latent_shape
from .core_specs import CORE_NODES
from .folder_nodes import NODE_BY_ID as FOLDER_NODES
from .graph_json import api_prompt, ui_workflow
from .model_folders import BUILTIN, resolve
from .registry import NODE_BY_ID
from .txt2img import (
    TITLES,
    Settings,
    as_graph_nodes,
    check_same_nodes,
    graph,
    linked_node,
    read_inputs,
    read_model_patches,
    read_sampling,
    sample_inputs,
)
from .workflow import CORE_SINKS, WorkflowError, check_api

ENDS = ("model", "positive", "negative", "latent", "decode", "save")
SPECS = {**NODE_BY_ID, **FOLDER_NODES, **CORE_NODES, **CORE_SINKS}
FLUX_TITLES = {"positive_text": "Positive prompt", "negative_text": "Negative prompt",
               "positive": "Flux guidance (positive)", "negative": "Flux guidance (negative)"}
FPS = 16.0  # Wan's frame rate
# ComfyUI's usual file names for the parts a pipeline folder holds besides its denoiser
TEXT_ENCODERS = {"sd3": ("TripleCLIPLoader", {"clip_name1": "clip_l.safetensors", "clip_name2": "clip_g.safetensors",
                                              "clip_name3": "t5xxl_fp16.safetensors"}),
                 "flux": ("DualCLIPLoader", {"clip_name1": "clip_l.safetensors",
                                             "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"}),
                 "wan": ("CLIPLoader", {"clip_name": "umt5_xxl_fp16.safetensors", "type": "wan"})}
LATENTS = {"sd3": "EmptySD3LatentImage", "flux": "EmptySD3LatentImage", "sd": "EmptyLatentImage",
           "sdxl": "EmptyLatentImage", "wan": "EmptyHunyuanLatentVideo"}
SIZE = {"width": "width", "height": "height", "batch_size": "batch_size"}
VIDEO_SIZE = {**SIZE, "frames": "length"}


def folder_of(settings_or_name) -> FolderInfo:
    """The settings' model folder, inspected; WorkflowError naming the problem."""
    name = getattr(settings_or_name, "model", settings_or_name)
    try:
        return inspect_folder(resolve(name))
    except ModelFolderError as exc:
        raise WorkflowError(str(exc)) from None


def checked_folder(settings: Settings) -> FolderInfo:
    """The settings' model folder, with their size and frame count checked against it before anything loads."""
    info = folder_of(settings)
    try:
        latent_shape(info, settings.width, settings.height, settings.frames, settings.batch_size)
    except ModelFolderError as exc:
        raise WorkflowError(str(exc)) from None
    return info


def calibration_file(settings: Settings, info: FolderInfo) -> str:
    """The MagCache calibration file name of a run: one per model, schedule and size (reused while they match)."""
    size = f"{settings.width}x{settings.height}" + (f"x{settings.frames}" if info.video else "")
    return re.sub(r"[^\w.\-]", "_", f"magcache_{settings.model}_{settings.steps}steps_{settings.scheduler}_{size}")


def middle(settings: Settings, info: FolderInfo) -> tuple[list[tuple], list[tuple]]:
    """The built-in graph without its end nodes (its edges to them kept: the folder's end nodes take their keys);
    sigmas on the unpatched model; MagCache calibrated on this model."""
    nodes, edges = graph(settings)
    nodes = [n for n in nodes if n[0] not in ENDS]
    edges = [("model", 0, dst, name) if dst == "sigmas" and name == "model" else (src, slot, dst, name)
             for src, slot, dst, name in edges]
    if any(n[0] == "magcache" for n in nodes):
        before = next(src for src, _slot, dst, name in edges if dst == "magcache" and name == "model")
        nodes += [("calibration_sampler", "TurboSampleSamplerSelect", 2, {}, {"sampler_name": "euler"}),
                  ("magcache_calibration", "TurboSampleMagCacheCalibrateModel", 2,
                   {"seed": "seed", "cfg": "cfg"}, {"filename": calibration_file(settings, info)})]
        edges += [(before, 0, "magcache_calibration", "model"), ("positive", 0, "magcache_calibration", "positive"),
                  ("negative", 0, "magcache_calibration", "negative"),
                  ("latent", 0, "magcache_calibration", "latent_image"),
                  ("calibration_sampler", 0, "magcache_calibration", "sampler"),
                  ("sigmas", 0, "magcache_calibration", "sigmas"),
                  ("magcache_calibration", 0, "magcache", "calibration")]
    return nodes, edges


# --- what the app runs ---------------------------------------------------------------------------------------

def run_graph(settings: Settings, info: FolderInfo) -> tuple[list[tuple], list[tuple]]:
    """The app's graph of a model folder: its own loader, prompts, latent and decode nodes around the middle."""
    nodes, edges = middle(settings, info)
    ends = [("model", "TurboSampleFolderModel", 0, {"model": "model_name", "flow_shift": "flow_shift",
                                                     "width": "width", "height": "height"}, {}),
            ("prompts", "TurboSampleFolderTextEncode", 0,
             {"prompt": "text", "negative_prompt": "negative_text", "guidance": "guidance"}, {}),
            ("latent", "TurboSampleFolderLatent", 0, {**SIZE, "frames": "frames"}, {}),
            ("decode", "TurboSampleFolderDecode", 3, {}, {}),
            ("save", "SaveImage", 3, {"filename_prefix": "filename_prefix"}, {})]
    remap = {"positive": ("prompts", 0), "negative": ("prompts", 1)}
    edges = [(*remap.get(src, (src, slot)), dst, name) for src, slot, dst, name in edges]
    edges += [("model", 1, "prompts", "pipeline"), ("model", 1, "latent", "pipeline"),
              ("model", 1, "decode", "pipeline")]
    return ends[:3] + nodes + ends[3:], edges


def run_api_prompt(settings: Settings) -> dict:
    """The checked API prompt the app runs for a model folder (the folder must exist)."""
    nodes, edges = run_graph(settings, checked_folder(settings))
    return check_api(api_prompt(*as_graph_nodes(nodes, edges, settings.to_dict()), SPECS), SPECS)


# --- the ComfyUI export ---------------------------------------------------------------------------------------

def wan22_vae(info: FolderInfo) -> bool:
    """Wan 2.2's VAE (16x spatial; ComfyUI's Wan22ImageToVideoLatent makes its empty latent)."""
    return info.video and info.vae_factor == 16


def loader_nodes(info: FolderInfo, settings: Settings) -> tuple[list[tuple], list[tuple], tuple, tuple]:
    """The model, text encoder and VAE loaders (and the model-sampling node, key ``model``); returns nodes, edges,
    and the (key, slot) of the CLIP and the VAE."""
    file = f"{info.name}.safetensors"
    family = info.family
    if family in ("sd3", "sd", "sdxl"):
        nodes = [("checkpoint", "CheckpointLoaderSimple", 0, {}, {"ckpt_name": file})]
        clip, vae = ("checkpoint", 1), ("checkpoint", 2)
    else:
        vae_file = ("wan2.2_vae.safetensors" if wan22_vae(info) else "wan_2.1_vae.safetensors") \
            if family == "wan" else "ae.safetensors"
        nodes = [("checkpoint", "UNETLoader", 0, {}, {"unet_name": file}),
                 ("vae", "VAELoader", 0, {}, {"vae_name": vae_file})]
        clip, vae = ("clip", 0), ("vae", 0)
    if family in TEXT_ENCODERS:
        class_type, files = TEXT_ENCODERS[family]
        nodes.append(("clip", class_type, 0, {}, files))
        clip = ("clip", 0)
    if family in ("sd3", "wan"):
        nodes.append(("model", "ModelSamplingSD3", 1, {"flow_shift": "shift"}, {}))
    elif family == "flux":  # a constant shift s is Flux's exponential shift with mu = ln s
        base, top = info.dynamic_shift[:2] if info.dynamic_shift else (math.log(settings.flow_shift),) * 2
        nodes.append(("model", "ModelSamplingFlux", 1, {"width": "width", "height": "height"},
                      {"max_shift": top, "base_shift": base}))
    else:
        nodes.append(("model", "ModelSamplingDiscrete", 1, {},
                      {"sampling": "eps" if info.prediction == "eps" else "v_prediction", "zsnr": False}))
    return nodes, [("checkpoint", 0, "model", "model")], clip, vae


def export_graph(settings: Settings) -> tuple[list[tuple], list[tuple], dict]:
    """The ComfyUI graph of a model folder's settings (core loaders, the pack's sampling nodes), and node titles."""
    info = checked_folder(settings)
    if info.two_experts:
        raise WorkflowError(f"{info.name} is a two-expert Wan 2.2 folder (transformer and transformer_2): its ComfyUI "
                            "export is not supported (TurboSample Sample runs one model); single-transformer Wan "
                            "folders export")
    loaders, edges, clip, vae = loader_nodes(info, settings)
    nodes, middle_edges = middle(settings, info)
    nodes = [(key, class_type, column + 1, mapping, fixed) for key, class_type, column, mapping, fixed in nodes]
    ends = []
    for key, setting in (("positive", "prompt"), ("negative", "negative_prompt")):
        text_key = f"{key}_text" if info.guidance_embeds else key
        ends.append((text_key, "CLIPTextEncode", 1, {setting: "text"}, {}))
        edges.append((*clip, text_key, "clip"))
        if info.guidance_embeds:
            ends.append((key, "FluxGuidance", 1, {"guidance": "guidance"}, {}))
            edges.append((text_key, 0, key, "conditioning"))
    if wan22_vae(info):
        ends.append(("latent", "Wan22ImageToVideoLatent", 1, VIDEO_SIZE, {}))
        edges.append((*vae, "latent", "vae"))
    else:
        ends.append(("latent", LATENTS[info.family], 1, VIDEO_SIZE if info.video else SIZE, {}))
    ends.append(("decode", "VAEDecode", 4, {}, {}))
    edges.append((*vae, "decode", "vae"))
    if info.video:
        ends.append(("save", "SaveAnimatedWEBP", 4, {"filename_prefix": "filename_prefix"},
                     {"fps": FPS, "lossless": False, "quality": 90}))
    else:
        ends.append(("save", "SaveImage", 4, {"filename_prefix": "filename_prefix"}, {}))
    titles = FLUX_TITLES if info.guidance_embeds else TITLES
    return loaders + ends[:-2] + nodes + ends[-2:], edges + middle_edges, titles


def export_api(settings: Settings) -> dict:
    """The ComfyUI API prompt of a model folder's settings."""
    nodes, edges, titles = export_graph(settings)
    return check_api(api_prompt(*as_graph_nodes(nodes, edges, settings.to_dict(), titles), SPECS), SPECS)


def export_ui(settings: Settings) -> dict:
    """The ComfyUI UI workflow of a model folder's settings (the settings themselves in ``extra.turbosample``)."""
    export_api(settings)  # checked first
    nodes, edges, titles = export_graph(settings)
    return ui_workflow(*as_graph_nodes(nodes, edges, settings.to_dict(), titles), SPECS,
                       {"turbosample": {"settings": settings.to_dict()}})


# --- reading an export back -----------------------------------------------------------------------------------

SAMPLING_NODES = ("ModelSamplingSD3", "ModelSamplingFlux", "ModelSamplingDiscrete")
LOADER_FILES = {"CheckpointLoaderSimple": "ckpt_name", "UNETLoader": "unet_name"}


def prompt_text(api: dict, ref, what: str, values: dict) -> str:
    """The text of a CLIPTextEncode, directly or through FluxGuidance (whose guidance is read too)."""
    node = linked_node(api, ref, what, ("CLIPTextEncode", "FluxGuidance"))
    if node["class_type"] == "FluxGuidance":
        values["guidance"] = node["inputs"]["guidance"]
        node = linked_node(api, node["inputs"].get("conditioning"), what, ("CLIPTextEncode",))
    return node["inputs"]["text"]


def settings_from_export(api: dict) -> Settings:
    """The settings of a model folder's ComfyUI export (API format); the folder named by the model file must be
    available (else a WorkflowError says where it was looked for)."""
    sample = sample_inputs(api)
    values: dict = {}
    values["prompt"] = prompt_text(api, sample.get("positive"), "positive", values)
    values["negative_prompt"] = prompt_text(api, sample.get("negative"), "negative", values)
    sampling = read_model_patches(api, sample.get("model"), values, SAMPLING_NODES)
    loader = linked_node(api, sampling["inputs"].get("model"), "the model sampling's model", tuple(LOADER_FILES))
    file = str(loader["inputs"][LOADER_FILES[loader["class_type"]]])
    name = file.removesuffix(".safetensors")
    if name == BUILTIN or "/" in file or "\\" in file:
        raise WorkflowError(f"the workflow's model file {file!r} does not name a model folder")
    info = folder_of(name)
    values["model"] = name
    values["flow_shift"] = info.flow_shift
    if sampling["class_type"] == "ModelSamplingSD3":
        values["flow_shift"] = sampling["inputs"]["shift"]
    elif sampling["class_type"] == "ModelSamplingFlux" and info.dynamic_shift is None:
        values["flow_shift"] = round(math.exp(float(sampling["inputs"]["max_shift"])), 6)
    read_sampling(api, sample, values)
    latent = linked_node(api, sample.get("latent_image"), "the latent", (*set(LATENTS.values()),
                                                                           "Wan22ImageToVideoLatent"))
    read_inputs(values, latent, VIDEO_SIZE if info.video else SIZE)
    saves = [node for node in api.values() if node.get("class_type") in ("SaveImage", "SaveAnimatedWEBP")]
    if saves:
        values["filename_prefix"] = saves[0]["inputs"]["filename_prefix"]
    settings = Settings.from_dict(values)
    check_same_nodes(api, export_api(settings), ("SaveImage", "SaveAnimatedWEBP"))
    return settings
