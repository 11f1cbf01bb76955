"""Paired fidelity metrics for benchmarks: PSNR and SSIM (scikit-image) and LPIPS (AlexNet, v0.1).

Images are float arrays (H, W, 3) in [0, 1]. The metrics live in the package (``turbosample.tune.metrics``, used by
the auto-tuner too) and are re-exported here; LPIPS needs the converted weights file ``lpips_alex_v0.1.pth`` (see
../shared/assets/lpips-alex/README.md); set ``TURBOSAMPLE_LPIPS`` to its path or keep the shared folder beside the
repository. Without it LPIPS is reported as None.
"""

from __future__ import annotations

import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: F401  (re-exported)

from turbosample.tune.metrics import LPIPS_DEFAULT, lpips, lpips_weights_path, paired_scores  # noqa: F401


def score(images: list, refs: list) -> tuple[float, float, float]:
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
