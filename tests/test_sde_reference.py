"""Ancestral, SDE and consistency samplers against hand-written reference steps with the same noise.

Oracle: every reference below is written from the method's step equations (DPM-Solver++ and its SDE variants as
k-diffusion defines them, DDIM, ER-SDE-Solver-3, SEEDS-2/3, Heun++, LCM), not from this package's code, in the
variance-exploding (VE) view ``x = x0 + s eps``. A flow model ``x = (1 - sigma) x0 + sigma eps`` is the VE
process ``x / (1 - sigma)`` at the level ``s = sigma / (1 - sigma)`` (same signal-to-noise ratio), so every
exponential-integrator sampler must, on a flow model, equal the VE reference run on that view and scaled back by
``1 - sigma``; the samplers write the flow case with explicit alpha terms, a different code path (this tells the
flow/EPS formula mix-ups apart). The ancestral samplers re-noise flow models with ComfyUI's rectified-flow split,
written here from its definition: step to ``sigma_down = sigma_next (1 + (sigma_next / sigma - 1) eta)``, then
scale by ``(1 - sigma_next) / (1 - sigma_down)`` and add the noise that brings the level back to ``sigma_next``.

Models: the exact Gaussian denoisers of tests/analytic.py (float64). Schedules have uneven steps (multistep ratios
r != 1) and either stop above 0 (every step a full solver step) or end on 0.

Noise: ``SmoothNoise(sigma, sigma_next)`` is a smooth deterministic function of the interval per element, so a
sampler and its reference get the same values without sharing a call order, and asking for the noise of another
interval gives other values.

Tolerance: float64 with O(1) values and a few hundred operations per run, rounding is ~1e-14 (the flow <-> VE
conversions add a few ulps to the sigmas, which the smooth noise turns into ~1e-15 changes); ATOL = 1e-10 leaves
four orders of magnitude to that. A one-term mistake changes a step by a fraction of O(1) terms, far above it
(tests/mutations.py plants such mistakes; these tests catch every one aimed at them).
"""

from __future__ import annotations

import math

import pytest
import torch
from analytic import GaussianFlow, GaussianVE

from turbosample.samplers.model_sampling import DiscreteSampling, FlowSampling
from turbosample.samplers.registry import SAMPLERS

ATOL = 1e-10
EPS_LEVELS = [9.0, 4.5, 2.0, 1.1, 0.45, 0.2, 0.08]
FLOW_SIGMAS = [0.93, 0.8, 0.66, 0.45, 0.33, 0.17, 0.08]


