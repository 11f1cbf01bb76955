"""Bottleneck Sampling (Tian et al., arXiv 2503.18940): high -> low -> high resolution stages.

Stage k runs any registry sampler at ``scales[k]`` times the input size on its own schedule; between stages
the clean estimate x0 is resized and noise is re-introduced. The output has the input's shape.

Supported models: rectified flow (SD3-, Flux-, Wan-shaped and the built-in DiT; sigmas in [0, 1]) and
EPS / V prediction in k-diffusion sigma space (SD1.5-, SDXL-shaped UNets; sigmas up to sigma_max). The
family is read from the model's model_sampling (ComfyUI or ours); without one, sigmas[0] > 1 means EPS/V.

Stage schedule (``stage_sigmas``): the incoming ``sigmas`` (any scheduler, the model's own shift) is read
as a curve over its steps in the flow-equivalent time ``t`` (flow: t = sigma; EPS/V: t = sigma / (1 + sigma),
exact because x0 + sigma eps divided by 1 + sigma is (1 - t) x0 + t eps). Stage k starts ``noise[k]`` of the
way before the schedule's end (diffusers-img2img "strength" semantics: strength w starts (1 - w) of the way
into the schedule, linear in t between the incoming steps), takes ``steps[k]`` steps and re-shifts them with
``t' = t_max time_snr_shift(shifts[k], t / t_max)``, t_max = t(sigmas[0]). For flow t_max = 1: SD3's shift;
for EPS/V it keeps sigma_max and 0 fixed (the model's trained range) and is sigma' ~ shift * sigma at low
noise (the unnormalised flow shift is exactly sigma' = shift * sigma in EPS sigmas, but would leave the range).
Shifts compose multiplicatively, so the paper's absolute FLUX shifts [9, 6, 9] over FLUX's base shift 3 are
relative shifts [3, 2, 3] here.

Stage hand-over (defaults ``stop_early=True``, ``noise_source="estimated"``): a stage ends where the next
one starts (``noise[k + 1]``), as the authors' method figure draws it; its last x0 estimate is resized and
re-noised at the next stage's first sigma ``s`` as ``a(s) x0 + s eps`` (a = 1 - s for flow, 1 for EPS/V).
``eps`` is the noise the stage's last model call implies, (x - a(sigma) x0) / sigma, carried to the new size
by ``resized_noise`` (area-pooled with unit variance going down; going up, its block means plus the
block-mean-free part of the run's starting noise, so it stays white). At one size this re-noising is exact
for Euler, so stages on the incoming steps join into plain Euler (tested). ``stop_early=False`` runs every
stage to the schedule's end; ``noise_source="fresh"`` re-introduces new seeded noise (ComfyUI's
noise_scaling below sigma_max), ``"initial"`` the run's starting noise. Fresh noise with stages run to the
end was our first reading; it lands far from the full-cost image (about 15 dB against 25 dB for the
defaults at 28 steps, bench/RESULTS.md).

Stage sizes: every stage's latent sides must be whole multiples of the model's size factor: a DiT's patch
size (Flux / SD3: 2, built-in: 4), a UNet's 2 ** (number of downsamples) = 2 ** (len(channel_mult) - 1)
(SD1.5: 8, SDXL: 4), read from the ComfyUI model's diffusion_model or model_config.unet_config, or in the
pack's own loop from the DiffusionModel's ``size_factor`` (set from the adapter's patch size by the loaders and
``accel.adapter.diffusion_model``). Our loop or a ComfyUI model that tells nothing is refused rather than
guessed; a bare denoiser function (no model to ask) is taken as the built-in model's patch 4. Latents
are resized, so the VAE factor adds nothing (a latent side n is n * 8 pixels). Otherwise a ValueError
names the allowed latent sides for the chosen scales. A model that runs at one size only (a learned
fixed-size position embedding: ``DiffusionModel.fixed_size``) is refused before any model call.

What was verified, and where (2026-11):

* Paper tables (via /work/shared/docs/accelerators.md section 3, transcribed from the paper's appendix
  tables 4-5 and table 7): FLUX.1-dev "x3" = resolutions [1024, 512, 1024], noise re-introduction
  strengths [1, 0.8, 0.6], steps [6, 20, 8], shifts [9, 6, 9] over a 50-step shift-3 baseline; Lanczos
  is the chosen resizer, compared with bilinear, bicubic and nearest (all offered here, plus area).
* Project page (GitHub ``tyfeld/BottleneckSampling.github.io``, re-read 2026-11-23): index.html gives three
  stages (high-res for semantics, low-res for efficiency, high-res to restore detail), no algorithm detail.
  Its method figure (static/images/method.png = method.pdf) draws one timeline 999 -> T1 | T2 -> T3 | T4
  -> T0: stage 1 runs 999 -> T1, then "Stage Change" at T1, "Noise Re-introducing" T1 -> T2 and "Noise
  Re-shifting" at T2; stage 2 runs T2 -> T3; stage 3 runs T4 -> T0. Stages 1 and 2 therefore stop at an
  intermediate level; the figure gives no numbers, so here a stage stops where the next starts (T1 = T2).
* Secondary (the RALU paper, Region-Adaptive Latent Upsampling, a copy in the GitHub index; its
  related work and appendix B.2): Bottleneck Sampling makes two resolution changes with Lanczos
  resampling, "noise reintroduction, which resets the SNR at each resolution change" and per-stage
  "scheduler re-shifting"; RALU ran it on FLUX with cumulative stage ends [4, 16, 21] steps (5x) and
  [3, 11, 15] (7x), so a stage-step split is a free knob.
* NOT verified: the official code and the paper's method section. Tried 2026-11-23 (issue 4): ``fetch``
  github:tyfeld/Bottleneck-Sampling (no snapshot), ``find_files`` on it (no files), ``find_repos``
  "bottleneck-sampling" / "tyfeld" (only the project page), ``find_string`` "Bottleneck-Sampling",
  "bottleneck_sampling", "2503.18940" (link lists, citing papers, a third-party Pruna schedule
  ``ResamplingSchedule(1.0, 0.1, scale, fraction)``), search of arxiv.org/html/2503.18940v2, sciencestack,
  deep-diver reviews (excerpts end at the introduction); again 2026-11-23 (third session): no new source;
  again 2026-12-03: ``fetch`` has no snapshot of tyfeld/Bottleneck-Sampling, ``find_repos``
  "bottleneck-sampling" finds none.
  Hence these stay our reading: where a stage ends (the figure's intermediate level, taken as the next
  stage's start); what "strength" means (the fraction of the incoming schedule a stage covers, sliced, then
  re-shifted, as in diffusers' img2img pipelines, the FLUX reference code base); which noise is put back
  (the paper says only "noise re-introduction"; the trajectory's own estimate is our measured choice).
  The paper has no UNet / EPS setting: the EPS/V mapping above is ours, and the defaults were tuned on
  the built-in flow model only (shifts 1, 1, 1 keep an EPS model's own schedule in every stage).

Defaults: the paper's FLUX row scaled to the built-in model (trained at 32 and 64 px; 64 px -> 32 px
bottleneck), relative shifts [3, 2, 3] as in the paper. Step counts follow the same row: it runs 6 + 20 + 8 = 34
steps where the baseline runs 50, so the stages take ``step_budget`` = 0.68 of the incoming schedule's steps, split
6 : 20 : 8 (28 incoming steps -> 3 + 11 + 5). Spending the whole incoming budget (``step_budget`` 1, our reading
before 2026-12) bought no fidelity: the hand-over, not the step count, sets the error. Measured with
``bench/bench_bottleneck.py`` (paired to full-cost Euler at 64 px, bench/RESULTS.md): at 28 steps the defaults
are 2.5x faster at 24.9 dB / LPIPS 0.091, Euler at the same wall time (11 steps) 21.5 dB / 0.108; with budget 1,
1.7x at 24.6 dB, behind Euler at equal time (16 steps, 26.7 dB). The ``--sweep`` (budget 1, 28 steps): shifts
[1, 1, 1] lose 3.4 dB; noise [1, .7, .5] gains 0.9 dB; resizers within 0.4 dB; starting noise 20.9 dB, fresh
noise 15.1 dB, stages run to sigma 0 11.4-14.9 dB.

Known limits: ComfyUI inpainting masks and image-shaped conditioning (concat latents) cannot follow the
resolution change (a clear error for masks); in-model accelerators keyed on ``sample_sigmas`` (MagCache)
see other sigmas: MagCache looks each call up in the incoming schedule's steps, so stage calls that fall in one
step share one skip decision, and a cached residual is never reused at another resolution (tested; MagCache +
Bottleneck 3.7x at 23.5 dB on the built-in model, bench/RESULTS.md); multi-stage runs need denoise 1 (a full
schedule from pure noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F

from .model_sampling import is_flow, time_snr_shift
from .noise import batch_noise
from .sampling_utils import signal_scale, split_extra_args

RESIZERS = ("lanczos", "bicubic", "bilinear", "nearest", "area")
NOISE_SOURCES = ("fresh", "initial", "estimated")
DEFAULT_SCALES = (1.0, 0.5, 1.0)
DEFAULT_NOISE = (1.0, 0.8, 0.6)
DEFAULT_SHIFTS = (3.0, 2.0, 3.0)
PAPER_STEP_SPLIT = (6, 20, 8)  # FLUX.1-dev table: steps per stage
PAPER_STEP_BUDGET = 0.68  # = 34 / 50, same table: 6 + 20 + 8 = 34 steps against the 50-step baseline ("x3")
BUILTIN_PATCH = 4  # the built-in DiT's patch size: assumed for a bare denoiser function (no model to ask)


def check_step_budget(budget: float) -> None:
    """ValueError unless ``budget`` is a usable fraction of the incoming schedule's steps, (0, 4]."""
    if not (math.isfinite(budget) and 0 < budget <= 4):
        raise ValueError(f"the bottleneck step budget must be in (0, 4] (a fraction of the schedule's steps), "
                         f"got {budget}")


