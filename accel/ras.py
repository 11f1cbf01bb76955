"""RAS (Region-Adaptive Sampling, Liu et al. 2025, ``microsoft/RAS``) as a DiffusionModel wrapper.

At sparse steps only a subset of patch tokens runs through the transformer blocks: they are dropped right
after the patch embedding, their queries attend to ALL tokens through a per-block K/V cache (refreshed at
the active positions, stale for the others), the active outputs are scattered back before the head, and
inactive tokens reuse the previous call's model output (the velocity, as in the official scheduler). The
sampler still advances every latent pixel. Dense steps (warm-up and periodic "error reset") run every token
and refill the caches. Token choice: ``accel/ras_select.py``.

Decisions:

* **CFG / batch**: one token subset per image, shared by its CFG branches of the same call (the metric is
  the mean over the branches, as the official code selects from the guided output); every image of a batch
  has its own subset. Branches that arrive in separate calls (ComfyUI low-VRAM splits) keep separate state,
  keyed by ``cond_or_uncond``.
* **Sub-step calls** (heun, dpm_2): every call maps to the logical step whose sigma interval holds its sigma;
  the selection is made once per step (first call of that step) and reused by its other calls; every call
  reuses the most recent output of its branch for inactive tokens and refreshes the cache at active ones.
* **State** lives in ``options["run_state"]`` (fresh per run); it is also rebuilt when the step index goes
  back or the input shape changes. Without ``sample_sigmas``/``run_state`` (a call outside a sampling run)
  the wrapper runs the plain forward.
* RAS computes the network itself from ``transformer_parts``; wrappers added after it (inner ones) are not
  called on its calls.
* **Starvation direction**: the official code multiplies the score by ``exp(+s*cnt)`` and drops the highest
  scores, so a dropped token becomes *more* likely to be dropped again (it is in effect never recomputed);
  its README says a larger scale gives "more uniform sampling", i.e. ``exp(-s*cnt)``. Measured on the built-in
  model (``OMP_NUM_THREADS=1 python bench/bench_ras.py --starvation-study``: 64x64, euler 28 steps, CFG 4,
  ratio 0.5, 4 prompts; PSNR/SSIM against the plain model): scale 0 -> 29.93 dB / 0.926; official sign,
  scale 0.1, 0.5 or 1 -> 29.01 dB / 0.923 (worse than no counter); README sign ("spread") scale 0.1 ->
  36.00 dB / 0.990, 0.5 -> 36.17 dB, 1.0 -> 36.57 dB. Default: ``"spread"`` with the official scale 0.1;
  ``starvation="official"`` keeps code parity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F

from ..samplers.denoiser import DiffusionModel
from .adapter import TransformerParts, UnsupportedModel, transformer_parts
from .kv_cache import cached_attention, fill_cache, gather_tokens, scatter_tokens
from .ras_select import RASConfig, drop_count, select_tokens, step_index
from .stacking import check_can_stack

WRAPPER_KEY = "turbosample.ras"


@dataclass
class BranchState:
    """Per-branch RAS state of one sampling run."""

    shape: tuple
    drops: torch.Tensor                      # (images, N) times each token was left out
    step: int = -1                           # logical step of the last call
    active: torch.Tensor | None = None       # (B, K) token indices of the current sparse step
    prev_out: torch.Tensor | None = None     # last model output (B, C, H, W), merged
    caches: list = field(default_factory=list)  # per block (K, V), (B, heads, N, head_dim)


def ras_parts(diffusion_model: torch.nn.Module) -> TransformerParts:
    """The model's parts, or UnsupportedModel when RAS cannot run it."""
    parts = transformer_parts(diffusion_model)
    if parts.run_block is None:
        raise UnsupportedModel(f"RAS needs per-block attention access, which the {parts.name} adapter lacks")
    return parts


def block_attention(parts: TransformerParts, j: int):
    return getattr(parts.attention_modules[j], "attention", F.scaled_dot_product_attention) \
        if j < len(parts.attention_modules) else F.scaled_dot_product_attention


