"""RAS's sparse block stack replayed as a CUDA graph (``RASConfig(cuda_graph=True)``).

A sparse step runs a fixed-shape pass (the same number of active tokens every sparse step of a run) of many small
kernels; on a GPU much of its time is launch overhead. The first sparse call of a run runs eagerly (on a side
stream, as CUDA-graph warm-up) and is then captured; later sparse calls of the run copy their inputs (stack tokens,
conditioning tensors, active indices) into the captured buffers and replay the graph. The K/V caches are the run's
own, updated in place by the graph exactly as the eager pass does (RAS fills them in place at dense steps, so their
addresses stay fixed for the run).

It falls back to the eager pass, for the rest of the run, when the device is not CUDA, when shapes change, or when
capture fails (the reason is kept in ``SparseGraph.error`` and logged once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils import _pytree as pytree

logger = logging.getLogger("turbosample.ras")


def _signature(leaves: list) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device) if torch.is_tensor(t) else ("const", repr(t)) for t in leaves)


@dataclass
class SparseGraph:
    """One run's captured sparse pass (or why there is none)."""

    signature: tuple | None = None
    graph: object | None = None
    static: list = field(default_factory=list)   # input leaves (tensors copied into before each replay)
    spec: object | None = None
    output: torch.Tensor | None = None
    error: str | None = None
    replays: int = 0

    def run(self, sparse: Callable[..., torch.Tensor], *inputs) -> torch.Tensor:
        """``sparse(*inputs)`` through the graph when possible, else eagerly."""
        leaves, spec = pytree.tree_flatten(inputs)
        if self.error is not None or not self._usable(leaves):
            return sparse(*inputs)
        signature = _signature(leaves)
        if self.graph is None:
            return self._capture(sparse, leaves, spec, signature)
        if signature != self.signature:
            self._fail(f"input shapes changed ({len(leaves)} inputs)")
            return sparse(*inputs)
        for dst, src in zip(self.static, leaves, strict=True):
            if torch.is_tensor(dst):
                dst.copy_(src)
        self._replay()
        self.replays += 1
        return self.output.clone()

    @staticmethod
    def _usable(leaves: list) -> bool:
        return all(t.is_cuda for t in leaves if torch.is_tensor(t))

    def _replay(self) -> None:
        self.graph.replay()

    def _capture(self, sparse, leaves: list, spec, signature: tuple) -> torch.Tensor:
        static = [t.clone() if torch.is_tensor(t) else t for t in leaves]
        args = pytree.tree_unflatten(static, spec)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up = this call's real result (the pass is idempotent on its inputs)
            out = sparse(*args)
        torch.cuda.current_stream().wait_stream(side)
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                captured = sparse(*args)
        except Exception as exc:  # noqa: BLE001 - any capture failure: eager for the rest of the run
            self._fail(f"capture failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            return out
        self.signature, self.graph, self.static, self.spec, self.output = signature, graph, static, spec, captured
        return out

    def _fail(self, why: str) -> None:
        self.error = why
        self.graph = None
        logger.info("RAS CUDA graph off for this run: %s", why)
