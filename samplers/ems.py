"""Empirical model statistics (EMS) of DPM-Solver-v3, estimated on the user's own model, and their files.

Zheng, Lu, Chen, Zhu, "DPM-Solver-v3: Improved Diffusion ODE Solver with Empirical Model Statistics" (NeurIPS
2023). With x = alpha x0 + sigma eps and lambda = log(alpha / sigma), the solver integrates

    f(x, lambda) = (sigma eps(x) - l x) / alpha,   and fits   d f / d lambda ~= s f + b   (along the ODE),

with three statistics per lambda: l = E[diag of d(sigma eps) / dx] (minimises the expected squared Jacobian of
``sigma eps - l x``), and s, b = the least-squares line of df/dlambda on f, i.e. s = Cov(f', f) / Var(f),
b = E f' - s E f. l = 1, s = 0, b = 0 turns the solver into a data-prediction multistep method (DPM-Solver++ family).

How they are estimated here (no dataset is at hand, so the model's own samples stand in for the data):

* Trajectories: ``batch`` noises are integrated along the probability-flow ODE on a grid of ``grid_points``
  lambdas, uniform from ``lambda_min`` to ``lambda_max`` (default: the model's sigma range, clipped to [-5, 5]
  so that 1 / alpha stays moderate for flow models), by a second-order exponential multistep (data prediction,
  exact phi_2 weights); the point x_j and the model's x0 estimate D_j at every grid lambda are recorded. One
  model call per grid point. The start is pure noise scaled to the first sigma (the data part there is ignored).
* l: Hutchinson's diagonal estimator with Rademacher probes v and a central finite difference in x,
  ``v * (F(x + d v) - F(x - d v)) / (2 d)`` with F(x) = sigma eps = x - alpha D(x) and d = ``fd_scale`` sigma;
  two extra calls per probe and grid point (finite differences, not torch.func.jvp, so any wrapped model works).
* f' = df/dlambda along each recorded trajectory by second-order finite differences over the lambda grid
  (``torch.gradient``), so no extra calls; s and b by the regression above, with a small ridge
  (``ridge`` E[(x / alpha)^2 + D^2], the size of the terms f is made of, far above float32 rounding) so that a
  constant f (Gaussian data) or an x-independent D (very high noise) gives s = 0 instead of rounding noise / 0.
* Clean-up (measured on the built-in model, held-out prompts and seeds; bench/bench_dpm_solver_v3.py): l is
  smoothed in lambda (local-linear Gaussian kernel of width ``smooth`` on logit l, in which the Gaussian-data l is a
  straight line, so exact statistics pass unchanged; Hutchinson noise in l is multiplied by x / alpha ~ e^-lambda
  inside f, and f' differentiates it), and s, b are set to 0 within ``sb_margin`` of lambda_min: there
  the trajectories have just started from pure noise and f' is a one-sided difference, and the solver extends the
  first values to every noisier sigma (a flow model starts near lambda = -9). Without these two, estimated
  statistics made the built-in model far worse than neutral ones (the margin matters most; 8 steps, 4 held-out
  images: raw 7.2 dB, margin only 23.4, margin + smoothing 24.2, neutral 21.8, dpmpp_2m 21.4 PSNR).
  The official statistics (thu-ml/DPM-Solver-v3) are per element, from 1024+ samples on a grid of several hundred
  lambdas spanning the sampling range; a few samples cannot support that, hence the pooling and the clean-up.
* Pooling: ``reduce`` = "channel" (default: one value per channel and lambda; steady with few samples and valid
  at any resolution), "element" (per element, as the official statistics; needs the same latent shape and many
  samples) or "scalar".

For Gaussian data N(m, v) per element the exact values are l = 1 / (1 + v e^(2 lambda)), f = -l m (the same for
every sample, so s is free and the ridge picks s = 0) and b = -m dl/dlambda; with these, g of the solver is
constant and a first-order step is exact (tests/test_dpm_solver_v3.py checks the estimator against this).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .fingerprint import model_id_of  # noqa: F401  (re-exported for the nodes)
from .model_sampling import is_flow
from .sampling_utils import MODEL_SAMPLING_KEY, half_log_snr, sigma_of_half_log_snr, signal_scale
from .validate import check_finite

FORMAT = "turbosample-dpm-solver-v3-ems"
REDUCTIONS = ("channel", "element", "scalar")
DEFAULTS = {"grid_points": 64, "probes": 1, "fd_scale": 1e-2, "reduce": "channel", "lambda_min": None,
            "lambda_max": None, "ridge": 1e-6, "smooth": 0.5, "sb_margin": 1.0}
LAMBDA_CLIP = 5.0


@dataclass(frozen=True)
class EMS:
    """Statistics on an increasing lambda grid: ell (the paper's l), s, b of shape (K, *stat_shape).

    stat_shape broadcasts against one sample (x[0])."""

    lambdas: torch.Tensor
    ell: torch.Tensor
    s: torch.Tensor
    b: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        lam = self.lambdas
        if lam.ndim != 1 or len(lam) < 2 or not torch.isfinite(lam).all() or (lam[1:] <= lam[:-1]).any():
            raise ValueError("EMS lambdas must be a finite, strictly increasing 1-D grid of >= 2 points")
        for name in ("ell", "s", "b"):
            value = getattr(self, name)
            if value.shape[:1] != lam.shape or value.shape != self.ell.shape:
                raise ValueError(f"EMS {name} has shape {tuple(value.shape)}; expected ({len(lam)}, ...) like l")
            if not torch.isfinite(value).all():
                raise ValueError(f"EMS {name} holds NaN or inf")

    @property
    def stat_shape(self) -> tuple[int, ...]:
        return tuple(self.ell.shape[1:])


def neutral_ems(lambdas: torch.Tensor | None = None, stat_shape: tuple[int, ...] = ()) -> EMS:
    """l = 1, s = 0, b = 0: the solver becomes a data-prediction multistep method (the paper's degenerate case)."""
    lam = torch.tensor([-LAMBDA_CLIP, LAMBDA_CLIP], dtype=torch.float64) if lambdas is None else lambdas.double()
    ones = torch.ones((len(lam), *stat_shape), dtype=torch.float64)
    return EMS(lam, ones, torch.zeros_like(ones), torch.zeros_like(ones), {"neutral": True})


def stat_shape_for(x_shape: tuple[int, ...], reduce: str) -> tuple[int, ...]:
    """Shape of one lambda's statistics for samples of shape ``x_shape`` (batch first)."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown EMS reduction {reduce!r}; choose one of {', '.join(REDUCTIONS)}")
    rest = tuple(x_shape[1:])
    if reduce == "element":
        return rest
    if reduce == "channel" and rest:
        return (rest[0],) + (1,) * (len(rest) - 1)
    return (1,) * len(rest)


def _pool(values: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Mean of (B, *x_shape) over the batch and every axis where ``shape`` is 1."""
    dims = [0] + [k + 1 for k, n in enumerate(shape) if n == 1 and values.shape[k + 1] != 1]
    return values.mean(dim=dims, keepdim=True)[0] if dims else values[0]


def default_lambda_range(model_sampling) -> tuple[float, float]:
    """(lambda_min, lambda_max) of the model's sigma range, clipped to [-5, 5]."""
    flow = is_flow(model_sampling)
    hi_sigma = torch.tensor(float(model_sampling.sigma_max), dtype=torch.float64)
    if flow and hi_sigma >= 1:
        hi_sigma = torch.tensor(1 - 1e-4, dtype=torch.float64)
    lo = float(half_log_snr(hi_sigma, flow))
    hi = float(half_log_snr(torch.tensor(float(model_sampling.sigma_min), dtype=torch.float64), flow))
    return max(lo, -LAMBDA_CLIP), min(hi, LAMBDA_CLIP)


def smooth_in_lambda(values: torch.Tensor, lambdas: torch.Tensor, width: float,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """Local-linear Gaussian-kernel regression of ``values`` (K, ...) on ``lambdas`` (K,): straight lines (and
    constants) pass unchanged, noise is averaged over about ``width``; entries where ``valid`` (like values) is
    False get no weight. Width 0 returns the values unchanged."""
    if width < 0:
        raise ValueError(f"EMS smooth must be >= 0, got {width}")
    if width == 0:
        return values
    lam = lambdas.double()
    extra = (1,) * (values.ndim - 1)
    d = (lam[None, :] - lam[:, None]).reshape(len(lam), len(lam), *extra)  # (K, K, 1...): offsets from lambda_i
    w = torch.exp(-0.5 * (d / width) ** 2) * (1 if valid is None else valid.double().unsqueeze(0))
    s0, s1, s2 = w.sum(1), (w * d).sum(1), (w * d * d).sum(1)
    s0, s1, s2 = s0 + 1e-300, s1, s2 + 1e-300
    kernel = w * (s2.unsqueeze(1) - s1.unsqueeze(1) * d) / (s0 * s2 - s1 ** 2 + 1e-300).unsqueeze(1)
    return (kernel * values.double().unsqueeze(0)).sum(1).to(values.dtype)


def smooth_ell(ell: torch.Tensor, lambdas: torch.Tensor, width: float) -> torch.Tensor:
    """Smooth l in logit space, where the Gaussian value 1 / (1 + v e^(2 lambda)) is a straight line in lambda
    (and any data tends to it at high noise). l is clipped to [1e-6, 1 - 1e-6] first: estimator noise above 1 (high
    noise, where the true l is just below 1) is pulled to 1, the neutral value, never below it."""
    if width == 0:
        return ell
    p = ell.double().clamp(1e-6, 1 - 1e-6)
    return torch.sigmoid(smooth_in_lambda(torch.log(p) - torch.log1p(-p), lambdas, width)).to(ell.dtype)


@torch.no_grad()
def record_trajectories(denoiser, noise: torch.Tensor, lambdas: torch.Tensor, flow: bool,
                        extra_args: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Points x_j and x0 estimates D_j (K, B, ...) of ODE trajectories from ``noise`` along ``lambdas``."""
    sig = sigma_of_half_log_snr(lambdas.double(), flow)
    alpha = signal_scale(sig, flow)
    x = noise * sig[0].to(noise)
    xs, ds = [], []
    for j in range(len(lambdas)):
        d = denoiser(x, sig[j].to(x) * x.new_ones(x.shape[0]), **(extra_args or {}))
        check_finite(d, f"the model's x0 estimate at lambda {float(lambdas[j]):.3g}")
        xs.append(x)
        ds.append(d)
        if j + 1 == len(lambdas):
            break
        h = float(lambdas[j + 1] - lambdas[j])
        estimate = d.double() * -math.expm1(-h)
        if j > 0:  # exact integral of the line through the last two x0 estimates (exponential AB2)
            slope = (d.double() - ds[-2].double()) / float(lambdas[j] - lambdas[j - 1])
            estimate = estimate + slope * (h - 1 + math.exp(-h))
        x = (float(sig[j + 1] / sig[j]) * x.double() + float(alpha[j + 1]) * estimate).to(noise.dtype)
    return torch.stack(xs), torch.stack(ds)


@torch.no_grad()
def jacobian_diagonal(denoiser, x: torch.Tensor, sigma: torch.Tensor, flow: bool, probes: int, fd_scale: float,
                      generator: torch.Generator, extra_args: dict | None = None) -> torch.Tensor:
    """Hutchinson estimate (B, ...) of the diagonal of d(sigma eps)/dx, by central differences along +-1 probes."""
    alpha = float(signal_scale(sigma.double(), flow))
    step = fd_scale * float(sigma)
    total = torch.zeros_like(x, dtype=torch.float64)
    for _ in range(probes):
        v = (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1).to(x)
        both = denoiser(torch.cat([x + step * v, x - step * v]), sigma.to(x) * x.new_ones(2 * x.shape[0]),
                        **(extra_args or {}))
        plus, minus = both.double().chunk(2)
        total += 1 - alpha * v.double() * (plus - minus) / (2 * step)
    return total / probes


def estimate_ems(denoiser, model_sampling, noise: torch.Tensor, extra_args: dict | None = None, seed: int = 0,
                 **options: object) -> EMS:
    """EMS of ``denoiser(x, sigma_batch, **extra_args) -> x0`` from trajectories of ``noise`` (B, ...).

    ``options``: keys of :data:`DEFAULTS`. Costs grid_points x (1 + 2 probes) batched model calls.
    """
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown EMS option(s): {', '.join(sorted(unknown))}")
    opt = {**DEFAULTS, **options}
    if int(opt["grid_points"]) != opt["grid_points"] or opt["grid_points"] < 3:
        raise ValueError(f"EMS grid_points must be a whole number >= 3, got {opt['grid_points']}")
    if int(opt["probes"]) != opt["probes"] or opt["probes"] < 1:
        raise ValueError(f"EMS probes must be a whole number >= 1, got {opt['probes']}")
    if not 0 < float(opt["fd_scale"]) < 1:
        raise ValueError(f"EMS fd_scale must be in (0, 1), got {opt['fd_scale']}")
    for key in ("smooth", "sb_margin"):
        if not float(opt[key]) >= 0:
            raise ValueError(f"EMS {key} must be a number >= 0, got {opt[key]}")
    if noise.ndim < 1 or noise.shape[0] < 1:
        raise ValueError("EMS noise needs a batch dimension with at least one sample")
    check_finite(noise, "EMS noise")
    shape = stat_shape_for(tuple(noise.shape), str(opt["reduce"]))
    flow = is_flow(model_sampling)
    lo, hi = default_lambda_range(model_sampling)
    lo = lo if opt["lambda_min"] is None else float(opt["lambda_min"])
    hi = hi if opt["lambda_max"] is None else float(opt["lambda_max"])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"EMS needs finite lambda_min < lambda_max, got {lo}, {hi}")
    lambdas = torch.linspace(lo, hi, int(opt["grid_points"]), dtype=torch.float64)
    args = {k: v for k, v in (extra_args or {}).items() if k not in (MODEL_SAMPLING_KEY, "seed")}

    xs, ds = record_trajectories(denoiser, noise, lambdas, flow, args)
    sig = sigma_of_half_log_snr(lambdas, flow)
    alpha = signal_scale(sig, flow)
    gen = torch.Generator().manual_seed(int(seed))
    l_rows = [_pool(jacobian_diagonal(denoiser, xs[j], sig[j], flow, int(opt["probes"]), float(opt["fd_scale"]),
                                      gen, args), shape) for j in range(len(lambdas))]
    ell = smooth_ell(torch.stack(l_rows), lambdas, float(opt["smooth"]))
    bshape = (-1,) + (1,) * (xs.ndim - 1)
    a = alpha.reshape(bshape)
    f = ((1 - ell.unsqueeze(1)) * xs.double() - a * ds.double()) / a  # (K, B, ...)
    f_prime = torch.gradient(f, spacing=(lambdas,), dim=0, edge_order=2)[0]
    s_rows, b_rows = [], []
    for j in range(len(lambdas)):
        mean_f, mean_g = _pool(f[j], shape), _pool(f_prime[j], shape)
        cov = _pool((f[j] - mean_f) * (f_prime[j] - mean_g), shape)
        var = _pool((f[j] - mean_f) ** 2, shape)
        scale = _pool((xs[j].double() / a[j]) ** 2 + ds[j].double() ** 2, shape)  # size of the terms of f
        s_j = cov / (var + float(opt["ridge"]) * scale + 1e-30)
        s_rows.append(s_j)
        b_rows.append(mean_g - s_j * mean_f)
    trusted = (lambdas >= lambdas[0] + float(opt["sb_margin"])).double().reshape(-1, *[1] * len(shape))
    s_all, b_all = torch.stack(s_rows) * trusted, torch.stack(b_rows) * trusted
    meta = {"prediction": prediction_of(model_sampling), "smooth": float(opt["smooth"]),
            "sb_margin": float(opt["sb_margin"]),
            "reduce": str(opt["reduce"]), "samples": int(noise.shape[0]), "probes": int(opt["probes"]),
            "sample_shape": list(noise.shape[1:]), "seed": int(seed)}
    return EMS(lambdas, ell, s_all, b_all, meta)


def prediction_of(model_sampling) -> str:
    """'flow', 'v_prediction' or 'eps' for our model-sampling objects and ComfyUI's."""
    if is_flow(model_sampling):
        return "flow"
    named = getattr(model_sampling, "prediction", None)
    if named:
        return str(named)
    bases = {c.__name__ for c in type(model_sampling).__mro__}
    return "v_prediction" if "V_PREDICTION" in bases else "eps"


def save_ems(path: str | Path, ems: EMS, model_id: str, **info: object) -> Path:
    """Write ``ems`` as .safetensors; metadata: format, model id, prediction type, grid and ``info`` (JSON)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"EMS files are .safetensors, got {path.name!r}")
    meta = {**ems.meta, **info, "model_id": model_id, "lambda_min": float(ems.lambdas[0]),
            "lambda_max": float(ems.lambdas[-1]), "grid_points": len(ems.lambdas)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"lambdas": ems.lambdas, "l": ems.ell, "s": ems.s, "b": ems.b}
    save_file({k: v.double().contiguous() for k, v in tensors.items()}, str(path),
              metadata={"format": FORMAT, "meta": json.dumps(meta)})
    return path


def load_ems(path: str | Path, model_id: str | None = None, prediction: str | None = None) -> EMS:
    """Read an EMS file; ValueError if it is not one, or was computed for another model id / prediction type."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except Exception as exc:  # safetensors raises its own error types for non-files and bad headers
        raise ValueError(f"cannot read DPM-Solver-v3 statistics from {path}: {exc}") from exc
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    meta = json.loads(header.get("meta", "{}"))
    if model_id is not None and meta.get("model_id") != model_id:
        raise ValueError(f"{path} holds statistics of model {meta.get('model_id')!r}, not {model_id!r}; compute "
                         "them for this model (TurboSample DPM-Solver-v3 EMS)")
    if prediction is not None and meta.get("prediction") != prediction:
        raise ValueError(f"{path} was computed for a {meta.get('prediction')!r} model, this one is {prediction!r}")
    missing = {"lambdas", "l", "s", "b"} - set(tensors)
    if missing:
        raise ValueError(f"{path} lacks the tensor(s) {', '.join(sorted(missing))}")
    return EMS(tensors["lambdas"].double(), tensors["l"].double(), tensors["s"].double(), tensors["b"].double(),
               meta)
