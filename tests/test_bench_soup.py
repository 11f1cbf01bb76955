"""bench/soup_builtin.py: the soup is the weight-wise mean of its members and refuses mixed configs."""

import json
import sys
from pathlib import Path

import pytest
import torch

from turbosample.models.builtin import load_model, read_metadata, save_weights
from turbosample.models.dit import DiTConfig, TinyDiT

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import soup_builtin  # noqa: E402
from test_builtin_train import randomised  # noqa: E402


def _weights(tmp_path, name: str, seed: int, **config) -> Path:
    model = randomised(TinyDiT(DiTConfig(width=32, depth=2, heads=2, **config)), seed)  # every weight differs
    path = tmp_path / name
    save_weights(model, path, {"seed": seed})
    return path


def test_soup_is_the_mean_of_its_members(tmp_path):
    a, b, c = (_weights(tmp_path, f"{n}.safetensors", s) for n, s in (("a", 1), ("b", 2), ("c", 3)))
    soup = soup_builtin.soup([a, b, c]).state_dict()
    members = [load_model(p).state_dict() for p in (a, b, c)]
    for key, value in soup.items():
        expected = (members[0][key] + members[1][key] + members[2][key]) / 3
        assert torch.allclose(value, expected, atol=1e-6), key


def test_soup_refuses_weights_of_another_shape(tmp_path):
    a = _weights(tmp_path, "a.safetensors", 1)
    b = _weights(tmp_path, "b.safetensors", 2, text_scale=40.0)
    with pytest.raises(ValueError, match="another config"):
        soup_builtin.soup([a, b])


def test_soup_command_keeps_the_members_records(tmp_path, monkeypatch):
    a, b = _weights(tmp_path, "a.safetensors", 1), _weights(tmp_path, "b.safetensors", 2)
    out = tmp_path / "soup.safetensors"
    monkeypatch.setattr(sys, "argv", ["soup_builtin.py", str(a), str(b), "--out", str(out)])
    soup_builtin.main()
    info = json.loads(read_metadata(out)["turbosample.info"])
    assert [m["info"]["seed"] for m in info["soup_of"]] == [1, 2]
    loaded = load_model(out).state_dict()
    key = next(iter(loaded))
    mean = (load_model(a).state_dict()[key] + load_model(b).state_dict()[key]) / 2
    assert torch.allclose(loaded[key], mean, atol=1e-2)  # stored as float16
