"""A pipeline folder loaded and run: the pipeline's own text encoders (``encode_prompt``) and VAE (``vae.decode``),
and its denoiser as our ``DiffusionModel`` (``model_for``), whose loop is the pack's (``samplers.run.sample``).

Loading is offline (``local_files_only``), from ``.safetensors`` only (``use_safetensors=True``), without
``trust_remote_code``, after ``inspect_folder`` accepted the folder. Device and precision are chosen by the caller
(``models/placement.py``); model CPU offload is diffusers' own (``enable_model_cpu_offload``, through accelerate).
"""

from __future__ import annotations

import gc
import json
import math
from dataclasses import dataclass

import torch

from .diffusers_folder import FLUX_GUIDANCE, UNUSED, FolderInfo, ModelFolderError

# --- loading -------------------------------------------------------------------------------------------------

@dataclass
class LoadedPipeline:
    """A loaded pipeline with the network our loop calls."""

    info: FolderInfo
    pipe: object
    network: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    offload: bool

    @property
    def execution_device(self) -> torch.device:
        return torch.device(self.pipe._execution_device) if self.offload else self.device

    def onload(self) -> None:
        """With model CPU offload: bring the denoiser onto the GPU (its accelerate hook, as its own forward would)."""
        for module in denoisers(self.pipe, self.info):
            hook = getattr(module, "_hf_hook", None)
            if hook is not None and hasattr(hook, "pre_forward"):
                hook.pre_forward(module)

    def release(self) -> None:
        """After a run with model CPU offload: every model back in CPU memory (the pipeline's own end-of-call)."""
        if self.offload:
            self.pipe.maybe_free_model_hooks()


_LOADED: dict[tuple, LoadedPipeline] = {}


def denoisers(pipe, info: FolderInfo) -> list[torch.nn.Module]:
    if info.family in ("sd", "sdxl"):
        return [pipe.unet]
    return [pipe.transformer] + ([pipe.transformer_2] if info.two_experts else [])


def build_network(pipe, info: FolderInfo) -> torch.nn.Module:
    """The network our DiffusionModel calls: DiffusersDiT, DiffusersUNet or WanExperts."""
    from ..accel.diffusers_adapters import DiffusersDiT
    from .diffusers_networks import DiffusersUNet, WanExperts

    if info.family in ("sd", "sdxl"):
        return DiffusersUNet(pipe.unet, info.vae_factor)
    if info.two_experts:
        return WanExperts(pipe.transformer, pipe.transformer_2, info.boundary_ratio)
    return DiffusersDiT(pipe.transformer)


def out_of_memory(what: str, info: FolderInfo, device: torch.device) -> Exception:
    """``samplers.run.OutOfMemory`` for loading / encoding / decoding, naming what to lower."""
    from ..samplers.run import OutOfMemory

    if device.type == "cuda":
        torch.cuda.empty_cache()
    return OutOfMemory(f"out of memory on {device} {what} {info.name} ({info.label}); load it with --offload, use "
                       "--dtype bf16 or fp16, or lower the resolution, batch size or frame count")


def load(info: FolderInfo, device: torch.device, dtype: torch.dtype, offload: bool = False) -> LoadedPipeline:
    """The folder's pipeline in ``dtype`` on ``device`` (or with model CPU offload onto it); the last one loaded
    stays cached, so a second run starts at once. Loading another drops it first (big models do not fit twice)."""
    key = (str(info.path.resolve()), info, str(device), dtype, bool(offload))
    if key in _LOADED:
        return _LOADED[key]
    unload()
    import diffusers

    overrides = {name: None for name in UNUSED if name in json.loads((info.path / "model_index.json").read_text())}
    if info.family == "sd":
        overrides["requires_safety_checker"] = False
    try:
        pipe = getattr(diffusers, info.pipeline).from_pretrained(
            info.path, local_files_only=True, use_safetensors=True, dtype=dtype, variant=info.variant,
            **overrides)
        if offload:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
    except torch.OutOfMemoryError:
        unload()
        raise out_of_memory("loading", info, device) from None
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ModelFolderError(f"cannot load {info.name} ({info.pipeline}) from {info.path}: {exc}") from None
    pipe.set_progress_bar_config(disable=True)
    loaded = LoadedPipeline(info, pipe, build_network(pipe, info).eval().requires_grad_(False), device, dtype,
                            bool(offload))
    _LOADED[key] = loaded
    return loaded


def unload() -> None:
    """Forget the cached pipeline (its memory is freed once nothing else holds it)."""
    _LOADED.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- the denoiser ------------------------------------------------------------------------------------------------