def budget_steps(incoming: int, budget: float, stages: int) -> int:
    """How many steps the stages take in all: ``budget`` times the incoming schedule's, at least one per stage."""
    check_step_budget(budget)
    return max(stages, round(incoming * budget))


def split_steps(total: int, stages: int) -> list[int]:
    """``total`` steps split over the stages (the paper's 6 : 20 : 8 for three, else evenly), each >= 1."""
    if total < stages:
        raise ValueError(f"bottleneck sampling needs at least one step per stage: {total} steps < {stages} stages")
    weights = PAPER_STEP_SPLIT if stages == 3 else (1,) * stages
    raw = [total * w / sum(weights) for w in weights]
    steps = [max(1, math.floor(r)) for r in raw]
    order = sorted(range(stages), key=lambda k: raw[k] - math.floor(raw[k]), reverse=True)
    k = 0
    while sum(steps) != total:
        j = order[k % stages]
        if sum(steps) < total:
            steps[j] += 1
        elif steps[j] > 1:
            steps[j] -= 1
        k += 1
    return steps


def flow_time(sigma: torch.Tensor, flow: bool) -> torch.Tensor:
    """The flow-equivalent time of a sigma: itself (flow) or sigma / (1 + sigma) (EPS/V, same SNR)."""
    return sigma if flow else sigma / (1 + sigma)


