"""Adaptive-step ODE/SDE samplers (Gotta Go Fast) on the analytic Gaussian models.

Oracles: the exact probability-flow ODE solution and the data distribution N(0.3, 0.5^2) of tests/analytic.py, and a
spy model that records every call.
"""

import math

import pytest
import torch
from analytic import GaussianFlow, GaussianVE

from turbosample.samplers.adaptive import sample_adaptive, sample_adaptive_sde, step_error
from turbosample.samplers.denoiser import DiffusionModel
from turbosample.samplers.model_sampling import DiscreteSampling, FlowSampling
from turbosample.samplers.noise import seeded_noise
from turbosample.samplers.registry import SAMPLERS, get_sampler
from turbosample.samplers.run import sample
from turbosample.samplers.schedulers import compute_sigmas


def setup(kind: str, shape=(4, 256)):
    """(model, model_sampling, sigmas ending at 0, x at sigmas[0]) in float64."""
    if kind == "flow":
        model, ms = GaussianFlow(), FlowSampling()
        sigmas = compute_sigmas(ms, "simple", 20).double()
        x = seeded_noise(0, shape).double() * float(model.marginal_std(sigmas[0])) + (1 - float(sigmas[0])) * 0.3
    else:
        model, ms = GaussianVE(), DiscreteSampling()
        sigmas = compute_sigmas(ms, "karras", 20).double()
        x = 0.3 + seeded_noise(0, shape).double() * float(model.marginal_std(sigmas[0]))
    return model, ms, sigmas, x


def counting(model):
    seen = []

    def spy(x, sigma, **kw):
        assert "model_sampling" not in kw
        seen.append(float(sigma.min()))
        return model.denoise(x, sigma)

    return spy, seen


def ode_error(kind: str, rtol: float) -> tuple[float, int]:
    """(max error against the exact ODE solution at sigmas[-2], model calls) for an ODE run stopping there."""
    model, ms, sigmas, x = setup(kind)
    spy, seen = counting(model)
    out = sample_adaptive(spy, x.clone(), sigmas[:-1], {"model_sampling": ms}, rtol=rtol, atol=rtol * 0.156)
    exact = model.exact(x, float(sigmas[0]), float(sigmas[-2]))
    return float((out - exact).abs().max()), len(seen)


@pytest.mark.parametrize("kind", ["flow", "ve"])
def test_ode_error_falls_and_calls_rise_as_the_tolerance_tightens(kind):
    runs = [ode_error(kind, rtol) for rtol in (0.05, 0.01, 0.002, 0.0004)]
    errors, calls = [r[0] for r in runs], [r[1] for r in runs]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert all(a < b for a, b in zip(calls, calls[1:], strict=False)), calls


@pytest.mark.parametrize("kind", ["flow", "ve"])
def test_ode_at_tight_tolerance_matches_the_exact_solution(kind):
    error, calls = ode_error(kind, 1e-5)
    assert error < 1e-4, (error, calls)


