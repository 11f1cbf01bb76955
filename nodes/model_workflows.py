"""Workflows for real models through ComfyUI's own loaders, with this pack's accelerators and samplers.

The model, text encoder and VAE file names are those of ComfyUI's own examples (the user puts those files in
``models/diffusion_models``, ``models/checkpoints``, ``models/text_encoders`` and ``models/vae``). The MagCache
settings are the published curves' own (Flux: 28 steps; Wan 2.1 1.3B: 50 steps), so the step counts match them.
"""

from __future__ import annotations

from .core_specs import CORE_NODES
from .graph_json import GraphNode as N
from .registry import NODE_BY_ID

SPECS = {**NODE_BY_ID, **CORE_NODES}
PROMPT = "a red fox in deep snow, morning light, photograph"
NEGATIVE = "blurry, low quality"


def flux_dev_magcache_ras() -> tuple[list[N], list[tuple]]:
    """Flux-dev (guidance-distilled: no negative prompt) with MagCache on the published Flux curve, then RAS."""
    nodes = [
        N("unet", "UNETLoader", 0, {"unet_name": "flux1-dev.safetensors"}),
        N("clip", "DualCLIPLoader", 0, {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp16.safetensors",
                                        "type": "flux"}),
        N("vae", "VAELoader", 0, {"vae_name": "ae.safetensors"}),
        N("magcache", "TurboSampleMagCache", 1, {"calibration": "flux", "threshold": 0.24, "max_skip_steps": 5,
                                                 "retention_ratio": 0.1, "resample": "off"}),
        N("ras", "TurboSampleRAS", 1, {"sample_ratio": 0.5}),
        N("positive", "CLIPTextEncode", 1, {"text": PROMPT}, "Prompt"),
        N("guidance", "FluxGuidance", 2, {"guidance": 3.5}),
        N("guider", "BasicGuider", 2),
        N("noise", "RandomNoise", 2, {"noise_seed": 1}),
        N("sampler", "KSamplerSelect", 2, {"sampler_name": "euler"}),
        N("sigmas", "BasicScheduler", 2, {"scheduler": "simple", "steps": 28}),
        N("latent", "EmptySD3LatentImage", 2, {"width": 1024, "height": 1024}),
        N("sample", "SamplerCustomAdvanced", 3),
        N("decode", "VAEDecode", 3),
        N("save", "SaveImage", 3, {"filename_prefix": "flux_magcache_ras"}),
    ]
    edges = [("unet", 0, "magcache", "model"), ("magcache", 0, "ras", "model"), ("clip", 0, "positive", "clip"),
             ("positive", 0, "guidance", "conditioning"), ("ras", 0, "guider", "model"),
             ("guidance", 0, "guider", "conditioning"), ("ras", 0, "sigmas", "model"), ("noise", 0, "sample", "noise"),
             ("guider", 0, "sample", "guider"), ("sampler", 0, "sample", "sampler"), ("sigmas", 0, "sample", "sigmas"),
             ("latent", 0, "sample", "latent_image"), ("sample", 0, "decode", "samples"), ("vae", 0, "decode", "vae"),
             ("decode", 0, "save", "images")]
    return nodes, edges


