"""The benchmark metrics: PSNR/SSIM wiring and our LPIPS forward against upstream's published values."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_metrics", ROOT / "bench" / "metrics.py")
metrics = importlib.util.module_from_spec(spec)
spec.loader.exec_module(metrics)


def test_paired_scores_identity_and_noise():
    rng = np.random.default_rng(0)
    img = rng.random((32, 32, 3))
    same = metrics.paired_scores([img], [img])
    assert same["psnr"] == 100.0 and same["ssim"] == pytest.approx(1.0)
    noisy = np.clip(img + rng.normal(0, 0.1, img.shape), 0, 1)
    assert 15 < metrics.paired_scores([noisy], [img])["psnr"] < 25


def test_mmd2_matches_the_unbiased_estimator_written_out():
    import math

    import torch

    x = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]
    y = [[0.5, 0.5], [3.0, 1.0]]
    k = lambda a, b: math.exp(-sum((p - q) ** 2 for p, q in zip(a, b, strict=True)) / (2 * 1.5 ** 2))  # noqa: E731
    xx = sum(k(a, b) for i, a in enumerate(x) for j, b in enumerate(x) if i != j) / (3 * 2)
    yy = sum(k(a, b) for i, a in enumerate(y) for j, b in enumerate(y) if i != j) / (2 * 1)
    xy = sum(k(a, b) for a in x for b in y) / (3 * 2)
    got = metrics.mmd2(torch.tensor(x), torch.tensor(y), 1.5)
    assert got == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    assert metrics.median_bandwidth(torch.tensor(x)) == pytest.approx(2.0)  # distances 1, 2, sqrt(5)


def test_mmd2_tells_a_shifted_distribution_from_the_same_one():
    import torch

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(200, 8, generator=g)
    same, shifted = torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g) + 0.5
    bw = metrics.median_bandwidth(ref)
    assert abs(metrics.mmd2(same, ref, bw)) < 0.01 < metrics.mmd2(shifted, ref, bw)


@pytest.mark.skipif(metrics.lpips_weights_path() is None,
                    reason="LPIPS weights not present (set TURBOSAMPLE_LPIPS; benchmarks only)")
def test_lpips_matches_upstream_reference_distances():
    from PIL import Image

    folder = metrics.lpips_weights_path().parent

    def load(name):
        return np.asarray(Image.open(folder / name).convert("RGB"), dtype=np.float32) / 255

    ref = load("ex_ref.png")
    assert metrics.lpips(ref, load("ex_p0.png")) == pytest.approx(0.7219, abs=5e-4)
    assert metrics.lpips(ref, load("ex_p1.png")) == pytest.approx(0.1376, abs=5e-4)
    assert metrics.lpips(ref, ref) == pytest.approx(0.0, abs=1e-7)
