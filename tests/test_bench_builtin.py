"""bench/bench_builtin.py helpers: text-only paraphrase ranks, pooling seeds, the skin-tone split."""

import json
import sys
from pathlib import Path

import pytest
import torch

from turbosample.models import text
from turbosample.models.train_data import TrainingData, save_pack

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_builtin  # noqa: E402


def test_text_neighbour_ranks_follow_the_nearest_training_prompt(tmp_path, monkeypatch):
    names = [["cat face"], ["cat"], ["frog face"], ["orange heart"], ["heavy black heart"]]
    basis = torch.eye(8)[:5]
    counts = torch.ones(5, dtype=torch.long)
    pack = tmp_path / "pack.npz"
    save_pack(TrainingData(torch.zeros(5, 3, 64, 64, dtype=torch.uint8), basis.half(), torch.arange(5), counts,
                           {}), pack)
    monkeypatch.setattr(bench_builtin, "PARAPHRASES", {"kitty": "cat face", "big red heart": "heavy black heart"})
    monkeypatch.setattr(bench_builtin, "PARAPHRASES_MORE", {"froggy": "frog face"})
    # kitty: nearest to "cat face" (exact); big red heart: orange heart first, its target second; froggy: a tie
    # between "frog face" and "cat", counted in the target's favour
    fake = {"kitty": 0.9 * basis[0] + 0.1 * basis[1], "big red heart": 0.8 * basis[3] + 0.6 * basis[4],
            "froggy": 0.7 * basis[2] + 0.7 * basis[1]}
    monkeypatch.setattr(text, "encode_prompts", lambda prompts: torch.stack([fake[p] for p in prompts]))
    rows = {r["paraphrase"]: r for r in bench_builtin.text_neighbour_ranks(pack, names)}
    assert rows["kitty"]["target_rank"] == 0 and rows["kitty"]["nearest_prompt_image"] == "cat face"
    assert rows["big red heart"]["target_rank"] == 1
    assert rows["big red heart"]["nearest_prompt_image"] == "orange heart"
    assert rows["froggy"]["target_rank"] == 0


def test_pool_seeds_weights_each_rate_by_its_own_count():
    def row(seed, size, n, top1, para):
        return {"size": size, "cfg": 4.0, "shift": 1.0, "steps": 28, "seed": seed, "n": n, "top1": top1,
                "top10": top1, "n_paraphrase": 10, "paraphrase_top10": para, "n_paraphrase2": 5,
                "paraphrase2_top10": 0.2 * seed, "n_tone": n, "tone_top1": top1, "tone_top10": top1,
                "n_plain": 0, "plain_top1": None, "plain_top10": None}
    rows = [row(0, 64, 40, 0.6, 0.4), row(1, 64, 20, 0.3, 0.5), row(0, 32, 40, 0.5, 0.1)]
    pooled = {r["size"]: r for r in bench_builtin.pool_seeds(rows)}
    assert pooled[64]["seeds"] == [0, 1] and pooled[64]["n"] == 60 and pooled[64]["n_paraphrase"] == 20
    assert abs(pooled[64]["top1"] - (24 + 6) / 60) < 1e-12          # names weighted by n, not a mean of rates
    assert abs(pooled[64]["paraphrase_top10"] - 0.45) < 1e-12
    assert abs(pooled[64]["paraphrase2_top10"] - 0.1) < 1e-12
    assert pooled[32]["seeds"] == [0] and pooled[32]["top1"] == 0.5
    assert pooled[64]["tone_top1"] == pooled[64]["top1"] and pooled[64]["plain_top1"] is None  # empty group


def test_by_skin_tone_splits_ranks_by_the_target_name():
    prompts = [["waving hand"], ["waving hand, dark skin tone"], ["red apple"], ["thumbs up, light skin tone"]]
    split = bench_builtin.by_skin_tone([0, 3, 12, 0], [0, 1, 2, 3], prompts)
    assert split["n_tone"] == 2 and split["tone_top1"] == 0.5 and split["tone_top10"] == 1.0
    assert split["n_plain"] == 2 and split["plain_top1"] == 0.5 and split["plain_top10"] == 0.5
    assert bench_builtin.by_skin_tone([0], [2], prompts)["tone_top1"] is None


