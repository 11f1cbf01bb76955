"""diffusers SD3 / Flux / Wan blocks run with a replacement attention function (what RAS's ``run_block`` needs).

Choice: the block's own ``forward`` runs unchanged (modulation, gates, feed-forward, SD3's
``context_pre_only``, Flux single blocks' cat(txt, img)); only its attention module's *processor* is swapped
for ``RoutedProcessor`` for the duration of the call and restored in ``finally``. The processor redoes the
q/k/v projections, q/k norms and RoPE of diffusers' ``JointAttnProcessor2_0`` / ``FluxAttnProcessor`` and
hands ``attention(q, k, v)`` one sequence in the adapters' token order, text first then image, so an index
into the block-stack tokens is also an index into the attention sequence (the K/V cache positions). RoPE
``(cos, sin)`` may be per sample, (B, S, D): RAS gathers the positions of each image's active tokens. Wan
routes its self-attention (``attn1``) only (``WanRoutedProcessor``); its cross-attention to the text is per
query and runs as is on the kept tokens.

The swap mutates the shared attention module while a block runs, so one model must not run RAS and a plain
call in two threads at once (the app runs one generation at a time). Processors that are modules
(IP-Adapter) and attention masks are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .parts import AttentionFn, UnsupportedModel


def apply_rope(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Flux's interleaved rotary embedding on (B, heads, S, hd); ``rotary`` is (S, hd) or per sample (B, S, hd)."""
    cos, sin = (r.to(x.device) for r in rotary)
    if cos.ndim == 3:
        cos, sin = cos[:, None], sin[:, None]
    real, imag = x.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(-2)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def head_split(attn: torch.nn.Module, states: torch.Tensor, added: bool) -> tuple[torch.Tensor, ...]:
    """q, k, v (B, heads, S, hd) of ``states`` through the image (or ``added`` text) projections and q/k norms."""
    fused = getattr(attn, "to_added_qkv" if added else "to_qkv", None)
    if getattr(attn, "fused_projections", False) and fused is not None:
        q, k, v = fused(states).chunk(3, dim=-1)
    elif added:
        q, k, v = attn.add_q_proj(states), attn.add_k_proj(states), attn.add_v_proj(states)
    else:
        q, k, v = attn.to_q(states), attn.to_k(states), attn.to_v(states)
    q, k, v = (t.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for t in (q, k, v))
    norm_q = getattr(attn, "norm_added_q" if added else "norm_q", None)
    norm_k = getattr(attn, "norm_added_k" if added else "norm_k", None)
    return (q if norm_q is None else norm_q(q)), (k if norm_k is None else norm_k(k)), v


class RoutedProcessor:
    """A diffusers attention processor whose attention is ``attention(q, k, v)`` over [text; image]."""

    def __init__(self, attention: AttentionFn):
        self.attention = attention

    def __call__(self, attn: torch.nn.Module, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None):
        if attention_mask is not None:
            raise ValueError("RAS on diffusers models does not support attention masks")
        q, k, v = head_split(attn, hidden_states, added=False)
        n_text = 0
        if encoder_hidden_states is not None:
            eq, ek, ev = head_split(attn, encoder_hidden_states, added=True)
            q, k, v = torch.cat([eq, q], dim=2), torch.cat([ek, k], dim=2), torch.cat([ev, v], dim=2)
            n_text = encoder_hidden_states.shape[1]
        if image_rotary_emb is not None:
            q, k = apply_rope(q, image_rotary_emb), apply_rope(k, image_rotary_emb)
        out = self.attention(q, k, v).transpose(1, 2).flatten(2).to(q.dtype)
        if encoder_hidden_states is None:
            return out if getattr(attn, "pre_only", False) else attn.to_out[1](attn.to_out[0](out))
        txt, img = out[:, :n_text], out[:, n_text:]
        img = attn.to_out[1](attn.to_out[0](img))
        return img, (txt if attn.context_pre_only else attn.to_add_out(txt))


class WanRoutedProcessor:
    """``WanAttnProcessor`` for a Wan block's self-attention (``attn1``) with ``attention(q, k, v)`` over its tokens.

    Wan normalises q/k across heads before splitting them; RoPE ``(cos, sin)`` is Wan's (1 or B, S, 1, hd).
    """

    def __init__(self, attention: AttentionFn):
        self.attention = attention

    def __call__(self, attn: torch.nn.Module, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("RAS routes Wan's self-attention only (no context, no mask)")
        if getattr(attn, "fused_projections", False):
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (t.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for t in (q, k, v))
        if rotary_emb is not None:
            rotary = tuple(r.squeeze(2) for r in rotary_emb)  # (1 or B, S, hd): Flux's interleaved rotation
            q, k = apply_rope(q, rotary), apply_rope(k, rotary)
        out = self.attention(q, k, v).transpose(1, 2).flatten(2).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


def routed_run_block(attention_modules: Sequence[torch.nn.Module], blocks: Sequence[Callable],
                     processor: Callable[[AttentionFn], object] = RoutedProcessor
                     ) -> Callable[[int, torch.Tensor, object, AttentionFn], torch.Tensor]:
    """``run_block(i, tokens, cond, attention)``: ``blocks[i]`` with its attention module's processor swapped
    for ``processor(attention)``."""

    def run_block(i: int, tokens: torch.Tensor, cond: object, attention: AttentionFn) -> torch.Tensor:
        attn = attention_modules[i]
        saved = attn.processor
        if isinstance(saved, torch.nn.Module):
            raise UnsupportedModel(f"RAS cannot route attention through the {type(saved).__name__} processor "
                                   "(IP-Adapter and other module processors are not supported)")
        attn.processor = processor(attention)
        try:
            return blocks[i](tokens, cond)
        finally:
            attn.processor = saved

    return run_block
