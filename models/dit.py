"""The built-in text-conditioned DiT: rectified-flow velocity output, adaLN-Zero conditioning.

Pixel-space model (3 channels, values in [-1, 1]). Positions are 2-D sin-cos features of coordinates
measured on the training base grid, so the same weights run at several resolutions (multiples of the
patch size). ``forward(x, timestep, context)`` follows ComfyUI's diffusion-model convention:
``timestep = sigma * 1000`` and ``context`` is a (B, L, text_dim) tensor (mean-pooled here).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention over (B, heads, N, head_dim) tensors with torch's fused kernel."""
    return F.scaled_dot_product_attention(q, k, v)


@dataclass(frozen=True)
class DiTConfig:
    in_channels: int = 3
    patch_size: int = 4
    width: int = 128
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    text_dim: int = 384
    base_grid: int = 8  # tokens per side at the base training resolution (32 px / patch 4)
    text_scale: float = 1.0  # the prompt embedding (unit length) is multiplied by this before the text MLP

    def to_dict(self) -> dict:
        return asdict(self)


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sin-cos features (N, dim) of real-valued positions."""
    half = torch.arange(dim // 2, dtype=torch.float32, device=positions.device)
    freqs = torch.exp(-math.log(10000.0) * half / (dim // 2))
    angles = positions.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def grid_position_embedding(rows: int, cols: int, dim: int, base_grid: int,
                            device: torch.device | str | None = None) -> torch.Tensor:
    """(rows*cols, dim) float32 features of token centres in base-grid units (resolution independent)."""
    ys = (torch.arange(rows, device=device) + 0.5) * (base_grid / rows)
    xs = (torch.arange(cols, device=device) + 0.5) * (base_grid / cols)
    emb_y = sincos_1d(ys, dim // 2)[:, None, :].expand(rows, cols, dim // 2)
    emb_x = sincos_1d(xs, dim // 2)[None, :, :].expand(rows, cols, dim // 2)
    return torch.cat([emb_y, emb_x], dim=-1).reshape(rows * cols, dim)


def timestep_features(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the (B,) timestep in [0, 1000]."""
    return sincos_1d(timestep, dim)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation from the conditioning vector."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Linear(width, 6 * width)
        self.attention: AttentionFn = sdpa_attention

    def qkv_heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split a normalised (B, N, width) input into (B, heads, N, head_dim) q, k, v."""
        b, n, w = h.shape
        qkv = self.qkv(h).reshape(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=1)
        q, k, v = self.qkv_heads(modulate(self.norm1(x), shift1, scale1))
        attn = self.attention(q, k, v).transpose(1, 2).reshape(x.shape)
        x = x + gate1[:, None, :] * self.proj(attn)
        return x + gate2[:, None, :] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(width, 2 * width)
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(F.silu(c)).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class TinyDiT(nn.Module):
    """embed -> ``blocks`` (a ModuleList) -> head, exposed separately for accelerator adapters."""

    def __init__(self, config: DiTConfig | None = None, **overrides):
        super().__init__()
        cfg = config or DiTConfig(**overrides)
        self.config = cfg
        p, w = cfg.patch_size, cfg.width
        self.patch_embed = nn.Conv2d(cfg.in_channels, w, kernel_size=p, stride=p)
        self.time_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.text_mlp = nn.Sequential(nn.Linear(cfg.text_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.blocks = nn.ModuleList(DiTBlock(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final = FinalLayer(w, p * p * cfg.in_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            nn.init.zeros_(block.ada.weight)
            nn.init.zeros_(block.ada.bias)
        nn.init.zeros_(self.final.ada.weight)
        nn.init.zeros_(self.final.ada.bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype (ComfyUI's BaseModel asks its diffusion model for it)."""
        return self.patch_embed.weight.dtype

    def check_size(self, height: int, width: int) -> None:
        p = self.config.patch_size
        if height % p or width % p or height < p or width < p:
            raise ValueError(f"built-in model needs height and width that are positive multiples of {p}, "
                             f"got {width}x{height}")

    def embed(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Tokens (B, N, width), conditioning vector (B, width) and the token grid (rows, cols)."""
        self.check_size(x.shape[-2], x.shape[-1])
        tokens = self.patch_embed(x)
        rows, cols = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        pos = grid_position_embedding(rows, cols, self.config.width, self.config.base_grid, tokens.device)
        tokens = tokens + pos.to(tokens.dtype)
        t = torch.as_tensor(timestep, device=tokens.device).float().reshape(-1).expand(x.shape[0])
        c = self.time_mlp(timestep_features(t, self.config.width).to(tokens.dtype))
        c = c + self.text_mlp(context.to(tokens).mean(dim=1) * self.config.text_scale)
        return tokens, c, (rows, cols)

    def head(self, tokens: torch.Tensor, c: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Project tokens back to a (B, C, H, W) velocity."""
        p, ch = self.config.patch_size, self.config.in_channels
        rows, cols = grid
        out = self.final(tokens, c).reshape(-1, rows, cols, ch, p, p)
        return out.permute(0, 3, 1, 4, 2, 5).reshape(-1, ch, rows * p, cols * p)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, **_: object) -> torch.Tensor:
        tokens, c, grid = self.embed(x, timestep, context)
        for block in self.blocks:
            tokens = block(tokens, c)
        return self.head(tokens, c, grid)
