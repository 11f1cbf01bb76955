"""Declarations of the ComfyUI core nodes that the shipped real-model workflows and the ComfyUI export of a model
folder use (as in ComfyUI 0.3.64).

Only what writing (and reading back) a workflow needs: input names and kinds in ComfyUI's order, defaults, ranges,
outputs and display names. They never run here (the app has its own nodes; loading such a workflow names the nodes
it lacks, unless it is a model folder's export, which the app reads back into its settings). File-name widgets
(models, text encoders, VAEs) are strings: their choices are the files of the ComfyUI that opens the workflow.
"""

from __future__ import annotations

from .spec import NodeSpec, Output, Param


def _never(**_kwargs) -> tuple:
    raise NotImplementedError("a ComfyUI core node: runs in ComfyUI only")


def _node(node_id: str, display_name: str, inputs: tuple[Param, ...], outputs: tuple[Output, ...]) -> NodeSpec:
    return NodeSpec(node_id, display_name, "core", "", inputs, outputs, fn=_never)


def _file(name: str, default: str) -> Param:
    return Param(name, "STRING", default, tooltip="A file name in ComfyUI's models folders.")


SEED_MAX = 2**64 - 1
CORE_NODES: dict[str, NodeSpec] = {spec.node_id: spec for spec in (
    _node("UNETLoader", "Load Diffusion Model",
          (_file("unet_name", ""), Param("weight_dtype", "COMBO", "default",
                                         choices=lambda: ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"])),
          (Output("MODEL", "MODEL"),)),
    _node("CheckpointLoaderSimple", "Load Checkpoint", (_file("ckpt_name", ""),),
          (Output("MODEL", "MODEL"), Output("CLIP", "CLIP"), Output("VAE", "VAE"))),
    _node("DualCLIPLoader", "DualCLIPLoader",
          (_file("clip_name1", ""), _file("clip_name2", ""), Param("type", "COMBO", "flux", choices=lambda: ["flux"]),
           Param("device", "COMBO", "default", choices=lambda: ["default", "cpu"])),
          (Output("CLIP", "CLIP"),)),
    _node("TripleCLIPLoader", "TripleCLIPLoader",
          (_file("clip_name1", ""), _file("clip_name2", ""), _file("clip_name3", "")), (Output("CLIP", "CLIP"),)),
    _node("CLIPLoader", "Load CLIP",
          (_file("clip_name", ""), Param("type", "COMBO", "wan", choices=lambda: ["wan"]),
           Param("device", "COMBO", "default", choices=lambda: ["default", "cpu"])),
          (Output("CLIP", "CLIP"),)),
    _node("VAELoader", "Load VAE", (_file("vae_name", ""),), (Output("VAE", "VAE"),)),
    _node("CLIPTextEncode", "CLIP Text Encode (Prompt)",
          (Param("text", "STRING", "", multiline=True), Param("clip", "CLIP")),
          (Output("CONDITIONING", "CONDITIONING"),)),
    _node("FluxGuidance", "FluxGuidance",
          (Param("conditioning", "CONDITIONING"), Param("guidance", "FLOAT", 3.5, 0.0, 100.0)),
          (Output("CONDITIONING", "CONDITIONING"),)),
    _node("BasicGuider", "BasicGuider", (Param("model", "MODEL"), Param("conditioning", "CONDITIONING")),
          (Output("GUIDER", "GUIDER"),)),
    _node("CFGGuider", "CFGGuider",
          (Param("model", "MODEL"), Param("positive", "CONDITIONING"), Param("negative", "CONDITIONING"),
           Param("cfg", "FLOAT", 8.0, 0.0, 100.0)), (Output("GUIDER", "GUIDER"),)),
    _node("RandomNoise", "RandomNoise", (Param("noise_seed", "INT", 0, 0, SEED_MAX, seed=True),),
          (Output("NOISE", "NOISE"),)),
    _node("KSamplerSelect", "KSamplerSelect", (Param("sampler_name", "COMBO", "euler", choices=lambda: ["euler"]),),
          (Output("SAMPLER", "SAMPLER"),)),
    _node("BasicScheduler", "BasicScheduler",
          (Param("model", "MODEL"), Param("scheduler", "COMBO", "simple", choices=lambda: ["simple"]),
           Param("steps", "INT", 20, 1, 10000), Param("denoise", "FLOAT", 1.0, 0.0, 1.0)),
          (Output("SIGMAS", "SIGMAS"),)),
    _node("SamplerCustomAdvanced", "SamplerCustomAdvanced",
          (Param("noise", "NOISE"), Param("guider", "GUIDER"), Param("sampler", "SAMPLER"), Param("sigmas", "SIGMAS"),
           Param("latent_image", "LATENT")),
          (Output("output", "LATENT"), Output("denoised_output", "LATENT"))),
    _node("EmptySD3LatentImage", "EmptySD3LatentImage",
          (Param("width", "INT", 1024, 16, 16384), Param("height", "INT", 1024, 16, 16384),
           Param("batch_size", "INT", 1, 1, 4096)), (Output("LATENT", "LATENT"),)),
    _node("EmptyHunyuanLatentVideo", "EmptyHunyuanLatentVideo",
          (Param("width", "INT", 848, 16, 16384), Param("height", "INT", 480, 16, 16384),
           Param("length", "INT", 25, 1, 16384), Param("batch_size", "INT", 1, 1, 4096)),
          (Output("LATENT", "LATENT"),)),
    _node("ModelSamplingSD3", "ModelSamplingSD3", (Param("model", "MODEL"), Param("shift", "FLOAT", 3.0, 0.0, 100.0)),
          (Output("MODEL", "MODEL"),)),
    _node("KSampler", "KSampler",
          (Param("model", "MODEL"), Param("seed", "INT", 0, 0, SEED_MAX, seed=True),
           Param("steps", "INT", 20, 1, 10000), Param("cfg", "FLOAT", 8.0, 0.0, 100.0),
           Param("sampler_name", "COMBO", "euler", choices=lambda: ["euler"]),
           Param("scheduler", "COMBO", "simple", choices=lambda: ["simple"]), Param("positive", "CONDITIONING"),
           Param("negative", "CONDITIONING"), Param("latent_image", "LATENT"),
           Param("denoise", "FLOAT", 1.0, 0.0, 1.0)),
          (Output("LATENT", "LATENT"),)),
    _node("ModelSamplingFlux", "ModelSamplingFlux",
          (Param("model", "MODEL"), Param("max_shift", "FLOAT", 1.15, 0.0, 100.0),
           Param("base_shift", "FLOAT", 0.5, 0.0, 100.0), Param("width", "INT", 1024, 16, 16384, 8),
           Param("height", "INT", 1024, 16, 16384, 8)), (Output("MODEL", "MODEL"),)),
    _node("ModelSamplingDiscrete", "ModelSamplingDiscrete",
          (Param("model", "MODEL"),
           Param("sampling", "COMBO", "eps", choices=lambda: ["eps", "v_prediction", "lcm", "x0", "img_to_img"]),
           Param("zsnr", "BOOLEAN", False)), (Output("MODEL", "MODEL"),)),
    _node("EmptyLatentImage", "Empty Latent Image",
          (Param("width", "INT", 512, 16, 16384, 8), Param("height", "INT", 512, 16, 16384, 8),
           Param("batch_size", "INT", 1, 1, 4096)), (Output("LATENT", "LATENT"),)),
    _node("Wan22ImageToVideoLatent", "Wan22ImageToVideoLatent",
          (Param("vae", "VAE"), Param("width", "INT", 1280, 32, 16384, 32), Param("height", "INT", 704, 32, 16384, 32),
           Param("length", "INT", 49, 1, 16384, 4), Param("batch_size", "INT", 1, 1, 4096)),
          (Output("LATENT", "LATENT"),)),
    _node("VAEDecode", "VAE Decode", (Param("samples", "LATENT"), Param("vae", "VAE")), (Output("IMAGE", "IMAGE"),)),
    _node("SaveImage", "Save Image", (Param("images", "IMAGE"), Param("filename_prefix", "STRING", "ComfyUI")), ()),
    _node("SaveAnimatedWEBP", "SaveAnimatedWEBP",
          (Param("images", "IMAGE"), Param("filename_prefix", "STRING", "ComfyUI"),
           Param("fps", "FLOAT", 6.0, 0.01, 1000.0),
           Param("lossless", "BOOLEAN", True), Param("quality", "INT", 80, 0, 100),
           Param("method", "COMBO", "default", choices=lambda: ["default", "fastest", "slowest"])), ()),
)}
