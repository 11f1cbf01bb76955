"""Seeded Brownian-tree noise for stochastic samplers: one Brownian path W(t), t >= 0, per seed.

W(t) is a deterministic function of (seed, t) alone: it does not depend on the schedule, the step count or the
order of queries, so runs with different step counts see the same path at their shared sigmas. Every Gaussian is
drawn on the CPU from a ``torch.Generator`` seeded by a hash of (seed, tree node), so values are identical on every
device. Construction: W(1) and the anchors W(2^k) come from a Gaussian random walk; inside an anchor interval the
path is refined by Brownian-bridge midpoints down to ``depth`` levels, then interpolated linearly (the variance lost
is at most 1/4 of a leaf's length, 2^-depth of the interval).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

MASK64 = (1 << 64) - 1
NoiseSampler = Callable[[torch.Tensor | float, torch.Tensor | float], torch.Tensor]


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def node_seed(seed: int, *key: int) -> int:
    """A 64-bit generator seed for one tree node, mixed from the run seed and the node's integer key."""
    h = _splitmix64(int(seed) & MASK64)
    for k in key:
        h = _splitmix64(h ^ (int(k) & MASK64))
    return h


class BrownianTree:
    """A standard Brownian motion W on [0, inf) with W(0) = 0, sampled lazily at any t (float64, CPU)."""

    def __init__(self, shape: tuple[int, ...], seed: int, depth: int = 20):
        if depth < 1:
            raise ValueError(f"Brownian tree depth must be >= 1, got {depth}")
        self.shape, self.seed, self.depth = tuple(shape), int(seed), int(depth)
        self._anchors: list[torch.Tensor] = []  # W(2^k), k = 0, 1, ...
        self._path: dict[tuple[int, int, int], torch.Tensor] = {}  # bridge midpoints on the last query's path
        self._values: dict[float, torch.Tensor] = {}  # a few recent W(t)

    def _gaussian(self, *key: int) -> torch.Tensor:
        generator = torch.Generator(device="cpu").manual_seed(node_seed(self.seed, *key))
        return torch.randn(self.shape, generator=generator, dtype=torch.float32).double()

    def _anchor(self, k: int) -> torch.Tensor:
        while len(self._anchors) <= k:
            j = len(self._anchors)
            if j == 0:
                self._anchors.append(self._gaussian(0, 0))
            else:
                self._anchors.append(self._anchors[-1] + math.sqrt(2.0 ** (j - 1)) * self._gaussian(0, j))
        return self._anchors[k]

    def value(self, t: float) -> torch.Tensor:
        """W(t)."""
        t = float(t)
        if not (t >= 0 and math.isfinite(t)):
            raise ValueError(f"Brownian tree time must be finite and >= 0, got {t}")
        if t == 0:
            return torch.zeros(self.shape, dtype=torch.float64)
        if t not in self._values:
            if len(self._values) >= 8:
                self._values.pop(next(iter(self._values)))
            self._values[t] = self._descend(t)
        return self._values[t]

    def _descend(self, t: float) -> torch.Tensor:
        k = max(0, math.ceil(math.log2(t)))
        a, b = (0.0, 1.0) if k == 0 else (2.0 ** (k - 1), 2.0 ** k)
        wa = torch.zeros(self.shape, dtype=torch.float64) if k == 0 else self._anchor(k - 1)
        wb = self._anchor(k)
        path, index = {}, 0
        for level in range(1, self.depth + 1):
            if t == a:
                break
            if t == b:
                wa, a = wb, b
                break
            m = (a + b) / 2
            key = (k + 1, level, index)
            wm = self._path.get(key)
            if wm is None:
                wm = (wa + wb) / 2 + math.sqrt((b - a) / 4) * self._gaussian(*key)
            path[key] = wm
            if t < m:
                b, wb, index = m, wm, 2 * index
            else:
                a, wa, index = m, wm, 2 * index + 1
        self._path = path
        return wa if t == a else wa + (t - a) / (b - a) * (wb - wa)

    def increment(self, t0: float, t1: float) -> torch.Tensor:
        """W(t1) - W(t0)."""
        return self.value(t1) - self.value(t0)


class BrownianNoise:
    """A k-diffusion/ComfyUI noise sampler ``fn(sigma, sigma_next)``: standardised Brownian increments in sigma.

    ``seed`` is one int for the batch, or one int per image (then image i's path depends on its seed alone, so it is
    reproduced by a batch of one with that seed)."""

    def __init__(self, x: torch.Tensor, seed: int | Sequence[int], depth: int = 20):
        seeds = [seed] if isinstance(seed, int) else list(seed)
        shape = tuple(x.shape) if isinstance(seed, int) else (1, *x.shape[1:])
        self.trees = [BrownianTree(shape, s, depth) for s in seeds]
        self.tree = self.trees[0]
        self.shape, self.device, self.dtype = tuple(x.shape), x.device, x.dtype

    def __call__(self, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
        t0, t1 = float(sigma), float(sigma_next)
        if t0 == t1:
            return torch.zeros(self.shape, device=self.device, dtype=self.dtype)
        z = torch.cat([tree.increment(t0, t1) for tree in self.trees]) / math.sqrt(abs(t1 - t0))
        return z.to(device=self.device, dtype=self.dtype)


def resolve_seed(extra_args: dict | None) -> int | tuple[int, ...]:
    """The run's seed from ``extra_args["seed"]`` (ComfyUI passes it there; a list gives one per image); a random one
    when absent."""
    seed = (extra_args or {}).get("seed")
    if seed is None:
        return int(torch.randint(0, 2 ** 63 - 1, ()).item())
    if isinstance(seed, bool) or not (isinstance(seed, int) or (isinstance(seed, Sequence) and seed and all(
            isinstance(s, int) and not isinstance(s, bool) for s in seed))):
        raise ValueError(f"seed must be an integer or a list of integers, got {seed!r}")
    return seed if isinstance(seed, int) else tuple(seed)


def noise_sampler_for(x: torch.Tensor, extra_args: dict | None, noise_sampler: NoiseSampler | None) -> NoiseSampler:
    """The given noise sampler, or a Brownian tree seeded from ``extra_args["seed"]``."""
    return noise_sampler if noise_sampler is not None else BrownianNoise(x, resolve_seed(extra_args))
