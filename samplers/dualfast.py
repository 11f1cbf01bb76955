"""DualFast (Yu, Luo, Wang, Zhao; arXiv 2506.13058): a zero-extra-call approximation-error correction.

The sampler's current model output is mixed with one already computed at an earlier, noisier step tau::

    out_new = (1 + c_i) * out(x_t, t) - c_i * out(x_tau, tau)        tau > t

and ``out_new`` replaces the model output wherever the base solver uses it (so a multistep solver's history
holds corrected values). Here the correction wraps the denoiser, so it plugs into every one-call-per-step
sampler of the registry (Euler = DDIM for flow models, DPM-Solver++(2M), UniPC, LMS, iPNDM, ...:
``sample_dualfast(..., base="uni_pc")``); ``coefficient=0`` returns the base sampler's output
bit for bit (the denoiser is not even wrapped).

What was verified, and where (2026-11):

* Paper, abstract and introduction (arXiv HTML v1, stored copy): sampling error = discretization error +
  approximation error of the network; DualFast is training-free, costs no extra model call and plugs into
  DDIM, DPM-Solver, DPM-Solver++ and UniPC; gains are largest at very few steps.
* NOT verified: the paper's section 4 / Algorithm 1 and official code. Re-checked 2026-11-23 (issue 4) and
  again in a third session (same sources, ``find_repos`` / ``find_string`` "DualFast": nothing new):
  what the search tool returns of https://arxiv.org/html/2506.13058v1, arxivlens, themoonlight.io,
  tomesphere (ICLR 2025 reviews) and arxiv.deeppaper.ai ends before the method; no v2 found; GitHub: no
  repository named DualFast (``find_repos``), none under the first author's account ``yuhuUSTC`` (UTEmain,
  FSDGN, FAR, Debias, DehazeDDPM, FRFT), ``yuhuUSTC/DualFast`` has no stored files; ``find_string``
  "2506.13058" finds only abstract digests and one research note. That note (GitHub-indexed notes, paper_id
  ``dualfast_2025``) is the only source of the rule: ``eps_new = (1 + c_t) eps(x_t, t) - c_t eps(x_tau, tau)``,
  ``tau > t`` an already computed higher-noise step, ``c_t`` growing toward low noise, ``eps_new``
  substituted into the base solver's first-order term, zero extra calls. It names no tau and no c values,
  so the sign, the reference step and the coefficient schedule were measured on the built-in model
  (``bench/bench_dualfast.py``) instead of copied; the default ``decay`` schedule (c strongest at the first
  corrected step, 0 at the last) is the opposite of the note's "c_t grows toward low noise", by measurement.

Measured (built-in model, CFG 4, simple schedule, 4 prompts, PSNR against 100-step Heun; 2026-11-23):

* sign: c > 0 (extrapolate away from the earlier output) helps, c < 0 hurts at 8-10 calls, for every base.
* schedule: ``constant`` beats ``linear`` (c growing toward low noise, as the note describes): at 32 px,
  8 calls, Euler c = 0.3: +0.58 dB constant vs -0.08 dB linear. Reference "first" was no better than
  "previous" (Euler +0.1 dB, DPM-Solver++(2M) -0.3 to -0.6 dB, linear c = 0.3).
  ``target`` "d" and "x0" differ by < 0.1 dB for Euler; "d" was better for DPM-Solver++(2M) (kept).
* 64 px, dPSNR of the default c at 4 / 6 / 8 / 10 calls: Euler c = 0.5: +0.0 / +0.4 / +1.4 / +2.0 dB;
  DPM-Solver++(2M) c = 0.3: -0.3 / +0.1 / +0.9 / +1.3 dB; UniPC c = 0.15: -0.3 / -0.2 / +0.5 / +0.4 dB.
  SSIM mostly rises with c > 0. At 4 calls the correction does not help PSNR.
* On the exact Gaussian model (tests/analytic.py, no approximation error) c > 0 lowers Euler's error too:
  with constant c the rule is a partial Adams-Bashforth extrapolation, so for Euler part of the gain is
  discretization. For DPM-Solver++(2M) and UniPC at >= 6 steps it raises the error there, so their gains
  on the built-in model come from the network's error, as the paper argues.

Re-measured against a 1000-call reference (Heun 500 steps, 4 prompts, 2026-12-03; bench/RESULTS.md): gains
within 0.05 dB of the table above. Euler c = 0.5: -0.0 / +0.2 / +0.6 / +1.2 / +1.6 dB at 4 / 5 / 6 / 8 / 10
calls, +4.6 / +9.2 dB at 16 / 28; DPM-Solver++(2M) c = 0.3 at 4 / 5 / 6 / 8 / 10: -0.3 / -0.1 / -0.0 / +0.6 /
+0.4 dB; UniPC is made worse at 4-6 and 10 calls by every c tried (0.1-0.8) and better only at 8. No c helps at
4 calls. Euler c = 0.65-0.8 would gain a little more at 6-16 calls (up to +0.6 dB) but 0.8 loses 1.1 dB at 28
steps (all with the constant schedule, the default until the decay schedule below).

Schedules (2026-12-03, same reference): ``decay``, c_i = c (steps - 1 - i) / (steps - 2), beats the constant
defaults at every count from 4 to 10 calls for Euler and DPM-Solver++(2M), and it is the only schedule measured
that helps Euler at 4 calls (it leaves the last step, onto sigma 0, uncorrected). Defaults since then: ``decay``
with Euler c = 0.75 (+0.3 / +0.7 / +1.3 / +2.3 / +2.7 dB at 4 / 5 / 6 / 8 / 10 calls, +8.3 dB at 28; larger c gains
more at 5-8 calls but loses at 28, where c = 1 drops to +3.7 dB), DPM-Solver++(2M) c = 0.2 (-0.0 / +0.1 / +0.3 /
+0.7 / +0.6 dB, +0.0 at 28; c = 0.3 loses 1.4 dB at 28). UniPC: mixing every output it reads (scope ``all``) loses
PSNR at 4-6 calls for every c; mixing only the value its UniC corrector uses, with the predictor's history raw
(scope ``corrector``, UniPC's default) gains from 5 calls: c = 0.6: -0.0 / +0.3 / +0.6 / +0.7 / +0.9 dB at 4 / 5 /
6 / 8 / 10 calls, +3.0 / +1.3 dB at 16 / 28 (at 4 calls SSIM and LPIPS improve, PSNR ties).

Mixed quantity: ``target="d"`` (default) mixes the probability-flow derivative ``d = (x - x0) / sigma``,
which *is* the network's own output for EPS models (epsilon) and for rectified-flow models (velocity), i.e.
the quantity whose approximation error the paper corrects; ``target="x0"`` mixes the denoised estimates.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from .sampler_table import resolve_sampler
from .sampling_utils import unwrap_for_base

# Per base sampler, chosen by measurement (see the module docstring); other bases default to 0 (off).
DEFAULT_COEFFICIENT: dict[str, float] = {"euler": 0.75, "dpmpp_2m": 0.2, "uni_pc": 0.6}
DEFAULT_SCHEDULE = "decay"
# Where the mixed output is used: "all" (the denoiser is wrapped) or "corrector" (predictor-corrector bases: only
# the corrector sees it, the predictor's history keeps the raw outputs). Measured per base, see the docstring.
SCOPES = ("all", "corrector")
DEFAULT_SCOPE: dict[str, str] = {"uni_pc": "corrector", "uni_pc_bh2": "corrector"}
SCHEDULES = ("constant", "linear", "decay")
REFERENCES = ("previous", "first")
TARGETS = ("d", "x0")


def coefficient_at(coefficient: float, schedule: str, i: int, steps: int) -> float:
    """c_i: ``constant`` = c at every step; ``linear`` = c * i / (steps - 1), growing toward low noise;
    ``decay`` = c * (steps - 1 - i) / (steps - 2): c at the first corrected step (i = 1), 0 at the last."""
    if schedule == "constant":
        return coefficient
    if schedule == "linear":
        return coefficient * i / max(steps - 1, 1)
    if schedule == "decay":
        return coefficient * max(steps - 1 - i, 0) / max(steps - 2, 1)
    raise ValueError(f"unknown DualFast schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def check_options(schedule: str, reference: str, target: str, coefficient: float) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown DualFast schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if reference not in REFERENCES:
        raise ValueError(f"unknown DualFast reference {reference!r}; choose one of {', '.join(REFERENCES)}")
    if target not in TARGETS:
        raise ValueError(f"unknown DualFast target {target!r}; choose one of {', '.join(TARGETS)}")
    if not -10.0 <= float(coefficient) <= 10.0:
        raise ValueError(f"DualFast coefficient must be within [-10, 10], got {coefficient}")


def output_mixer(sigmas: torch.Tensor, coefficient: float, schedule: str = DEFAULT_SCHEDULE,
                 reference: str = "previous", target: str = "d") -> Callable[..., torch.Tensor]:
    """``mix(x, sigma, denoised) -> denoised``: DualFast on one model output, in call order; the step index comes
    from the call's sigma. State (the reference output) lives in the closure: one mixer per sampling run."""
    check_options(schedule, reference, target, coefficient)
    steps = len(sigmas) - 1
    grid = sigmas[:-1].float().cpu()
    state: dict[str, torch.Tensor] = {}

    def mix(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma).to(x).reshape(-1, *([1] * (x.ndim - 1)))
        if (s <= 0).any():
            return denoised  # no derivative at sigma = 0 (the registry's solvers never call there)
        out = (x - denoised) / s if target == "d" else denoised
        i = int((grid - float(s.reshape(-1)[0])).abs().argmin())
        ref = state.get("ref")
        if reference == "previous" or ref is None:
            state["ref"] = out
        c = coefficient_at(coefficient, schedule, i, steps)
        if ref is None or c == 0.0 or ref.shape != out.shape:
            return denoised
        mixed = (1 + c) * out - c * ref
        return x - s * mixed if target == "d" else mixed

    return mix