def sigma_of_flow_time(t: torch.Tensor, flow: bool) -> torch.Tensor:
    """Inverse of ``flow_time``."""
    return t if flow else t / (1 - t)


def stage_sigmas(sigmas: torch.Tensor, strength: float, steps: int, shift: float, flow: bool = True,
                 end: float = 0.0) -> torch.Tensor:
    """``steps`` steps over ``sigmas`` from ``strength`` of the way before its end to ``end`` before it (linear in
    its step index; ``end`` 0 runs to the end), then re-shifted.

    Works on the flow-equivalent time (see the module docstring); the shift keeps ``sigmas[0]`` and 0 fixed.
    With strength 1, steps = len(sigmas) - 1 and shift 1 this returns ``sigmas``.
    """
    n = len(sigmas) - 1
    base = flow_time(sigmas.detach().double().cpu(), flow)
    top = 1.0 if flow else float(base[0])
    start, stop = n * (1.0 - strength), n * (1.0 - end)
    pos = start + torch.arange(steps + 1, dtype=torch.float64) * ((stop - start) / steps)
    pos = pos.clamp(0, n)
    lo = pos.floor().long().clamp(max=n - 1)
    frac = pos - lo
    out = base[lo] * (1 - frac) + base[lo + 1] * frac
    out = top * time_snr_shift(float(shift), out / top)
    return sigma_of_flow_time(out, flow).to(sigmas.dtype).to(sigmas.device)


