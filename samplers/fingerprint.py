"""Which weights a file (MagCache calibration, refiner, DC-Solver ratios, EMS, schedule) belongs to.

``weights_fingerprint`` hashes parameter names, shapes and leading values. A network cast to another precision
keeps the fingerprint of the weights it was made from: ``to_precision`` records it before casting (bf16 / fp16
copies of the same weights would otherwise hash differently, and every file made for them would be refused).
"""

from __future__ import annotations

import hashlib

import torch

ATTRIBUTE = "turbosample_fingerprint"


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of the parameter names, shapes and leading values (cheap even for large models); the recorded
    one for a network made by ``to_precision``."""
    recorded = getattr(module, ATTRIBUTE, None)
    if isinstance(recorded, str):
        return recorded
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().reshape(-1)[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def to_precision(module: torch.nn.Module, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> torch.nn.Module:
    """``module.to(device, dtype)`` (in place, as ``Module.to``) keeping the fingerprint of the original weights."""
    fingerprint = weights_fingerprint(module)
    module.to(device=device, dtype=dtype)
    setattr(module, ATTRIBUTE, fingerprint)
    return module


def model_id_of(model) -> str:
    """Name and weights fingerprint of our DiffusionModel or a ComfyUI ModelPatcher: what a file is tied to."""
    from .denoiser import DiffusionModel

    if isinstance(model, DiffusionModel):
        return f"{model.name}:{weights_fingerprint(model.diffusion_model)}"
    inner = getattr(model, "model", None)
    net = getattr(inner, "diffusion_model", None)
    if not isinstance(net, torch.nn.Module):
        raise ValueError(f"cannot identify the weights of a {type(model).__name__}; pass a DiffusionModel or a "
                         "ComfyUI MODEL")
    return f"{type(inner).__name__}:{weights_fingerprint(net)}"