def test_fidelity_by_name_separates_phrasing_misses_from_drawing_misses(monkeypatch):
    # 16 flat training images of increasing grey; the image of index 15 is far from the three targets (0, 1, 2)
    images = torch.linspace(-1, 1, 16)[:, None, None, None].expand(16, 3, 8, 8).contiguous()
    prompts = [["cat face"], ["slice of pizza"], ["frog face"]] + [[f"other {i}"] for i in range(12)] + [["dog"]]
    monkeypatch.setattr(bench_builtin, "PARAPHRASES", {"kitty": "cat face", "pizza": "slice of pizza"})
    monkeypatch.setattr(bench_builtin, "PARAPHRASES_MORE", {"froggy": "frog face"})
    # what the fake model draws: "kitty" right; "pizza" and "froggy" wrong; "slice of pizza" wrong by name too
    draws = {"kitty": 0, "pizza": 15, "froggy": 15, "slice of pizza": 15}
    index = {variants[0]: i for i, variants in enumerate(prompts)}
    calls = []

    def fake_batch(texts, cfg, steps, size, seed, shift=1.0):
        calls.append((tuple(texts), seed))
        return torch.stack([images[draws.get(t, index.get(t, 15))] for t in texts])

    monkeypatch.setattr(bench_builtin, "generate_batch", fake_batch)
    row, = bench_builtin.fidelity(images, prompts, 3, [4.0], 28, [64], seed=7, by_name=True)
    ranks = {r["paraphrase"]: (r["rank"], r["rank_by_name"]) for r in row["paraphrases"]}
    assert ranks["kitty"] == (0, 0) and ranks["froggy"][1] == 0
    assert ranks["pizza"][0] >= 10 and ranks["pizza"][1] >= 10 and ranks["froggy"][0] >= 10
    assert row["paraphrase_misses"] == 2 and row["paraphrase_misses_also_by_name"] == 1
    # the names are drawn with the paraphrases' noise: same batch order, same seed
    assert (("kitty", "pizza"), 7) in calls and (("cat face", "slice of pizza"), 7) in calls
    assert (("froggy",), 7) in calls and (("frog face",), 7) in calls
    pooled, = bench_builtin.pool_seeds([row, {**row, "seed": 8}])
    assert pooled["paraphrase_misses"] == 4 and pooled["paraphrase_misses_also_by_name"] == 2


def test_text_neighbour_misses_counts_draws_of_the_targets_nearest_prompts(tmp_path):
    # image 0 has two prompts: one near image 1's, one near image 2's; images 3 and 4 are unrelated
    emb = torch.tensor([[1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0], [0.9, 0.44, 0, 0, 0], [0, 0.8, 0.6, 0, 0],
                        [0.1, 0, 0.99, 0, 0], [0, 0, 0, 0.2, 0.98]])
    starts, counts = torch.tensor([0, 2, 3, 4, 5]), torch.tensor([2, 1, 1, 1, 1])
    pack = tmp_path / "pack.npz"
    save_pack(TrainingData(torch.zeros(5, 3, 64, 64, dtype=torch.uint8), emb.half(), starts, counts, {}), pack)
    rows = [{"other_misses": [[0, 1], [0, 2], [0, 4]]}, {"other_misses": []}]
    bench_builtin.text_neighbour_misses(pack, rows, k=2)
    # image 0's nearest others: 1 (0.9, via its first prompt), 2 (0.8, via its second), 3 (0.1), 4 (0)
    assert rows[0]["other_misses_text_neighbour_k2"] == 2 and rows[1]["other_misses_text_neighbour_k2"] == 0
    bench_builtin.text_neighbour_misses(pack, rows, k=1)
    assert rows[0]["other_misses_text_neighbour_k1"] == 1


def test_miss_kinds_tells_siblings_look_alikes_and_other_misses_apart():
    # flat grey images: 0 and 1 are neighbours in pixels, 5 is far from 0; 2 is a skin-tone sibling of 3
    images = torch.tensor([-1.0, -0.9, 0.0, 0.05, 0.5, 1.0])[:, None, None, None].expand(6, 3, 8, 8).contiguous()
    prompts = [["rocket"], ["airplane"], ["waving hand"], ["waving hand, dark skin tone"], ["cow"], ["ghost"]]
    drawn = images[[1, 5, 2, 4]]  # rocket -> airplane, rocket -> ghost, waving hand (dark) -> waving hand, cow -> cow
    kinds = bench_builtin.miss_kinds(images, drawn, [0, 0, 3, 4], prompts, k=1)
    assert kinds["misses"] == 3 and kinds["nearest_is_skin_tone_sibling"] == 1
    assert kinds["other_misses"] == [[0, 1], [0, 5]] and kinds["other_misses_pixel_neighbour_k1"] == 1


