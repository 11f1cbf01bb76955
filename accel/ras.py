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
  called on its calls. The block stack runs through ``RASRunner``, which MagCache uses too when both are on one
  model (``accel.stacking``): MagCache then decides per step and branch whether the stack runs at all. A
  MagCache-skipped step leaves the K/V caches as they were; a skipped dense (error-reset) step moves to the
  row's next computed step. Measured (``bench/bench_stack.py``) the stale caches make the pair lose more
  fidelity than the two errors alone would add.
* **Dual-stream models** (diffusers SD3 / Flux, ``accel.diffusers_adapters``): the block stack carries text
  tokens before the image tokens; text tokens are always active (``stack_index``), only image tokens are
  selected and dropped, and RoPE follows the kept tokens (``tokens_cond``).
* **Videos** (diffusers / ComfyUI Wan): tokens form a (frames, rows, cols) grid with one patch size per dim;
  token scores pool each 3-D patch and the pixel merge expands it back (``ras_select.token_grid`` / ``pixel_mask``).
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

import math
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F

from ..samplers.denoiser import DiffusionModel
from .adapter import TransformerParts, UnsupportedModel, transformer_parts
from .kv_cache import KVCache, cached_attention, gather_tokens, scatter_tokens
from .ras_graph import SparseGraph
from .ras_select import Patch, RASConfig, drop_count, pixel_mask, select_tokens, step_index, token_grid
from .stacking import BlockStackWrapper, add_block_stack_wrapper, check_one_sigma, partner_settings

WRAPPER_KEY = "turbosample.ras"


@dataclass
class BranchState:
    """Per-branch RAS state of one sampling run."""

    shape: tuple
    drops: torch.Tensor                      # (images, N) times each token was left out
    filled: torch.Tensor                     # (B,) rows whose K/V caches hold the last dense step's pass
    step: int = -1                           # logical step of the last call
    selected: int = -1                       # step of the current active-token selection
    active: torch.Tensor | None = None       # (B, K) token indices of the current sparse step
    prev_out: torch.Tensor | None = None     # last model output (B, C, H, W), merged
    prev_tokens: torch.Tensor | None = None  # last block-stack output (B, N, D), all tokens
    caches: list = field(default_factory=list)  # per block KVCache of (B, heads, N, head_dim), filled in place
    graph: SparseGraph = field(default_factory=SparseGraph)  # the sparse pass as a CUDA graph (cfg.cuda_graph)


def ras_parts(diffusion_model: torch.nn.Module) -> TransformerParts:
    """The model's parts, or UnsupportedModel when RAS cannot run it."""
    parts = transformer_parts(diffusion_model)
    if parts.run_block is None:
        raise UnsupportedModel(f"RAS needs per-block attention access (run_block), which the {parts.name} adapter "
                               "lacks; MagCache, Bottleneck Sampling and DualFast do not need it")
    return parts


def block_attention(parts: TransformerParts, j: int):
    return getattr(parts.attention_modules[j], "attention", F.scaled_dot_product_attention) \
        if j < len(parts.attention_modules) else F.scaled_dot_product_attention


def dense_blocks(parts: TransformerParts, tokens: torch.Tensor, c: torch.Tensor, caches: list | None = None,
                 rows: torch.Tensor | None = None, batch: int | None = None, mode: str = "full"
                 ) -> tuple[torch.Tensor, list]:
    """Every token through every block, writing every block's full (K, V) into ``caches`` in place (batch
    ``rows`` of caches for ``batch`` rows; missing ones are allocated), so a run holds one set of caches."""
    caches = [] if caches is None else caches

    def filling(j, attention, q, k, v):
        if j == len(caches):
            caches.append(KVCache.empty(k, batch or k.shape[0], mode))
        caches[j].write(k, v, rows)
        return attention(q, k, v)

    for j in range(len(parts.blocks)):
        tokens = parts.run_block(j, tokens, c, partial(filling, j, block_attention(parts, j)))
    return tokens, caches


def stack_index(active: torch.Tensor, n_stack: int, n_image: int) -> torch.Tensor:
    """Image-token indices (B, K) -> indices into the block-stack tokens, whose first ``n_stack - n_image``
    (text tokens of dual-stream models) are always active."""
    lead = n_stack - n_image
    if lead == 0:
        return active
    fixed = torch.arange(lead, device=active.device).expand(active.shape[0], lead)
    return torch.cat([fixed, active + lead], dim=1)


