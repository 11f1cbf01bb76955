"""CFG++ samplers, RES multistep (ancestral), gradient estimation, FlowTurbo's blocks and iPNDM against hand-written
step formulas on the exact Gaussian models, with every correction term active.

Oracles:

* CFG++ (Chung et al. 2024): the DDIM step with the guided x0 and the *unconditional* noise estimate,
  ``x_t = alpha_t D_g + sigma_t (x - alpha_s D_u) / sigma_s``, written in the model's own variables (alpha = 1 for
  EPS/V, 1 - sigma for flow). The multistep corrections follow ComfyUI's conventions, which samplers/cfg_pp.py
  documents: DPM-Solver++(2M) CFG++ adds ``(1 - e^-h) / 2r (D_g - previous D_u)``, RES multistep weighs D_u in its
  second-order data term, both with h and r from -log(sigma) of the model's sigmas. The cond and uncond branches
  are two Gaussians with different means, so D_g != D_u and every CFG++ term matters.
* Gradient estimation (Permenter & Yuan 2024): Euler in sigma with the direction ``d_i + (gamma - 1)(d_i - d_(i-1))``.
* FlowTurbo (Zhao et al. 2024): the H, P and R blocks as written in samplers/flowturbo.py's docstring (checked there
  against the official code), with a refiner that is a fixed linear map of (x, sigma, v): a known non-zero output,
  so the sign and the arguments of both refiner calls matter.
* iPNDM: Adams-Bashforth on an equal-step sigma grid, with weights derived here by integrating the Lagrange basis
  exactly (rational arithmetic); iPNDM-v at order 2 is the variable-step Adams-Bashforth-2 rule.

Tolerance: float64 throughout; values are O(1) and runs take a few hundred operations, so rounding stays ~1e-14.
ATOL = 1e-10 leaves four orders of magnitude to that; a one-term mistake changes a step by a fraction of O(1) terms,
far above it (tests/mutations.py plants such mistakes; these tests catch every one aimed at them).
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from analytic import GaussianFlow, GaussianVE

from turbosample.samplers.flowturbo import sample_flowturbo
from turbosample.samplers.model_sampling import DiscreteSampling, FlowSampling
from turbosample.samplers.registry import SAMPLERS

ATOL = 1e-10
COND_MEAN, UNCOND_MEAN, STD = 0.6, -0.2, 0.5
EPS_SIGMAS = [12.0, 5.5, 3.0, 1.4, 0.7, 0.3, 0.12]
FLOW_SIGMAS = [0.94, 0.82, 0.64, 0.5, 0.33, 0.2, 0.09]


def close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    torch.testing.assert_close(ours, reference, rtol=0, atol=ATOL)


class SmoothNoise:
    """z(a, b) = sqrt(2) sin(w1 a + w2 b + phase): a deterministic, smooth noise of the interval (a, b)."""

    def __init__(self, shape: tuple[int, ...]):
        g = torch.Generator().manual_seed(7)
        self.w1 = 3 + 5 * torch.rand(shape, generator=g, dtype=torch.float64)
        self.w2 = -(3 + 5 * torch.rand(shape, generator=g, dtype=torch.float64))
        self.phase = 2 * math.pi * torch.rand(shape, generator=g, dtype=torch.float64)

    def __call__(self, a, b) -> torch.Tensor:
        return math.sqrt(2) * torch.sin(self.w1 * float(a) + self.w2 * float(b) + self.phase)


class Guided:
    """A CFG denoiser over two exact Gaussian branches (ComfyUI's post-CFG hook protocol), in float64."""

    def __init__(self, flow: bool, cfg: float):
        family = GaussianFlow if flow else GaussianVE
        self.cond, self.uncond, self.cfg = family(COND_MEAN, STD), family(UNCOND_MEAN, STD), cfg

    def branches(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(D_g, D_u) at a scalar sigma."""
        s = torch.tensor([sigma], dtype=torch.float64)
        c, u = self.cond.denoise(x, s), self.uncond.denoise(x, s)
        return u + self.cfg * (c - u), u

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict | None = None, **_) -> torch.Tensor:
        s = sigma.reshape(-1)
        c, u = self.cond.denoise(x, s), self.uncond.denoise(x, s)
        out = u + self.cfg * (c - u)
        for fn in (model_options or {}).get("sampler_post_cfg_function", []):
            out = fn({"denoised": out, "cond_denoised": c, "uncond_denoised": u, "sigma": sigma, "input": x,
                      "cond_scale": self.cfg, "model_options": model_options})
        return out


class Case:
    def __init__(self, kind: str, to_zero: bool, cfg: float = 1.7):
        self.flow = kind == "flow"
        grid = FLOW_SIGMAS if self.flow else EPS_SIGMAS
        self.sig = grid + ([0.0] if to_zero else [])
        self.sigmas = torch.tensor(self.sig, dtype=torch.float64)
        self.ms = FlowSampling() if self.flow else DiscreteSampling(prediction="eps")
        self.model = Guided(self.flow, cfg)
        g = torch.Generator().manual_seed(2)
        self.x = torch.randn(3, 6, generator=g, dtype=torch.float64) * (1.0 if self.flow else grid[0])
        self.noise = SmoothNoise((3, 6))

    def alpha(self, sigma: float) -> float:
        return 1 - sigma if self.flow else 1.0

    def run(self, name: str, **kw) -> torch.Tensor:
        return SAMPLERS[name].fn(self.model, self.x.clone(), self.sigmas, extra_args={"model_sampling": self.ms},
                                 **kw)

    def split(self, s: float, s_next: float, eta: float) -> tuple[float, float, float]:
        """(sigma_down, rescale, renoise std) of an ancestral step (k-diffusion's for EPS, rectified flow's)."""
        if self.flow:
            down = s_next * (1 + (s_next / s - 1) * eta)
            scale = (1 - s_next) / (1 - down)
            return down, scale, math.sqrt(s_next ** 2 - (scale * down) ** 2)
        up = min(s_next, eta * math.sqrt(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2))
        return math.sqrt(s_next ** 2 - up ** 2), 1.0, up

    def half_log_snr(self, sigma: float) -> float:
        return math.log((1 - sigma) / sigma) if self.flow else -math.log(sigma)

    def sigma_of(self, lam: float) -> float:
        return 1 / (1 + math.exp(lam)) if self.flow else math.exp(-lam)


def cfg_pp_step(case: Case, x: torch.Tensor, guided: torch.Tensor, uncond: torch.Tensor, s: float,
                s_to: float) -> torch.Tensor:
    """CFG++'s DDIM step: the guided x0 at the new level plus the unconditional noise estimate scaled to it."""
    eps_u = (x - case.alpha(s) * uncond) / s
    return case.alpha(s_to) * guided + s_to * eps_u


def cases() -> list:
    return [pytest.param(kind, zero, id=f"{kind}-{'to0' if zero else 'open'}") for kind in ("eps", "flow")
            for zero in (False, True)]


# ---- CFG++ ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, to_zero", cases())
def test_euler_cfg_pp_is_the_papers_ddim_step(kind, to_zero):
    case = Case(kind, to_zero)
    x = case.x.clone()
    for s, s_next in zip(case.sig[:-1], case.sig[1:], strict=True):
        g, u = case.model.branches(x, s)
        x = g if s_next == 0 else cfg_pp_step(case, x, g, u, s, s_next)
    close(case.run("euler_cfg_pp"), x)


@pytest.mark.parametrize("kind, to_zero", cases())
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_euler_ancestral_cfg_pp_splits_the_noise_in_the_ve_level(eta, kind, to_zero):
    """x_t = alpha_t (D_g + down eps_u + up z): the ancestral split of the VE-equivalent level sigma / alpha."""
    case = Case(kind, to_zero)
    x = case.x.clone()
    for s, s_next in zip(case.sig[:-1], case.sig[1:], strict=True):
        g, u = case.model.branches(x, s)
        if s_next == 0:
            x = g
            break
        level, level_next = s / case.alpha(s), s_next / case.alpha(s_next)
        up = min(level_next, eta * math.sqrt(level_next ** 2 * (1 - (level_next / level) ** 2)))
        down = math.sqrt(level_next ** 2 - up ** 2)
        eps_u = (x - case.alpha(s) * u) / s
        x = case.alpha(s_next) * (g + down * eps_u + up * case.noise(s, s_next))
    close(case.run("euler_ancestral_cfg_pp", eta=eta, noise_sampler=case.noise), x)


@pytest.mark.parametrize("kind, to_zero", cases())
def test_dpmpp_2m_cfg_pp_adds_the_second_order_term_with_the_previous_uncond(kind, to_zero):
    case = Case(kind, to_zero)
    x, previous_u = case.x.clone(), None
    sig = case.sig
    for i, (s, s_next) in enumerate(zip(sig[:-1], sig[1:], strict=True)):
        g, u = case.model.branches(x, s)
        if s_next == 0:
            x = g
            break
        step = cfg_pp_step(case, x, g, u, s, s_next)
        if previous_u is not None:
            h = math.log(s / s_next)
            r = math.log(sig[i - 1] / s) / h
            step = step + (1 - math.exp(-h)) / (2 * r) * (g - previous_u)
        x, previous_u = step, u
    close(case.run("dpmpp_2m_cfg_pp"), x)


@pytest.mark.parametrize("kind, to_zero", cases())
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_dpmpp_2s_ancestral_cfg_pp_shifts_each_stage_by_its_own_uncond(eta, kind, to_zero):
    """Both stages are CFG++ steps from x (to the half-logSNR midpoint of (sigma, sigma_down), then to sigma_down),
    each with its own call's (D_g, D_u); then the ancestral re-noising."""
    case = Case(kind, to_zero)
    x = case.x.clone()
    for s, s_next in zip(case.sig[:-1], case.sig[1:], strict=True):
        g, u = case.model.branches(x, s)
        if s_next == 0:
            x = g
            break
        down, scale, added = case.split(s, s_next, eta)
        mid = case.sigma_of((case.half_log_snr(s) + case.half_log_snr(down)) / 2)
        g_mid, u_mid = case.model.branches(cfg_pp_step(case, x, g, u, s, mid), mid)
        x = scale * cfg_pp_step(case, x, g_mid, u_mid, s, down) + added * case.noise(s, s_next)
    close(case.run("dpmpp_2s_ancestral_cfg_pp", eta=eta, noise_sampler=case.noise), x)


def res_multistep_reference(case: Case, eta: float, cfg_pp: bool) -> torch.Tensor:
    """RES second-order multistep (Zhang et al. 2023) in t = -log(sigma) of the model's sigmas, ComfyUI's form.

    Step from sigma to sigma_down (h = log(sigma / sigma_down)) of ``shifted`` (x, or for CFG++ x + alpha (D_g - D_u)):
    first step, or any step whose earlier node coincides: ``(sigma_down / sigma) shifted + (1 - sigma_down / sigma)
    D_g``; later ``e^-h shifted + h ((phi1 - phi2 / c2) D + phi2 / c2 D_prev)`` with phi1 = (1 - e^-h) / h,
    phi2 = (1 - phi1) / h, c2 = log(previous sigma_down / previous sigma) / h and D = D_u (= D_g without CFG++).
    """
    x, previous = case.x.clone(), None
    sig = case.sig
    for i, (s, s_next) in enumerate(zip(sig[:-1], sig[1:], strict=True)):
        g, u = case.model.branches(x, s)
        if not cfg_pp:
            u = g
        if s_next == 0:
            x = g
            break
        down, scale, added = case.split(s, s_next, eta) if eta else (s_next, 1.0, 0.0)
        shifted = x + case.alpha(s) * (g - u) if cfg_pp else x
        h = math.log(s / down)
        if previous is None:
            x = (down / s) * shifted + (1 - down / s) * g
        else:
            c2 = math.log(previous[1] / sig[i - 1]) / h
            phi1 = (1 - math.exp(-h)) / h
            phi2 = (1 - phi1) / h
            x = math.exp(-h) * shifted + h * ((phi1 - phi2 / c2) * u + phi2 / c2 * previous[0])
        x = scale * x + added * case.noise(s, s_next)
        previous = (u, down)
    return x


@pytest.mark.parametrize("kind, to_zero", cases())
@pytest.mark.parametrize("name, eta, cfg_pp", [("res_multistep_cfg_pp", 0.0, True),
                                               ("res_multistep_ancestral", 1.0, False),
                                               ("res_multistep_ancestral", 0.5, False),
                                               ("res_multistep_ancestral_cfg_pp", 1.0, True)])
def test_res_multistep_family_matches_the_reference(name, eta, cfg_pp, kind, to_zero):
    case = Case(kind, to_zero)
    kw = {"eta": eta, "noise_sampler": case.noise} if "ancestral" in name else {}
    close(case.run(name, **kw), res_multistep_reference(case, eta, cfg_pp))


@pytest.mark.parametrize("kind, to_zero", cases())
@pytest.mark.parametrize("name", ["gradient_estimation", "gradient_estimation_cfg_pp"])
def test_gradient_estimation_extrapolates_the_direction(name, kind, to_zero):
    """x_next = x' + (sigma_next - sigma)(d + (gamma - 1)(d - d_prev)), d = (x' - D_g) / sigma, gamma = 2, with
    x' = x, or x + alpha (D_g - D_u) for CFG++ (so that the Euler step re-noises with the uncond estimate)."""
    case, gamma = Case(kind, to_zero), 2.0
    x, previous = case.x.clone(), None
    for s, s_next in zip(case.sig[:-1], case.sig[1:], strict=True):
        g, u = case.model.branches(x, s)
        if s_next == 0:
            x = g
            break
        shifted = x + case.alpha(s) * (g - u) if name.endswith("cfg_pp") else x
        d = (shifted - g) / s
        direction = d if previous is None else d + (gamma - 1) * (d - previous)
        x, previous = shifted + (s_next - s) * direction, d
    close(case.run(name), x)


def test_guided_and_unguided_estimates_differ_in_these_cases():
    """Guard for the oracle: the CFG++ terms (D_g - D_u) are O(1) here, not zero."""
    for kind in ("eps", "flow"):
        case = Case(kind, False)
        g, u = case.model.branches(case.x, case.sig[2])
        assert float((g - u).abs().min()) > 0.3


# ---- FlowTurbo -----------------------------------------------------------------------------------------------------

class LinearRefiner:
    """r(x, sigma, v) = 0.3 v - 0.2 x + 0.1 sigma: a known, non-zero velocity correction."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return 0.3 * v - 0.2 * x + 0.1 * sigma.reshape(-1, *([1] * (x.ndim - 1)))


def flowturbo_reference(model, refiner, x: torch.Tensor, sig: list[float], blocks: str) -> torch.Tensor:
    """H: Heun, pass d'. P: the passed velocity as d, one call at the end, Heun average, pass d'. R: u = passed,
    d = u + r(x, s_i, u), d' = d + r(x + dt d, s_(i+1), u), Heun average, pass d. A step onto 0 is Euler."""

    def velocity(y, s):
        return (y - model(y, torch.full((y.shape[0],), s, dtype=y.dtype))) / s

    passed = None
    for i, block in enumerate(blocks):
        s, s_next = sig[i], sig[i + 1]
        dt = s_next - s
        ones = torch.ones(x.shape[0], dtype=x.dtype)
        if block == "R":
            u = passed
            d = u + refiner(x, s * ones, u)
        else:
            d = velocity(x, s) if block == "H" else passed
        x_euler = x + dt * d
        if s_next == 0:
            return x_euler
        d_next = d + refiner(x_euler, s_next * ones, u) if block == "R" else velocity(x_euler, s_next)
        passed = d if block == "R" else d_next
        x = x + dt / 2 * (d + d_next)
    return x


@pytest.mark.parametrize("to_zero", [False, True], ids=["open", "to0"])
@pytest.mark.parametrize("schedule, blocks", [("H1P2R3", "HPPRRR"), ("H2R2P2", "HHRRPP"), ("H1R1H1R3", "HRHRRR")])
def test_flowturbo_blocks_with_a_known_refiner_match_the_hand_written_steps(schedule, blocks, to_zero):
    model = GaussianFlow(0.3, 0.5).denoise
    sig = [0.95, 0.8, 0.62, 0.47, 0.31, 0.18] + [0.0 if to_zero else 0.07]
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    refiner = LinearRefiner()
    ours = sample_flowturbo(model, x.clone(), torch.tensor(sig, dtype=torch.float64), schedule=schedule,
                            refiner=refiner, compile_blocks=False)
    calls = refiner.calls
    reference = flowturbo_reference(model, LinearRefiner(), x.clone(), sig, blocks)
    close(ours, reference)
    assert calls == 2 * blocks.count("R") - int(to_zero and blocks[-1] == "R")
    # the refiner's share is not small: a zero refiner lands elsewhere
    zero = sample_flowturbo(model, x.clone(), torch.tensor(sig, dtype=torch.float64), schedule=schedule,
                            refiner=lambda y, s, v: torch.zeros_like(y), compile_blocks=False)
    assert (zero - ours).abs().max() > 1e-2


# ---- iPNDM / iPNDM-v -----------------------------------------------------------------------------------------------

def adams_bashforth(order: int) -> list[Fraction]:
    """AB weights (newest first) for equal steps: integral over [0, 1] of the Lagrange basis on nodes 0, -1, ..."""
    weights = []
    for j in range(order):
        poly = [Fraction(1)]  # coefficients in u, lowest first
        for m in range(order):
            if m != j:  # times (u + m) / (m - j): zero at the node -m, one at the node -j
                factor = [Fraction(m, m - j), Fraction(1, m - j)]
                poly = [sum(poly[a] * factor[k - a] for a in range(len(poly)) if 0 <= k - a < 2)
                        for k in range(len(poly) + 1)]
        weights.append(sum(c / (k + 1) for k, c in enumerate(poly)))
    return weights


def test_adams_bashforth_weights_are_the_textbook_ones():
    assert adams_bashforth(2) == [Fraction(3, 2), Fraction(-1, 2)]
    assert adams_bashforth(4) == [Fraction(55, 24), Fraction(-59, 24), Fraction(37, 24), Fraction(-9, 24)]


@pytest.mark.parametrize("name, max_order", [("ipndm", 4), ("ipndm_v", 3)])
@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_ipndm_on_equal_steps_is_adams_bashforth_of_rising_order(name, max_order, kind):
    """Equal sigma steps: step k (0-based) uses AB of order min(k + 1, max_order) on the derivatives dx/dsigma.

    (iPNDM-v only up to order 3: its order-4 rule, diff-sampler's as ComfyUI has it, weighs equal steps
    (57, -65, 43, -11) / 24, not AB4's (55, -59, 37, -9) / 24.)
    """
    flow = kind == "flow"
    gauss = GaussianFlow(0.3, 0.5) if flow else GaussianVE(0.3, 0.5)
    sig = [0.9 - 0.12 * k for k in range(7)] if flow else [6.0 - 0.8 * k for k in range(7)]
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ours = SAMPLERS[name].fn(gauss.denoise, x.clone(), torch.tensor(sig, dtype=torch.float64), max_order=max_order)
    history = []
    for k in range(len(sig) - 1):
        history.insert(0, (x - gauss.denoise(x, torch.tensor([sig[k]], dtype=torch.float64))) / sig[k])
        weights = adams_bashforth(min(k + 1, max_order))
        x = x + (sig[k + 1] - sig[k]) * sum(float(w) * d for w, d in zip(weights, history, strict=False))
    close(ours, x)


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_ipndm_v_order_two_is_variable_step_adams_bashforth(kind):
    """Integrating the line through the last two derivatives over the next (uneven) step:
    x_next = x + h_n (d_n + h_n / (2 h_(n-1)) (d_n - d_(n-1)))."""
    flow = kind == "flow"
    gauss = GaussianFlow(0.3, 0.5) if flow else GaussianVE(0.3, 0.5)
    sig = FLOW_SIGMAS if flow else EPS_SIGMAS
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ours = SAMPLERS["ipndm_v"].fn(gauss.denoise, x.clone(), torch.tensor(sig, dtype=torch.float64), max_order=2)
    previous = None
    for k in range(len(sig) - 1):
        d = (x - gauss.denoise(x, torch.tensor([sig[k]], dtype=torch.float64))) / sig[k]
        h = sig[k + 1] - sig[k]
        slope = 0 if previous is None else (d - previous) / (sig[k] - sig[k - 1])
        x, previous = x + h * (d + h / 2 * slope), d
    close(ours, x)


@pytest.mark.parametrize("max_order", [2, 3])
def test_ipndm_v_integrates_a_linear_derivative_exactly_on_an_uneven_grid(max_order):
    """iPNDM-v's variable-step weights up to order 3 are AB2's plus a multiple of the second difference, which
    vanishes on lines, so with dx/dsigma = a + b sigma (whatever x) every step after the first (Euler) one is exact:
    the end state is the Euler first step plus the exact integral over the rest. Rounding: O(1) values, ~1e-15.

    (Not order 4: diff-sampler's order-4 rule, which ours reproduces as ComfyUI has it, gives weights that do not
    even sum to 1 on uneven steps, e.g. 0.9951 for steps 0.7, 1.6, 2.3, 4.5.)"""
    a, b = 0.7, -1.3
    sig = [14.0, 9.5, 6.0, 4.4, 2.1, 1.2, 0.5, 0.3]

    def model(x, sigma, **_):
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return x - s * (a + b * s)

    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    ours = SAMPLERS["ipndm_v"].fn(model, x.clone(), torch.tensor(sig, dtype=torch.float64), max_order=max_order)

    def integral(lo: float, hi: float) -> float:
        return a * (hi - lo) + b * (hi ** 2 - lo ** 2) / 2

    expected = x + (a + b * sig[0]) * (sig[1] - sig[0]) + integral(sig[1], sig[-1])
    close(ours, expected)
