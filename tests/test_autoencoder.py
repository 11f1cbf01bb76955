"""The latent-space ablation: the small autoencoder, its trainer and models/train.py --autoencoder."""

import json

import pytest
import torch
from test_builtin_train import TINY, pack  # noqa: F401 - pack is a fixture

from turbosample.models.autoencoder import Autoencoder, AutoencoderConfig, load_autoencoder, save_autoencoder
from turbosample.models.builtin import cached_model, load_model, read_metadata
from turbosample.models.train import DeviceData, encoded_latents, train
from turbosample.models.train import parse_args as train_args
from turbosample.models.train_autoencoder import parse_args, self_rank_rate
from turbosample.models.train_autoencoder import train as train_ae
from turbosample.models.train_data import load_pack
from turbosample.nodes.builtin_nodes import empty_latent
from turbosample.nodes.pipeline import generate
from turbosample.nodes.spec import NodeInputError
from turbosample.nodes.txt2img import Settings

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL_AE = ["--channels", "32", "--latent-channels", "4", "--downsample", "8"]


def test_shapes_and_the_latent_scale():
    model = Autoencoder(AutoencoderConfig(latent_channels=4, downsample=8, channels=32, latent_scale=2.0)).eval()
    x = torch.rand(2, 3, 64, 32) * 2 - 1
    z = model.encode(x)
    assert z.shape == (2, 4, 8, 4)
    torch.testing.assert_close(z * 2.0, model.encoder(x))
    assert model.decode(z).shape == x.shape
    with pytest.raises(ValueError, match="multiples of 8"):
        model.encode(torch.zeros(1, 3, 60, 64))
    with pytest.raises(ValueError, match="power of two"):
        Autoencoder(downsample=6)


def test_save_and_load_round_trip_and_foreign_files(tmp_path):
    model = Autoencoder(AutoencoderConfig(latent_channels=4, downsample=4, channels=32, latent_scale=0.5))
    path = tmp_path / "ae.safetensors"
    save_autoencoder(model, path, {"note": "x"})
    loaded = load_autoencoder(path)
    assert loaded.config == model.config
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(loaded.decode(loaded.encode(x)), model.eval().decode(model.encode(x)))
    with pytest.raises(FileNotFoundError):
        load_autoencoder(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_autoencoder(tmp_path / "junk.safetensors")


def test_self_rank_rate_counts_reconstructions_nearest_their_own_original():
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert self_rank_rate(images, images + 0.01) == 1.0
    assert self_rank_rate(images, images.roll(1, dims=0)) == 0.0
    swapped = images.clone()
    swapped[0] = images[1]
    assert self_rank_rate(images, swapped) == pytest.approx(0.8)


def test_training_writes_an_autoencoder_with_its_record_and_a_fitted_scale(tmp_path, pack):  # noqa: F811
    out = tmp_path / "ae.safetensors"
    info = train_ae(parse_args(["--data-pack", str(pack), "--out", str(out), "--steps", "3", "--batch", "2",
                                "--warmup", "1", *SMALL_AE]))
    model = load_autoencoder(out)
    record = json.loads(read_metadata(out)["turbosample.info"])
    assert record["steps"] == 3 and record["images"] == 6 == info["images"]
    assert 0 <= record["self_rank_top1"] <= 1 and record["psnr_db"] > 0
    latents = model.encode(load_pack(pack).images_float())
    assert latents.std().item() == pytest.approx(1.0, rel=1e-4)  # the scale is the training latents' std


def test_the_dit_trains_on_latents_and_the_app_runs_such_weights(tmp_path, pack, monkeypatch):  # noqa: F811
    ae = tmp_path / "ae.safetensors"
    save_autoencoder(Autoencoder(AutoencoderConfig(latent_channels=4, downsample=8, channels=32)), ae, {})
    for patch, grid in ((1, 8), (2, 4)):
        out = tmp_path / f"lat{patch}.safetensors"
        train(train_args(["--data-pack", str(pack), "--out", str(out), "--autoencoder", str(ae), "--patch",
                          str(patch), "--steps-low", "2", "--steps-mixed", "2", "--p-high", "1.0", "--batch", "2",
                          "--batch-high", "2", "--warmup", "1", "--checkpoint-every", "2", *TINY]))
        model = load_model(out)
        assert (model.config.in_channels, model.config.patch_size, model.config.base_grid) == (4, patch, grid)
        for weights in (out, out.with_suffix(".partial.safetensors")):  # a checkpoint names its autoencoder too
            assert json.loads(read_metadata(weights)["turbosample.info"])["args"]["autoencoder"] == str(ae)
    low = tmp_path / "low.safetensors"
    train(train_args(["--data-pack", str(pack), "--out", str(low), "--autoencoder", str(ae), "--patch", "2",
                      "--latent-low-res", "--steps-low", "2", "--steps-mixed", "0", "--batch", "2", "--warmup", "1",
                      "--log-every", "1", *TINY]))
    record = json.loads(read_metadata(low)["turbosample.info"])
    assert record["args"]["latent_low_res"] and load_model(low).config.base_grid == 4  # positions: the 64 px grid
    data = load_pack(pack)
    high, small = encoded_latents(str(ae), data, low_res=True)
    assert high.shape[-2:] == (8, 8) and small.shape[-2:] == (4, 4)  # the 32 px images' own latents
    device_data = DeviceData(data, torch.device("cpu"), 0, latents=(high, small))
    assert device_data.batch(2, False, 0.0)[0].shape == (2, 4, 4, 4)
    assert device_data.batch(2, True, 0.0)[0].shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="needs --autoencoder"):
        train(train_args(["--data-pack", str(pack), "--out", str(low), "--latent-low-res", *TINY]))
    with pytest.raises(ValueError, match="does not divide"):
        train(train_args(["--data-pack", str(pack), "--out", str(tmp_path / "x.safetensors"), "--autoencoder",
                          str(ae), "--patch", "3", "--steps-low", "1", "--steps-mixed", "0", *TINY]))
    monkeypatch.setenv("TURBOSAMPLE_BUILTIN_WEIGHTS", str(tmp_path / "lat2.safetensors"))
    assert cached_model().config.in_channels == 4  # the variable is read at each call, never a stale model
    (latent,) = empty_latent(32, 48, 2)
    assert latent["samples"].shape == (2, 4, 6, 4)
    images = generate(Settings(prompt="cat face", steps=2, width=32, height=48))
    assert [im.size for im in images] == [(32, 48)]
    with pytest.raises(NodeInputError, match="multiples of 16"):
        empty_latent(40, 32, 1)



def test_rgb_factors_preview_the_colour_each_latent_cell_decodes_to():
    from turbosample.models.autoencoder import rgb_factors
    from turbosample.models.builtin import WEIGHTS, cached_autoencoder, latent_space

    ae = cached_autoencoder(latent_space(WEIGHTS).autoencoder)
    factors, bias = rgb_factors(ae)
    assert factors.shape == (8, 3) and bias.shape == (3,)
    z = torch.randn(8, 8, 8, 8, generator=torch.Generator().manual_seed(123))  # not the fit's latents
    with torch.no_grad():
        cells = torch.nn.functional.avg_pool2d(ae.decode(z).clamp(-1, 1), 8).permute(0, 2, 3, 1)
    preview = z.permute(0, 2, 3, 1) @ factors + bias
    assert torch.corrcoef(torch.stack([preview.flatten(), cells.flatten()]))[0, 1] > 0.6
    assert (preview - cells).pow(2).mean() < 0.7 * (cells - cells.mean((0, 1, 2))).pow(2).mean()