def resize(x: torch.Tensor, size: tuple[int, int], method: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, *size) with torch's interpolation, or Pillow's Lanczos (float, per channel)."""
    if method not in RESIZERS:
        raise ValueError(f"unknown resize method {method!r}; choose one of {', '.join(RESIZERS)}")
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if method == "lanczos":
        import numpy as np
        from PIL import Image

        planes = x.detach().float().cpu().reshape(-1, *x.shape[-2:]).numpy()
        out = [np.asarray(Image.fromarray(p).resize((size[1], size[0]), Image.Resampling.LANCZOS)) for p in planes]
        return torch.from_numpy(np.stack(out)).reshape(*x.shape[:-2], *size).to(x)
    smooth = method in ("bilinear", "bicubic")
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode=method, align_corners=False if smooth else None,
                         antialias=smooth and shrinking)


def _spatial(size) -> int | None:
    if isinstance(size, int):
        return size
    if isinstance(size, (tuple, list)) and size:
        return math.lcm(*(int(v) for v in size[-2:]))
    return None


def model_size_factor(model) -> tuple[int, str] | None:
    """(factor, what it is) for the model behind a k-diffusion denoiser: the latent sides it needs.

    Our loop's CFG denoiser carries its ``DiffusionModel`` (``turbosample_model``): its ``size_factor`` (set by the
    loaders and ``accel.adapter.diffusion_model`` from the adapter's patch size), else the network's own
    ``size_factor`` (DiffusersDiT, DiffusersUNet), else a ``patch_size`` of the network or its config. A ComfyUI
    model: a DiT's patch size, or a UNet's 2 ** downsamples (one per ``channel_mult`` level but the last), read from
    ``diffusion_model`` or ``model_config.unet_config``. None when nothing tells.
    """
    ours = getattr(model, "turbosample_model", None)
    if ours is not None:
        net = ours.diffusion_model
        factor = getattr(ours, "size_factor", None) or getattr(net, "size_factor", None)  # our networks tell it
        if factor:
            return int(factor), f"the model's size factor {int(factor)}"
        patch = _spatial(getattr(net, "patch_size", None)) or _spatial(getattr(getattr(net, "config", None),
                                                                               "patch_size", None))
        return (patch, f"the model's patch size {patch}") if patch else None
    base = getattr(getattr(model, "inner_model", None), "inner_model", None)  # KSamplerX0Inpaint -> guider
    dm = getattr(base, "diffusion_model", None)
    config = getattr(getattr(base, "model_config", None), "unet_config", None)
    config = config if isinstance(config, dict) else {}
    for holder in (dm, getattr(dm, "config", None)):
        patch = _spatial(getattr(holder, "patch_size", None))
        if patch:
            return patch, f"the model's patch size {patch}"
    if _spatial(config.get("patch_size")):
        patch = _spatial(config["patch_size"])
        return patch, f"the model's patch size {patch}"
    mult = getattr(dm, "channel_mult", None) or config.get("channel_mult")
    if mult:
        down = len(mult) - 1
        return 2 ** down, f"the UNet's factor {2 ** down} = 2**{down} downsamples"
    return None


def allowed_multiple(scales: Sequence[float], multiple: int) -> int:
    """The smallest latent side step for which ``side * scale`` is a multiple of ``multiple`` at every scale."""
    out = 1
    for scale in scales:
        frac = Fraction(scale).limit_denominator(1000)
        out = math.lcm(out, frac.denominator * multiple // math.gcd(frac.numerator, multiple))
    return out


def stage_size(height: int, width: int, scale: float, multiple: int, k: int, what: str | None = None,
               scales: Sequence[float] | None = None) -> tuple[int, int]:
    """The stage's (H, W), or ValueError naming the allowed latent sides when it is not a multiple."""
    what = what or f"the model's patch size {multiple}"
    out = []
    for name, v in (("height", height), ("width", width)):
        exact = v * scale
        size = round(exact)
        if abs(exact - size) > 1e-6 or size < multiple or size % multiple:
            step = allowed_multiple(scales or [scale], multiple)
            raise ValueError(f"bottleneck stage {k}: {name} {v} x scale {scale:g} = {exact:g} is not a positive "
                             f"multiple of {what}; allowed latent heights and widths for scales "
                             f"{', '.join(f'{s:g}' for s in (scales or [scale]))}: multiples of {step} "
                             f"({step}, {2 * step}, {3 * step}, ...), or choose other scales")
        out.append(size)
    return out[0], out[1]


