"""Restart sampling (Xu, Deng, Cheng, Tian, Liu, Jaakkola; NeurIPS 2023, arXiv 2306.14878) on EPS/V and flow models.

A main backward ODE pass (Heun) with restart segments ``(n, K, t_min, t_max)``: on reaching the main-schedule level
nearest t_min, the sample is re-noised forward to the level nearest t_max and the interval is solved backward again
in ``n`` Karras-spaced Heun steps, K times; then the main pass continues.

What was verified, and where (2026-11):

* The algorithm and its bookkeeping (t_min/t_max snapped to the nearest main-schedule sigma; Karras (rho 7)
  spacing inside a segment; forward noise ``sqrt(t_max^2 - t_min^2) s_noise z`` whenever the next step starts above
  where the last one ended; Heun steps, Euler onto sigma = 0): AUTOMATIC1111 ``modules/sd_samplers_extra.py``
  (``restart_sampler``, contributed by the paper's first author) and the official repository
  Newbeeer/diffusion_restart_sampling (README: ``{i: [N_Restart, K, t_min, t_max]}``; its Stable Diffusion pipeline
  uses ``{t_min 0.1: [N 10, K 2, t_max 2]}`` at guidance 5 and 8).
* Defaults (``segments=None``), as A1111's automatic configuration: the N steps asked for are the total number of
  Heun steps; >= 20 steps: one segment of 9 steps, K = 1; >= 36 steps: N // 4 steps, K = 2; t_min = 0.1,
  t_max = 2 (VE sigma); fewer than 20 steps: no restart (plain Heun, bit for bit). The main pass gets the remaining
  steps. A1111 re-spaces it as a Karras schedule; here the given schedule keeps its shape and is resampled
  log-linearly over its index (ays.loglinear_interp), so any scheduler's shape survives.

Cost, as registered (``calls_per_step = 2``): every step, main or restart, is a Heun step of 2 model calls (1 for a
step onto sigma = 0), and the steps add up to the requested number. A segment whose t_max does not lie above its
t_min on the main schedule is skipped, which only lowers the count.

Flow models (x = (1 - s) x0 + s eps): t_min and t_max are VE-equivalent levels v = s / (1 - s) (so the paper's
values mean the same noise-to-signal ratio); segment sigmas are Karras-spaced in v and mapped back by s = v / (1 + v);
the forward jump from s_lo to s_hi is the exact rectified-flow re-noising ``(1 - s_hi) / (1 - s_lo) x + sqrt(s_hi^2 -
((1 - s_hi) s_lo / (1 - s_lo))^2) z`` (derived from x_s = (1 - s) x0 + s eps; see churn.add_noise). Heun itself runs in
the model's own sigma, as solvers.sample_heun does.

Noise: ``noise_sampler(sigma_lo, sigma_hi)`` if given, else keyed CPU draws from (seed, jump number), so every restart
gets fresh noise (a Brownian increment over the same interval would repeat itself K times).

Measured (2026-11-23, analytic Gaussian data N(0.3, 0.5^2), exact W2 distance of the output law, same model calls):
exact denoiser, flow model, 20 / 28 / 40 steps: Restart 1.0e-3 / 5.1e-5 / 4.4e-4 vs Heun 2.1e-3 / 1.1e-3 / 5.0e-4;
VE (karras) 8.2e-3 / 5.5e-3 / 3.7e-3 vs Heun 6.4e-3 / 2.7e-3 / 8.2e-4 (worse: no error to contract, fewer main
steps). With a denoiser biased by +0.05 above the restart interval: flow 3.7e-3 / 2.4e-3 / 8.6e-4 vs Heun 9.6e-3 /
1.1e-2 / 1.0e-2; VE 8.3e-3 / 5.9e-3 / 3.7e-3 vs 1.1e-2 / 9.1e-3 / 7.9e-3 (the contraction the paper claims; tested).
"""

from __future__ import annotations

import torch

from .ays import loglinear_interp
from .churn import add_noise, from_ve_level, keyed_normal, ve_level
from .noise_sources import NoiseSampler, resolve_seed
from .sampling_utils import evaluate, is_flow, split_extra_args
from .solvers import to_d

Segment = tuple[int, int, float, float]  # (steps per restart, K, t_min, t_max); levels in VE sigma
RESTART_KEY = 0x52535452  # "RSTR"


