"""ParaDiGMS: parallel Picard iteration of the Euler (probability-flow ODE) discretisation (Shih et al., 2023).

A sliding window of ``window`` grid points is refined jointly: each parallel round evaluates the model once on
the whole window (one batched call, batch = window * B), rebuilds every window point as the window's start plus
the cumulative sum of the Euler increments, and slides the window past the points whose change is within the
tolerance. The error measure is the paper's (and diffusers' ``StableDiffusionParadigmsPipeline``'s):
``||x_new - x_old||^2 / D <= tolerance^2 * var_k``, where ``var_k`` is the variance of the noise an ancestral
(DDPM-like) step from point k would add, taken in this sigma space: k-diffusion's ``sigma_up^2`` for EPS/V models
and the rectified-flow re-noise variance for flow models. Points whose variance is 0 (next to sigma = 0) must be
unchanged exactly. The first window point is always exact, so every round advances at least one step: at most
``steps`` rounds, and at convergence the result is sequential Euler on the same sigmas up to the tolerance
(to float precision at ``tolerance=0``).

The returned tensor carries ``paradigms_stats``: rounds (sequential batched calls), steps, model_evals (grid points
evaluated, summed over rounds; sequential Euler needs ``steps``); step callbacks get parallel_round and model_evals.
"""

from __future__ import annotations

import torch

from .model_sampling import is_flow
from .sampling_utils import ancestral_split, require_model_sampling
from .solvers import to_d


def noise_variances(sigmas: torch.Tensor, flow: bool) -> torch.Tensor:
    """var_k for every grid point k = 0..steps: the ancestral (eta = 1) noise variance of the step k -> k + 1."""
    head, tail = sigmas[:-1], sigmas[1:]
    var = ancestral_split(head, tail, 1.0, flow)[2] ** 2
    return torch.cat([var, var.new_zeros(1)])


def check_parameters(sigmas: torch.Tensor, window: int, tolerance: float, max_iters: int | None) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"paradigms window must be an integer >= 1, got {window!r}")
    if not isinstance(tolerance, int | float) or not tolerance >= 0 or tolerance == float("inf"):
        raise ValueError(f"paradigms tolerance must be a finite number >= 0, got {tolerance!r}")
    if max_iters is not None and (isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1):
        raise ValueError(f"paradigms max_iters must be None or an integer >= 1, got {max_iters!r}")
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError("paradigms needs a 1-D sigma schedule with at least 2 entries")
    if not bool((sigmas[:-1] > 0).all()):
        raise ValueError("paradigms needs sigmas > 0 everywhere but the last entry (the model is never "
                         "evaluated at sigma = 0)")


@torch.no_grad()
def sample_paradigms(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                     callback=None, disable: bool | None = None, window: int = 8, tolerance: float = 0.1,
                     max_iters: int | None = None) -> torch.Tensor:
    """Parallel Picard sampling of the Euler ODE steps; ``max_iters`` caps the refinements any point gets."""
    check_parameters(sigmas, window, tolerance, max_iters)
    ms, args = require_model_sampling(model, extra_args, "paradigms")
    steps, batch = len(sigmas) - 1, x.shape[0]
    window = min(window, steps)
    limit = (tolerance ** 2) * x[0].numel() * noise_variances(sigmas.double(), is_flow(ms))
    buffer = x.unsqueeze(0).repeat(steps + 1, *([1] * x.ndim))  # buffer[k] = current iterate at sigmas[k]
    refined = [0] * (steps + 1)
    begin, end, rounds, evals = 0, window, 0, 0
    while begin < steps:
        points = buffer[begin:end]
        sigma_batch = sigmas[begin:end].repeat_interleave(batch)
        denoised = model(points.flatten(0, 1), sigma_batch, **args).reshape(points.shape)
        rounds, evals = rounds + 1, evals + end - begin  # evals: grid points evaluated
        view = (-1, *([1] * (points.ndim - 1)))
        increments = to_d(points, sigmas[begin:end].reshape(view), denoised) * sigmas.diff()[begin:end].reshape(view)
        new = buffer[begin] + increments.cumsum(0)
        error = (new - buffer[begin + 1:end + 1]).flatten(2).double().pow(2).sum(-1)  # (points, batch)
        buffer[begin + 1:end + 1] = new
        for k in range(begin + 1, end + 1):
            refined[k] += 1
        settled = (error <= limit[begin + 1:end + 1, None]).all(1).tolist()
        if max_iters is not None:
            settled = [ok or refined[k] >= max_iters for k, ok in zip(range(begin + 1, end + 1), settled, strict=True)]
        advance = settled.index(False) + 1 if False in settled else end - begin
        for k in range(begin, begin + advance if callback is not None else begin):
            callback({"x": buffer[k], "i": k, "sigma": sigmas[k], "sigma_hat": sigmas[k],
                      "denoised": denoised[k - begin], "parallel_round": rounds, "model_evals": evals})
        new_begin = begin + advance
        new_end = min(new_begin + window, steps)
        buffer[end + 1:new_end + 1] = buffer[end]  # new window points start from the last computed one
        begin, end = new_begin, new_end
    out = buffer[steps].clone()
    out.paradigms_stats = {"rounds": rounds, "steps": steps, "model_evals": evals}
    return out
