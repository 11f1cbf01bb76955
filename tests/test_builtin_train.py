"""models/train.py on a tiny synthetic pack: weights with their record, fine-tuning stages, the text scale, the
skin-tone sampling weight."""

import json

import pytest
import torch

from turbosample.models.builtin import load_model, read_metadata, save_weights
from turbosample.models.dit import DiTConfig, TinyDiT
from turbosample.models.train import DeviceData, new_model, parse_args, train
from turbosample.models.train_data import TrainingData, load_pack, save_pack

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


def randomised(model: TinyDiT, seed: int = 1) -> TinyDiT:
    """The zero-initialised output layers made non-zero, so outputs depend on every input."""
    gen = torch.Generator().manual_seed(seed)
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


def test_grow_deepens_a_model_that_starts_as_the_same_function(tmp_path):
    start = randomised(TinyDiT(DiTConfig(width=32, depth=2, heads=2)))
    path = tmp_path / "start.safetensors"
    save_weights(start, path, {}, dtype="fp32")
    context = torch.nn.functional.normalize(torch.randn(2, 384, generator=torch.Generator().manual_seed(3)), dim=-1)
    deeper = ["--init", str(path), "--text-scale", "1", "--width", "32", "--depth", "5", "--heads", "2"]
    with pytest.raises(ValueError, match="--grow"):
        new_model(parse_args(deeper))
    model = new_model(parse_args([*deeper, "--grow"]))
    assert len(model.blocks) == 5
    torch.testing.assert_close(outputs(model, context), outputs(start, context), rtol=1e-4, atol=1e-5)
    # old blocks spread out (slots 0 and 2), the new ones fresh and gated shut until trained
    torch.testing.assert_close(model.blocks[2].qkv.weight, start.blocks[1].qkv.weight)
    assert not torch.equal(model.blocks[1].qkv.weight, start.blocks[1].qkv.weight)
    assert model.blocks[1].ada.weight.abs().max() == 0 and model.blocks[4].ada.weight.abs().max() == 0
    # the new blocks are real: open their gates and the function changes
    with torch.no_grad():
        model.blocks[1].ada.bias.fill_(0.5)
    assert (outputs(model, context) - outputs(start, context)).abs().max() > 1e-2
    with pytest.raises(ValueError, match="--init weights have config"):  # growing never narrows or shrinks
        new_model(parse_args(["--init", str(path), "--width", "32", "--depth", "1", "--heads", "2", "--grow"]))


def tone_data(n_tone: int = 3, n_plain: int = 3) -> TrainingData:
    n = n_tone + n_plain
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 3, 64, 64).contiguous()
    counts = torch.ones(n, dtype=torch.long)
    emb = torch.nn.functional.normalize(torch.randn(n, 384, generator=torch.Generator().manual_seed(0)), dim=-1)
    return TrainingData(images, emb.half(), torch.arange(n), counts, {"data": "synthetic"},
                        torch.tensor([True] * n_tone + [False] * n_plain))


def test_packs_keep_the_skin_tone_flags_and_old_packs_load_without_them(tmp_path):
    data = tone_data()
    save_pack(data, tmp_path / "tone.npz")
    loaded = load_pack(tmp_path / "tone.npz")
    assert torch.equal(loaded.tone, data.tone)
    assert torch.equal(loaded.subset(torch.tensor([0, 4])).tone, torch.tensor([True, False]))
    data.tone = None
    save_pack(data, tmp_path / "old.npz")
    assert load_pack(tmp_path / "old.npz").tone is None


def drawn_images(data: TrainingData, tone_weight: float, n: int = 4000) -> torch.Tensor:
    """Which image each sample of one big 64 px batch came from (images are constant, one grey level each)."""
    dev = DeviceData(data, torch.device("cpu"), seed=0, tone_weight=tone_weight)
    xt, t, _, target = dev.batch(n, True, 0.0)
    s = (t / 1000)[:, None, None, None]
    x0 = xt - s * target  # x_t = (1 - s) x0 + s noise and target = noise - x0, so x_t = x0 + s target
    return ((x0[:, 0, 0, 0] + 1) * 127.5).round().long()


def test_tone_weight_sets_how_often_skin_tone_variants_are_drawn():
    data = tone_data()
    uniform = drawn_images(data, 1.0)
    assert 0.45 < (uniform < 3).float().mean() < 0.55
    weighted = drawn_images(data, 0.25)  # 3 x 0.25 against 3 x 1: a fifth of the draws
    assert 0.17 < (weighted < 3).float().mean() < 0.23
    assert set(drawn_images(data, 0.0).tolist()) == {3, 4, 5}


def test_tone_weight_needs_a_pack_with_the_flags():
    data = tone_data()
    data.tone = None
    with pytest.raises(ValueError, match="skin-tone flags"):
        DeviceData(data, torch.device("cpu"), seed=0, tone_weight=0.5)
    assert DeviceData(data, torch.device("cpu"), seed=0).draw_weights is None