def tokens_cond(c: object, index: torch.Tensor) -> object:
    """The conditioning of the block-stack tokens ``index``: position-dependent parts (RoPE) follow them."""
    at_tokens = getattr(c, "at_tokens", None)
    return c if at_tokens is None else at_tokens(index)


def sparse_blocks(parts: TransformerParts, tokens: torch.Tensor, c: torch.Tensor, caches: list,
                  active: torch.Tensor) -> torch.Tensor:
    """The ``active`` (B, K) block-stack tokens through every block over cached K/V (updated in place) -> (B, K, D)."""
    h = gather_tokens(tokens, active)
    c = tokens_cond(c, active)
    for j in range(len(parts.blocks)):
        attention = partial(cached_attention, cache=caches[j], index=active, attention=block_attention(parts, j))
        h = parts.run_block(j, h, c, attention)
    return h


def keep_inactive(new: torch.Tensor, active: torch.Tensor, grid: tuple[int, ...], patch: Patch,
                  prev_out: torch.Tensor) -> torch.Tensor:
    """``new`` (B, C, *spatial) at the pixels of ``active`` tokens, ``prev_out`` elsewhere."""
    return torch.where(pixel_mask(active, grid, patch), new, prev_out.to(new.dtype))


def dense_forward(parts: TransformerParts, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
                  ) -> tuple[torch.Tensor, list]:
    """The full forward; also returns every block's full (K, V)."""
    tokens, c, grid = parts.embed(x, timestep, context)
    tokens, caches = dense_blocks(parts, tokens, c)
    return parts.head(tokens, c, grid), caches


def sparse_forward(parts: TransformerParts, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                   caches: list, active: torch.Tensor, prev_out: torch.Tensor) -> torch.Tensor:
    """The forward for the ``active`` (B, K) tokens over cached K/V (updated in place); others keep prev_out."""
    tokens, c, grid = parts.embed(x, timestep, context)
    index = stack_index(active, tokens.shape[1], math.prod(grid))
    h = sparse_blocks(parts, tokens, c, caches, index)
    new = parts.head(scatter_tokens(torch.zeros_like(tokens), index, h), c, grid)
    return keep_inactive(new, active, grid, parts.patch_size, prev_out)


