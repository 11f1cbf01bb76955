"""Runs of the built-in model shared by the benchmarks: prompts, conditioning, images and wall time."""

from __future__ import annotations

import time

import numpy as np
import torch

from turbosample.nodes.builtin_nodes import empty_latent, encode_text, latent_to_image
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


def empty(size: int, batch: int = 1) -> torch.Tensor:
    """The built-in model's empty latent for square ``size`` px images."""
    return empty_latent(size, size, batch)[0]["samples"]


def to_image(latent: torch.Tensor) -> np.ndarray:
    """First image of a built-in latent batch, decoded -> (H, W, 3) in [0, 1]."""
    return latent_to_image(latent[:1])[0].numpy()


def generate(model, info: SamplerInfo, steps: int, conds: list[tuple], size: int, cfg: float,
             scheduler: str = "simple") -> tuple[list[np.ndarray], float]:
    """Images for every condition and the mean wall seconds per image (sampling and decoding)."""
    sigmas = compute_sigmas(model.model_sampling, scheduler, steps)
    start = time.perf_counter()
    images = [to_image(sample(model, pos, neg, empty(size), info, sigmas, seed=seed, cfg=cfg))
              for pos, neg, seed in conds]
    return images, (time.perf_counter() - start) / len(conds)
