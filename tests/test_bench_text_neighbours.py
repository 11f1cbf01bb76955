"""bench_builtin's text-only check: where the text encoder alone would put each paraphrase's emoji."""

import sys
from pathlib import Path

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
