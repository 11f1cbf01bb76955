"""Paired fidelity metrics for benchmarks: PSNR and SSIM (scikit-image) and LPIPS (AlexNet, v0.1).

Images are float arrays (H, W, 3) in [0, 1]. LPIPS needs the converted weights file
``lpips_alex_v0.1.pth`` (see ../shared/assets/lpips-alex/README.md); set ``TURBOSAMPLE_LPIPS`` to its path
or keep the shared folder beside the repository. Without it LPIPS is reported as None.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

LPIPS_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "assets" / "lpips-alex" / "lpips_alex_v0.1.pth"
SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
# (conv key, padding, stride, max-pool after the tap)
ALEX_LAYERS = (("features.0", 2, 4, True), ("features.3", 2, 1, True), ("features.6", 1, 1, False),
               ("features.8", 1, 1, False), ("features.10", 1, 1, False))


def lpips_weights_path() -> Path | None:
    path = Path(os.environ.get("TURBOSAMPLE_LPIPS", LPIPS_DEFAULT))
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def _lpips_state() -> dict[str, torch.Tensor] | None:
    path = lpips_weights_path()
    return torch.load(path, map_location="cpu", weights_only=True) if path else None


def _alex_taps(x: torch.Tensor, state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    taps = []
    h = (x - SHIFT) / SCALE
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


def paired_scores(images: list[np.ndarray], refs: list[np.ndarray]) -> dict[str, float | None]:
    """Mean PSNR (dB), SSIM and LPIPS of images against their references (same order)."""
    pairs = list(zip(images, refs, strict=True))
    psnr = [100.0 if np.array_equal(i, r) else peak_signal_noise_ratio(r, i, data_range=1.0) for i, r in pairs]
    ssim = [structural_similarity(r, i, data_range=1.0, channel_axis=2) for i, r in pairs]
    lp = [lpips(i, r) for i, r in pairs]
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)),
            "lpips": None if any(v is None for v in lp) else float(np.mean(lp))}


def score(images: list[np.ndarray], refs: list[np.ndarray]) -> tuple[float, float, float]:
    """(PSNR, SSIM, LPIPS) means; LPIPS is NaN when its weights are absent."""
    s = paired_scores(images, refs)
    return s["psnr"], s["ssim"], float("nan") if s["lpips"] is None else s["lpips"]


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Unbiased squared MMD between sample sets x (n, d) and y (m, d) with an RBF kernel."""
    def k(a, b):
        return torch.exp(-torch.cdist(a.double(), b.double()).square() / (2 * bandwidth ** 2))

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - kxx.trace()) / (n * (n - 1)) + (kyy.sum() - kyy.trace()) / (m * (m - 1))
                 - 2 * kxy.mean())


def median_bandwidth(y: torch.Tensor) -> float:
    """The median pairwise distance of a sample set (n, d): the usual RBF bandwidth heuristic."""
    d = torch.cdist(y.double(), y.double())
    return float(d[~torch.eye(len(y), dtype=torch.bool)].median())
