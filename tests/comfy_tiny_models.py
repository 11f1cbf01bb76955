"""Run under ComfyUI's Python (cwd = ComfyUI checkout): write random-weight checkpoints of the architectures the
real-model workflows load, under the file names those workflows use, into ``<models dir>``:

* ``diffusion_models/flux1-dev.safetensors``: Flux with guidance embedding, 1 double + 1 single block. ComfyUI
  detects Flux with a fixed width (3072, 24 heads, 4096-d text), so this "tiny" one still has ~0.55 B parameters.
* ``checkpoints/sd3.5_medium.safetensors``: MMDiT (depth 2, width 128) with a 16-channel VAE, one file.
* ``diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors``: Wan 2.1 text-to-video, width 128, 2 blocks.
* ``vae/ae.safetensors`` (Flux) and ``vae/wan_2.1_vae.safetensors``: ComfyUI's VAE classes at their fixed sizes.
* ``text_encoders/*``: one-tensor placeholders, so the loaders' file lists hold the workflows' names; the test
  feeds conditioning itself (T5-XXL and UMT5-XXL are ~5 B parameters, too big to build here).

Every file is then loaded back by ComfyUI's own loaders (``comfy.sd``), so a file ComfyUI would not detect fails
here. Prints one JSON object: file -> parameter count.
"""

import json
import os
import sys
from pathlib import Path

import torch

models = Path(sys.argv[2])
sys.path.insert(0, os.getcwd())  # ComfyUI's checkout

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True

import comfy.ldm.models.autoencoder as autoencoder  # noqa: E402
import comfy.ldm.wan.vae as wan_vae  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.supported_models as sm  # noqa: E402
import comfy.utils  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

torch.manual_seed(0)
written: dict[str, int] = {}


def randomize(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Small random weights (ComfyUI's layers start uninitialised), norms at 1, biases at 0."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.normal_(0, min(0.02, p[0].numel() ** -0.5))
            elif "norm" in name or name.endswith(("scale", "gamma")):
                p.fill_(1.0)
            else:
                p.zero_()
    return {k: v.contiguous() for k, v in module.state_dict().items()}


def save(sd: dict[str, torch.Tensor], relative: str, dtype: torch.dtype = torch.float16) -> Path:
    path = models / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}, str(path))
    written[relative] = sum(v.numel() for v in sd.values())
    return path


def diffusion_model(cls, unet_config: dict) -> dict[str, torch.Tensor]:
    config = cls(dict(unet_config))
    config.set_inference_dtype(torch.bfloat16, None)
    return randomize(config.get_model({}, device=torch.device("cpu")).diffusion_model)


def image_vae() -> dict[str, torch.Tensor]:
    """The 16-channel AutoencoderKL of SD3 and Flux, as ComfyUI builds it from such a state dict."""
    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    vae = autoencoder.AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
        decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": ddconfig})
    return randomize(vae)


flux = save(diffusion_model(sm.Flux, {
    "image_model": "flux", "in_channels": 16, "patch_size": 2, "out_channels": 16, "vec_in_dim": 768,
    "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 1,
    "depth_single_blocks": 1, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True, "guidance_embed": True}),
    "diffusion_models/flux1-dev.safetensors", torch.bfloat16)
ae = save(image_vae(), "vae/ae.safetensors")
mmdit = diffusion_model(sm.SD3, {
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None, "adm_in_channels": 2048,
    "pos_embed_max_size": 16, "num_patches": 256, "pos_embed_scaling_factor": None,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128}}})
sd35 = save({**{f"model.diffusion_model.{k}": v for k, v in mmdit.items()},
             **{f"first_stage_model.{k}": v for k, v in image_vae().items()}}, "checkpoints/sd3.5_medium.safetensors")
wan = save(diffusion_model(sm.WAN21_T2V, {
    "image_model": "wan2.1", "model_type": "t2v", "dim": 128, "ffn_dim": 256, "freq_dim": 256, "num_heads": 1,
    "num_layers": 2, "in_dim": 16, "out_dim": 16, "patch_size": (1, 2, 2), "window_size": (-1, -1),
    "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}), "diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors")
wan_ae = save(randomize(wan_vae.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                       temperal_downsample=[False, True, True], dropout=0.0)),
              "vae/wan_2.1_vae.safetensors")
for name in ("clip_l", "clip_g", "t5xxl_fp16", "umt5_xxl_fp8_e4m3fn_scaled"):
    save({"placeholder": torch.zeros(1)}, f"text_encoders/{name}.safetensors")

# ComfyUI's own loaders must take every file as the architecture it stands for
assert type(comfy.sd.load_diffusion_model(str(flux)).model).__name__ == "Flux"
assert type(comfy.sd.load_diffusion_model(str(wan)).model).__name__ == "WAN21"
model, _clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(str(sd35), output_vae=True, output_clip=False)
assert type(model.model).__name__ == "SD3" and vae.latent_channels == 16
for path in (ae, wan_ae):
    assert comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path))).latent_channels == 16
print(json.dumps(written))
