"""Paired fidelity metrics: PSNR (numpy), SSIM (scikit-image, when installed) and LPIPS (AlexNet, v0.1).

Images are float arrays (H, W, 3) in [0, 1]. LPIPS needs the converted weights file ``lpips_alex_v0.1.pth``
(see ../shared/assets/lpips-alex/README.md beside the repository); set ``TURBOSAMPLE_LPIPS`` to its path or keep
the shared folder beside the repository. A metric that cannot be computed is None, and ``missing_metrics`` says
why. ``bench/metrics.py`` re-exports these for the benchmarks.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

LPIPS_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "assets" / "lpips-alex" / "lpips_alex_v0.1.pth"
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# (conv key, padding, stride, max-pool after the tap)
ALEX_LAYERS = (("features.0", 2, 4, True), ("features.3", 2, 1, True), ("features.6", 1, 1, False),
               ("features.8", 1, 1, False), ("features.10", 1, 1, False))
IDENTICAL_PSNR = 100.0  # PSNR reported for identical images (as the benchmarks always did)


def lpips_weights_path() -> Path | None:
    path = Path(os.environ.get("TURBOSAMPLE_LPIPS", LPIPS_DEFAULT))
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def _lpips_state() -> dict | None:
    import torch

    path = lpips_weights_path()
    return torch.load(path, map_location="cpu", weights_only=True) if path else None


def _alex_taps(x, state: dict) -> list:
    import torch
    import torch.nn.functional as F

    h = (x - torch.tensor(SHIFT).view(1, 3, 1, 1)) / torch.tensor(SCALE).view(1, 3, 1, 1)
    taps = []
    for key, pad, stride, pool in ALEX_LAYERS:
        h = F.relu(F.conv2d(h, state[f"{key}.weight"], state[f"{key}.bias"], stride=stride, padding=pad))
        taps.append(h)
        if pool:
            h = F.max_pool2d(h, 3, 2)
    return taps


def lpips(a: np.ndarray, b: np.ndarray) -> float | None:
    """LPIPS distance of two (H, W, 3) images in [0, 1]; None when the weights are absent.

    Images smaller than 64 px are upscaled (bilinear) so AlexNet's stride-4 stem keeps spatial extent.
    """
    import torch
    import torch.nn.functional as F

    state = _lpips_state()
    if state is None:
        return None
    pair = torch.from_numpy(np.stack([a, b])).float().permute(0, 3, 1, 2) * 2 - 1
    if min(pair.shape[-2:]) < 64:
        pair = F.interpolate(pair, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        total = 0.0
        for i, tap in enumerate(_alex_taps(pair, state)):
            unit = tap / (tap.norm(dim=1, keepdim=True) + 1e-10)
            diff = (unit[0:1] - unit[1:2]) ** 2
            total += float(F.conv2d(diff, state[f"lin{i}.weight"]).mean())
    return total


def psnr(image: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (scikit-image's formula); identical arrays give ``IDENTICAL_PSNR``."""
    a, b = np.asarray(image, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"PSNR of images of different shapes {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return IDENTICAL_PSNR
    return float(10.0 * np.log10(data_range ** 2 / mse))


def ssim(image: np.ndarray, reference: np.ndarray) -> float | None:
    """Structural similarity of two (H, W, 3) images in [0, 1]; None without scikit-image."""
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return None
    return float(structural_similarity(reference, image, data_range=1.0, channel_axis=2))


def missing_metrics() -> list[str]:
    """Why a metric will be None here (empty when all three are computed)."""
    notes = []
    if lpips_weights_path() is None:
        notes.append(f"LPIPS not computed: its weights file was not found at {LPIPS_DEFAULT} (set TURBOSAMPLE_LPIPS "
                     "to lpips_alex_v0.1.pth); fidelity is PSNR and SSIM only")
    try:
        import skimage.metrics  # noqa: F401
    except ImportError:
        notes.append("SSIM not computed: scikit-image is not installed")
    return notes


def paired_scores(images: list[np.ndarray], refs: list[np.ndarray]) -> dict[str, float | None]:
    """Mean PSNR (dB), SSIM and LPIPS of images against their references (same order)."""
    pairs = list(zip(images, refs, strict=True))
    ps = [psnr(i, r) for i, r in pairs]
    ss = [ssim(i, r) for i, r in pairs]
    lp = [lpips(i, r) for i, r in pairs]
    return {"psnr": float(np.mean(ps)), "ssim": None if any(v is None for v in ss) else float(np.mean(ss)),
            "lpips": None if any(v is None for v in lp) else float(np.mean(lp))}
