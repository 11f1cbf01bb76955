import pytest
import torch
from safetensors.torch import save_file

from turbosample.models.autoencoder import Autoencoder, AutoencoderConfig, save_autoencoder
from turbosample.models.builtin import (
    MODEL_ID,
    WEIGHTS,
    LatentSpace,
    latent_space,
    load_model,
    read_metadata,
    save_weights,
    to_pixels,
)
from turbosample.models.dit import DiTConfig, TinyDiT, grid_position_embedding


def test_shipped_weights_load_and_are_small():
    assert WEIGHTS.exists(), "models/builtin_emoji.safetensors is missing"
    assert WEIGHTS.stat().st_size <= 40 * 1024 * 1024
    assert read_metadata(WEIGHTS)["turbosample.model_id"] == MODEL_ID
    model = load_model()
    assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) >= 2


@pytest.mark.parametrize("h, w", [(32, 32), (64, 64), (32, 48)])
def test_dit_runs_at_several_resolutions(h, w):
    model = TinyDiT(width=32, depth=2, heads=2)
    out = model(torch.randn(2, 3, h, w), torch.tensor([500.0, 20.0]), torch.randn(2, 1, 384))
    assert out.shape == (2, 3, h, w)


def test_dit_refuses_sizes_off_the_patch_grid():
    with pytest.raises(ValueError, match="multiples of 4"):
        TinyDiT(width=32, depth=1, heads=2)(torch.randn(1, 3, 30, 32), torch.tensor([1.0]), torch.zeros(1, 1, 384))


def test_positions_are_measured_on_the_base_grid():
    low = grid_position_embedding(8, 8, 32, base_grid=8)
    high = grid_position_embedding(16, 16, 32, base_grid=8)
    # a 2x2 block of high-res tokens straddles the low-res token centre: their mean position is the same
    assert low.shape == (64, 32) and high.shape == (256, 32)
    ys = (torch.arange(16) + 0.5) * 0.5
    assert torch.allclose(ys.view(8, 2).mean(1), torch.arange(8) + 0.5)


def test_foreign_and_corrupt_files_are_refused(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a turbosample-builtin"):
        load_model(foreign)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_model(corrupt)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.safetensors")


def test_the_shipped_weights_sample_in_their_autoencoders_latent_space():
    space = latent_space(WEIGHTS)
    assert (space.channels, space.factor, space.pixel_multiple, space.trained_sizes) == (8, 8, 16, (32, 64))
    assert space.autoencoder == WEIGHTS.with_name("ae_f8c8.safetensors") and space.autoencoder.stat().st_size < 4e6
    assert space.latent_shape(2, 64, 32) == (2, 8, 8, 4)
    images = to_pixels(torch.randn(2, 8, 8, 4), WEIGHTS)
    assert images.shape == (2, 3, 64, 32) and images.abs().max() <= 1
    with pytest.raises(ValueError, match="8 channels"):
        to_pixels(torch.zeros(1, 3, 64, 64), WEIGHTS)


def save_tiny(path, in_channels: int, record: dict) -> None:
    model = TinyDiT(DiTConfig(in_channels=in_channels, patch_size=2, width=32, depth=1, heads=2))
    save_weights(model, path, record)


def test_latent_weights_find_their_autoencoder_beside_them_and_nowhere_else(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    save_autoencoder(Autoencoder(AutoencoderConfig(latent_channels=4, downsample=4, channels=32)),
                     elsewhere / "ae.safetensors", {})
    weights = tmp_path / "w.safetensors"
    save_tiny(weights, 4, {"args": {"autoencoder": str(elsewhere / "ae.safetensors")}})
    with pytest.raises(FileNotFoundError, match="beside"):  # the record's directory is never followed
        latent_space(weights)
    (tmp_path / "ae.safetensors").write_bytes((elsewhere / "ae.safetensors").read_bytes())
    other = tmp_path / "w2.safetensors"  # a new name: the space of a path is cached
    save_tiny(other, 4, {"args": {"autoencoder": "../../ae.safetensors"}})
    assert latent_space(other) == LatentSpace(4, 4, 2, tmp_path / "ae.safetensors", (64,))
    mismatch = tmp_path / "w3.safetensors"
    save_tiny(mismatch, 6, {"args": {"autoencoder": "ae.safetensors"}})
    with pytest.raises(ValueError, match="takes 6 channels but ae.safetensors makes 4"):
        latent_space(mismatch)
    orphan = tmp_path / "w4.safetensors"
    save_tiny(orphan, 4, {})
    with pytest.raises(ValueError, match="without an autoencoder"):
        latent_space(orphan)
    pixels = tmp_path / "w5.safetensors"
    save_tiny(pixels, 3, {})
    assert latent_space(pixels) == LatentSpace(3, 1, 2, None, (32, 64))
    x = torch.rand(1, 3, 8, 8) * 4 - 2
    torch.testing.assert_close(to_pixels(x, pixels), x.clamp(-1, 1))