def default_segments(steps: int) -> list[Segment]:
    """A1111's automatic Restart configuration for a budget of ``steps`` Heun steps."""
    if steps >= 36:
        return [(steps // 4, 2, 0.1, 2.0)]
    if steps >= 20:
        return [(9, 1, 0.1, 2.0)]
    return []


def check_segments(segments: list[Segment]) -> list[Segment]:
    out = []
    for seg in segments:
        if len(seg) != 4:
            raise ValueError(f"a restart segment is (steps, K, t_min, t_max), got {seg!r}")
        n, k, t_min, t_max = int(seg[0]), int(seg[1]), float(seg[2]), float(seg[3])
        if n < 1 or k < 0 or n != seg[0] or k != seg[1]:
            raise ValueError(f"restart segment needs whole steps >= 1 and K >= 0, got {seg!r}")
        if not 0 < t_min < t_max:
            raise ValueError(f"restart segment needs 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
        out.append((n, k, t_min, t_max))
    return out


def resample(sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """The schedule re-spaced to ``steps`` steps (same end points, log-linear over the index; a final 0 kept)."""
    if steps == len(sigmas) - 1:
        return sigmas
    ends_at_zero = float(sigmas[-1]) == 0.0
    head = sigmas[:-1] if ends_at_zero else sigmas
    count = steps if ends_at_zero else steps + 1
    if len(head) < 2:
        raise ValueError("a one-step schedule cannot be re-spaced for restart segments")
    new = torch.as_tensor(loglinear_interp(head.double().cpu().numpy(), count), dtype=sigmas.dtype)
    return torch.cat([new, sigmas[-1:].cpu()]).to(sigmas.device) if ends_at_zero else new.to(sigmas.device)


def karras_levels(n: int, v_min: float, v_max: float, rho: float = 7.0) -> torch.Tensor:
    """n + 1 Karras-spaced levels from v_max down to v_min (end points exact)."""
    ramp = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    levels = (v_max ** (1 / rho) + ramp * (v_min ** (1 / rho) - v_max ** (1 / rho))) ** rho
    levels[0], levels[-1] = v_max, v_min
    return levels


def restart_plan(sigmas: torch.Tensor, flow: bool, segments: list[Segment] | None = None) -> list[tuple]:
    """The (sigma_from, sigma_to) list of every Heun step: the main pass with restart segments spliced in."""
    total = len(sigmas) - 1
    segments = default_segments(total) if segments is None else check_segments(segments)
    restart_steps = sum(n * k for n, k, _, _ in segments)
    main_steps = total - restart_steps
    if main_steps < 1:
        raise ValueError(f"restart segments take {restart_steps} of the {total} steps; leave at least 1 for the main "
                         f"pass (ask for more steps or fewer/shorter segments)")
    main = resample(sigmas, main_steps)
    levels = ve_level(main.double(), flow)
    if flow:
        levels = torch.where(main >= 1, torch.full_like(levels, float("inf")), levels)
    inserts: dict[int, list[tuple]] = {}
    for n, k, t_min, t_max in segments:
        lo = int((levels - t_min).abs().argmin())
        hi = int((levels - t_max).abs().argmin())
        if not hi < lo or k == 0 or not torch.isfinite(levels[hi]):
            continue
        seg = from_ve_level(karras_levels(n, float(levels[lo]), float(levels[hi])), flow).to(main.dtype)
        seg[0], seg[-1] = main[hi], main[lo]
        inserts.setdefault(lo, []).extend(list(zip(seg[:-1], seg[1:], strict=True)) * k)
    plan = []
    for i in range(main_steps):
        plan.append((main[i], main[i + 1]))
        plan.extend(inserts.get(i + 1, []))
    return plan


@torch.no_grad()
def sample_restart(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback=None,
                   disable: bool | None = None, segments: list[Segment] | None = None, s_noise: float = 1.0,
                   noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Restart sampling with Heun steps; ``segments=None`` = the authors' automatic configuration (module doc)."""
    ms, args = split_extra_args(model, extra_args)
    plan = restart_plan(sigmas, ms is not None and is_flow(ms), segments)
    if ms is None and any(b > a for (_, a), (b, _) in zip(plan, plan[1:], strict=False)):
        raise ValueError("restart needs the model's model_sampling to tell flow from EPS/V models; "
                         "pass extra_args['model_sampling']")
    flow = ms is not None and is_flow(ms)
    seed, last, jumps = None, None, 0
    for i, (sigma, sigma_next) in enumerate(plan):
        if last is not None and sigma > last:
            if noise_sampler is not None:
                z = noise_sampler(last, sigma)
            else:
                seed = resolve_seed(extra_args) if seed is None else seed
                z = keyed_normal(x, seed, RESTART_KEY, jumps)
            x = add_noise(x, last, sigma, z * s_noise, flow)
            jumps += 1
        denoised = evaluate(model, x, sigma, args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        d = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        x_euler = x + d * dt
        if sigma_next == 0:
            x = x_euler
        else:
            d_next = to_d(x_euler, sigma_next, evaluate(model, x_euler, sigma_next, args))
            x = x + (d + d_next) / 2 * dt
        last = sigma_next
    return x
