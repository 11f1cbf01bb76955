"""Wall-time protocol for benchmarks: alternate the methods, repeat, report medians (design.md §5)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def alternating_medians(runs: dict[str, Callable[[], object]], repeats: int = 3) -> dict[str, float]:
    """Median seconds of each callable; every round times all of them, in an order rotated each round."""
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(max(1, repeats)):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
