"""Inputs and outputs of the AutoTune node shared by its stand-alone and ComfyUI functions: the target, the
seeds, the report image and the report file."""

from __future__ import annotations

import json

from ..tune.search import Target, TuneResult
from .spec import NodeInputError
from .user_files import output_path, user_dir


def report_dir():
    """Where the node writes reports: $TURBOSAMPLE_AUTOTUNE_DIR, ComfyUI's user dir, or ~/.cache."""
    return user_dir("TURBOSAMPLE_AUTOTUNE_DIR", "autotune")


def target_of(target_speedup: float, min_psnr: float) -> Target:
    """The node's target: a speed-up (min_psnr 0) or a minimum PSNR (target_speedup 0)."""
    if target_speedup > 0 and min_psnr > 0:
        raise NodeInputError("set one target: target_speedup (and min_psnr 0) or min_psnr (and target_speedup 0)")
    try:
        if min_psnr > 0:
            return Target(min_psnr=float(min_psnr))
        return Target(speedup=float(target_speedup) if target_speedup > 0 else None)
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None


def seeds_from(seed: int, seeds: int) -> tuple[int, ...]:
    return tuple(seed + k for k in range(seeds))


def image_tensor(result: TuneResult):
    """The report image as a ComfyUI IMAGE (1, H, W, 3) in [0, 1]."""
    import numpy as np
    import torch

    from ..tune.report import report_image

    return torch.from_numpy(np.asarray(report_image(result), dtype=np.float32) / 255.0)[None]


def write_node_report(result: TuneResult, filename: str) -> None:
    if filename.strip():
        from ..tune.report import result_dict

        path = output_path(report_dir(), filename, "autotune", ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result_dict(result), indent=2) + "\n")