def check_fixed_size(model, sizes: Sequence[tuple[int, int]]) -> None:
    """ValueError before any model call when the model runs at one latent size only (a fixed-size position
    embedding, ``DiffusionModel.fixed_size``) and a stage is at another."""
    fixed = getattr(getattr(model, "turbosample_model", None), "fixed_size", None)
    if fixed is None:
        return
    other = next((size for size in sizes if tuple(size) != tuple(fixed)), None)
    if other is not None:
        raise ValueError(f"this model runs at latent size {fixed[0]}x{fixed[1]} only (a fixed-size position "
                         f"embedding), but Bottleneck Sampling needs a model that runs at other resolutions (a stage "
                         f"at {other[0]}x{other[1]}); use another loop accelerator, or scales of 1")


def check_stages(scales: Sequence[float], noise: Sequence[float], shifts: Sequence[float],
                 steps: Sequence[int] | None, resize_method: str) -> None:
    k = len(scales)
    if k < 1 or len(noise) != k or len(shifts) != k or (steps is not None and len(steps) != k):
        raise ValueError(f"bottleneck stages disagree: {len(scales)} scales, {len(noise)} noise strengths, "
                         f"{len(shifts)} shifts" + (f", {len(steps)} step counts" if steps is not None else ""))
    if scales[0] != 1.0 or scales[-1] != 1.0:
        raise ValueError(f"the first and last bottleneck stage must be at full resolution (scale 1), got {scales}")
    if any(not 0 < s <= 4 for s in scales):
        raise ValueError(f"bottleneck scales must be in (0, 4], got {scales}")
    if noise[0] != 1.0 or any(not 0 < w <= 1 for w in noise):
        raise ValueError(f"noise strengths must be in (0, 1] and the first must be 1 (pure noise), got {noise}")
    if any(not 0 < s <= 100 for s in shifts):
        raise ValueError(f"bottleneck shifts must be in (0, 100], got {shifts}")
    if steps is not None and any(int(n) != n or n < 1 for n in steps):
        raise ValueError(f"bottleneck step counts must be whole numbers >= 1, got {steps}")
    if resize_method not in RESIZERS:
        raise ValueError(f"unknown resize method {resize_method!r}; choose one of {', '.join(RESIZERS)}")


