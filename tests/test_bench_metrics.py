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
