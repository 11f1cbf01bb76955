"""Average built-in weights that share one config (a uniform model soup), e.g. fine-tunes of the same start.

``python bench/soup_builtin.py --out soup.safetensors a.safetensors b.safetensors``; the members' training records
go into the soup's metadata.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from turbosample.models.builtin import load_model, read_metadata, save_weights
from turbosample.models.dit import TinyDiT


def soup(paths: list[Path]) -> TinyDiT:
    """A model whose every weight is the mean of the members'; ValueError if their configs differ."""
    models = [load_model(p) for p in paths]
    first = models[0].config.to_dict()
    for path, model in zip(paths[1:], models[1:], strict=True):
        if model.config.to_dict() != first:
            raise ValueError(f"{path} has another config than {paths[0]}: {model.config.to_dict()} vs {first}")
    states = [m.state_dict() for m in models]
    mean = {k: torch.stack([s[k].float() for s in states]).mean(0) for k in states[0]}
    models[0].load_state_dict(mean)
    return models[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("members", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    info = {"soup_of": [{"path": str(p), "info": json.loads(read_metadata(p).get("turbosample.info", "null"))}
                        for p in args.members]}
    save_weights(soup(args.members), args.out, info, dtype="fp16")
    print(f"{args.out}: mean of {len(args.members)} weights")


if __name__ == "__main__":
    main()
