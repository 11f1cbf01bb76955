"""SA-Solver: weights, the tau = 0 ODE solver (convergence order, diffusers' SASolverScheduler), the SDE's samples.

The SDE steps (tau > 0, PEC and PECE) are checked exactly against a hand-written reference with the same noise in
tests/test_sde_reference.py.
"""

import math

import numpy as np
import pytest
import torch
from analytic import GaussianFlow, GaussianVE

from turbosample.samplers.model_sampling import DiscreteSampling, FlowSampling
from turbosample.samplers.noise import seeded_noise
from turbosample.samplers.noise_sources import BrownianNoise
from turbosample.samplers.registry import SAMPLERS
from turbosample.samplers.sa_solver import adams_weights, exp_moments, percent_to_sigma
from turbosample.samplers.schedulers import compute_sigmas

NAMES = ("sa_solver", "sa_solver_pece")


def quad(fn, a: float, b: float, n: int = 20001) -> float:
    """Composite Simpson's rule (n odd)."""
    v = np.linspace(a, b, n)
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return float((b - a) / (n - 1) / 3 * (w * fn(v)).sum())


@pytest.mark.parametrize("a", [0.0, 1e-3, 0.3, 0.999, 1.0, 2.5, 12.0])
def test_exp_moments_are_the_integrals(a):
    for p, m in enumerate(exp_moments(a, 6)):
        assert m == pytest.approx(quad(lambda v, p=p: np.exp(a * v) * v ** p, -1.0, 0.0), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("tau", [0.0, 0.7, 1.0])
def test_adams_weights_integrate_polynomials_of_degree_below_the_order_exactly(tau):
    nodes, lam_s, lam_t = [-1.3, -0.9, -0.4, 0.2], -0.4, 0.2  # a corrector: the last node is lam_t
    c = 1 + tau * tau
    w = adams_weights(nodes, lam_s, lam_t, tau)
    for degree in range(4):
        q = np.poly1d(np.random.default_rng(degree).normal(size=degree + 1))
        exact = c * quad(lambda lam, q=q: np.exp(-c * (lam_t - lam)) * q(lam), lam_s, lam_t)
        assert sum(wj * q(n) for wj, n in zip(w, nodes, strict=True)) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def ode_error(name: str, steps: int, flow: bool) -> float:
    model = GaussianFlow() if flow else GaussianVE()
    ms = FlowSampling() if flow else DiscreteSampling()
    hi, lo = (0.98, 0.05) if flow else (10.0, 0.05)
    sigmas = (torch.linspace(hi, lo, steps + 1, dtype=torch.float64) if flow else
              torch.linspace(math.log(hi), math.log(lo), steps + 1, dtype=torch.float64).exp())
    x = seeded_noise(0, (256,)).double() * float(model.marginal_std(torch.tensor(hi)))
    out = SAMPLERS[name].fn(model.denoise, x.clone(), sigmas, extra_args={"model_sampling": ms}, eta=0.0)
    return float((out - model.exact(x, hi, lo)).abs().max())


@pytest.mark.parametrize("name, expected", [("sa_solver", 3.5), ("sa_solver_pece", 4.0)])
@pytest.mark.parametrize("flow", [True, False], ids=["flow", "eps"])
def test_tau_zero_is_a_high_order_ode_solver(name, expected, flow):
    """PEC (predictor 3 + corrector 4, one call per step) measures 3.2-3.8, PECE 3.7-4.1 (ends at sigma 0.05)."""
    errors = [ode_error(name, n, flow) for n in (16, 32, 64)]
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:], strict=False)]
    assert abs(orders[-1] - expected) < 0.45, (errors, orders)
    assert errors[-1] < 1e-3


