"""Time-Shift Sampler (Li, Qu, Yao, Sun, Moens: "Alleviating Exposure Bias in Diffusion Models through Sampling
with Shifted Time Steps", ICLR 2024, arXiv 2305.15583) as a wrapper around any sampler of the registry.

Exposure bias: the sample x the solver reaches at step t does not have the noise level of t. For every model call
above the cut-off, the wrapper measures the variance of the current sample (per batch item, over all its elements),
picks, within a window of training timesteps around t, the timestep t_s whose noise variance is closest to it, and
queries the network at t_s. The solver keeps its own sigmas and coefficients and receives the network's noise
prediction from t_s (EPS/V: epsilon, with the network input scaled as at t_s; flow: velocity), turned into the x0
estimate it expects at its own sigma. Cost: no extra model call.

What was verified, and where (2026-11), in the official code Mingxiao-Li/TS-DPM (snapshot of the default branch):

* Selection rule (``apply_time_shift`` in ``sampler/deis_sampler.py`` and ``sampler/pnm_solver.py``):
  ``var = x.view(B, -1).var(-1)``; candidates ``1 - alphas_cumprod[t - w//2 : t + w//2 + 1]`` (clipped at the table
  ends); ``t_s = argmin (var - (1 - alpha_bar))^2``; shift only while ``t > cut_off_value``. Here the window is
  taken on the model's own 1000-entry sigma table; the noise variance is sigma^2 / (1 + sigma^2) = 1 - alpha_bar
  (EPS/V, compared with the variance of the VP-scaled sample x / sqrt(1 + sigma^2)) or s^2 (flow, compared with
  the variance of x itself).
* Which time is shifted differs between the official samplers: the DEIS one feeds t_s to the network and leaves the
  solver alone (done here, since it wraps any solver); the PNDM/DDIM one moves the solver's target time instead.
* Parameters from the README's examples: window 30 / cut-off 300 (DPM-Solver, 5 steps), window 10 / cut-off 900
  (DEIS, 5 steps), window 5 / cut-off 550 (F-PNDM, 100 steps). Defaults here: window 30, cut-off 300 (the
  few-step DPM-Solver setting). The paper's per-dataset tables were not read (no stored copy found).

Samples with a single element per batch item are never shifted (no variance to measure).
``window = 0`` or ``cutoff >= 999`` leaves the base sampler's output unchanged bit for bit (tested). The rule compares
the sample's total variance with the noise variance alone (as the official code does), so on data with large
variance it shifts toward noisier timesteps.

Measured (2026-11-23): built-in model, 64 px, CFG 4, 4 prompts, simple schedule, PSNR against 100-step Heun
(``python bench/bench_gap_samplers.py --size 64``): Euler 14.72 / 16.52 / 18.85 dB -> 15.24 / 17.27 / 20.33 dB with
Time-Shift at 6 / 8 / 12 calls; DPM-Solver++(2M) 15.13 / 18.07 / 21.49 -> 15.97 / 19.54 / 24.41 dB (SSIM up too).
On the exact analytic Gaussian model (no exposure bias) the change is a few percent of the error, either sign.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .sampler_table import resolve_sampler
from .sampling_utils import MODEL_SAMPLING_KEY, is_flow, require_model_sampling, unwrap_for_base

DEFAULT_WINDOW = 30
DEFAULT_CUTOFF = 300


def check_time_shift(window: int, cutoff: int) -> None:
    if int(window) != window or window < 0:
        raise ValueError(f"time-shift window must be a whole number >= 0, got {window}")
    if int(cutoff) != cutoff or cutoff < 0:
        raise ValueError(f"time-shift cut-off must be a whole timestep >= 0, got {cutoff}")


def noise_variance(table: torch.Tensor, flow: bool) -> torch.Tensor:
    """Per table entry: sigma^2 for flow models, 1 - alpha_bar = sigma^2 / (1 + sigma^2) for EPS/V models."""
    return table ** 2 if flow else table ** 2 / (1 + table ** 2)


def shifted_sigmas(x: torch.Tensor, sigma: torch.Tensor, table: torch.Tensor, flow: bool, window: int,
                   cutoff: int) -> torch.Tensor:
    """Per batch item, the table sigma whose noise variance best matches the sample's variance (or sigma itself)."""
    half = int(window) // 2
    if x.ndim < 2 or x[0].numel() < 2:
        return sigma.clone()  # no per-item variance to measure
    log_table = table.double().log()
    out = sigma.clone()
    sample_var = x.reshape(x.shape[0], -1).double().var(dim=-1)
    if not flow:
        sample_var = sample_var / (1 + sigma.double() ** 2)
    candidates = noise_variance(table.double(), flow)
    for b in range(x.shape[0]):
        s = float(sigma[b])
        if half == 0 or s <= 0:
            continue
        t = int((log_table - torch.log(torch.tensor(s, dtype=torch.float64))).abs().argmin())
        if t <= cutoff:
            continue
        lo, hi = max(t - half, 0), min(t + half + 1, len(table))
        pick = lo + int((candidates[lo:hi] - sample_var[b]).pow(2).argmin())
        out[b] = table[pick].to(sigma.dtype)
    return out


def time_shift_denoiser(model, model_sampling, window: int = DEFAULT_WINDOW,
                        cutoff: int = DEFAULT_CUTOFF) -> Callable[..., torch.Tensor]:
    """``model`` whose network time is shifted per call; the returned x0 refers to the solver's own sigma."""
    check_time_shift(window, cutoff)
    flow = is_flow(model_sampling)
    table = torch.as_tensor(model_sampling.sigmas).float().cpu()

    def denoise(x: torch.Tensor, sigma: torch.Tensor, **extra: object) -> torch.Tensor:
        extra.pop(MODEL_SAMPLING_KEY, None)  # the network gets ComfyUI-style extra_args only
        sigma_s = shifted_sigmas(x, sigma.float().cpu(), table, flow, window, cutoff).to(sigma)
        if torch.equal(sigma_s, sigma):
            return model(x, sigma, **extra)
        view = (-1,) + (1,) * (x.ndim - 1)
        s, s_s = sigma.reshape(view).to(x), sigma_s.reshape(view).to(x)
        x_in = x if flow else x * ((1 + s_s ** 2) / (1 + s ** 2)) ** 0.5  # same VP-scaled network input
        direction = (x_in - model(x_in, sigma_s, **extra)) / s_s  # epsilon (EPS/V) or velocity (flow) at t_s
        return x - s * direction

    return denoise


@torch.no_grad()
def sample_time_shift(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                      disable: bool | None = None, base: str | Callable = "euler", window: int = DEFAULT_WINDOW,
                      cutoff: int = DEFAULT_CUTOFF, **base_options) -> torch.Tensor:
    """``base`` (a registry name or sampler function) with Time-Shift applied to every model call."""
    check_time_shift(window, cutoff)
    ms, _ = require_model_sampling(model, extra_args, "time_shift")
    model, extra_args = unwrap_for_base(model, extra_args)
    fn, options, _ = resolve_sampler(base)
    denoiser = time_shift_denoiser(model, ms, window, cutoff) if window > 0 else model
    return fn(denoiser, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
              **{**options, **base_options})
