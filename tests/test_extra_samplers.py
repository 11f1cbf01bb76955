"""ER-SDE, SEEDS-2/3, heunpp2 and DPM-2 ancestral: seeds, Brownian paths, sample statistics, ODE limits, flow safety.

Oracles here: the data distribution of Gaussian data (exact denoiser), convergence orders against the exact
probability-flow ODE, and the matching ODE samplers at zero noise. Every step formula, flow and EPS, is checked
exactly against hand-written references with the same noise in tests/test_sde_reference.py.
"""

import math

import pytest
import torch
from analytic import GaussianFlow, GaussianVE

from turbosample.samplers.model_sampling import DiscreteSampling, FlowSampling
from turbosample.samplers.noise import seeded_noise
from turbosample.samplers.registry import SAMPLERS
from turbosample.samplers.schedulers import compute_sigmas

STOCHASTIC = ("er_sde", "seeds_2", "seeds_3", "dpm_2_ancestral")
ALL = STOCHASTIC + ("heunpp2",)


def setup(flow: bool, steps: int, n: int, kind: str = "eps"):
    """(denoiser, model_sampling, sigmas, x drawn from the exact marginal at sigmas[0])."""
    model = GaussianFlow() if flow else GaussianVE()
    ms = FlowSampling() if flow else DiscreteSampling(prediction="v_prediction" if kind == "v" else "eps")
    sigmas = compute_sigmas(ms, "simple" if flow else "karras", steps)
    s0 = float(sigmas[0])
    x = (1 - s0 if flow else 1.0) * model.mean + seeded_noise(0, (n,)) * float(model.marginal_std(sigmas[0]))
    return model.denoise, ms, sigmas, x


def run(name, seed, flow=True, steps=10, n=64, **kw):
    denoise, ms, sigmas, x = setup(flow, steps, n)
    return SAMPLERS[name].fn(denoise, x, sigmas, extra_args={"seed": seed, "model_sampling": ms}, **kw)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_same_seed_same_result_other_seed_other_result(name):
    for flow in (True, False):
        torch.testing.assert_close(run(name, 1, flow), run(name, 1, flow), rtol=0, atol=0)
        assert (run(name, 1, flow) - run(name, 2, flow)).abs().max() > 1e-3


def test_deterministic_settings_ignore_the_seed():
    for flow in (True, False):
        torch.testing.assert_close(run("heunpp2", 1, flow), run("heunpp2", 2, flow), rtol=0, atol=0)
        for name in ("seeds_2", "seeds_3", "dpm_2_ancestral"):
            torch.testing.assert_close(run(name, 1, flow, eta=0.0), run(name, 2, flow, eta=0.0), rtol=0, atol=0)
        torch.testing.assert_close(run("er_sde", 1, flow, s_noise=0.0), run("er_sde", 2, flow, s_noise=0.0))


@pytest.mark.parametrize("name", STOCHASTIC)
def test_brownian_noise_keeps_runs_at_different_step_counts_close(name):
    """20 vs 40 steps with one seed differ much less than 20 steps with two seeds (same path vs independent)."""
    for flow in (True, False):
        a, b = run(name, 5, flow, steps=20, n=2000), run(name, 5, flow, steps=40, n=2000)
        c = run(name, 6, flow, steps=20, n=2000)
        assert (a - b).abs().mean() < 0.4 * (a - c).abs().mean()


@pytest.mark.parametrize("name", STOCHASTIC)
@pytest.mark.parametrize("kind", ["flow", "eps", "v"])
def test_samples_have_the_data_mean_and_variance(name, kind):
    """Gaussian data N(0.3, 0.5^2), exact denoiser, 20000 samples, 30 steps: mean within 0.015, variance within 6%
    (measured worst: DPM-2 ancestral on EPS, +3.9%). EPS/V formulas on a flow model move the mean by ~0.2 and the
    variance by ~+80%, except for ER-SDE (+0.004, +4%: not told apart here; its flow formulas are checked exactly
    in tests/test_sde_reference.py, by the noiseless order test below and against ComfyUI)."""
    denoise, ms, sigmas, x = setup(kind == "flow", 30, 20000, kind)
    out = SAMPLERS[name].fn(denoise, x, sigmas, extra_args={"seed": 9, "model_sampling": ms})
    assert abs(float(out.mean()) - 0.3) < 0.015
    assert abs(float(out.var()) / 0.25 - 1) < 0.06


