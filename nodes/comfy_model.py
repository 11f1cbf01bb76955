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


def builtin_model_patcher(dit: TinyDiT, flow_shift: float):
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models_base

    class BuiltinLatentFormat(comfy.latent_formats.LatentFormat):
        """Pixel space in [-1, 1]; previews map channels straight to RGB."""

        latent_channels = 3
        scale_factor = 1.0
        latent_rgb_factors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
        latent_rgb_factors_bias = [0.0, 0.0, 0.0]

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