def sd35_dualfast() -> tuple[list[N], list[tuple]]:
    """SD3.5 (checkpoint + three text encoders) sampled by the pack's DualFast around DPM++ 2M, pack scheduler."""
    nodes = [
        N("ckpt", "CheckpointLoaderSimple", 0, {"ckpt_name": "sd3.5_medium.safetensors"}),
        N("clip", "TripleCLIPLoader", 0, {"clip_name1": "clip_g.safetensors", "clip_name2": "clip_l.safetensors",
                                          "clip_name3": "t5xxl_fp16.safetensors"}),
        N("latent", "EmptySD3LatentImage", 0, {"width": 1024, "height": 1024}),
        N("shift", "ModelSamplingSD3", 1, {"shift": 3.0}),
        N("positive", "CLIPTextEncode", 1, {"text": PROMPT}, "Positive prompt"),
        N("negative", "CLIPTextEncode", 1, {"text": NEGATIVE}, "Negative prompt"),
        N("guider", "CFGGuider", 2, {"cfg": 4.5}),
        N("noise", "RandomNoise", 2, {"noise_seed": 1}),
        N("sampler", "TurboSampleDualFastSampler", 2, {"base_sampler": "dpmpp_2m", "coefficient": 0.2}),
        N("sigmas", "TurboSampleScheduler", 2, {"scheduler": "simple", "steps": 20}),
        N("sample", "SamplerCustomAdvanced", 3),
        N("decode", "VAEDecode", 3),
        N("save", "SaveImage", 3, {"filename_prefix": "sd35_dualfast"}),
    ]
    edges = [("ckpt", 0, "shift", "model"), ("clip", 0, "positive", "clip"), ("clip", 0, "negative", "clip"),
             ("shift", 0, "guider", "model"), ("positive", 0, "guider", "positive"),
             ("negative", 0, "guider", "negative"), ("shift", 0, "sigmas", "model"), ("noise", 0, "sample", "noise"),
             ("guider", 0, "sample", "guider"), ("sampler", 0, "sample", "sampler"), ("sigmas", 0, "sample", "sigmas"),
             ("latent", 0, "sample", "latent_image"), ("sample", 0, "decode", "samples"), ("ckpt", 2, "decode", "vae"),
             ("decode", 0, "save", "images")]
    return nodes, edges


def wan21_t2v_magcache() -> tuple[list[N], list[tuple]]:
    """Wan 2.1 text-to-video 1.3B with MagCache on the published curve (50 steps), KSampler, animated WEBP."""
    nodes = [
        N("unet", "UNETLoader", 0, {"unet_name": "wan2.1_t2v_1.3B_fp16.safetensors"}),
        N("clip", "CLIPLoader", 0, {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan"}),
        N("vae", "VAELoader", 0, {"vae_name": "wan_2.1_vae.safetensors"}),
        N("shift", "ModelSamplingSD3", 1, {"shift": 8.0}),
        N("magcache", "TurboSampleMagCache", 1, {"calibration": "wan2.1_t2v_1.3B", "threshold": 0.12,
                                                 "max_skip_steps": 4, "retention_ratio": 0.2, "resample": "off"}),
        N("latent", "EmptyHunyuanLatentVideo", 1, {"width": 832, "height": 480, "length": 33}),
        N("positive", "CLIPTextEncode", 2, {"text": PROMPT.replace("photograph", "the fox walks toward the camera")},
          "Positive prompt"),
        N("negative", "CLIPTextEncode", 2, {"text": NEGATIVE}, "Negative prompt"),
        N("ksampler", "KSampler", 3, {"seed": 1, "steps": 50, "cfg": 6.0, "sampler_name": "uni_pc",
                                      "scheduler": "simple"}),
        N("decode", "VAEDecode", 3),
        N("save", "SaveAnimatedWEBP", 3, {"filename_prefix": "wan_magcache", "fps": 16.0}),
    ]
    edges = [("unet", 0, "shift", "model"), ("shift", 0, "magcache", "model"), ("clip", 0, "positive", "clip"),
             ("clip", 0, "negative", "clip"), ("magcache", 0, "ksampler", "model"),
             ("positive", 0, "ksampler", "positive"), ("negative", 0, "ksampler", "negative"),
             ("latent", 0, "ksampler", "latent_image"), ("ksampler", 0, "decode", "samples"),
             ("vae", 0, "decode", "vae"), ("decode", 0, "save", "images")]
    return nodes, edges


GRAPHS = {"flux_dev_magcache_ras": flux_dev_magcache_ras, "sd35_dualfast": sd35_dualfast,
          "wan21_t2v_magcache": wan21_t2v_magcache}