def model_sampling_for(info: FolderInfo, flow_shift: float, width: int, height: int):
    """Flow models: a constant shift (the ``flow_shift`` setting; Flux dev: e^mu for this resolution, as the
    pipeline's dynamic shifting); SD / SDXL: EPS or v-prediction on the scaled-linear DDPM schedule."""
    from ..samplers.flow_shift import resolution_mu
    from ..samplers.model_sampling import DiscreteSampling, FlowSampling

    if info.prediction != "flow":
        return DiscreteSampling(info.prediction, linear_start=info.betas[0], linear_end=info.betas[1])
    if info.dynamic_shift is not None:
        base, top, base_len, max_len = info.dynamic_shift
        tokens = (height // info.multiple) * (width // info.multiple)
        return FlowSampling(shift=math.exp(resolution_mu(max(tokens, 1), base, top, base_len, max_len)))
    return FlowSampling(shift=float(flow_shift))


def model_for(loaded: LoadedPipeline, flow_shift: float, width: int, height: int):
    """Our DiffusionModel of the loaded pipeline's denoiser (size factor for Bottleneck Sampling, offload hook)."""
    from ..samplers.denoiser import DiffusionModel

    info = loaded.info
    factor = info.patch if info.family not in ("sd", "sdxl") else loaded.network.size_factor
    return DiffusionModel(loaded.network, model_sampling_for(info, flow_shift, width, height),
                          name=f"folder:{info.name}", size_factor=factor,
                          onload=loaded.onload if loaded.offload else None)


# --- prompts and images --------------------------------------------------------------------------------------

@torch.no_grad()
def encode(loaded: LoadedPipeline, prompt: str, negative: str, guidance: float = FLUX_GUIDANCE) -> tuple[list, list]:
    """(positive, negative) CONDITIONING from the pipeline's own ``encode_prompt``; entries are context mappings."""
    pipe, info, device = loaded.pipe, loaded.info, loaded.execution_device
    try:
        if info.family == "sd3":
            pe, npe, pp, npp = pipe.encode_prompt(prompt, None, None, device=device, negative_prompt=negative,
                                                  do_classifier_free_guidance=True)
            pos, neg = {"encoder_hidden_states": pe, "pooled_projections": pp}, \
                {"encoder_hidden_states": npe, "pooled_projections": npp}
        elif info.family == "flux":
            encoded = [pipe.encode_prompt(text, None, device=device)[:2] for text in (prompt, negative)]
            pos, neg = ({"encoder_hidden_states": e, "pooled_projections": p} for e, p in encoded)
            if info.guidance_embeds:
                pos["guidance"] = neg["guidance"] = torch.tensor([float(guidance)], device=device)
        elif info.family == "sd":
            pe, npe = pipe.encode_prompt(prompt, device, 1, True, negative_prompt=negative)
            pos, neg = {"encoder_hidden_states": pe}, {"encoder_hidden_states": npe}
        elif info.family == "sdxl":
            pe, npe, pp, npp = pipe.encode_prompt(prompt, device=device, negative_prompt=negative,
                                                  do_classifier_free_guidance=True)
            pos, neg = {"encoder_hidden_states": pe, "pooled_projections": pp}, \
                {"encoder_hidden_states": npe, "pooled_projections": npp}
        else:
            pe, npe = pipe.encode_prompt(prompt, negative_prompt=negative, do_classifier_free_guidance=True,
                                         device=device, max_sequence_length=512)
            pos, neg = {"encoder_hidden_states": pe}, {"encoder_hidden_states": npe}
    except torch.OutOfMemoryError:
        raise out_of_memory("encoding the prompt with", info, device) from None
    return [[pos, {}]], [[neg, {}]]


def vae_input(loaded: LoadedPipeline, latents: torch.Tensor, vae) -> torch.Tensor:
    """Sampled latents -> what the VAE decodes (the pipeline's own scaling for its family)."""
    config = vae.config
    z = latents.to(device=loaded.execution_device, dtype=torch.float32)
    if loaded.info.video:
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean, device=z.device).view(shape)
        std = torch.tensor(config.latents_std, device=z.device).view(shape)
        return z * std + mean
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, len(mean), 1, 1)
        return z * torch.tensor(std, device=z.device).view(shape) / config.scaling_factor + \
            torch.tensor(mean, device=z.device).view(shape)
    return z / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)


@torch.no_grad()
def decode(loaded: LoadedPipeline, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> ComfyUI IMAGE (N, H, W, 3) in [0, 1] on the CPU; a video's frames follow one another (N = B x F)."""
    pipe, info = loaded.pipe, loaded.info
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    dtype = torch.float32 if upcast else vae.dtype
    try:
        if upcast:
            vae.to(torch.float32)
        decoded = vae.decode(vae_input(loaded, latents, vae).to(dtype), return_dict=False)[0]
        if info.video:
            frames = pipe.video_processor.postprocess_video(decoded, output_type="pt")  # (B, F, 3, H, W)
            images = frames.flatten(0, 1)
        else:
            images = pipe.image_processor.postprocess(decoded, output_type="pt")
    except torch.OutOfMemoryError:
        raise out_of_memory("decoding with the VAE of", info, loaded.execution_device) from None
    finally:
        if upcast:
            vae.to(torch.float16)
        loaded.release()
    return images.float().clamp(0, 1).permute(0, 2, 3, 1).cpu()