def ode_error(name: str, steps: int, flow: bool, **kw) -> float:
    model = GaussianFlow() if flow else GaussianVE()
    ms = FlowSampling() if flow else DiscreteSampling()
    hi, lo = (0.98, 0.05) if flow else (10.0, 0.05)
    sigmas = (torch.linspace(hi, lo, steps + 1, dtype=torch.float64) if flow else
              torch.linspace(math.log(hi), math.log(lo), steps + 1, dtype=torch.float64).exp())
    x = seeded_noise(0, (256,)).double() * float(model.marginal_std(torch.tensor(hi)))
    out = SAMPLERS[name].fn(model.denoise, x.clone(), sigmas, extra_args={"model_sampling": ms}, **kw)
    return float((out - model.exact(x, hi, lo)).abs().max())


# without noise: SEEDS-2/3 are DPM-Solver-type exponential Runge-Kutta ODE solvers, DPM-2 ancestral is DPM-2, ER-SDE
# with the noise scale f(r) = r is a noiseless multistep solver (its Euler and 2nd-stage warm-up keep it at order 2),
# heunpp2's fixed sigma-ratio weights make it first order (as in ComfyUI, which it matches to 1e-15)
@pytest.mark.parametrize("name, kw, expected", [
    ("seeds_2", {"eta": 0.0}, 2.0),
    ("seeds_3", {"eta": 0.0}, 3.0),
    ("dpm_2_ancestral", {"eta": 0.0}, 2.0),
    ("er_sde", {"noise_scaler": lambda r: r, "integration_points": 20000}, 2.0),
    ("heunpp2", {}, 1.0),
])
@pytest.mark.parametrize("flow", [True, False], ids=["flow", "eps"])
def test_noiseless_convergence_order(name, kw, expected, flow):
    errors = [ode_error(name, n, flow, **kw) for n in (16, 32, 64)]
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:], strict=False)]
    if name == "seeds_3" and flow:  # measured 3.7-4.7 on the flow Gaussian: at least third order
        assert orders[-1] > 2.7, (errors, orders)
    else:
        assert abs(orders[-1] - expected) < 0.3, (errors, orders)


def test_noiseless_limits_equal_the_matching_ode_samplers():
    for flow in (True, False):
        denoise, ms, sigmas, x = setup(flow, 8, 32)
        args = {"model_sampling": ms}
        torch.testing.assert_close(SAMPLERS["dpm_2_ancestral"].fn(denoise, x, sigmas, dict(args), eta=0.0),
                                   SAMPLERS["dpm_2"].fn(denoise, x, sigmas, dict(args)), rtol=0, atol=1e-6)
    denoise, ms, sigmas, x = setup(False, 8, 32)  # SEEDS-2 (r = 1/2) is DPM-Solver++(2S) on EPS models
    torch.testing.assert_close(SAMPLERS["seeds_2"].fn(denoise, x, sigmas, {"model_sampling": ms}, eta=0.0),
                               SAMPLERS["dpmpp_2s_ancestral"].fn(denoise, x, sigmas, {"model_sampling": ms}, eta=0.0),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, calls", [("er_sde", 5), ("seeds_2", 9), ("seeds_3", 13), ("heunpp2", 12),
                                         ("dpm_2_ancestral", 9)])
def test_flow_model_is_never_evaluated_at_sigma_zero(name, calls):
    seen = []
    model = GaussianFlow()

    def spy(x, sigma, **kw):
        assert "model_sampling" not in kw
        seen.append(float(sigma[0]))
        return model.denoise(x, sigma)

    out = SAMPLERS[name].fn(spy, seeded_noise(1, (4,)), torch.linspace(1.0, 0.0, 6),
                            extra_args={"seed": 0, "model_sampling": FlowSampling()})
    assert 0.0 not in seen and torch.isfinite(out).all()
    assert len(seen) == calls
    assert SAMPLERS[name].calls_per_step * 5 >= calls


@pytest.mark.parametrize("name, opts, message", [
    ("er_sde", {"max_stage": 4}, "max_stage"),
    ("er_sde", {"integration_points": 0}, "integration_points"),
    ("er_sde", {"s_noise": -1.0}, "s_noise"),
    ("seeds_2", {"r": 0.0}, "r must be"),
    ("seeds_3", {"r_1": 0.7, "r_2": 0.5}, "r_1"),
    ("seeds_3", {"eta": float("inf")}, "eta"),
    ("dpm_2_ancestral", {"eta": -0.5}, "eta"),
])
def test_bad_options_are_clear_errors(name, opts, message):
    with pytest.raises(ValueError, match=message):
        run(name, 0, **opts)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_missing_model_sampling_is_a_clear_error(name):
    with pytest.raises(ValueError, match="model_sampling"):
        SAMPLERS[name].fn(GaussianFlow().denoise, torch.zeros(4), torch.tensor([0.9, 0.0]))
