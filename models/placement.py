"""Where a model runs and in which precision: the ``--device`` and ``--dtype`` settings.

``auto`` device: CUDA, else Apple MPS, else the CPU. ``auto`` dtype: bf16 on a CUDA card that supports it, fp16
on other GPUs (older CUDA cards, MPS), fp32 on the CPU.
"""

from __future__ import annotations

import torch

DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class PlacementError(ValueError):
    """A device or precision this machine cannot run; the message says what can."""


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(setting: str = "auto") -> torch.device:
    """The torch device for a ``--device`` setting; PlacementError when it is not on this machine."""
    if setting not in DEVICES:
        raise PlacementError(f"unknown device {setting!r}; choose one of {', '.join(DEVICES)}")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise PlacementError("--device cuda: no CUDA device is available here (use --device auto or cpu)")
    if setting == "mps" and not mps_available():
        raise PlacementError("--device mps: Apple's MPS backend is not available here (use --device auto or cpu)")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """The torch dtype for a ``--dtype`` setting on ``device`` (``auto``: bf16 / fp16 / fp32, see the module)."""
    if setting not in DTYPES:
        raise PlacementError(f"unknown dtype {setting!r}; choose one of {', '.join(DTYPES)}")
    if setting != "auto":
        return DTYPES[setting]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if device.type == "mps" else torch.float32


def check_offload(offload: bool, device: torch.device) -> None:
    """Model CPU offload moves each model to a GPU while it runs; on the CPU there is nothing to offload to."""
    if offload and device.type == "cpu":
        raise PlacementError("--offload keeps models in CPU memory and moves each to the GPU while it runs; it needs "
                             "--device cuda or mps (on the CPU every model is in CPU memory already)")


def dtype_name(dtype: torch.dtype) -> str:
    return next((k for k, v in DTYPES.items() if v == dtype), str(dtype).removeprefix("torch."))
