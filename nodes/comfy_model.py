"""The built-in DiT as a ComfyUI MODEL (ModelPatcher), so every ComfyUI sampler and node can use it."""

from __future__ import annotations

import copy

import torch

from ..models.dit import TinyDiT


class ComfyTinyDiT(TinyDiT):
    """The built-in DiT as ComfyUI's own models behave: ``DIFFUSION_MODEL`` wrappers run around its forward."""

    def forward(self, x, timestep, context=None, control=None, transformer_options=None, **kwargs):
        import comfy.patcher_extension as ext

        options = transformer_options if transformer_options is not None else {}
        wrappers = ext.get_all_wrappers(ext.WrappersMP.DIFFUSION_MODEL, options)
        return ext.WrapperExecutor.new_class_executor(self.plain_forward, self, wrappers).execute(
            x, timestep, context, control, options, **kwargs)

    def plain_forward(self, x, timestep, context=None, control=None, transformer_options=None, **kwargs):
        return TinyDiT.forward(self, x, timestep, context)


def comfy_dit(dit: TinyDiT) -> ComfyTinyDiT:
    """A private copy of ``dit`` (patches never leak into the shared instance) that runs ComfyUI wrappers."""
    copied = copy.deepcopy(dit).requires_grad_(False)
    copied.__class__ = ComfyTinyDiT
    return copied


def builtin_rgb_factors(channels: int) -> tuple[list[list[float]], list[float]]:
    """ComfyUI preview factors for a built-in DiT taking ``channels``: identity for pixel-space weights (3), else a
    linear fit of the built-in weights' autoencoder's decoder."""
    from ..models.autoencoder import rgb_factors
    from ..models.builtin import cached_autoencoder, latent_space

    if channels == 3:
        return [[float(i == j) for j in range(3)] for i in range(3)], [0.0, 0.0, 0.0]
    space = latent_space()
    if space.autoencoder is None or space.channels != channels:
        raise ValueError(f"a {channels}-channel built-in DiT, but the built-in weights' latents have {space.channels}")
    factors, bias = rgb_factors(cached_autoencoder(space.autoencoder))
    return factors.tolist(), bias.tolist()


def builtin_model_patcher(dit: TinyDiT, flow_shift: float):
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models_base

    factors, bias = builtin_rgb_factors(dit.config.in_channels)

    class BuiltinLatentFormat(comfy.latent_formats.LatentFormat):
        """The built-in model's latent space (already at unit scale); previews map channels linearly to RGB."""

        latent_channels = len(factors)
        scale_factor = 1.0
        latent_rgb_factors = factors
        latent_rgb_factors_bias = bias

    class BuiltinConfig(comfy.supported_models_base.BASE):
        unet_config = {"disable_unet_model_creation": True}
        unet_extra_config = {}
        latent_format = BuiltinLatentFormat
        sampling_settings = {"shift": float(flow_shift), "multiplier": 1000}
        supported_inference_dtypes = [torch.float32]
        memory_usage_factor = 1.0

    config = BuiltinConfig({"disable_unet_model_creation": True})
    config.set_inference_dtype(torch.float32, None)
    load_device = comfy.model_management.get_torch_device()
    model = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.FLOW, device=load_device)
    model.diffusion_model = comfy_dit(dit)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device,
                                            offload_device=comfy.model_management.unet_offload_device())
