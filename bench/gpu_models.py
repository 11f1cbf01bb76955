"""Models for bench/gpu_check.py: the built-in DiT and diffusers SD3 / Flux / Wan transformers (random weights) at
production shapes (public model configs) or tiny ones, with their conditioning, latent shape and CFG.

``reference_and_device`` gives the same weights twice: float32 on the CPU (the reference) and cast to the checked
dtype on the checked device, modules listed in diffusers' ``_keep_in_fp32_modules`` kept in float32 as
``from_pretrained(torch_dtype=...)`` keeps them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from turbosample.models.builtin import latent_space

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FAMILIES = ("builtin", "sd3", "flux", "wan")


@dataclass
class Spec:
    """What a family needs: diffusers class and config (None: the built-in model), latent shape, text shapes."""

    name: str
    cls: str | None
    config: dict
    latent: tuple[int, ...]
    text_tokens: int
    text_dim: int
    pooled_dim: int | None
    cfg: float
    guidance: float | None
    shift: float
    curve: str | None  # published MagCache curve for these shapes

    @property
    def image_tokens(self) -> int:
        if self.name == "wan":
            return self.latent[2] * (self.latent[3] // 2) * (self.latent[4] // 2)
        p = latent_space().patch if self.name == "builtin" else 2
        return (self.latent[-2] // p) * (self.latent[-1] // p)


def spec(name: str, tiny: bool, wan_frames: int = 33) -> Spec:
    """Production shapes (Flux-dev / SD3-medium at 1024x1024, Wan2.1-1.3B at 480x832) or tiny ones."""
    if name == "builtin":
        side = 32 if tiny else 64
        return Spec("builtin", None, {}, latent_space().latent_shape(1, side, side), 1, 384, None, 4.0, None, 1.0,
                    None)
    if name == "flux":
        cfg = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                   num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                   guidance_embeds=True, axes_dims_rope=(16, 56, 56))
        latent, text = (1, 16, 128, 128), 512
        if tiny:
            cfg.update(num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                       joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=(4, 6, 6))
            latent, text = (1, 16, 16, 16), 8
        return Spec("flux", "FluxTransformer2DModel", cfg, latent, text, cfg["joint_attention_dim"],
                    cfg["pooled_projection_dim"], 1.0, 3.5, 3.0, "flux")
    if name == "sd3":
        cfg = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                   num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)
        latent, text = (1, 16, 128, 128), 333
        if tiny:
            cfg.update(sample_size=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
                       joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=16,
                       pos_embed_max_size=16)
            latent, text = (1, 16, 16, 16), 8
        return Spec("sd3", "SD3Transformer2DModel", cfg, latent, text, cfg["joint_attention_dim"],
                    cfg["pooled_projection_dim"], 4.5, None, 3.0, "flux")
    if name == "wan":
        cfg = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                   out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                   qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
        frames = (wan_frames - 1) // 4 + 1
        latent, text = (1, 16, frames, 60, 104), 512
        if tiny:
            cfg.update(num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=16, ffn_dim=64,
                       num_layers=2, rope_max_seq_len=32)
            latent, text = (1, 16, 3, 8, 8), 8
        return Spec("wan", "WanTransformer3DModel", cfg, latent, text, cfg["text_dim"], None, 5.0, None, 3.0,
                    "wan2.1_t2v_1.3B")
    raise ValueError(f"unknown model family {name!r}; choose from {', '.join(FAMILIES)}")


def keep_fp32(model: torch.nn.Module) -> list[str]:
    """Put diffusers' ``_keep_in_fp32_modules`` back in float32 (as from_pretrained does); their names."""
    keep = getattr(type(model), "_keep_in_fp32_modules", None) or []
    kept = []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and any(k in name.split(".") for k in keep):
            t.data = t.data.float()
            kept.append(name)
    return kept


def build_network(s: Spec, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  seed: int = 0) -> torch.nn.Module:
    """The network with seeded random weights, made directly on ``device`` in ``dtype`` (fast at full size)."""
    if s.cls is None:
        from turbosample.models.builtin import load_model

        return load_model().to(device=device, dtype=dtype)
    import diffusers

    from turbosample.accel.diffusers_adapters import DiffusersDiT

    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(seed)
        with torch.device(device):
            model = getattr(diffusers, s.cls)(**s.config)
    finally:
        torch.set_default_dtype(prev)
    if s.cls == "WanTransformer3DModel":  # zero-initialised output scales would hide every difference
        with torch.no_grad():
            model.scale_shift_table.normal_(0, 0.5)
            for block in model.blocks:
                block.scale_shift_table.normal_(0, 0.5)
    if dtype != torch.float32:
        keep_fp32(model)
    return DiffusersDiT(model.eval().requires_grad_(False))


def diffusion_model(s: Spec, network: torch.nn.Module):
    from turbosample.models.builtin import MODEL_ID
    from turbosample.samplers.denoiser import DiffusionModel
    from turbosample.samplers.model_sampling import FlowSampling

    return DiffusionModel(network, FlowSampling(shift=s.shift), name=MODEL_ID if s.cls is None else f"random-{s.name}")


def reference_and_device(s: Spec, device: torch.device, dtype: torch.dtype):
    """(CPU float32 model, the same weights on ``device`` in ``dtype``) as DiffusionModels."""
    from turbosample.samplers.fingerprint import to_precision

    ref = build_network(s, "cpu", torch.float32)
    dev = to_precision(copy.deepcopy(ref), device, dtype)  # files made for these weights still apply
    inner = getattr(dev, "transformer", None)
    if inner is not None and dtype != torch.float32:
        keep_fp32(inner)
    return diffusion_model(s, ref), diffusion_model(s, dev)


def conditioning(s: Spec, seed: int) -> list:
    """A CONDITIONING list with one row of seeded random text embeddings (CPU float32; the loop casts and moves)."""
    g = torch.Generator().manual_seed(seed)
    if s.cls is None:  # the built-in model: a unit-length prompt embedding (its text encoder is not needed here)
        e = torch.randn(1, 1, s.text_dim, generator=g)
        return [[e / e.norm(), {}]]
    ctx = {"encoder_hidden_states": torch.randn(1, s.text_tokens, s.text_dim, generator=g)}
    if s.pooled_dim:
        ctx["pooled_projections"] = torch.randn(1, s.pooled_dim, generator=g)
    if s.guidance is not None:
        ctx["guidance"] = torch.tensor([s.guidance])
    return [[ctx, {}]]


def negative(s: Spec) -> list:
    """The CFG null condition: zeros for the built-in model, another random row for the others."""
    if s.cls is None:
        return [[torch.zeros(1, 1, s.text_dim), {}]]
    return conditioning(s, 99)