def resized_noise(eps: torch.Tensor, size: tuple[int, int], detail: torch.Tensor | None = None) -> torch.Tensor:
    """Unit-variance noise of ``size`` carrying ``eps``'s content.

    Shrinking: area-pooled and rescaled by sqrt(pool area) (exact for whole-number factors: the mean of k iid unit
    normals has variance 1/k). Growing: each block gets the coarse value / sqrt(block area) plus the block-mean-free
    part of ``detail`` (white unit noise of ``size``), so the result is white again and area-pools back to ``eps``.
    """
    if tuple(eps.shape[-2:]) == tuple(size):
        return eps
    gain = math.sqrt(eps.shape[-2] * eps.shape[-1] / (size[0] * size[1]))
    if size[0] <= eps.shape[-2] and size[1] <= eps.shape[-1]:
        return F.interpolate(eps, size=size, mode="area") * gain
    if detail is None or tuple(detail.shape[-2:]) != tuple(size):
        raise ValueError(f"growing noise to {tuple(size)} needs detail noise of that size")
    coarse = tuple(eps.shape[-2:])
    detail_mean = F.interpolate(F.interpolate(detail, size=coarse, mode="area"), size=size, mode="nearest")
    return F.interpolate(eps, size=size, mode="nearest") * gain + (detail - detail_mean)


def renoise_seed(x: torch.Tensor, extra_args: dict, seed: int | None) -> int | tuple[int, ...]:
    """ComfyUI's run seed (or the run's per-image seeds) when given, else one derived from the starting noise (same
    noise -> same seed)."""
    if seed is not None:
        return int(seed)
    if extra_args.get("seed") is not None:
        run_seed = extra_args["seed"]
        return int(run_seed) if isinstance(run_seed, int) else tuple(int(s) for s in run_seed)
    return int(x.detach().flatten()[:256].double().abs().sum().item() * 1e6) % (2**31)


def offset_seed(seed: int | tuple[int, ...], k: int) -> int | tuple[int, ...]:
    """The seed of stage ``k``'s fresh noise (per image for per-image seeds)."""
    return seed + k if isinstance(seed, int) else tuple(s + k for s in seed)