def corrected_denoiser(model, sigmas: torch.Tensor, coefficient: float, schedule: str = DEFAULT_SCHEDULE,
                       reference: str = "previous", target: str = "d") -> Callable[..., torch.Tensor]:
    """``model`` with DualFast applied to each call (scope "all": every use of the output sees the mixed value).

    The hook for any one-call-per-step solver: call the returned denoiser instead of ``model``.
    """
    mix = output_mixer(sigmas, coefficient, schedule, reference, target)

    def denoise(x: torch.Tensor, sigma: torch.Tensor, **extra: object) -> torch.Tensor:
        return mix(x, sigma, model(x, sigma, **extra))

    return denoise


@torch.no_grad()
def sample_dualfast(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                    callback=None, disable: bool | None = None, base: str | Callable = "euler",
                    coefficient: float | None = None, schedule: str = DEFAULT_SCHEDULE,
                    reference: str = "previous", target: str = "d", scope: str | None = None,
                    **base_options) -> torch.Tensor:
    """``base`` (a registry name or sampler function) with the DualFast correction of coefficient c.

    ``coefficient=None`` takes the measured default for a registry base (0 for other functions); ``scope=None``
    its measured scope ("corrector" for UniPC, else "all"). "corrector" needs a base that takes a
    ``corrector_value`` hook (UniPC).
    """
    if coefficient is None:
        coefficient = DEFAULT_COEFFICIENT.get(base, 0.0) if isinstance(base, str) else 0.0
    if scope is None:
        scope = DEFAULT_SCOPE.get(base, "all") if isinstance(base, str) else "all"
    fn, options, calls = resolve_sampler(base)
    if calls is not None and calls != 1:
        raise ValueError(f"DualFast needs a one-call-per-step sampler; {base!r} makes {calls:g} calls per step")
    check_options(schedule, reference, target, coefficient)
    if scope not in SCOPES:
        raise ValueError(f"unknown DualFast scope {scope!r}; choose one of {', '.join(SCOPES)}")
    if scope == "corrector" and "corrector_value" not in inspect.signature(fn).parameters:
        raise ValueError(f"DualFast scope 'corrector' needs a predictor-corrector base (UniPC); {base!r} has none")
    model, extra_args = unwrap_for_base(model, extra_args)
    run = {**options, **base_options}
    if coefficient != 0 and scope == "corrector":
        run["corrector_value"] = output_mixer(sigmas, coefficient, schedule, reference, target)
    elif coefficient != 0:
        model = corrected_denoiser(model, sigmas, coefficient, schedule, reference, target)
    return fn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **run)
