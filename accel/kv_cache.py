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


CACHE_MODES = ("full", "int8")


def quantize(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values and a per-(token, head) absmax scale (last dim reduced), in ``t``'s dtype."""
    scale = t.abs().amax(-1, keepdim=True).float().clamp_min(1e-12) / 127.0
    return (t.float() / scale).round_().clamp_(-127, 127).to(torch.int8), scale.to(t.dtype)


class KVCache:
    """Keys and values of every token of one attention call, (B, heads, N, head_dim), reused in place over a run.

    ``full`` keeps them as computed: blocks x tokens x inner width x 2 x bytes x batch in all. ``int8`` keeps int8
    values with one scale per token and head (1 + 2 x 2 / head_dim bytes per value for a 16-bit model: about half
    of bf16, a quarter of float32) and dequantises one call's K/V at a time when a sparse step attends over them.
    Iterating gives ``(K, V)`` in the compute dtype.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, mode: str = "full"):
        if mode not in CACHE_MODES:
            raise ValueError(f"unknown K/V cache mode {mode!r}; choose one of {', '.join(CACHE_MODES)}")
        self.mode, self.dtype = mode, k.dtype
        self.store = [self._encode(k, clone=True), self._encode(v, clone=True)]  # per K and V: (values, [scale])

    @classmethod
    def empty(cls, like: torch.Tensor, batch: int, mode: str = "full") -> KVCache:
        """A zero cache for ``batch`` rows shaped like one call's (rows, heads, N, head_dim) keys."""
        zeros = like.new_zeros((batch, *like.shape[1:]))
        return cls(zeros, zeros, mode)

    def _encode(self, t: torch.Tensor, clone: bool = False) -> tuple[torch.Tensor, ...]:
        if self.mode == "int8":
            return quantize(t)
        return (t.clone() if clone else t.to(self.dtype),)

    def write(self, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Every token of ``rows`` (None = all) from a dense pass, in place."""
        for store, t in zip(self.store, (k, v), strict=True):
            for dst, src in zip(store, self._encode(t), strict=True):
                if rows is None:
                    dst.copy_(src)
                else:
                    dst[rows] = src

    def scatter(self, index: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """The active tokens ``index`` (B, K) from a sparse pass, in place."""
        where = index[:, None, :, None]
        for store, t in zip(self.store, (k, v), strict=True):
            for dst, src in zip(store, self._encode(t), strict=True):
                dst.scatter_(2, where.expand(-1, src.shape[1], -1, src.shape[-1]), src)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, V) of every token in the compute dtype (the storage itself for ``full``)."""
        if self.mode == "int8":
            return tuple(q.to(self.dtype) * scale for q, scale in self.store)
        return self.store[0][0], self.store[1][0]

    def take(self, rows: torch.Tensor) -> KVCache:
        """A copy holding batch ``rows`` only."""
        out = object.__new__(KVCache)
        out.mode, out.dtype = self.mode, self.dtype
        out.store = [tuple(t[rows] for t in s) for s in self.store]
        return out

    def put(self, rows: torch.Tensor, other: KVCache) -> None:
        """Batch ``rows`` from ``other`` (made by ``take``), in place."""
        for dst, src in zip(self.store, other.store, strict=True):
            for d, s in zip(dst, src, strict=True):
                d[rows] = s

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self.store for t in s)

    def __iter__(self):
        return iter(self.tensors())

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.tensors()[i]


def fill_cache(k: torch.Tensor, v: torch.Tensor, mode: str = "full") -> KVCache:
    """A fresh cache holding the full (B, heads, N, head_dim) keys and values (own memory)."""
    return KVCache(k, v, mode)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache, index: torch.Tensor,
                     attention: AttentionFn = F.scaled_dot_product_attention) -> torch.Tensor:
    """Attention of the active queries over all keys/values.

    q, k, v: (B, heads, K, head_dim) for the active tokens ``index`` (B, K); ``cache`` holds (B, heads, N,
    head_dim) keys and values of every token and is updated in place at the active positions first, so
    inactive tokens contribute their last computed K/V.
    """
    cache.scatter(index, k, v)
    cache_k, cache_v = cache.tensors()
    return attention(q, cache_k, cache_v)