@torch.no_grad()
def sample_bottleneck(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                      callback=None, disable: bool | None = None, base: str | Callable = "euler",
                      scales: Sequence[float] = DEFAULT_SCALES, noise: Sequence[float] = DEFAULT_NOISE,
                      shifts: Sequence[float] = DEFAULT_SHIFTS, steps: Sequence[int] | None = None,
                      resize_method: str = "lanczos", multiple: int | None = None, seed: int | None = None,
                      noise_source: str = "estimated", stop_early: bool = True,
                      step_budget: float = PAPER_STEP_BUDGET, **base_options) -> torch.Tensor:
    """Multi-stage sampling; ``base`` is a registry sampler name or a sampler function run per stage.

    Without ``steps`` the stages take ``step_budget`` times the incoming schedule's steps in all (default 34/50,
    the paper's FLUX table: 34 steps against a 50-step baseline), split 6 : 20 : 8; ``step_budget`` 1 spends the
    schedule's own step count. Progress (``callback``'s ``i``) is mapped onto the incoming schedule's steps, so a
    progress bar made for ``sigmas`` ends at its last step.

    ``noise_source`` picks the noise re-introduced between stages: "estimated" (default: the noise the last model
    call implies, (x - a(sigma) x0) / sigma, resized with ``resized_noise``), "initial" (the run's starting noise,
    resized the same way) or "fresh" (new seeded noise per stage). ``stop_early`` (default) ends every stage but
    the last at the next stage's starting noise level and hands over its last x0 estimate (the project page's
    method figure); False runs each stage to sigma 0. With both defaults, scales 1 and shifts 1 and stages on
    the incoming steps, Euler's stages join into plain Euler (a test checks this).
    """
    from .sampler_table import resolve_sampler

    extra_args = dict(extra_args or {})
    scales, noise, shifts = [float(s) for s in scales], [float(w) for w in noise], [float(s) for s in shifts]
    check_stages(scales, noise, shifts, steps, resize_method)
    if noise_source not in NOISE_SOURCES:
        raise ValueError(f"unknown noise source {noise_source!r}; choose one of {', '.join(NOISE_SOURCES)}")
    if x.ndim != 4:
        raise ValueError(f"bottleneck sampling needs image latents (B, C, H, W), got shape {tuple(x.shape)} (video "
                         "latents such as Wan's are not supported: their stages would resize frames too)")
    ms, _ = split_extra_args(model, extra_args)
    flow = is_flow(ms) if ms is not None else float(sigmas[0]) <= 1.0 + 1e-4
    if flow and float(sigmas[0]) > 1.0 + 1e-4:
        raise ValueError(f"rectified-flow sigmas must be <= 1; got sigmas[0] = {float(sigmas[0]):.4g}")
    top = 1.0 if flow else float(getattr(ms, "sigma_max", sigmas[0]))
    if len(scales) > 1 and float(sigmas[0]) < top * 0.999:
        raise ValueError(f"bottleneck sampling starts from pure noise (sigma {top:.4g}); got sigmas[0] = "
                         f"{float(sigmas[0]):.4g} (use denoise = 1)")
    if len(scales) > 1 and extra_args.get("denoise_mask") is not None:
        raise ValueError("bottleneck sampling cannot follow an inpainting mask across resolutions")
    fn, options, _ = resolve_sampler(base)
    if multiple:
        multiple, what = int(multiple), f"the size factor {int(multiple)}"
    else:
        found = model_size_factor(model)
        if found is None and (hasattr(model, "turbosample_model") or hasattr(model, "inner_model")):
            raise ValueError("Bottleneck Sampling cannot tell this model's patch size (every stage's latent sides "
                             "must divide by it): build the model with turbosample.accel.adapter.diffusion_model(), "
                             "set DiffusionModel(size_factor=...), or give the sampler's multiple option")
        multiple, what = found or (BUILTIN_PATCH, f"the model's patch size {BUILTIN_PATCH}")
    height, width = x.shape[-2:]
    sizes = [stage_size(height, width, s, multiple, k, what, scales) for k, s in enumerate(scales)]
    check_fixed_size(model, sizes)
    incoming = len(sigmas) - 1
    counts = [int(n) for n in steps] if steps is not None else \
        split_steps(budget_steps(incoming, float(step_budget), len(scales)), len(scales))
    total = sum(counts)
    noise_seed = renoise_seed(x, extra_args, seed)
    start_noise = x / (1.0 if flow else float(sigmas[0]))  # the run's noise: x at t = 1 (flow) or x / sigma_max
    progress = {"done": 0, "denoised": None}

    def stage_callback(info: dict) -> None:
        progress["denoised"] = info["denoised"]
        sigma = torch.as_tensor(info["sigma"], dtype=x.dtype, device=x.device).reshape(-1)[0]
        progress["eps"] = (info["x"] - signal_scale(sigma, flow) * info["denoised"]) / sigma
        if callback is not None:  # step j of the run's total -> step of the incoming schedule (monotone, ends last)
            j = info["i"] + progress["done"]
            callback({**info, "i": max(0, (j + 1) * incoming // total - 1)})

    for k, (size, w, shift, n) in enumerate(zip(sizes, noise, shifts, counts, strict=True)):
        end = noise[k + 1] if stop_early and k + 1 < len(noise) else 0.0
        stage = stage_sigmas(sigmas, w, n, shift, flow, end)
        if k > 0:  # the last stage ended at sigma 0 (x is its x0), else (stopped early, truncated) its x0 estimate
            x0 = x if float(sigmas[-1]) == 0.0 and not stop_early else progress["denoised"]
            x0 = resize(x0, size, resize_method)
            if noise_source == "fresh":
                eps = batch_noise(offset_seed(noise_seed, k), tuple(x0.shape), device=x0.device, dtype=x0.dtype)
            else:
                detail = start_noise if tuple(size) == tuple(start_noise.shape[-2:]) else \
                    batch_noise(offset_seed(noise_seed, k), (*x0.shape[:-2], *size), device=x0.device, dtype=x0.dtype)
                eps = resized_noise(start_noise if noise_source == "initial" else progress["eps"], size, detail)
            x = signal_scale(stage[0], flow) * x0 + stage[0] * eps
        x = fn(model, x, stage, extra_args=extra_args, callback=stage_callback, disable=disable,
               **{**options, **base_options})
        progress["done"] += n
    return x
