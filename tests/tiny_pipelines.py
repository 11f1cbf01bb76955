"""Tiny random-weight diffusers pipelines, one per supported family, written with ``save_pretrained``.

Nothing is downloaded: configs are small by hand, tokenizers are made here (a character-level BPE for CLIP, a
character-level Unigram for T5 / UMT5, both backed by the ``tokenizers`` library), weights are random. The VAEs keep
the real spatial factors (8; Wan 2.2's VAE 16; Wan: 4 temporal), so size rules are the real ones (SD3 / Flux /
Wan 2.1: multiples of 16 pixels, Wan 2.2 TI2V: 32, SD / SDXL: 8, Wan frames 4k + 1); everything else is a few
channels wide.

    python tests/tiny_pipelines.py OUT_DIR      # writes every family under OUT_DIR/<name>
"""

from __future__ import annotations

import string
import sys
from collections.abc import Callable
from pathlib import Path

import torch

CHARS = list(string.ascii_lowercase + string.digits + ",.!'-")
TEXT_LEN = 16  # tokenizer model_max_length: short prompts keep the text encoders tiny


def clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in CHARS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TEXT_LEN)


def t5_tokenizer():
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in CHARS] + [("\u2581" + c, -2.5) for c in CHARS]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=TEXT_LEN)


def clip_text(hidden: int, projection: bool = False, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(CHARS) * 2 + 2, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=TEXT_LEN + 2,
                            projection_dim=hidden, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def t5_text(d_model: int, umt5: bool = False, seed: int = 0):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    kwargs = dict(vocab_size=len(CHARS) * 2 + 4, d_model=d_model, d_kv=4, d_ff=2 * d_model, num_layers=1,
                  num_heads=2, relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                  eos_token_id=1)
    if umt5:
        return UMT5EncoderModel(UMT5Config(**kwargs)).eval()
    return T5EncoderModel(T5Config(**kwargs)).eval()


def image_vae(latent_channels: int, flow: bool):
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         block_out_channels=(4, 4, 4, 4),
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         layers_per_block=1, norm_num_groups=2, sample_size=32, scaling_factor=0.5,
                         shift_factor=0.1 if flow else None, mid_block_add_attention=False).eval()


def wan_vae(wan22: bool = False):
    """Wan 2.1's VAE (8x spatial), or Wan 2.2's (residual, 2x2 pixel patches, 16x spatial) with 8 latent channels."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(1)
    if wan22:
        return AutoencoderKLWan(base_dim=4, decoder_base_dim=4, z_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                temperal_downsample=[False, True, True], latents_mean=[0.1, -0.1] * 4,
                                latents_std=[1.5, 2.0] * 4, is_residual=True, in_channels=12, out_channels=12,
                                patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4).eval()
    return AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True], latents_mean=[0.1, -0.1, 0.2, 0.0],
                            latents_std=[1.5, 2.0, 1.0, 1.2]).eval()


def sd3(dual_attention: bool = False):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(2)
    transformer = SD3Transformer2DModel(
        sample_size=4, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16, out_channels=4,
        pos_embed_max_size=16, dual_attention_layers=(0,) if dual_attention else ()).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=image_vae(4, True),
        text_encoder=clip_text(8, True, 3), tokenizer=clip_tokenizer(), text_encoder_2=clip_text(8, True, 4),
        tokenizer_2=clip_tokenizer(), text_encoder_3=t5_text(16, seed=5), tokenizer_3=t5_tokenizer())


def flux(dev: bool = True):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(2)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                         pooled_projection_dim=8, axes_dims_rope=(2, 2, 4),
                                         guidance_embeds=dev).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0 if dev else 1.0, use_dynamic_shifting=dev, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(transformer=transformer, scheduler=scheduler, vae=image_vae(4, True),
                        text_encoder=clip_text(8, seed=3), tokenizer=clip_tokenizer(),
                        text_encoder_2=t5_text(16, seed=5), tokenizer_2=t5_tokenizer())


def unet(cross_attention_dim: int, xl: bool):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(2)
    extra = dict(addition_embed_type="text_time", addition_time_embed_dim=4,
                 projection_class_embeddings_input_dim=8 + 6 * 4) if xl else {}
    return UNet2DConditionModel(sample_size=4, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=cross_attention_dim, **extra).eval()


def sd15(prediction: str = "epsilon"):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       prediction_type=prediction, timestep_spacing="leading", steps_offset=1)
    return StableDiffusionPipeline(unet=unet(8, False), scheduler=scheduler, vae=image_vae(4, False),
                                   text_encoder=clip_text(8, seed=3), tokenizer=clip_tokenizer(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    return StableDiffusionXLPipeline(unet=unet(16, True), scheduler=scheduler, vae=image_vae(4, False),
                                     text_encoder=clip_text(8, seed=3), tokenizer=clip_tokenizer(),
                                     text_encoder_2=clip_text(8, True, 4), tokenizer_2=clip_tokenizer())


def wan_transformer(seed: int, channels: int = 4):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                 in_channels=channels, out_channels=channels, text_dim=16, freq_dim=16, ffn_dim=32,
                                 num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                 rope_max_seq_len=32).eval()


def wan(two_experts: bool = False, ti2v: bool = False):
    """Wan 2.1; Wan 2.2 A14B (two experts switched at boundary_ratio); Wan 2.2 TI2V (its VAE, per-token
    timesteps: expand_timesteps)."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    extra = dict(transformer_2=wan_transformer(7), boundary_ratio=0.875) if two_experts else {}
    if ti2v:
        extra = dict(expand_timesteps=True)
    return WanPipeline(transformer=wan_transformer(2, 8 if ti2v else 4), scheduler=scheduler, vae=wan_vae(ti2v),
                       text_encoder=t5_text(16, umt5=True, seed=5), tokenizer=t5_tokenizer(), **extra)


FAMILIES: dict[str, Callable] = {
    "sd3": sd3, "sd35": lambda: sd3(dual_attention=True), "flux_dev": flux, "flux_schnell": lambda: flux(False),
    "sd15": sd15, "sd2_v": lambda: sd15("v_prediction"), "sdxl": sdxl, "wan21": wan,
    "wan22": lambda: wan(two_experts=True), "wan22_ti2v": lambda: wan(ti2v=True),
}


def write(root: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Each family's pipeline saved under ``root/<name>`` (safetensors); returns name -> folder."""
    out = {}
    for name in names or list(FAMILIES):
        folder = Path(root) / name
        if not (folder / "model_index.json").is_file():
            FAMILIES[name]().save_pretrained(folder, safe_serialization=True)
        out[name] = folder
    return out


if __name__ == "__main__":
    for name, folder in write(Path(sys.argv[1])).items():
        print(name, folder)
