"""RAS step schedule and token selection (which patch tokens the DiT recomputes at a step).

Follows ``microsoft/RAS`` (``ras_manager.generate_skip_token_list``, ``ras_scheduling_flow_match_euler_discrete.
ras_selection``): dense warm-up steps, periodic dense "error reset" steps, a static or linearly growing count of
dropped tokens, a per-token metric (std or L2 over channels of the last model output, averaged over the patch),
a starvation multiplier ``exp(sign * scale * drop_count)`` and a high/low split of the dropped tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

STARVATION_MODES = ("spread", "official")  # spread: exp(-s*cnt) ; official code: exp(+s*cnt)
METRICS = ("std", "l2norm")


@dataclass(frozen=True)
class RASConfig:
    """RAS settings; steps count logical sampler steps (sub-step calls belong to their step)."""

    sample_ratio: float = 0.5        # fraction of tokens recomputed at a sparse step
    warmup_steps: int = 4            # first steps always dense
    dense_every: int = 8             # after warm-up, every n-th step is dense (0 = never)
    starvation_scale: float = 0.1
    starvation: str = "spread"       # direction of the starvation term, see accel/ras.py
    high_ratio: float = 1.0          # share of the dropped tokens taken from the highest metric
    metric: str = "std"
    dynamic_step: float = 0.0        # dynamic schedule: fraction of tokens dropped more per group of steps
    dynamic_length: int = 0          # steps per group (0 = static ratio)
    kv_cache: str = "full"           # K/V cache storage: full, or int8 (low memory, accel/kv_cache.py)
    cuda_graph: bool = False         # replay sparse steps as a CUDA graph (CUDA only; falls back to eager)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sample_ratio) and 0.0 < self.sample_ratio <= 1.0):
            raise ValueError(f"RAS sample_ratio must be in (0, 1] (fraction of tokens computed), got "
                             f"{self.sample_ratio}; 0 would leave no active tokens")
        if self.warmup_steps < 1:
            raise ValueError(f"RAS warmup_steps must be >= 1 (step 0 has no previous output), got {self.warmup_steps}")
        if self.dense_every < 0 or self.dynamic_length < 0:
            raise ValueError("RAS dense_every and dynamic_length must be >= 0")
        if not 0.0 <= self.high_ratio <= 1.0:
            raise ValueError(f"RAS high_ratio must be in [0, 1], got {self.high_ratio}")
        if not (math.isfinite(self.starvation_scale) and self.starvation_scale >= 0):
            raise ValueError(f"RAS starvation_scale must be >= 0, got {self.starvation_scale}")
        if self.starvation not in STARVATION_MODES:
            raise ValueError(f"RAS starvation must be one of {STARVATION_MODES}, got {self.starvation!r}")
        if self.kv_cache not in ("full", "int8"):
            raise ValueError(f"RAS kv_cache must be 'full' or 'int8', got {self.kv_cache!r}")
        if self.metric not in METRICS:
            raise ValueError(f"RAS metric must be one of {METRICS}, got {self.metric!r}")


def step_index(sigma: float, sample_sigmas: list[float]) -> int:
    """The step whose interval [sigma_{i+1}, sigma_i] holds ``sigma`` (an exact grid sigma is its own step)."""
    tol = 1e-5 * max(abs(sample_sigmas[0]), 1e-8)
    i = sum(1 for s in sample_sigmas if s >= sigma - tol) - 1
    return min(max(i, 0), max(len(sample_sigmas) - 2, 0))


def is_dense_step(cfg: RASConfig, step: int) -> bool:
    """Warm-up and error-reset steps run every token (and refill the K/V caches)."""
    if step < cfg.warmup_steps:
        return True
    return cfg.dense_every > 0 and step > cfg.warmup_steps and (step - cfg.warmup_steps) % cfg.dense_every == 0


def drop_count(cfg: RASConfig, step: int, n_steps: int, n_tokens: int) -> int:
    """Tokens left out at ``step`` (0 = dense); raises ValueError when no token would stay active."""
    if is_dense_step(cfg, step):
        return 0
    count = int((1.0 - cfg.sample_ratio) * n_tokens)
    if cfg.dynamic_length:
        group, centre = step // cfg.dynamic_length, ((n_steps + cfg.warmup_steps) // cfg.dynamic_length) // 2
        count += round(cfg.dynamic_step * n_tokens) * (group - centre)
    if count >= n_tokens:
        raise ValueError(f"RAS settings leave no active tokens at step {step} ({n_tokens} tokens, sample_ratio="
                         f"{cfg.sample_ratio}, dynamic_step={cfg.dynamic_step}); raise sample_ratio")
    return max(count, 0)


Patch = int | tuple[int, ...]


def patch_dims(patch: Patch, spatial_dims: int = 2) -> tuple[int, ...]:
    """A patch size per spatial dim: an int is square (2-D), a tuple (Wan: frames, rows, cols) is kept."""
    dims = (patch,) * spatial_dims if isinstance(patch, int) else tuple(patch)
    if len(dims) != spatial_dims:
        raise ValueError(f"patch {patch} does not fit a latent with {spatial_dims} spatial dims")
    return dims


def token_grid(shape: tuple[int, ...] | torch.Size, patch: Patch) -> tuple[int, ...]:
    """Token grid of a (B, C, *spatial) latent: every spatial size over its patch size."""
    dims = patch_dims(patch, len(shape) - 2)
    return tuple(size // p for size, p in zip(shape[2:], dims, strict=True))


def token_metric(output: torch.Tensor, patch: Patch, metric: str) -> torch.Tensor:
    """(B, C, *spatial) model output -> (B, N) per-token score: std/L2 over channels, mean over the patch pixels.

    ``std`` over one channel is undefined (torch returns NaN, and a NaN score would freeze the token choice), so a
    one-channel output is scored by its magnitude |v|, which is what ``l2norm`` gives for one channel."""
    x = output.float()
    per_pixel = x.std(dim=1) if metric == "std" and x.shape[1] > 1 else x.norm(dim=1)
    dims = patch_dims(patch, per_pixel.ndim - 1)
    pool = {2: torch.nn.functional.avg_pool2d, 3: torch.nn.functional.avg_pool3d}.get(len(dims))
    if pool is None:
        raise ValueError(f"RAS handles images and videos (2 or 3 spatial dims), got {len(dims)}")
    return pool(per_pixel[:, None], dims).flatten(1)


def pixel_mask(active: torch.Tensor, grid: tuple[int, ...], patch: Patch) -> torch.Tensor:
    """(B, 1, *spatial) bool mask of the latent pixels covered by the ``active`` (B, K) tokens of ``grid``."""
    mask = torch.zeros(active.shape[0], math.prod(grid), dtype=torch.bool, device=active.device)
    mask = mask.scatter_(1, active, True).reshape(-1, 1, *grid)
    for axis, p in enumerate(patch_dims(patch, len(grid)), start=2):
        mask = mask.repeat_interleave(p, dim=axis)
    return mask


def select_tokens(output: torch.Tensor, patch: Patch, drops: torch.Tensor, n_drop: int, n_chunks: int,
                  cfg: RASConfig) -> torch.Tensor:
    """Active token indices (B, K), sorted, shared by the ``n_chunks`` batch chunks (CFG branches) of an image.

    ``drops`` (B / n_chunks, N) counts how often each token was left out; updated in place.
    """
    score = token_metric(output, patch, cfg.metric)
    score = score.reshape(n_chunks, -1, score.shape[-1]).mean(0)
    sign = -1.0 if cfg.starvation == "spread" else 1.0
    score = score * torch.exp(sign * cfg.starvation_scale * drops)
    order = score.argsort(dim=1)  # ascending
    n = order.shape[1]
    low, high = int(n_drop * (1 - cfg.high_ratio)), int(n_drop * cfg.high_ratio)
    dropped = torch.cat([order[:, :low], order[:, n - high:]], dim=1)
    drops.scatter_add_(1, dropped, torch.ones_like(dropped, dtype=drops.dtype))
    active = order[:, low:n - high].sort(dim=1).values
    return active.repeat(n_chunks, 1)
