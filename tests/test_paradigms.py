"""ParaDiGMS parallel Picard sampling (samplers/paradigms.py).

Oracles: sequential ``sample_euler`` on the same sigmas (the fixed point of the Picard iteration), the exact
probability-flow ODE of Gaussian data (tests/analytic.py), and a hand-written one-sweep Picard update.
"""

from dataclasses import replace

import pytest
import torch
from analytic import GaussianFlow, GaussianVE

from turbosample.models.dit import TinyDiT
from turbosample.samplers.denoiser import DiffusionModel
from turbosample.samplers.model_sampling import DiscreteSampling, FlowSampling
from turbosample.samplers.paradigms import sample_paradigms
from turbosample.samplers.registry import SAMPLERS
from turbosample.samplers.run import sample
from turbosample.samplers.schedulers import compute_sigmas
from turbosample.samplers.solvers import sample_euler


def setup(kind: str, steps: int, batch: int = 3):
    """(denoiser, extra_args, float64 sigmas, x at sigmas[0]) for Gaussian data."""
    if kind == "flow":
        model, ms, scheduler = GaussianFlow(), FlowSampling(), "simple"
    else:
        model, ms, scheduler = GaussianVE(), DiscreteSampling(), "karras"
    sigmas = compute_sigmas(ms, scheduler, steps).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 2, 4, 4, generator=g, dtype=torch.float64) * float(model.marginal_std(sigmas[0]))
    return model, {"model_sampling": ms}, sigmas, x


@pytest.mark.parametrize("kind", ["flow", "ve"])
@pytest.mark.parametrize("window", [1, 3, 8, 40])
def test_tolerance_zero_is_sequential_euler(kind, window):
    model, args, sigmas, x = setup(kind, 12)
    out = sample_paradigms(model.denoise, x.clone(), sigmas, args, window=window, tolerance=0.0)
    torch.testing.assert_close(out, sample_euler(model.denoise, x.clone(), sigmas), rtol=0, atol=1e-5)
    assert out.paradigms_stats["rounds"] <= out.paradigms_stats["steps"] == 12


@pytest.mark.parametrize("kind", ["flow", "ve"])
def test_loose_tolerance_takes_fewer_rounds_and_stays_within_the_euler_error(kind):
    model, args, sigmas, x = setup(kind, 24)
    out = sample_paradigms(model.denoise, x.clone(), sigmas, args, window=8, tolerance=0.1)
    euler = sample_euler(model.denoise, x.clone(), sigmas)
    exact = model.exact(x, float(sigmas[0]), float(sigmas[-1]))
    stats = out.paradigms_stats
    assert stats["rounds"] < 0.6 * stats["steps"]  # measured: 7 (flow) and 12 (ve) of 24
    assert stats["model_evals"] <= 8 * stats["rounds"]
    # the parallel error is well below Euler's own discretisation error (RMS over all elements)
    assert (out - euler).pow(2).mean().sqrt() < 0.5 * (euler - exact).pow(2).mean().sqrt()


def test_one_sweep_per_point_is_the_picard_update_from_each_window_start():
    model, args, sigmas, x = setup("flow", 10)
    out = sample_paradigms(model.denoise, x.clone(), sigmas, args, window=4, tolerance=0.0, max_iters=1)
    expected = x.clone()
    for start in range(0, 10, 4):  # every window point starts as a copy of the window's start
        frozen = expected.clone()
        for k in range(start, min(start + 4, 10)):
            d = (frozen - model.denoise(frozen, sigmas[k].expand(3))) / sigmas[k]
            expected = expected + d * (sigmas[k + 1] - sigmas[k])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert out.paradigms_stats["rounds"] == 3


def test_max_iters_of_a_window_or_more_changes_nothing():
    model, args, sigmas, x = setup("ve", 15)
    base = sample_paradigms(model.denoise, x.clone(), sigmas, args, window=5, tolerance=0.05)
    capped = sample_paradigms(model.denoise, x.clone(), sigmas, args, window=5, tolerance=0.05, max_iters=5)
    assert torch.equal(base, capped)


def test_each_round_is_one_batched_call_and_sigma_zero_is_never_evaluated():
    model, args, sigmas, x = setup("flow", 11, batch=2)
    calls, steps_seen = [], []

    def counting(xs, sigma, **kw):
        assert "model_sampling" not in kw and sigma.shape == (xs.shape[0],)
        calls.append((xs.shape[0], sigma.clone()))
        return model.denoise(xs, sigma)

    out = sample_paradigms(counting, x, sigmas, args, callback=lambda info: steps_seen.append(info["i"]),
                           window=4, tolerance=0.1)
    stats = out.paradigms_stats
    assert len(calls) == stats["rounds"] < 11
    assert calls[0][0] == 4 * 2 and torch.equal(calls[0][1], sigmas[:4].repeat_interleave(2))
    assert all(b % 2 == 0 and b <= 8 for b, _ in calls)
    assert sum(b for b, _ in calls) == 2 * stats["model_evals"]
    assert min(float(s.min()) for _, s in calls) > 0
    assert steps_seen == list(range(11))  # progress: every step reported once, in order


def test_builtin_model_with_cfg_matches_euler_through_the_run_loop():
    torch.manual_seed(0)
    dit = TinyDiT(width=32, depth=2, heads=2).eval()
    for p in dit.parameters():  # adaLN-Zero starts at zero (velocity 0): randomise so the model does something
        p.data.normal_(0, 0.1)
    model = DiffusionModel(dit, FlowSampling())
    pos, neg = [[torch.randn(1, 1, 384), {}]], [[torch.zeros(1, 1, 384), {}]]
    sigmas = compute_sigmas(model.model_sampling, "simple", 8)
    latent = torch.zeros(2, 3, 32, 32)
    exact_picard = replace(SAMPLERS["paradigms"], options={"window": 3, "tolerance": 0.0, "max_iters": None})
    ours = sample(model, pos, neg, latent, exact_picard, sigmas, 5, 3.0)
    euler = sample(model, pos, neg, latent, SAMPLERS["euler"], sigmas, 5, 3.0)
    torch.testing.assert_close(ours, euler, rtol=0, atol=1e-5)
    assert (euler - sample(model, pos, neg, latent, SAMPLERS["euler"], sigmas[::2], 5, 3.0)).abs().max() > 1e-2


def test_registered_cost_is_the_window():
    info = SAMPLERS["paradigms"]
    assert info.fn is sample_paradigms and info.calls_per_step == info.options["window"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"window": 0}, "window"), ({"window": 2.5}, "window"), ({"tolerance": -0.1}, "tolerance"),
    ({"tolerance": float("nan")}, "tolerance"), ({"max_iters": 0}, "max_iters"),
    ({"sigmas": torch.tensor([1.0, 0.0, 0.0])}, "sigma = 0"), ({"sigmas": torch.tensor([1.0])}, "at least 2"),
    ({"extra_args": {}}, "model_sampling"),
])
def test_bad_parameters_raise(kwargs, match):
    model, args, sigmas, x = setup("flow", 4)
    call = {"extra_args": args, "sigmas": sigmas, **kwargs}
    with pytest.raises(ValueError, match=match):
        sample_paradigms(model.denoise, x, call.pop("sigmas"), call.pop("extra_args"), **call)
