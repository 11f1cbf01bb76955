"""Block-level adapters (``TransformerParts``) for diffusers' SD3, Flux and Wan transformers.

Conventions shared by all three (so accelerators see one interface):

* ``x`` is the latent in image layout: SD3 and Flux ``(B, C, H, W)`` (Flux's 2x2 packing happens inside
  ``embed``/``head``), Wan ``(B, C, F, H, W)``. ``timestep`` is ComfyUI's ``sigma * 1000``, shape (B,) or scalar
  (Wan 2.2 also (B, tokens)).
* ``context`` is a mapping with ``encoder_hidden_states`` (B, L, D_text) and, per model,
  ``pooled_projections`` (SD3, Flux), ``guidance`` (Flux with guidance embedding),
  ``encoder_hidden_states_image`` (Wan i2v); Wan also takes the text tensor alone.
* **Tokens** are one tensor (B, L_text + N_image, D) for the dual-stream models (SD3 joint blocks, Flux double
  and single blocks): text stream first, image stream after, as Flux's single blocks see it; Wan's tokens are
  the image tokens (B, N, D). Every block callable maps such a tensor to one of the same shape, so a
  block-stack residual ``out - in`` (MagCache) is a plain tensor difference. SD3's last block drops the text
  stream (``context_pre_only``); its callable passes the text part through unchanged. The head reads the image
  part only.
* **cond** is a ``BlockCond``: per-sample tensors (indexable by batch rows, as MagCache does for a subset of
  CFG branches) plus call-wide values (text length, rotary embeddings).

``run_block`` (RAS) exists for SD3, Flux and Wan (``accel.diffusers_ras``: each block's own forward with its
(self-)attention processor swapped for the call); text tokens are always active, so RAS drops image tokens only,
and ``BlockCond.at_tokens`` gives the kept tokens their own RoPE positions (and, Wan 2.2, their own per-token
timestep modulation). Wan's tokens form a (frames, rows, cols) grid with patch ``(p_t, p_h, p_w)``. SD3.5
dual-attention blocks (MMDiT-X, SD3.5 Medium) have no ``run_block``, so RAS refuses them with UnsupportedModel.
ControlNet residuals, IP-adapter inputs and SD3 skip-layer guidance are not part of the rebuilt forward.
diffusers itself is never imported here; the adapters work on the model objects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree

from .diffusers_ras import WanRoutedProcessor, routed_run_block
from .kv_cache import gather_dim
from .parts import TransformerParts, UnsupportedModel

Context = Mapping[str, torch.Tensor] | torch.Tensor


@dataclass(frozen=True)
class BlockCond:
    """Conditioning handed to every block: ``batch`` tensors (first dim = batch) and call-wide ``shared`` values."""

    batch: dict[str, torch.Tensor]
    shared: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, rows: torch.Tensor | slice) -> BlockCond:
        """The same conditioning for a subset of batch rows."""
        return BlockCond({k: v[rows] for k, v in self.batch.items()}, self.shared)

    def at_tokens(self, index: torch.Tensor) -> BlockCond:
        """The conditioning of the block-stack tokens ``index`` (B, K): RoPE becomes per sample, (B, K, hd), and
        per-token tensors (``shared["token_keys"]``, e.g. Wan 2.2's per-token timestep) keep those tokens."""
        token_keys = self.shared.get("token_keys", ())
        if "rotary" not in self.shared and not token_keys:
            return self
        batch = {k: gather_dim(v, 1, index) if k in token_keys else v for k, v in self.batch.items()}
        if "rotary" in self.shared:
            cos, sin = self.shared["rotary"]
            batch.update(rotary_cos=cos[index], rotary_sin=sin[index])
        return BlockCond(batch, {k: v for k, v in self.shared.items() if k not in ("rotary", "token_keys")})

    def rotary(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """RoPE ``(cos, sin)``: (S, hd) shared, or (B, S, hd) after ``at_tokens``; None without RoPE."""
        if "rotary_cos" in self.batch:
            return self.batch["rotary_cos"], self.batch["rotary_sin"]
        return self.shared.get("rotary")


pytree.register_pytree_node(BlockCond, lambda c: ((c.batch, c.shared), None),
                            lambda children, _context: BlockCond(*children))  # RAS's CUDA graph copies its tensors


def context_tensor(context: Context, key: str, model: str, required: bool = True) -> torch.Tensor | None:
    """``context[key]`` (a bare tensor counts as ``encoder_hidden_states``); a clear error when it is missing."""
    if isinstance(context, torch.Tensor):
        value = context if key == "encoder_hidden_states" else None
    elif isinstance(context, Mapping):
        value = context.get(key)
    else:
        raise TypeError(f"{model} context must be a tensor or a mapping of tensors, got {type(context).__name__}")
    if value is None and required:
        raise ValueError(f"{model} needs context[{key!r}]")
    return value


def batch_timestep(timestep: torch.Tensor, batch: int) -> torch.Tensor:
    """A scalar / one-element timestep broadcast to (batch,); anything else unchanged."""
    t = torch.as_tensor(timestep)
    return t.reshape(1).expand(batch) if t.numel() == 1 else t


def split_streams(tokens: torch.Tensor, cond: BlockCond) -> tuple[torch.Tensor, torch.Tensor]:
    n = cond.shared["text_len"]
    return tokens[:, :n], tokens[:, n:]


def dual_stream_block(block: torch.nn.Module, rotary: bool) -> Callable[[torch.Tensor, BlockCond], torch.Tensor]:
    """A dual-stream block (SD3 joint, Flux double/single) as ``(tokens, cond) -> tokens`` on [text; image]."""

    def run(tokens: torch.Tensor, cond: BlockCond) -> torch.Tensor:
        txt, img = split_streams(tokens, cond)
        extra = {"image_rotary_emb": cond.rotary()} if rotary else {}
        txt_out, img_out = block(hidden_states=img, encoder_hidden_states=txt, temb=cond.batch["temb"], **extra)
        return torch.cat([txt if txt_out is None else txt_out, img_out], dim=1)

    return run


def dual_stream_stack(modules: list, rotary: bool) -> Callable[[torch.Tensor, BlockCond], torch.Tensor]:
    """All dual-stream blocks as the model's own forward runs them: text and image streams split once (contiguous),
    each block fed the two streams, one concatenation at the end (not one per block)."""

    def run(tokens: torch.Tensor, cond: BlockCond) -> torch.Tensor:
        txt, img = (t.contiguous() for t in split_streams(tokens, cond))
        extra = {"image_rotary_emb": cond.rotary()} if rotary else {}
        temb = cond.batch["temb"]
        for block in modules:
            txt_out, img = block(hidden_states=img, encoder_hidden_states=txt, temb=temb, **extra)
            txt = txt if txt_out is None else txt_out
        return torch.cat([txt, img], dim=1)

    return run


# --- SD3 (MMDiT) ---------------------------------------------------------------------------------------------

def sd3_parts(model: torch.nn.Module) -> TransformerParts:
    """Parts of ``SD3Transformer2DModel`` (SD3 / SD3.5)."""
    p = model.config.patch_size

    def embed(x: torch.Tensor, timestep: torch.Tensor, context: Context):
        pooled = context_tensor(context, "pooled_projections", "SD3")
        text = context_tensor(context, "encoder_hidden_states", "SD3")
        img = model.pos_embed(x).contiguous()
        temb = model.time_text_embed(batch_timestep(timestep, x.shape[0]), pooled)
        txt = model.context_embedder(text)
        cond = BlockCond({"temb": temb}, {"text_len": txt.shape[1]})
        return torch.cat([txt, img], dim=1), cond, (x.shape[-2] // p, x.shape[-1] // p)

    def head(tokens: torch.Tensor, cond: BlockCond, grid: tuple[int, int]) -> torch.Tensor:
        _, img = split_streams(tokens, cond)
        out = model.proj_out(model.norm_out(img, cond.batch["temb"]))
        rows, cols = grid
        out = out.reshape(out.shape[0], rows, cols, p, p, model.out_channels)
        return torch.einsum("nhwpqc->nchpwq", out).reshape(out.shape[0], model.out_channels, rows * p, cols * p)

    modules = list(model.transformer_blocks)
    blocks = [dual_stream_block(b, rotary=False) for b in modules]
    dual = any(getattr(b, "attn2", None) is not None for b in modules)  # SD3.5 MMDiT-X: 2nd, image-only attention
    return TransformerParts(name="diffusers SD3Transformer2DModel" + (" (dual attention)" if dual else ""),
                            embed=embed, blocks=blocks, head=head, patch_size=p,
                            run_block=None if dual else routed_run_block([b.attn for b in modules], blocks),
                            stack=dual_stream_stack(modules, rotary=False))


# --- Flux ----------------------------------------------------------------------------------------------------

def flux_pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) tokens of 2x2 patches (Flux's packing)."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"Flux latents need even height and width, got {h}x{w}")
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def flux_unpack(tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    b, _, ch = tokens.shape
    return tokens.view(b, rows, cols, ch // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, ch // 4, rows * 2, cols * 2)


def flux_image_ids(rows: int, cols: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(rows*cols, 3) position ids ``(0, row, col)`` of the packed image tokens."""
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3).to(device=device, dtype=dtype)


def flux_parts(model: torch.nn.Module) -> TransformerParts:
    """Parts of ``FluxTransformer2DModel`` (Flux.1); latents in (B, C, H, W), packed 2x2 inside."""

    def embed(x: torch.Tensor, timestep: torch.Tensor, context: Context):
        pooled = context_tensor(context, "pooled_projections", "Flux")
        text = context_tensor(context, "encoder_hidden_states", "Flux")
        guidance = context_tensor(context, "guidance", "Flux", required=bool(model.config.guidance_embeds))
        rows, cols = x.shape[-2] // 2, x.shape[-1] // 2
        img = model.x_embedder(flux_pack(x))
        t = (batch_timestep(timestep, x.shape[0]) / 1000).to(img.dtype) * 1000
        if guidance is not None:
            temb = model.time_text_embed(t, batch_timestep(guidance, x.shape[0]).to(img.dtype) * 1000, pooled)
        else:
            temb = model.time_text_embed(t, pooled)
        txt = model.context_embedder(text)
        ids = torch.cat([torch.zeros(txt.shape[1], 3, device=x.device, dtype=x.dtype),
                         flux_image_ids(rows, cols, x.device, x.dtype)])
        cond = BlockCond({"temb": temb}, {"text_len": txt.shape[1], "rotary": model.pos_embed(ids)})
        return torch.cat([txt, img], dim=1), cond, (rows, cols)

    def head(tokens: torch.Tensor, cond: BlockCond, grid: tuple[int, int]) -> torch.Tensor:
        _, img = split_streams(tokens, cond)
        return flux_unpack(model.proj_out(model.norm_out(img, cond.batch["temb"])), *grid)

    modules = [*model.transformer_blocks, *model.single_transformer_blocks]
    blocks = [dual_stream_block(b, rotary=True) for b in modules]
    return TransformerParts(name="diffusers FluxTransformer2DModel", embed=embed, blocks=blocks, head=head,
                            patch_size=2, run_block=routed_run_block([b.attn for b in modules], blocks),
                            stack=dual_stream_stack(modules, rotary=True))


# --- Wan -----------------------------------------------------------------------------------------------------

def wan_parts(model: torch.nn.Module) -> TransformerParts:
    """Parts of ``WanTransformer3DModel`` (Wan 2.1 / 2.2); latents (B, C, F, H, W)."""
    p_t, p_h, p_w = model.config.patch_size

    def embed(x: torch.Tensor, timestep: torch.Tensor, context: Context):
        text = context_tensor(context, "encoder_hidden_states", "Wan")
        image = context_tensor(context, "encoder_hidden_states_image", "Wan", required=False)
        _, _, frames, height, width = x.shape
        cos, sin = model.rope(x)  # (1, N, 1, hd) each
        tokens = model.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()
        t = torch.as_tensor(timestep)
        t = t if t.ndim == 2 else batch_timestep(t, x.shape[0])
        seq_len = t.shape[1] if t.ndim == 2 else None
        temb, proj, text, image = model.condition_embedder(t.flatten(), text, image, timestep_seq_len=seq_len)
        proj = proj.unflatten(2 if seq_len is not None else 1, (6, -1))
        if image is not None:
            text = torch.cat([image, text], dim=1)
        shared = {"rotary": (cos[0, :, 0], sin[0, :, 0]), "token_keys": ("timestep_proj",) if seq_len else ()}
        cond = BlockCond({"temb": temb, "timestep_proj": proj, "text": text}, shared)
        return tokens, cond, (frames // p_t, height // p_h, width // p_w)

    def head(tokens: torch.Tensor, cond: BlockCond, grid: tuple[int, int, int]) -> torch.Tensor:
        temb = cond.batch["temb"]
        table = model.scale_shift_table.to(temb.device)
        if temb.ndim == 3:
            shift, scale = (table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (table + temb.unsqueeze(1)).chunk(2, dim=1)
        out = (model.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens)
        out = model.proj_out(out).reshape(tokens.shape[0], *grid, p_t, p_h, p_w, -1)
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def wan_block(block: torch.nn.Module) -> Callable[[torch.Tensor, BlockCond], torch.Tensor]:
        def run(tokens: torch.Tensor, cond: BlockCond) -> torch.Tensor:
            cos, sin = cond.rotary()  # (N, hd) shared or (B, K, hd) per sample -> Wan's (1 or B, N, 1, hd)
            rotary = tuple(r.unsqueeze(-2) if r.ndim == 3 else r[None, :, None] for r in (cos, sin))
            return block(tokens, cond.batch["text"], cond.batch["timestep_proj"], rotary)

        return run

    modules = list(model.blocks)
    blocks = [wan_block(b) for b in modules]
    return TransformerParts(name="diffusers WanTransformer3DModel", embed=embed, blocks=blocks, head=head,
                            patch_size=(p_t, p_h, p_w),
                            run_block=routed_run_block([b.attn1 for b in modules], blocks, WanRoutedProcessor))


ADAPTERS: dict[str, Callable[[torch.nn.Module], TransformerParts]] = {
    "SD3Transformer2DModel": sd3_parts, "FluxTransformer2DModel": flux_parts, "WanTransformer3DModel": wan_parts}


def diffusers_kind(model: torch.nn.Module) -> str:
    """The supported diffusers class ``model`` is (by MRO name), or UnsupportedModel."""
    kind = next((c.__name__ for c in type(model).__mro__ if c.__name__ in ADAPTERS), None)
    if kind is None:
        raise UnsupportedModel(f"{type(model).__name__} is not a supported diffusers transformer; supported: "
                               f"{', '.join(sorted(ADAPTERS))}")
    return kind


# --- the model's own forward behind ComfyUI's call convention ------------------------------------------------

def own_forward(model: torch.nn.Module, x: torch.Tensor, timestep: torch.Tensor, context: Context) -> torch.Tensor:
    """The diffusers model's own ``forward`` called with the adapters' conventions (no parts involved)."""
    kind = diffusers_kind(model)
    name = kind.removesuffix("Transformer2DModel").removesuffix("Transformer3DModel")
    text = context_tensor(context, "encoder_hidden_states", name)
    t = torch.as_tensor(timestep)
    if kind == "SD3Transformer2DModel":
        pooled = context_tensor(context, "pooled_projections", name)
        return model(x, text, pooled, batch_timestep(t, x.shape[0]), return_dict=False)[0]
    if kind == "FluxTransformer2DModel":
        pooled = context_tensor(context, "pooled_projections", name)
        guidance = context_tensor(context, "guidance", name, required=bool(model.config.guidance_embeds))
        rows, cols = x.shape[-2] // 2, x.shape[-1] // 2
        out = model(flux_pack(x), text, pooled, batch_timestep(t, x.shape[0]) / 1000,
                    img_ids=flux_image_ids(rows, cols, x.device, x.dtype),
                    txt_ids=torch.zeros(text.shape[1], 3, device=x.device, dtype=x.dtype),
                    guidance=None if guidance is None else batch_timestep(guidance, x.shape[0]), return_dict=False)[0]
        return flux_unpack(out, rows, cols)
    image = context_tensor(context, "encoder_hidden_states_image", name, required=False)
    t = t if t.ndim == 2 else batch_timestep(t, x.shape[0])
    return model(x, t, text, encoder_hidden_states_image=image, return_dict=False)[0]


class DiffusersDiT(torch.nn.Module):
    """A diffusers transformer with the ComfyUI-style ``forward(x, timestep, context)`` our DiffusionModel calls.

    ``context`` follows the module docstring (a mapping for SD3/Flux). ``transformer_parts`` of this wrapper
    are the wrapped transformer's parts.
    """

    def __init__(self, transformer: torch.nn.Module):
        super().__init__()
        diffusers_kind(transformer)
        self.transformer = transformer

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def size_factor(self) -> int:
        """Latent sides must divide by this: the patch size of the latent (Flux packs 2x2; Wan: rows and cols)."""
        patch = diffusers_parts(self.transformer).patch_size
        return patch if isinstance(patch, int) else math.lcm(*(int(p) for p in patch[-2:]))

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: Context = None, **_: object) -> torch.Tensor:
        return own_forward(self.transformer, x, timestep, context)


def diffusers_parts(model: torch.nn.Module) -> TransformerParts:
    """Parts of a supported diffusers transformer or of a ``DiffusersDiT`` wrapping one."""
    inner = model.transformer if isinstance(model, DiffusersDiT) else model
    return ADAPTERS[diffusers_kind(inner)](inner)
