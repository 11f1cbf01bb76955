"""FlowTurbo refiner distillation from a diffusers flow transformer (tiny random-weight Flux / SD3 saved locally)."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from safetensors.torch import save_file  # noqa: E402

from turbosample.accel.diffusers_adapters import DiffusersDiT  # noqa: E402
from turbosample.models.refiner import load_refiner  # noqa: E402
from turbosample.models.train_refiner import load_diffusers_transformer, parse_args, train  # noqa: E402
from turbosample.samplers.denoiser import DiffusionModel  # noqa: E402
from turbosample.samplers.flowturbo import sample_flowturbo  # noqa: E402
from turbosample.samplers.model_sampling import FlowSampling  # noqa: E402
from turbosample.samplers.registry import SamplerInfo  # noqa: E402
from turbosample.samplers.run import sample  # noqa: E402


def tiny_flux(seed: int):
    torch.manual_seed(seed)
    return diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                            pooled_projection_dim=16, axes_dims_rope=(2, 2, 4)).eval()


def tiny_sd3(seed: int):
    torch.manual_seed(seed)
    return diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1,
                                           attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                           caption_projection_dim=16, pooled_projection_dim=16, out_channels=4,
                                           pos_embed_max_size=16).eval()


@pytest.fixture(scope="module")
def context_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ctx") / "ctx.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({"encoder_hidden_states": torch.randn(3, 5, 16, generator=g),
               "pooled_projections": torch.randn(3, 16, generator=g)}, str(path))
    return path


def distil(folder, context, out, steps=60):
    return train(parse_args(["--diffusers", str(folder), "--context", str(context), "--out", str(out),
                             "--size", "8", "--batches", "3", "--traj-batch", "4", "--min-steps", "4",
                             "--max-steps", "4", "--steps", str(steps), "--batch", "16", "--lr", "3e-3"]))


@pytest.mark.parametrize("make", [tiny_flux, tiny_sd3])
def test_a_refiner_distilled_from_a_diffusers_transformer_learns_loads_and_samples(tmp_path, context_file, make):
    make(0).save_pretrained(tmp_path / "base")
    info = distil(tmp_path / "base", context_file, tmp_path / "r.safetensors")
    assert info["base_model"].startswith("diffusers:") and info["val_mse"] < info["identity_val_mse"]
    base = DiffusionModel(DiffusersDiT(load_diffusers_transformer(tmp_path / "base")), FlowSampling(shift=3.0))
    refiner = load_refiner(tmp_path / "r.safetensors", base)
    assert refiner.config.channels == 4 and refiner.config.patch_size == 2
    ctx = {"encoder_hidden_states": torch.randn(1, 5, 16), "pooled_projections": torch.randn(1, 16)}
    null = {k: torch.zeros_like(v) for k, v in ctx.items()}
    info = SamplerInfo("ft", sample_flowturbo, 1, "", {"schedule": "H1P2R2", "refiner": refiner})
    out = sample(base, [[ctx, {}]], [[null, {}]], torch.zeros(1, 4, 8, 8), info, torch.linspace(1, 0, 6), 0, 3.0)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    other = DiffusionModel(DiffusersDiT(make(1)), FlowSampling(shift=3.0))
    with pytest.raises(ValueError, match="trained for"):
        load_refiner(tmp_path / "r.safetensors", other)


def test_bad_diffusers_inputs_are_named(tmp_path, context_file):
    with pytest.raises(ValueError, match="needs --size"):
        train(parse_args(["--diffusers", str(tmp_path), "--out", str(tmp_path / "r.safetensors")]))
    with pytest.raises(ValueError, match="needs --context"):
        train(parse_args(["--diffusers", str(tmp_path), "--size", "8", "--out", str(tmp_path / "r.safetensors")]))
    with pytest.raises(ValueError, match="no config.json"):
        distil(tmp_path, context_file, tmp_path / "r.safetensors")
    tiny_flux(0).save_pretrained(tmp_path / "flux")
    save_file({"encoder_hidden_states": torch.randn(2, 5, 16)}, str(tmp_path / "half.safetensors"))
    with pytest.raises(ValueError, match="lacks pooled_projections"):
        distil(tmp_path / "flux", tmp_path / "half.safetensors", tmp_path / "r.safetensors")
    assert not (tmp_path / "r.safetensors").exists()  # nothing half-written


def test_a_refiner_distilled_from_latent_builtin_weights_works_in_their_latent_space(tmp_path, monkeypatch):
    """``--base`` latent weights: the refiner takes their channels and the latent side of a 64 px image."""
    import json

    from turbosample.models import train_refiner
    from turbosample.models.autoencoder import Autoencoder, AutoencoderConfig, save_autoencoder
    from turbosample.models.builtin import save_weights
    from turbosample.models.dit import DiTConfig, TinyDiT
    from turbosample.models.metadata import read_metadata

    save_autoencoder(Autoencoder(AutoencoderConfig(latent_channels=4, downsample=8, channels=32)),
                     tmp_path / "ae.safetensors", {})
    base = tmp_path / "lat.safetensors"
    save_weights(TinyDiT(DiTConfig(in_channels=4, patch_size=2, base_grid=4, width=32, depth=1, heads=2)), base,
                 {"args": {"autoencoder": "ae.safetensors"}})
    monkeypatch.setattr(train_refiner, "emoji_names", lambda _cache: ["cat face", "red apple", "rocket"])
    out = tmp_path / "r.safetensors"
    train(parse_args(["--base", str(base), "--out", str(out), "--batches", "2", "--traj-batch", "2",
                      "--min-steps", "3", "--max-steps", "3", "--steps", "2", "--batch", "4"]))
    record = json.loads(read_metadata(out)["turbosample.info"])
    assert record["args"]["size"] == 8  # 64 px / the autoencoder's 8
    config = json.loads(read_metadata(out)["turbosample.config"])
    assert (config["channels"], config["patch_size"], config["width"]) == (4, 2, 32)