def test_the_prompt_ensemble_averages_the_training_phrasings_and_keeps_the_null_prompt():
    basis = torch.eye(4)
    table = {"kitty": basis[0], "a kitty": basis[1], "kitty emoji": basis[2], "an image of kitty": basis[3]}

    def encode(prompts):
        return torch.stack([table.get(p, torch.zeros(4)) for p in prompts])

    out = bench_builtin.ensembled_encoder(encode)(["kitty", ""])
    torch.testing.assert_close(out[0], torch.full((4,), 0.5))  # mean of four orthogonal units, renormalised
    assert out[1].abs().max() == 0


def test_drawing_outside_the_app_matches_the_app(monkeypatch):
    """``--weights`` draws what the app draws for the same weights, prompt, seed and settings, so other weights
    scored that way meet the app's benchmark on equal terms."""
    from turbosample.models.builtin import WEIGHTS

    prompts = ["red apple", "cat face"]
    app = bench_builtin.generate_batch(prompts, 4.0, 4, 64, 5)
    monkeypatch.setattr(bench_builtin, "WEIGHTS_OUTSIDE_APP", WEIGHTS)
    outside = bench_builtin.generate_batch(prompts, 4.0, 4, 64, 5)
    assert outside.shape == app.shape == (2, 3, 64, 64)
    assert (outside - app).abs().max() <= 1.5 / 127.5  # the same image up to 8-bit rounding
    assert (outside[0] - outside[1]).abs().mean() > 0.05  # and the prompts are not ignored


def test_latent_weights_are_drawn_in_their_latent_space_and_decoded(tmp_path):
    from turbosample.models.autoencoder import Autoencoder, save_autoencoder
    from turbosample.models.builtin import save_weights
    from turbosample.models.dit import DiTConfig, TinyDiT

    ae_path, dit_path = tmp_path / "ae.safetensors", tmp_path / "dit.safetensors"
    ae = Autoencoder(latent_channels=4, downsample=8, channels=32)
    save_autoencoder(ae, ae_path, {})
    net = TinyDiT(DiTConfig(in_channels=4, patch_size=2, base_grid=4, width=32, depth=1, heads=2))
    save_weights(net, dit_path, {"args": {"autoencoder": str(ae_path)}})
    emb = torch.nn.functional.normalize(torch.randn(2, 384, generator=torch.Generator().manual_seed(0)), dim=-1)
    drawn = bench_builtin.draw_with_weights(dit_path, emb, 64, 4.0, 3, steps=2)
    assert drawn.shape == (2, 3, 64, 64)
    # a fresh DiT predicts zero velocity, so the sample is the starting noise: its decoding is what we must see
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(drawn[0], ae.eval().decode(noise)[0].clamp(-1, 1), rtol=1e-4, atol=1e-4)
    moved = tmp_path / "moved"
    moved.mkdir()
    save_weights(net, moved / "dit.safetensors", {"args": {"autoencoder": "/elsewhere/ae.safetensors"}})
    save_autoencoder(ae, moved / "ae.safetensors", {})  # carried beside the weights
    torch.testing.assert_close(bench_builtin.draw_with_weights(moved / "dit.safetensors", emb, 64, 4.0, 3, steps=2),
                               drawn)
    dit_path = tmp_path / "lost.safetensors"  # a new file: a path's latent space is read once
    save_weights(net, dit_path, {})  # latent weights whose record lost the autoencoder
    with pytest.raises(ValueError, match="4-channel weights without an autoencoder"):
        bench_builtin.draw_with_weights(dit_path, emb, 64, 4.0, 3, steps=2)


def test_the_shipped_latent_weights_are_the_four_stage_run_and_small():
    """models/builtin_emoji.safetensors (bench/RESULTS.md, *Built-in model*) and its autoencoder beside it."""
    from turbosample.models.builtin import WEIGHTS, cached_autoencoder, latent_space, load_model, read_metadata

    ae = cached_autoencoder(latent_space(WEIGHTS).autoencoder)
    net = load_model(WEIGHTS)
    assert net.config.in_channels == ae.config.latent_channels == 8 and net.config.patch_size == 2
    assert WEIGHTS.stat().st_size <= 16 * 2**20
    record = json.loads(read_metadata(WEIGHTS)["turbosample.info"])
    assert record["args"]["autoencoder"].endswith("ae_f8c8.safetensors")
    stages = [record["steps"], record["init"]["steps"], record["init"]["init"]["steps"],
              record["init"]["init"]["init"]["steps"]]
    assert stages == [10535, 6567, 7253, 11564] and record["args"]["latent_low_res"]  # the last also at 32 px
