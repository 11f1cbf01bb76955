"""Per-sample token gather/scatter and attention of a subset of queries over a per-layer K/V cache."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (B, K) of every sample of (B, N, D) tokens -> (B, K, D)."""
    return tokens.gather(1, index[:, :, None].expand(-1, -1, tokens.shape[-1]))


def gather_dim(t: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``t`` (batch 1 or B, ...) at positions ``index`` (B, K) of dimension ``dim``: same shape, ``K`` there."""
    t = t.expand(index.shape[0], *t.shape[1:])
    shape = [index.shape[0]] + [1] * (t.ndim - 1)
    shape[dim] = index.shape[1]
    full = list(t.shape)
    full[dim] = index.shape[1]
    return t.gather(dim, index.reshape(shape).expand(full))


def scatter_tokens(full: torch.Tensor, index: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """A copy of ``full`` (B, N, D) with rows ``index`` (B, K) replaced by ``active`` (B, K, D)."""
    return full.scatter(1, index[:, :, None].expand(-1, -1, full.shape[-1]), active)


def fill_cache(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh cache holding the full (B, heads, N, head_dim) keys and values (own memory)."""
    return k.clone(), v.clone()


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor],
                     index: torch.Tensor, attention: AttentionFn = F.scaled_dot_product_attention) -> torch.Tensor:
    """Attention of the active queries over all keys/values.

    q, k, v: (B, heads, K, head_dim) for the active tokens ``index`` (B, K); ``cache`` holds (B, heads, N,
    head_dim) keys and values of every token and is updated in place at the active positions first, so
    inactive tokens contribute their last computed K/V.
    """
    cache_k, cache_v = cache
    where = index[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1])
    cache_k.scatter_(2, where, k)
    cache_v.scatter_(2, where, v)
    return attention(q, cache_k, cache_v)
