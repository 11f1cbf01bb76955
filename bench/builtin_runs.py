"""Runs of the built-in model shared by the benchmarks: prompts, conditioning, images and wall time."""

from __future__ import annotations

import time

import numpy as np
import torch

from turbosample.nodes.builtin_nodes import encode_text
from turbosample.samplers.registry import SamplerInfo
from turbosample.samplers.run import sample
from turbosample.samplers.schedulers import compute_sigmas

PROMPTS = ["grinning face", "cat face", "red apple", "rocket", "sunflower", "slice of pizza", "japan flag",
           "thumbs up sign"]


def conditions(prompts: list[str], seeds: list[int] | None = None) -> list[tuple]:
    """(positive, negative, seed) per prompt and seed; without seeds the seed is the prompt's index."""
    (neg,) = encode_text("")
    if seeds is None:
        return [(encode_text(p)[0], neg, k) for k, p in enumerate(prompts)]
    return [(encode_text(p)[0], neg, s) for p in prompts for s in seeds]


def to_image(latent: torch.Tensor) -> np.ndarray:
    """First image of a pixel-space latent batch -> (H, W, 3) in [0, 1]."""
    return ((latent[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()


def generate(model, info: SamplerInfo, steps: int, conds: list[tuple], size: int, cfg: float,
             scheduler: str = "simple") -> tuple[list[np.ndarray], float]:
    """Images for every condition and the mean wall seconds per image."""
    sigmas = compute_sigmas(model.model_sampling, scheduler, steps)
    start = time.perf_counter()
    outs = [sample(model, pos, neg, torch.zeros(1, 3, size, size), info, sigmas, seed=seed, cfg=cfg)
            for pos, neg, seed in conds]
    seconds = (time.perf_counter() - start) / len(conds)
    return [to_image(o) for o in outs], seconds
