"""models/train.py on a tiny synthetic pack: weights with their record, fine-tuning stages, the text scale."""

import json

import pytest
import torch

from turbosample.models.builtin import load_model, read_metadata, save_weights
from turbosample.models.dit import DiTConfig, TinyDiT
from turbosample.models.train import new_model, parse_args, train
from turbosample.models.train_data import TrainingData, save_pack

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--width", "32", "--depth", "2", "--heads", "2"]


@pytest.fixture
def pack(tmp_path):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 64, 64), generator=gen, dtype=torch.uint8)
    emb = torch.nn.functional.normalize(torch.randn(12, 384, generator=gen), dim=-1).half()
    counts = torch.full((6,), 2)
    path = tmp_path / "pack.npz"
    save_pack(TrainingData(images, emb, torch.cumsum(counts, 0) - counts, counts, {"data": "synthetic"}), path)
    return path


def randomised(model: TinyDiT) -> TinyDiT:
    """The zero-initialised output layers made non-zero, so outputs depend on every input."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def outputs(model: TinyDiT, context: torch.Tensor) -> torch.Tensor:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    return model(x, torch.tensor([300.0, 700.0]), context[:, None, :])


def test_training_writes_weights_with_their_record(tmp_path, pack):
    out = tmp_path / "w.safetensors"
    info = train(parse_args(["--data-pack", str(pack), "--out", str(out), "--steps-low", "3", "--steps-mixed", "3",
                             "--p-high", "1.0", "--batch", "4", "--batch-high", "2", "--warmup", "2",
                             "--threads", "1", "--checkpoint-every", "0", "--text-scale", "19.6", *TINY]))
    model = load_model(out)
    assert model.config.text_scale == pytest.approx(19.6) and model.config.width == 32
    record = json.loads(read_metadata(out)["turbosample.info"])
    assert record["steps"] == 6 and record["images_seen"] == 3 * 4 + 3 * 2 == info["images_seen"]
    assert record["args"]["text_scale"] == pytest.approx(19.6)


def test_a_fine_tune_under_a_new_text_scale_starts_from_the_same_function(tmp_path):
    start = randomised(TinyDiT(DiTConfig(width=32, depth=2, heads=2)))
    path = tmp_path / "start.safetensors"
    save_weights(start, path, {}, dtype="fp32")
    context = torch.nn.functional.normalize(torch.randn(2, 384, generator=torch.Generator().manual_seed(3)), dim=-1)
    model = new_model(parse_args(["--init", str(path), "--text-scale", "19.6", *TINY]))
    assert model.config.text_scale == pytest.approx(19.6)
    torch.testing.assert_close(outputs(model, context), outputs(start, context), rtol=1e-4, atol=1e-5)
    # the scale is real: the same weights under scale 1 compute something else
    plain = TinyDiT(DiTConfig(width=32, depth=2, heads=2))
    plain.load_state_dict(model.state_dict())
    assert (outputs(plain, context) - outputs(start, context)).abs().max() > 1e-2


def test_init_weights_of_another_shape_are_refused(tmp_path):
    path = tmp_path / "start.safetensors"
    save_weights(TinyDiT(DiTConfig(width=32, depth=2, heads=2)), path, {}, dtype="fp32")
    with pytest.raises(ValueError, match="--init weights have config"):
        new_model(parse_args(["--init", str(path), "--width", "64", "--depth", "2", "--heads", "2"]))