@pytest.mark.parametrize("kind", ["flow", "ve"])
def test_ode_onto_zero_is_the_exact_flow_then_one_denoised_step(kind):
    model, ms, sigmas, x = setup(kind)
    out = sample_adaptive(model.denoise, x.clone(), sigmas, {"model_sampling": ms}, rtol=1e-5, atol=1e-6)
    eps = sigmas[-2:-1]
    torch.testing.assert_close(out, model.denoise(model.exact(x, float(sigmas[0]), float(eps)), eps),
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("variant", [sample_adaptive, sample_adaptive_sde])
@pytest.mark.parametrize("kind", ["flow", "ve"])
def test_no_model_call_at_sigma_zero_and_calls_are_reported(kind, variant):
    model, ms, sigmas, x = setup(kind)
    spy, seen = counting(model)
    reports = []
    out = variant(spy, x.clone(), sigmas, {"model_sampling": ms, "seed": 0}, callback=reports.append)
    assert torch.isfinite(out).all()
    assert min(seen) > 0 and min(seen) == pytest.approx(float(sigmas[-2]))
    assert max(seen) <= float(sigmas[0])
    assert reports[-1]["model_calls"] == len(seen) and float(reports[-1]["sigma"]) == 0.0
    assert torch.equal(reports[-1]["x"], out)
    # per attempted step: 2 calls, 1 on a retry (the start's denoised estimate is reused); plus the final step
    attempts = len(reports) - 1 + reports[-1]["rejected"]
    assert len(seen) == 2 * attempts - reports[-1]["rejected"] + 1


@pytest.mark.parametrize("kind", ["flow", "ve"])
def test_sde_is_deterministic_per_seed(kind):
    model, ms, sigmas, x = setup(kind, (2, 64))

    def run(seed):
        return sample_adaptive_sde(model.denoise, x.clone(), sigmas, {"model_sampling": ms, "seed": seed})

    assert torch.equal(run(3), run(3))
    assert (run(3) - run(4)).abs().max() > 1e-2


@pytest.mark.parametrize("kind", ["flow", "ve"])
def test_sde_reaches_the_data_distribution(kind):
    model, ms, sigmas, x = setup(kind, (1, 8192))
    out = sample_adaptive_sde(model.denoise, x, sigmas, {"model_sampling": ms, "seed": 11})
    # 8192 draws: the sample mean/std have standard errors 0.0055 / 0.004
    assert float(out.mean()) == pytest.approx(0.3, abs=0.025)
    assert float(out.std()) == pytest.approx(0.5, abs=0.025)


def test_sde_tighter_tolerance_costs_more_calls():
    model, ms, sigmas, x = setup("ve", (2, 64))
    calls = []
    for rtol in (0.2, 0.05, 0.01):
        spy, seen = counting(model)
        sample_adaptive_sde(spy, x.clone(), sigmas, {"model_sampling": ms, "seed": 0}, rtol=rtol, atol=rtol * 0.156)
        calls.append(len(seen))
    assert calls[0] < calls[1] < calls[2], calls


def test_step_error_is_the_papers_mixed_norm():
    low = torch.tensor([[1.0, -2.0], [0.0, 0.0]])
    high = torch.tensor([[1.1, -2.0], [0.0, 0.01]])
    prev = torch.tensor([[0.5, -4.0], [0.0, 0.0]])
    # sample 0: delta = (0.1 * 1, 0.1 * 4) -> ratios (1, 0); sample 1: delta = atol 0.005 -> ratios (0, 2)
    assert step_error(low, high, prev, rtol=0.1, atol=0.005) == pytest.approx(math.sqrt(2.0))


@pytest.mark.parametrize("variant", [sample_adaptive, sample_adaptive_sde])
def test_bad_settings_raise_clear_errors(variant):
    model, ms, sigmas, x = setup("flow", (1, 4))
    args = {"model_sampling": ms, "seed": 0}
    for opts, match in (({"rtol": -0.1}, "rtol"), ({"atol": math.nan}, "atol"), ({"rtol": 0.0, "atol": 0.0}, "both"),
                        ({"h_init": 0.0}, "h_init"), ({"safety": 1.5}, "safety"), ({"exponent": 0.0}, "exponent")):
        with pytest.raises(ValueError, match=match):
            variant(model.denoise, x, sigmas, args, **opts)
    with pytest.raises(ValueError, match="decrease"):
        variant(model.denoise, x, sigmas.flip(0), args)
    with pytest.raises(ValueError, match="sigma_min"):
        variant(model.denoise, x, torch.tensor([0.9, 0.0]), args)
    with pytest.raises(ValueError, match="model_sampling"):
        variant(model.denoise, x, sigmas, {})


def test_registered_with_two_calls_per_attempted_step():
    assert SAMPLERS["adaptive_ode"].fn is sample_adaptive and SAMPLERS["adaptive_sde"].fn is sample_adaptive_sde
    assert SAMPLERS["adaptive_ode"].calls_per_step == 2 and SAMPLERS["adaptive_sde"].calls_per_step == 2


class GaussianVelocityNet(torch.nn.Module):
    """The analytic Gaussian's velocity as a float32 network, for the package's own run loop (CFG included)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, timestep, context=None, **_):
        sigma = (timestep / 1000).view(-1, 1, 1, 1)
        return (x - GaussianFlow().denoise(x, sigma.flatten())) / sigma


def test_registered_samplers_run_in_the_sampling_loop():
    model = DiffusionModel(GaussianVelocityNet(), FlowSampling())
    pos, neg = [[torch.ones(1, 1, 4), {}]], [[torch.zeros(1, 1, 4), {}]]
    sigmas = compute_sigmas(model.model_sampling, "simple", 10)
    latent = torch.zeros(1, 3, 16, 16)
    ode = sample(model, pos, neg, latent, get_sampler("adaptive_ode"), sigmas, seed=5, cfg=2.0)
    eps = sigmas[-2:-1].double()
    exact = GaussianFlow().denoise(GaussianFlow().exact(seeded_noise(5, (1, 3, 16, 16)).double(), 1.0, float(eps)),
                                   eps)
    torch.testing.assert_close(ode.double(), exact, rtol=0, atol=0.05)
    sde = [sample(model, pos, neg, latent, get_sampler("adaptive_sde"), sigmas, seed=5, cfg=2.0) for _ in range(2)]
    assert torch.equal(sde[0], sde[1]) and torch.isfinite(sde[0]).all()
