"""Declarations of the ComfyUI core nodes that the ComfyUI export of a model folder uses (ComfyUI 0.3.64).

Only what writing and reading such a workflow needs: input names, kinds and ComfyUI's order, defaults, ranges and
outputs. They never run here (``run_api`` executes the app's own graph); file-name widgets (model, text encoders,
VAE) are plain strings, since their choices are the files of the ComfyUI installation that opens the workflow.
"""

from __future__ import annotations

from .spec import NodeSpec, Output, Param

MAX_RESOLUTION = 16384


def _comfy_only(**_kwargs) -> tuple:
    raise NotImplementedError("a ComfyUI core node: it runs in ComfyUI, not in this app")


def _node(node_id: str, display_name: str, inputs: tuple[Param, ...], outputs: tuple[Output, ...],
          output_node: bool = False) -> NodeSpec:
    return NodeSpec(node_id, display_name, "ComfyUI core", "", inputs, outputs, fn=_comfy_only, output_node=output_node)


def _file(name: str) -> Param:
    return Param(name, "STRING", "", tooltip="A file name in ComfyUI's models folders.")


def _size(name: str, default: int, step: int, low: int = 16) -> Param:
    return Param(name, "INT", default, low, MAX_RESOLUTION, step)


MODEL, CLIP, VAE = Output("MODEL", "MODEL"), Output("CLIP", "CLIP"), Output("VAE", "VAE")
CONDITIONING, LATENT = Output("CONDITIONING", "CONDITIONING"), Output("LATENT", "LATENT")

COMFY_CORE: dict[str, NodeSpec] = {spec.node_id: spec for spec in (
    _node("CheckpointLoaderSimple", "Load Checkpoint", (_file("ckpt_name"),), (MODEL, CLIP, VAE)),
    _node("UNETLoader", "Load Diffusion Model",
          (_file("unet_name"), Param("weight_dtype", "COMBO", "default",
                                     choices=lambda: ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"])),
          (MODEL,)),
    _node("CLIPLoader", "Load CLIP",
          (_file("clip_name"), Param("type", "COMBO", "wan", choices=lambda: ["stable_diffusion", "sd3", "wan"]),
           Param("device", "COMBO", "default", choices=lambda: ["default", "cpu"])), (CLIP,)),
    _node("DualCLIPLoader", "DualCLIPLoader",
          (_file("clip_name1"), _file("clip_name2"),
           Param("type", "COMBO", "flux", choices=lambda: ["sdxl", "sd3", "flux"]),
           Param("device", "COMBO", "default", choices=lambda: ["default", "cpu"])), (CLIP,)),
    _node("TripleCLIPLoader", "TripleCLIPLoader", (_file("clip_name1"), _file("clip_name2"), _file("clip_name3")),
          (CLIP,)),
    _node("VAELoader", "Load VAE", (_file("vae_name"),), (VAE,)),
    _node("ModelSamplingSD3", "ModelSamplingSD3",
          (Param("model", "MODEL"), Param("shift", "FLOAT", 3.0, 0.0, 100.0, 0.01)), (MODEL,)),
    _node("ModelSamplingFlux", "ModelSamplingFlux",
          (Param("model", "MODEL"), Param("max_shift", "FLOAT", 1.15, 0.0, 100.0, 0.01),
           Param("base_shift", "FLOAT", 0.5, 0.0, 100.0, 0.01), _size("width", 1024, 8), _size("height", 1024, 8)),
          (MODEL,)),
    _node("ModelSamplingDiscrete", "ModelSamplingDiscrete",
          (Param("model", "MODEL"),
           Param("sampling", "COMBO", "eps", choices=lambda: ["eps", "v_prediction", "lcm", "x0", "img_to_img"]),
           Param("zsnr", "BOOLEAN", False)), (MODEL,)),
    _node("CLIPTextEncode", "CLIP Text Encode (Prompt)",
          (Param("text", "STRING", "", multiline=True), Param("clip", "CLIP")), (CONDITIONING,)),
    _node("FluxGuidance", "FluxGuidance",
          (Param("conditioning", "CONDITIONING"), Param("guidance", "FLOAT", 3.5, 0.0, 100.0, 0.1)), (CONDITIONING,)),
    _node("EmptyLatentImage", "Empty Latent Image",
          (_size("width", 512, 8), _size("height", 512, 8), Param("batch_size", "INT", 1, 1, 4096)), (LATENT,)),
    _node("EmptySD3LatentImage", "EmptySD3LatentImage",
          (_size("width", 1024, 16), _size("height", 1024, 16), Param("batch_size", "INT", 1, 1, 4096)), (LATENT,)),
    _node("EmptyHunyuanLatentVideo", "EmptyHunyuanLatentVideo",
          (_size("width", 848, 16), _size("height", 480, 16), Param("length", "INT", 25, 1, MAX_RESOLUTION, 4),
           Param("batch_size", "INT", 1, 1, 4096)), (LATENT,)),
    _node("Wan22ImageToVideoLatent", "Wan22ImageToVideoLatent",
          (Param("vae", "VAE"), _size("width", 1280, 32, 32), _size("height", 704, 32, 32),
           Param("length", "INT", 49, 1, MAX_RESOLUTION, 4), Param("batch_size", "INT", 1, 1, 4096)), (LATENT,)),
    _node("VAEDecode", "VAE Decode", (Param("samples", "LATENT"), Param("vae", "VAE")), (Output("IMAGE", "IMAGE"),)),
    _node("SaveAnimatedWEBP", "SaveAnimatedWEBP",
          (Param("images", "IMAGE"), Param("filename_prefix", "STRING", "ComfyUI"),
           Param("fps", "FLOAT", 6.0, 0.01, 1000.0, 0.01), Param("lossless", "BOOLEAN", True),
           Param("quality", "INT", 80, 0, 100),
           Param("method", "COMBO", "default", choices=lambda: ["default", "fastest", "slowest"])), (),
          output_node=True),
)}
