import pytest
import torch
from safetensors.torch import save_file

from turbosample.models.builtin import MODEL_ID, WEIGHTS, load_model, read_metadata
from turbosample.models.dit import TinyDiT, grid_position_embedding


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
