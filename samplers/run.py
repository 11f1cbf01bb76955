"""One sampling run outside ComfyUI: noise, scaling, the sampler loop, progress and interruption."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import torch

from .denoiser import DiffusionModel, cfg_denoiser, network_placement
from .noise import Seed, batch_noise, check_seeds, noisy_start
from .registry import SamplerInfo
from .sampling_utils import MODEL_SAMPLING_KEY
from .validate import check_finite, check_sigmas


class Interrupted(RuntimeError):
    """Raised inside the sampler loop when the run was cancelled."""


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the message names the sizes and what to lower."""


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def out_of_memory_message(model: DiffusionModel, latent: torch.Tensor, device: torch.device) -> str:
    """What ran out, how big the model and latent are, and what to lower."""
    net = model.diffusion_model
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    where = str(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        where += f" ({_gib(total - free)} of {_gib(total)} in use)"
    return (f"out of memory on {where} sampling a {tuple(latent.shape)} latent with a {_gib(weights)} "
            f"{network_placement(net)[1]} model; lower the resolution, the batch size or the frame count, use RAS's "
            f"low-memory K/V cache (kv_cache int8) or a lower RAS ratio, or load the model with --offload")


def sample(model: DiffusionModel, positive: list, negative: list, latent: torch.Tensor, sampler: SamplerInfo,
           sigmas: torch.Tensor, seed: Seed, cfg: float, add_noise: bool = True,
           callback: Callable[[dict], None] | None = None, cancel: threading.Event | None = None,
           run_state: dict | None = None) -> torch.Tensor:
    """Sample from ``latent`` along ``sigmas``; ``callback`` sees k-diffusion's step dict.

    ``seed`` is one int for the batch (ComfyUI's noise: one generator for the whole batch) or a list of one int per
    image: image i then gets its own starting noise and, in stochastic samplers, its own noise path, so sampling it
    alone with ``seed=[seeds[i]]`` (or ``seeds[i]``) gives the same image.

    ``run_state`` (an empty dict, optional) receives the accelerators' per-run state for inspection afterwards;
    by default every run gets a fresh one. Out of device memory raises ``OutOfMemory`` naming what to lower;
    NaN/inf from a float16 model is reported as fp16 overflow.
    """
    sigmas = check_sigmas(sigmas.float().cpu())
    check_finite(latent, "input latent")
    if not math.isfinite(cfg):
        raise ValueError(f"cfg must be a finite number, got {cfg}")
    seed = check_seeds(seed, latent.shape[0])
    ms = model.model_sampling
    if model.onload is not None:
        model.onload()
    device, dtype = network_placement(model.diffusion_model)
    device = device or torch.device("cpu")
    latent = latent.to(device=device, dtype=torch.float32)
    sigmas = sigmas.to(device)
    if add_noise:
        x = noisy_start(ms, sigmas[0], batch_noise(seed, tuple(latent.shape), device=device), latent)
    else:
        x = latent

    def step_callback(info: dict) -> None:
        if cancel is not None and cancel.is_set():
            raise Interrupted("sampling was interrupted")
        if not torch.isfinite(info["denoised"]).all():
            where = f"at step {info['i'] + 1} (sigma={float(info['sigma']):.4g})"
            if dtype == torch.float16:
                raise FloatingPointError(f"fp16 overflow: the float16 model produced NaN/inf {where}; run it in "
                                         f"bf16 or fp32 (--dtype bf16)")
            raise FloatingPointError(f"the model produced NaN/inf {where}")
        if callback is not None:
            callback(info)

    # fresh per run: accelerator state never leaks
    options = {"sample_sigmas": sigmas, "run_state": {} if run_state is None else run_state}
    extra_args = {"seed": seed, MODEL_SAMPLING_KEY: ms}  # stochastic samplers seed their Brownian noise
    try:
        out = sampler.fn(cfg_denoiser(model, positive, negative, cfg, options), x, sigmas, extra_args=extra_args,
                         callback=step_callback, disable=True, **sampler.options)
    except torch.OutOfMemoryError:
        options.clear()  # drop caches before the message is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise OutOfMemory(out_of_memory_message(model, latent, device)) from None
    check_finite(out, "sampler output")
    return ms.inverse_noise_scaling(sigmas[-1], out)