class SmoothNoise:
    """z(a, b) = sqrt(2) sin(w1 a + w2 b + phase) per element: unit variance over the phases, smooth in (a, b)."""

    def __init__(self, shape: tuple[int, ...], seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.w1 = 3 + 5 * torch.rand(shape, generator=g, dtype=torch.float64)
        self.w2 = -(3 + 5 * torch.rand(shape, generator=g, dtype=torch.float64))
        self.phase = 2 * math.pi * torch.rand(shape, generator=g, dtype=torch.float64)

    def __call__(self, a, b) -> torch.Tensor:
        return math.sqrt(2) * torch.sin(self.w1 * float(a) + self.w2 * float(b) + self.phase)


class Case:
    """One model family: the sampler's view (model, sigmas, model_sampling) and the VE view of the reference."""

    def __init__(self, kind: str, to_zero: bool):
        self.flow = kind == "flow"
        grid = FLOW_SIGMAS if self.flow else EPS_LEVELS
        self.sigmas = torch.tensor(grid + ([0.0] if to_zero else []), dtype=torch.float64)
        self.gauss = GaussianFlow(0.3, 0.5) if self.flow else GaussianVE(0.3, 0.5)
        self.ms = FlowSampling() if self.flow else DiscreteSampling(prediction="eps")
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(3, 5, generator=g, dtype=torch.float64) * float(self.gauss.marginal_std(self.sigmas[0]))
        self.noise = SmoothNoise((3, 5))

    # ---- sigma <-> VE level, sample <-> VE sample
    def alpha(self, sigma: float) -> float:
        return 1 - sigma if self.flow else 1.0

    def level(self, sigma: float) -> float:
        return sigma / (1 - sigma) if self.flow else sigma

    def sigma_of(self, level: float) -> float:
        return level / (1 + level) if self.flow else level

    def ve_model(self, x: torch.Tensor, level: float) -> torch.Tensor:
        """The x0 estimate at VE level ``level`` of the VE sample ``x``."""
        sigma = self.sigma_of(level)
        return self.gauss.denoise(x * self.alpha(sigma), torch.tensor([sigma], dtype=torch.float64))

    def ve_noise(self, a: float, b: float) -> torch.Tensor:
        return self.noise(self.sigma_of(a), self.sigma_of(b))

    def levels(self) -> list[float]:
        return [self.level(float(s)) for s in self.sigmas]

    def run(self, name: str, **kw) -> torch.Tensor:
        info = SAMPLERS[name]
        if name != "heunpp2":  # the deterministic one takes no noise sampler
            kw["noise_sampler"] = self.noise
        return info.fn(self.gauss.denoise, self.x.clone(), self.sigmas, extra_args={"model_sampling": self.ms},
                       **{**info.options, **kw})

    def from_ve(self, x_ve: torch.Tensor) -> torch.Tensor:
        """The VE reference's end state back in the model's variable (x0 itself when the schedule ends on 0)."""
        return x_ve * self.alpha(float(self.sigmas[-1]))


def ve_ancestral(s: float, s_next: float, eta: float) -> tuple[float, float]:
    """k-diffusion's ancestral split of a VE step: (down, up) with down^2 + up^2 = s_next^2."""
    up = min(s_next, eta * math.sqrt(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2))
    return math.sqrt(s_next ** 2 - up ** 2), up


def rf_split(sigma: float, sigma_next: float, eta: float) -> tuple[float, float, float]:
    """Rectified-flow ancestral split: (sigma_down, scale, added noise std) landing exactly on sigma_next."""
    down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    scale = (1 - sigma_next) / (1 - down)
    return down, scale, math.sqrt(sigma_next ** 2 - (scale * down) ** 2)


def const_x0_step(x: torch.Tensor, x0: torch.Tensor, s: float, s_to: float) -> torch.Tensor:
    """The exact VE step for a constant x0 (DDIM): keep the noise part, rescaled to the new level."""
    return x0 + (s_to / s) * (x - x0)


def cases() -> list:
    return [pytest.param(kind, zero, id=f"{kind}-{'to0' if zero else 'open'}") for kind in ("eps", "flow")
            for zero in (False, True)]


def close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    torch.testing.assert_close(ours, reference, rtol=0, atol=ATOL)


# ---- ancestral samplers --------------------------------------------------------------------------------------------

def ancestral_reference(case: Case, eta: float, two_stage: bool) -> torch.Tensor:
    """Euler ancestral (``two_stage`` False) or DPM-Solver++(2S) ancestral down to sigma_down, then re-noising.

    EPS: VE steps with k-diffusion's split. Flow: the rectified-flow split; the deterministic part is the VE
    step on the flow model's VE view (Euler in sigma and the constant-x0 step are the same thing there).
    """
    x = case.x.clone()
    sig = [float(s) for s in case.sigmas]
    for s, s_next in zip(sig[:-1], sig[1:], strict=True):
        if case.flow:
            down, scale, added = rf_split(s, s_next, eta)
        else:
            (down, added), scale = ve_ancestral(s, s_next, eta), 1.0
        if s_next == 0:
            return case.gauss.denoise(x, torch.tensor([s], dtype=torch.float64))
        lv, lv_down, xv = case.level(s), case.level(down), x / case.alpha(s)
        d = case.ve_model(xv, lv)
        if two_stage:  # midpoint at the geometric mean level = the half-logSNR midpoint
            lv_mid = math.sqrt(lv * lv_down)
            d = case.ve_model(const_x0_step(xv, d, lv, lv_mid), lv_mid)
        x = case.alpha(down) * const_x0_step(xv, d, lv, lv_down)
        x = scale * x + added * case.noise(s, s_next)
    return x


@pytest.mark.parametrize("kind, to_zero", cases())
@pytest.mark.parametrize("eta", [1.0, 0.6])
@pytest.mark.parametrize("name, two_stage", [("euler_ancestral", False), ("dpmpp_2s_ancestral", True)])
def test_ancestral_samplers_match_the_reference(name, two_stage, eta, kind, to_zero):
    case = Case(kind, to_zero)
    close(case.run(name, eta=eta), ancestral_reference(case, eta, two_stage))


@pytest.mark.parametrize("kind, to_zero", cases())
def test_dpm_2_ancestral_matches_the_reference(kind, to_zero):
    """DPM-Solver-2 in model sigmas: Euler to the log-sigma midpoint of (sigma, sigma_down), its slope over the step."""
    case, eta = Case(kind, to_zero), 0.8
    x = case.x.clone()
    sig = [float(s) for s in case.sigmas]
    for s, s_next in zip(sig[:-1], sig[1:], strict=True):
        d = (x - case.gauss.denoise(x, torch.tensor([s], dtype=torch.float64))) / s
        if s_next == 0:
            x = x - s * d
            break
        if case.flow:
            down, scale, added = rf_split(s, s_next, eta)
        else:
            (down, added), scale = ve_ancestral(s, s_next, eta), 1.0
        mid = math.sqrt(s * down)
        x_mid = x + d * (mid - s)
        d_mid = (x_mid - case.gauss.denoise(x_mid, torch.tensor([mid], dtype=torch.float64))) / mid
        x = scale * (x + d_mid * (down - s)) + added * case.noise(s, s_next)
    close(case.run("dpm_2_ancestral", eta=eta), x)


# ---- DPM-Solver++ SDE ------------------------------------------------------------------------------------------------

def dpmpp_sde_reference(case: Case, eta: float, r: float) -> torch.Tensor:
    """k-diffusion's DPM-Solver++ SDE: an ancestral constant-x0 stage to the level r of the way in log level, then the
    full step with x0 = (1 - 1/2r) D + 1/2r D_mid; both stages' noise is asked for from the step's start."""
    lv = case.levels()
    x = case.x / case.alpha(float(case.sigmas[0]))
    for s, s_next in zip(lv[:-1], lv[1:], strict=True):
        d = case.ve_model(x, s)
        if s_next == 0:
            return d
        s_mid = s ** (1 - r) * s_next ** r
        down, up = ve_ancestral(s, s_mid, eta)
        x_mid = const_x0_step(x, d, s, down) + up * case.ve_noise(s, s_mid)
        d_mid = case.ve_model(x_mid, s_mid)
        down, up = ve_ancestral(s, s_next, eta)
        x0 = (1 - 1 / (2 * r)) * d + 1 / (2 * r) * d_mid
        x = const_x0_step(x, x0, s, down) + up * case.ve_noise(s, s_next)
    return case.from_ve(x)


@pytest.mark.parametrize("kind, to_zero", cases())
@pytest.mark.parametrize("eta, r", [(1.0, 0.5), (0.5, 0.4)])
def test_dpmpp_sde_matches_the_reference(eta, r, kind, to_zero):
    case = Case(kind, to_zero)
    close(case.run("dpmpp_sde", eta=eta, r=r), dpmpp_sde_reference(case, eta, r))


def multistep_sde_reference(case: Case, eta: float, order: int, solver: str) -> torch.Tensor:
    """DPM-Solver++(2M/3M) SDE in the VE view, with h = log(s / s_next) and a = (1 + eta) h:

    x_next = (s_next / s) e^(-eta h) x + (1 - e^(-a)) D + correction + s_next sqrt(1 - e^(-2 eta h)) z.

    The x0 estimates of earlier steps are a polynomial in u = (lambda - lambda_s) / h (lambda = -log s) through the
    newest 2 (2M) or 3 (3M) points: x0(u) = D + b u + c u^2. 2M midpoint adds (1 - e^(-a)) b / 2, 2M heun adds
    phi2 b, 3M adds phi2 b + (1/2 - phi2 / a) c, phi2 = 1 - (1 - e^(-a)) / a (k-diffusion's weights; a 3M run
    uses the 2M heun rule on its second step).
    """
    lv = case.levels()
    x = case.x / case.alpha(float(case.sigmas[0]))
    history: list[tuple[float, torch.Tensor]] = []  # (lambda, D), newest first
    for s, s_next in zip(lv[:-1], lv[1:], strict=True):
        d = case.ve_model(x, s)
        if s_next == 0:
            return d
        lam = -math.log(s)
        h = math.log(s / s_next)
        a = (1 + eta) * h
        phi2 = 1 - (1 - math.exp(-a)) / a
        out = (s_next / s) * math.exp(-eta * h) * x + (1 - math.exp(-a)) * d
        points = [(0.0, d)] + [((lam_j - lam) / h, d_j) for lam_j, d_j in history[:order - 1]]
        if len(points) == 3:
            u = torch.tensor([p[0] for p in points], dtype=torch.float64)
            vander = torch.stack([torch.ones_like(u), u, u * u], 1)
            coef = torch.linalg.solve(vander, torch.stack([p[1].flatten() for p in points]))
            b, c = coef[1].reshape(d.shape), coef[2].reshape(d.shape)
            out = out + phi2 * b + (0.5 - phi2 / a) * c
        elif len(points) == 2:
            b = (points[0][1] - points[1][1]) / (points[0][0] - points[1][0])
            out = out + (0.5 * (1 - math.exp(-a)) if solver == "midpoint" else phi2) * b
        x = out + s_next * math.sqrt(1 - math.exp(-2 * eta * h)) * case.ve_noise(s, s_next)
        history.insert(0, (lam, d))
    return case.from_ve(x)


@pytest.mark.parametrize("kind, to_zero", cases())
@pytest.mark.parametrize("eta", [1.0, 0.5])
@pytest.mark.parametrize("name, order, solver", [("dpmpp_2m_sde", 2, "midpoint"), ("dpmpp_2m_sde", 2, "heun"),
                                                 ("dpmpp_3m_sde", 3, "heun")])
def test_dpmpp_multistep_sde_matches_the_reference(name, order, solver, eta, kind, to_zero):
    case = Case(kind, to_zero)
    kw = {"solver_type": solver} if name == "dpmpp_2m_sde" else {}
    close(case.run(name, eta=eta, **kw), multistep_sde_reference(case, eta, order, solver))


# ---- DDIM / DDPM and LCM -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, to_zero", cases())
@pytest.mark.parametrize("name, eta", [("ddim", 0.0), ("ddim", 0.7), ("ddpm", 1.0)])
def test_ddim_family_matches_the_reference(name, eta, kind, to_zero):
    """x_next = D + sqrt(s_next^2 - c^2) eps + c z with c = eta s_next sqrt(1 - s_next^2 / s^2) (VE view)."""
    case = Case(kind, to_zero)
    lv = case.levels()
    x = case.x / case.alpha(float(case.sigmas[0]))
    for s, s_next in zip(lv[:-1], lv[1:], strict=True):
        d = case.ve_model(x, s)
        if s_next == 0:
            x = d
            break
        c = eta * s_next * math.sqrt(1 - (s_next / s) ** 2)
        x = d + math.sqrt(s_next ** 2 - c ** 2) * (x - d) / s + c * case.ve_noise(s, s_next)
    kw = {"eta": eta} if name == "ddim" else {}
    close(case.run(name, **kw), case.from_ve(x))


@pytest.mark.parametrize("kind, to_zero", cases())
def test_lcm_matches_the_reference(kind, to_zero):
    """Each step jumps to the x0 estimate and noises it to the next level (VE: D + s_next z)."""
    case = Case(kind, to_zero)
    lv = case.levels()
    x = case.x / case.alpha(float(case.sigmas[0]))
    for s, s_next in zip(lv[:-1], lv[1:], strict=True):
        x = case.ve_model(x, s) + s_next * case.ve_noise(s, s_next)
    close(case.run("lcm"), case.from_ve(x))


# ---- ER-SDE, SEEDS, Heun++ -----------------------------------------------------------------------------------------

def left_point_integral(fn, lo: float, hi: float, n: int) -> float:
    """sum_k fn(lo + k w) w, w = (hi - lo) / n, k = 0 .. n - 1: the rule ER-SDE-Solver's reference code uses."""
    w = (hi - lo) / n
    return sum(fn(lo + k * w) for k in range(n)) * w


@pytest.mark.parametrize("kind, to_zero", cases())
@pytest.mark.parametrize("s_noise", [1.0, 0.0])
def test_er_sde_matches_the_reference(s_noise, kind, to_zero):
    """ER-SDE-Solver-3 (Cui et al. 2023) in the VE level r with the noise scale f(r) = r (e^(r^0.3) + 10):

    x_t = (f_t / f_s) x_s + (1 - f_t / f_s) D + (r_t - r_s + f_t I_1) D' + ((r_t - r_s)^2 / 2 + f_t I_2) D''
          + sqrt(r_t^2 - r_s^2 f_t^2 / f_s^2) z,
    I_1 = int_(r_t)^(r_s) dr / f, I_2 = int_(r_t)^(r_s) (r - r_s) / f dr (200-point left rule), D' the backward
    difference of the x0 estimates in r (from the second step), D'' twice their second divided difference (from
    the third).
    """
    case = Case(kind, to_zero)
    lv = case.levels()

    def f(r: float) -> float:
        return r * (math.exp(r ** 0.3) + 10)

    x = case.x / case.alpha(float(case.sigmas[0]))
    ds: list[torch.Tensor] = []
    for i, (r_s, r_t) in enumerate(zip(lv[:-1], lv[1:], strict=True)):
        d = case.ve_model(x, r_s)
        ds.append(d)
        if r_t == 0:
            x = d
            break
        ratio = f(r_t) / f(r_s)
        out = ratio * x + (1 - ratio) * d
        if i >= 1:
            slope = (d - ds[-2]) / (r_s - lv[i - 1])
            i1 = left_point_integral(lambda r: 1 / f(r), r_t, r_s, 200)
            out = out + (r_t - r_s + f(r_t) * i1) * slope
            if i >= 2:
                older = (ds[-2] - ds[-3]) / (lv[i - 1] - lv[i - 2])
                second = 2 * (slope - older) / (r_s - lv[i - 2])
                i2 = left_point_integral(lambda r, r_s=r_s: (r - r_s) / f(r), r_t, r_s, 200)
                out = out + ((r_t - r_s) ** 2 / 2 + f(r_t) * i2) * second
        x = out + s_noise * math.sqrt(r_t ** 2 - (r_s * ratio) ** 2) * case.ve_noise(r_s, r_t)
    close(case.run("er_sde", s_noise=s_noise), case.from_ve(x))


def phi2(z: float) -> float:
    """Weight of a linear-in-lambda x0 slope over an exponential-integrator step of size z: 1 - (1 - e^-z) / z."""
    return 1 - (1 - math.exp(-z)) / z


def seeds_reference(case: Case, eta: float, fractions: tuple[float, ...]) -> torch.Tensor:
    """SEEDS-2 (fractions (r,)) / SEEDS-3 ((r1, r2)) in the VE view, with a = (1 + eta) h, h = log(s / s_next).

    A stage at fraction c of the step: x_c = (s_c / s) e^(-eta c h) x + (1 - e^(-c a)) D + [slope term] + s_c w_c,
    where w is an Ornstein-Uhlenbeck noise carried from stage to stage, w_c = e^(-eta (c - c_prev) h) w_prev +
    sqrt(1 - e^(-2 eta (c - c_prev) h)) z(prev, c). SEEDS-2 ends with x0 = D + (D_1 - D) / 2r; SEEDS-3's second
    stage adds (r2 / r1) phi2(r2 a) (D_1 - D), its end phi2(a) / r2 (D_2 - D).
    """
    lv = case.levels()
    x = case.x / case.alpha(float(case.sigmas[0]))
    for s, s_next in zip(lv[:-1], lv[1:], strict=True):
        d = case.ve_model(x, s)
        if s_next == 0:
            return d
        h = math.log(s / s_next)
        a = (1 + eta) * h
        w, c_prev, s_prev = torch.zeros_like(x), 0.0, s
        estimates = [d]
        for k, c in enumerate([*fractions, 1.0]):
            s_c = s * math.exp(-c * h)
            w = math.exp(-eta * (c - c_prev) * h) * w + math.sqrt(1 - math.exp(-2 * eta * (c - c_prev) * h)) \
                * case.ve_noise(s_prev, s_c if c < 1 else s_next)
            base = (s_c / s) * math.exp(-eta * c * h) * x + (1 - math.exp(-c * a)) * d
            if len(fractions) == 1 and c == 1:  # SEEDS-2 end: a midpoint x0
                base = (s_c / s) * math.exp(-eta * h) * x + (1 - math.exp(-a)) * (
                    d + (estimates[1] - d) / (2 * fractions[0]))
            elif len(fractions) == 2 and k == 1:
                base = base + (fractions[1] / fractions[0]) * phi2(fractions[1] * a) * (estimates[1] - d)
            elif len(fractions) == 2 and c == 1:
                base = base + phi2(a) / fractions[1] * (estimates[2] - d)
            if c == 1:
                x = base + s_next * w
            else:
                estimates.append(case.ve_model(base + s_c * w, s_c))
            c_prev, s_prev = c, s_c
    return case.from_ve(x)


@pytest.mark.parametrize("kind, to_zero", cases())
@pytest.mark.parametrize("eta", [1.0, 0.4])
@pytest.mark.parametrize("name, fractions", [("seeds_2", (0.5,)), ("seeds_3", (1 / 3, 2 / 3))])
def test_seeds_match_the_reference(name, fractions, eta, kind, to_zero):
    case = Case(kind, to_zero)
    close(case.run(name, eta=eta), seeds_reference(case, eta, fractions))


@pytest.mark.parametrize("kind, to_zero", cases())
def test_heunpp2_matches_the_reference(kind, to_zero):
    """Heun++: Euler slopes at sigma_i, sigma_(i+1) (from the Euler point) and sigma_(i+2) (one more Euler step),
    weighted sigma_(i+1) / 3 sigma_0 and sigma_(i+2) / 3 sigma_0, the rest on the first; with one sigma left it is
    Heun with weight sigma_(i+1) / 2 sigma_0 on the second slope; the last step is Euler."""
    case = Case(kind, to_zero)
    sig = [float(s) for s in case.sigmas]

    def slope(x, s):
        return (x - case.gauss.denoise(x, torch.tensor([s], dtype=torch.float64))) / s

    x = case.x.clone()
    for i in range(len(sig) - 1):
        d0 = slope(x, sig[i])
        x1 = x + d0 * (sig[i + 1] - sig[i])
        if i + 1 == len(sig) - 1:
            x = x1
            break
        d1 = slope(x1, sig[i + 1])
        if i + 2 == len(sig) - 1:
            w1 = sig[i + 1] / (2 * sig[0])
            x = x + ((1 - w1) * d0 + w1 * d1) * (sig[i + 1] - sig[i])
            continue
        d2 = slope(x1 + d1 * (sig[i + 2] - sig[i + 1]), sig[i + 2])
        w1, w2 = sig[i + 1] / (3 * sig[0]), sig[i + 2] / (3 * sig[0])
        x = x + ((1 - w1 - w2) * d0 + w1 * d1 + w2 * d2) * (sig[i + 1] - sig[i])
    close(case.run("heunpp2"), x)


def test_references_tell_the_noise_intervals_apart():
    """Guard for the oracle itself: a sampler that asked for another interval's noise would get other values."""
    noise = SmoothNoise((3, 5))
    assert (noise(0.8, 0.6) - noise(0.8, 0.7)).abs().max() > 0.05
    assert (noise(0.8, 0.6) - noise(0.6, 0.8)).abs().max() > 0.05


# ---- SA-Solver -----------------------------------------------------------------------------------------------------

def sa_weights(nodes: list[float], lam_s: float, lam_t: float, tau: float) -> list[float]:
    """w_j = c int_(lam_s)^(lam_t) e^(-c (lam_t - lam)) l_j(lam) d lam, c = 1 + tau^2, l_j the Lagrange basis on
    ``nodes``; by 24-point Gauss-Legendre quadrature (exact to rounding for these smooth integrands)."""
    import numpy as np

    c = 1 + tau * tau
    u, w = np.polynomial.legendre.leggauss(24)
    lam = (lam_s + lam_t) / 2 + (lam_t - lam_s) / 2 * u
    weight = (lam_t - lam_s) / 2 * w * c * np.exp(-c * (lam_t - lam))
    out = []
    for j, node in enumerate(nodes):
        basis = np.prod([(lam - other) / (node - other) for k, other in enumerate(nodes) if k != j], axis=0)
        out.append(float(np.sum(weight * basis)))
    return out


def sa_solver_reference(case: Case, tau_of, pece: bool) -> torch.Tensor:
    """SA-Solver (Xue et al. 2023), VE view: a step from level s to t with x0 estimates D_j at half-logSNRs lam_j is
    x_t = (t / s) e^(-tau^2 h) x_s + sum_j w_j D_j + t sqrt(1 - e^(-2 tau^2 h)) z, tau = tau(sigma_next).
    Predictor: the newest min(3, known) estimates; once the estimate at t exists the step is redone (corrector) with
    the newest min(4, known) ones including it and the same noise; PECE evaluates the corrected state again. Towards
    a final sigma of 0 the orders drop to the steps left (predictor: steps left - 1)."""
    lv = case.levels()
    steps, to_zero = len(lv) - 1, lv[-1] == 0
    lams = [-math.log(v) if v > 0 else math.inf for v in lv]
    x = x_pred = case.x / case.alpha(float(case.sigmas[0]))
    history: list[torch.Tensor] = []
    tau, noise = 0.0, None

    def step(x_s, i_s, i_t, k, tau):
        """From grid point i_s to i_t with the newest k estimates (the newest is at len(history) - 1)."""
        h = lams[i_t] - lams[i_s]
        newest = len(history) - 1
        weights = sa_weights(lams[newest - k + 1:newest + 1], lams[i_s], lams[i_t], tau)
        out = (lv[i_t] / lv[i_s]) * math.exp(-tau * tau * h) * x_s
        return out + sum(w * d for w, d in zip(weights, history[-k:], strict=True))

    for i in range(steps):
        d = case.ve_model(x_pred, lv[i])
        history.append(d)
        k_corr = 0 if i == 0 or (lv[i + 1] == 0 and not pece) else min(4, len(history))
        k_pred = min(3, len(history))
        if to_zero:
            k_corr, k_pred = min(k_corr, steps - i), min(k_pred, steps - 1 - i)
        if k_corr:
            x = step(x, i - 1, i, k_corr, tau) + (noise if noise is not None else 0)
            if pece:
                history[-1] = case.ve_model(x, lv[i])
        else:
            x = x_pred
        if lv[i + 1] == 0:
            return history[-1]
        tau = tau_of(case.sigma_of(lv[i + 1]))
        noise = None
        if tau > 0:
            h = lams[i + 1] - lams[i]
            noise = lv[i + 1] * math.sqrt(1 - math.exp(-2 * tau * tau * h)) * case.ve_noise(lv[i], lv[i + 1])
        x_pred = step(x, i, i + 1, k_pred, tau) + (noise if noise is not None else 0)
    return case.from_ve(x_pred)


@pytest.mark.parametrize("kind, to_zero", cases())
@pytest.mark.parametrize("name", ["sa_solver", "sa_solver_pece"])
def test_sa_solver_matches_the_reference(name, kind, to_zero):
    """tau varies with sigma (so the step's tau must be the one at sigma_next), and is 0 on the last interval."""
    case = Case(kind, to_zero)
    top = float(case.sigmas[0])

    def tau_of(sigma: float) -> float:
        return 0.0 if float(sigma) < 0.1 else 0.4 + 0.8 * float(sigma) / top

    ours = case.run(name, tau_func=tau_of)
    close(ours, sa_solver_reference(case, tau_of, name.endswith("pece")))