@pytest.mark.parametrize("steps", [5, 10])
def test_tau_zero_matches_diffusers_sasolver_scheduler(steps):
    """Same method as diffusers' SASolverScheduler (tau 0, orders 3/4, its order-2 warm-up formula, no lowered final
    orders) on a Gaussian EPS-view model: within 1e-5 (diffusers computes its weights in float32; measured 8e-7)."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.SASolverScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        predictor_order=3, corrector_order=4, prediction_type="sample",
                                        tau_func=lambda t: 0, lower_order_final=False)
    sched.set_timesteps(steps)
    sigmas = sched.sigmas.double()  # ends at the first training sigma (~0.029), not at 0
    model = GaussianVE()
    x = seeded_noise(0, (1, 64)).double() * float(model.marginal_std(sigmas[0]))
    ours = SAMPLERS["sa_solver"].fn(model.denoise, x.clone(), sigmas, extra_args={"model_sampling": DiscreteSampling()},
                                    eta=0.0, simple_order_2=True)
    sample = x / (sigmas[0] ** 2 + 1) ** 0.5  # diffusers' variance-preserving latent
    for i, t in enumerate(sched.timesteps):
        scale = (sigmas[i] ** 2 + 1) ** 0.5
        sample = sched.step(model.denoise(sample * scale, sigmas[i].reshape(1)), t, sample).prev_sample
    theirs = sample * (sigmas[-1] ** 2 + 1) ** 0.5
    assert float((ours - theirs).abs().max()) < 1e-5
    # the exact-Lagrange order-2 warm-up (ComfyUI's default) is a different, equally valid formula
    exact2 = SAMPLERS["sa_solver"].fn(model.denoise, x.clone(), sigmas,
                                      extra_args={"model_sampling": DiscreteSampling()}, eta=0.0)
    assert float((exact2 - theirs).abs().max()) > 1e-4


def run(name, seed, flow=True, steps=10, n=64, **kw):
    model, ms = (GaussianFlow(), FlowSampling()) if flow else (GaussianVE(), DiscreteSampling())
    sigmas = compute_sigmas(ms, "simple" if flow else "karras", steps)
    x = seeded_noise(0, (n,)) * float(model.marginal_std(sigmas[0]))
    return SAMPLERS[name].fn(model.denoise, x, sigmas, extra_args={"seed": seed, "model_sampling": ms}, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_result_other_seed_other_result_and_eta_zero_ignores_the_seed(name):
    for flow in (True, False):
        torch.testing.assert_close(run(name, 1, flow), run(name, 1, flow), rtol=0, atol=0)
        assert (run(name, 1, flow) - run(name, 2, flow)).abs().max() > 1e-3
        torch.testing.assert_close(run(name, 1, flow, eta=0.0), run(name, 2, flow, eta=0.0), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_brownian_noise_keeps_runs_at_different_step_counts_close(name):
    """20 vs 40 steps with one seed differ much less than 20 steps with two seeds (same path vs independent)."""
    for flow in (True, False):
        a, b = run(name, 5, flow, steps=20, n=2000), run(name, 5, flow, steps=40, n=2000)
        c = run(name, 6, flow, steps=20, n=2000)
        assert (a - b).abs().mean() < 0.4 * (a - c).abs().mean()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["flow", "eps", "v"])
@pytest.mark.parametrize("everywhere", [False, True], ids=["default_tau", "tau_1"])
def test_samples_have_the_data_mean_and_variance(name, kind, everywhere):
    """Gaussian data N(0.3, 0.5^2), exact denoiser, 20000 samples, 20 steps: mean within 0.015, variance within 6%.

    tau_1 puts SDE noise on every step (the reverse SDE); measured worst: variance +4.5% (tau_1, EPS). EPS/V formulas
    on a flow model move the mean by 0.05 (default tau) and the variance by +80% (tau_1).
    """
    flow = kind == "flow"
    model = GaussianFlow() if flow else GaussianVE()
    ms = FlowSampling() if flow else DiscreteSampling(prediction="eps" if kind == "eps" else "v_prediction")
    sigmas = compute_sigmas(ms, "simple" if flow else "karras", 20)
    s0 = float(sigmas[0])  # start from the exact marginal at sigma_0, its mean included
    x = (1 - s0 if flow else 1.0) * model.mean + seeded_noise(0, (20000,)) * float(model.marginal_std(sigmas[0]))
    opts = {"tau_func": lambda _s: 1.0} if everywhere else {}
    out = SAMPLERS[name].fn(model.denoise, x, sigmas, extra_args={"seed": 9, "model_sampling": ms}, **opts)
    assert abs(float(out.mean()) - 0.3) < 0.015
    assert abs(float(out.var()) / 0.25 - 1) < 0.06


@pytest.mark.parametrize("name, calls", [("sa_solver", 5), ("sa_solver_pece", 9)])
def test_flow_model_is_never_evaluated_at_sigma_zero(name, calls):
    seen = []
    model = GaussianFlow()

    def spy(x, sigma, **kw):
        assert "model_sampling" not in kw
        seen.append(float(sigma[0]))
        return model.denoise(x, sigma)

    out = SAMPLERS[name].fn(spy, seeded_noise(1, (4,)), torch.linspace(1.0, 0.0, 6),
                            extra_args={"seed": 0, "model_sampling": FlowSampling()})
    assert 0.0 not in seen and 1.0 not in seen and torch.isfinite(out).all()  # sigma 1 moves to the 1e-4 point
    assert len(seen) == calls  # PECE: 2 per step but the first


def test_schedule_ending_above_zero_returns_the_state_at_the_last_sigma():
    model, ms = GaussianVE(), DiscreteSampling()
    sigmas = torch.exp(torch.linspace(math.log(10.0), math.log(0.5), 25, dtype=torch.float64))
    x = seeded_noise(0, (256,)).double() * float(model.marginal_std(sigmas[0]))
    out = SAMPLERS["sa_solver"].fn(model.denoise, x, sigmas, extra_args={"model_sampling": ms}, eta=0.0)
    assert float((out - model.exact(x, 10.0, 0.5)).abs().max()) < 1e-3


def test_default_tau_window_is_the_middle_of_the_sigma_range():
    """Noise only while sigma_next is between the 20% and 80% points: a schedule entirely past 80% is an ODE."""
    ms = FlowSampling()
    lo = percent_to_sigma(ms, 0.8)
    sigmas = torch.linspace(lo * 0.9, lo * 0.1, 6)
    x = seeded_noise(2, (32,))
    a = SAMPLERS["sa_solver"].fn(GaussianFlow().denoise, x, sigmas, extra_args={"seed": 1, "model_sampling": ms})
    b = SAMPLERS["sa_solver"].fn(GaussianFlow().denoise, x, sigmas, extra_args={"seed": 2, "model_sampling": ms})
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert percent_to_sigma(DiscreteSampling(), 0.2) > percent_to_sigma(DiscreteSampling(), 0.8) > 0


def test_injected_noise_sampler_is_used():
    x = seeded_noise(0, (16,))
    kw = {"extra_args": {"model_sampling": FlowSampling()}, "tau_func": lambda _s: 1.0}
    sig = torch.linspace(0.9, 0.0, 5)
    a = SAMPLERS["sa_solver"].fn(GaussianFlow().denoise, x, sig, noise_sampler=BrownianNoise(x, 3), **kw)
    b = SAMPLERS["sa_solver"].fn(GaussianFlow().denoise, x, sig, noise_sampler=BrownianNoise(x, 3), **kw)
    c = SAMPLERS["sa_solver"].fn(GaussianFlow().denoise, x, sig, noise_sampler=BrownianNoise(x, 4), **kw)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3


@pytest.mark.parametrize("opts, message", [
    ({"predictor_order": 0}, "predictor_order"),
    ({"corrector_order": 7}, "corrector_order"),
    ({"eta": -1.0}, "eta"),
    ({"s_noise": float("nan")}, "s_noise"),
    ({"sde_start_percent": 0.9, "sde_end_percent": 0.1}, "sde_start_percent"),
])
def test_bad_options_are_clear_errors(opts, message):
    with pytest.raises(ValueError, match=message):
        run("sa_solver", 0, **opts)


def test_repeated_sigma_and_missing_model_sampling_are_clear_errors():
    with pytest.raises(ValueError, match="half-logSNR"):
        SAMPLERS["sa_solver"].fn(GaussianFlow().denoise, torch.zeros(4), torch.tensor([0.9, 0.5, 0.5, 0.0]),
                                 extra_args={"model_sampling": FlowSampling()})
    with pytest.raises(ValueError, match="model_sampling"):
        SAMPLERS["sa_solver"].fn(GaussianFlow().denoise, torch.zeros(4), torch.tensor([0.9, 0.0]))