def dense_forward(parts: TransformerParts, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
                  ) -> tuple[torch.Tensor, list]:
    """The full forward; also returns every block's full (K, V)."""
    tokens, c, grid = parts.embed(x, timestep, context)
    caches = []

    def filling(attention, q, k, v):
        caches.append(fill_cache(k, v))
        return attention(q, k, v)

    for j in range(len(parts.blocks)):
        tokens = parts.run_block(j, tokens, c, partial(filling, block_attention(parts, j)))
    return parts.head(tokens, c, grid), caches


def sparse_forward(parts: TransformerParts, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                   caches: list, active: torch.Tensor, prev_out: torch.Tensor) -> torch.Tensor:
    """The forward for the ``active`` (B, K) tokens over cached K/V (updated in place); others keep prev_out."""
    tokens, c, grid = parts.embed(x, timestep, context)
    h = gather_tokens(tokens, active)
    for j in range(len(parts.blocks)):
        attention = partial(cached_attention, cache=caches[j], index=active, attention=block_attention(parts, j))
        h = parts.run_block(j, h, c, attention)
    new = parts.head(scatter_tokens(torch.zeros_like(tokens), active, h), c, grid)
    mask = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device).scatter_(1, active, True)
    p = parts.patch_size
    mask = mask.reshape(-1, 1, *grid).repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)
    return torch.where(mask, new, prev_out.to(new.dtype))


def ras_call(parts: TransformerParts, cfg: RASConfig, forward, x: torch.Tensor, timestep: torch.Tensor,
             context: torch.Tensor, options: dict) -> torch.Tensor:
    """One network call under RAS (the wrapper body); ``forward`` is used outside sampling runs only."""
    sigmas, sample_sigmas, store = options.get("sigmas"), options.get("sample_sigmas"), options.get("run_state")
    if sigmas is None or sample_sigmas is None or store is None or len(sample_sigmas) < 2:
        return forward(x, timestep, context, options)
    schedule = [float(s) for s in sample_sigmas]
    step = step_index(float(torch.as_tensor(sigmas).max()), schedule)
    branches = list(options.get("cond_or_uncond") or [0])
    n_chunks = len(branches) if x.shape[0] % len(branches) == 0 else 1
    key = (WRAPPER_KEY, tuple(branches))
    p = parts.patch_size
    n_tokens = (x.shape[-2] // p) * (x.shape[-1] // p)
    n_drop = drop_count(cfg, step, len(schedule) - 1, n_tokens)

    state = store.get(key)
    if state is None or state.shape != tuple(x.shape) or step < state.step:
        drops = torch.zeros(x.shape[0] // n_chunks, n_tokens, device=x.device)
        state = store[key] = BranchState(shape=tuple(x.shape), drops=drops)
    if n_drop == 0 or state.prev_out is None or not state.caches:
        out, state.caches = dense_forward(parts, x, timestep, context)
        state.active = None
    else:
        if state.active is None or state.step != step:
            state.active = select_tokens(state.prev_out, p, state.drops, n_drop, n_chunks, cfg)
        out = sparse_forward(parts, x, timestep, context, state.caches, state.active, state.prev_out)
    state.step, state.prev_out = step, out
    return out


def ras_wrapper(diffusion_model: torch.nn.Module, cfg: RASConfig):
    """``fn(forward, x, timestep, context, options)`` for ``DiffusionModel.with_wrapper``."""
    parts = ras_parts(diffusion_model)
    return partial(ras_call, parts, cfg)


def apply_ras(model: DiffusionModel, **settings) -> DiffusionModel:
    """A RAS-patched copy of ``model`` (settings: RASConfig fields); ``model`` itself is unchanged."""
    if not isinstance(model, DiffusionModel):
        raise UnsupportedModel(f"RAS patches a turbosample DiffusionModel here, got {type(model).__name__}")
    cfg = RASConfig(**settings)
    check_can_stack(model, WRAPPER_KEY)
    return model.with_wrapper(WRAPPER_KEY, ras_wrapper(model.diffusion_model, cfg))