@dataclass
class RASRunner:
    """RAS's block-stack runner for one network call: ``run`` the stack (for some batch rows), then ``finish``.

    At a sparse step the active tokens run over the K/V caches and inactive tokens keep their previous stack
    output (``state.prev_tokens``); ``finish`` gives inactive pixels the previous model output and records the
    call. ``rows`` (batch rows, None = all) lets MagCache run the stack for the branches it computes only.
    """

    parts: TransformerParts
    cfg: RASConfig
    state: BranchState
    step: int
    n_drop: int
    n_chunks: int
    sparse_rows: torch.Tensor | None = None  # rows this call ran sparsely
    ran: torch.Tensor | None = None  # (B,) rows whose stack ran in this call

    def run(self, tokens: torch.Tensor, c: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        st = self.state
        rows = torch.arange(st.shape[0], device=tokens.device) if rows is None else rows
        sparse = (self.n_drop > 0 and st.prev_out is not None and st.prev_tokens is not None
                  and bool(st.filled[rows].all()))
        every = rows.numel() == st.shape[0]
        self.ran = torch.zeros(st.shape[0], dtype=torch.bool, device=tokens.device).index_fill_(0, rows, True)
        if not sparse:
            out, st.caches = dense_blocks(self.parts, tokens, c, st.caches, None if every else rows, st.shape[0],
                                          self.cfg.kv_cache)
            st.filled[rows] = True
            return out
        if st.active is None or st.selected != self.step:
            st.active = select_tokens(st.prev_out, self.parts.patch_size, st.drops, self.n_drop, self.n_chunks,
                                      self.cfg)
            st.selected = self.step
        index = stack_index(st.active, tokens.shape[1], st.drops.shape[1])
        if every:  # the whole batch: work on the caches in place
            if self.cfg.cuda_graph:
                caches = st.caches
                h = st.graph.run(lambda t, c_, i: sparse_blocks(self.parts, t, c_, caches, i), tokens, c, index)
            else:
                h = sparse_blocks(self.parts, tokens, c, st.caches, index)
            self.sparse_rows = rows
            return scatter_tokens(st.prev_tokens.to(h.dtype), index, h)
        active = index[rows]
        caches = [cache.take(rows) for cache in st.caches]
        h = sparse_blocks(self.parts, tokens, c, caches, active)
        for cache, sub in zip(st.caches, caches, strict=True):
            cache.put(rows, sub)
        self.sparse_rows = rows
        return scatter_tokens(st.prev_tokens[rows].to(h.dtype), active, h)

    def finish(self, stack_out: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The call's output (inactive pixels of sparse rows from the previous output); records the call."""
        st, rows = self.state, self.sparse_rows
        if rows is not None:
            grid = token_grid(out.shape, self.parts.patch_size)
            out = out.clone()
            out[rows] = keep_inactive(out[rows], st.active[rows], grid, self.parts.patch_size, st.prev_out[rows])
        if self.n_drop == 0:  # a dense (error-reset) step MagCache skipped moves to the row's next computed step
            st.filled &= self.ran if self.ran is not None else torch.zeros_like(st.filled)
        st.step, st.prev_out, st.prev_tokens = self.step, out, stack_out.detach()
        return out


def branch_state(patch: Patch, cfg: RASConfig, x: torch.Tensor, options: dict
                 ) -> tuple[BranchState, int, int, int] | None:
    """(state, step, tokens to drop, CFG chunks) of this call, the state created/reset as needed in
    ``options["run_state"]``; None outside a sampling run."""
    sigmas, sample_sigmas, store = options.get("sigmas"), options.get("sample_sigmas"), options.get("run_state")
    if sigmas is None or sample_sigmas is None or store is None or len(sample_sigmas) < 2:
        return None
    schedule = [float(s) for s in sample_sigmas]
    step = step_index(float(torch.as_tensor(sigmas).max()), schedule)
    branches = list(options.get("cond_or_uncond") or [0])
    n_chunks = len(branches) if x.shape[0] % len(branches) == 0 else 1
    key = (WRAPPER_KEY, tuple(branches))
    n_tokens = math.prod(token_grid(x.shape, patch))
    n_drop = drop_count(cfg, step, len(schedule) - 1, n_tokens)
    state = store.get(key)
    if state is None or state.shape != tuple(x.shape) or step < state.step:
        drops = torch.zeros(x.shape[0] // n_chunks, n_tokens, device=x.device)
        filled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        state = store[key] = BranchState(shape=tuple(x.shape), drops=drops, filled=filled)
    return state, step, n_drop, n_chunks


def ras_runner(parts: TransformerParts, cfg: RASConfig, x: torch.Tensor, options: dict) -> RASRunner | None:
    """The runner for this call with its run state (created/reset as needed); None outside a sampling run."""
    found = branch_state(parts.patch_size, cfg, x, options)
    return None if found is None else RASRunner(parts, cfg, *found)


def ras_call(parts: TransformerParts, cfg: RASConfig, forward, x: torch.Tensor, timestep: torch.Tensor,
             context: torch.Tensor, options: dict, magcache=None) -> torch.Tensor:
    """One network call under RAS (the wrapper body); ``forward`` is used outside sampling runs only.

    ``magcache`` (what a MagCache wrapper stacked on the same model carries, ``accel.magcache.MagCacheRun``) lets
    MagCache decide whether the stack runs at all: its ``run`` is called with RAS's block-stack runner.
    """
    check_one_sigma(options, "RAS")
    runner = ras_runner(parts, cfg, x, options)
    fallback = partial(forward, x, timestep, context, options)
    if magcache is not None:
        return magcache.run(parts, x, timestep, context, options, fallback, runner)
    if runner is None:
        return fallback()
    tokens, c, grid = parts.embed(x, timestep, context)
    out = runner.run(tokens, c, None)
    return runner.finish(out, parts.head(out, c, grid))


def ras_wrapper(diffusion_model: torch.nn.Module, cfg: RASConfig) -> BlockStackWrapper:
    """``fn(forward, x, timestep, context, options)`` for ``DiffusionModel.with_wrapper``."""
    parts = ras_parts(diffusion_model)

    def wrapper(forward, x, timestep, context, options):
        return ras_call(parts, cfg, forward, x, timestep, context, options, partner_settings(options, "magcache"))

    return BlockStackWrapper("ras", cfg, wrapper)


def apply_ras(model: DiffusionModel, **settings) -> DiffusionModel:
    """A RAS-patched copy of ``model`` (settings: RASConfig fields); ``model`` itself is unchanged."""
    if not isinstance(model, DiffusionModel):
        raise UnsupportedModel(f"RAS patches a turbosample DiffusionModel here, got {type(model).__name__}")
    cfg = RASConfig(**settings)
    return add_block_stack_wrapper(model, WRAPPER_KEY, ras_wrapper(model.diffusion_model, cfg))
