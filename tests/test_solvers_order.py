"""Convergence order of the deterministic solvers on the analytic Gaussian flow, and diffusers' DPM-Solver++."""

import math

import pytest
import torch
from analytic import GaussianFlow

from turbosample.samplers.noise import seeded_noise
from turbosample.samplers.registry import SAMPLERS

# lms and ipndm are fourth-order multistep methods, but their Euler/AB2/AB3 warm-up steps keep the global
# error at second order on a fixed grid refinement; that is what is measured here.
EXPECTED_ORDER = {"euler": 1, "heun": 2, "dpm_2": 2, "dpmpp_2m": 2, "lms": 2, "ipndm": 2}


def error(name: str, steps: int, sigma_end: float) -> float:
    model = GaussianFlow()
    sigmas = torch.linspace(0.98, sigma_end, steps + 1)
    x = seeded_noise(0, (256,)) * float(model.marginal_std(torch.tensor(0.98)))
    out = SAMPLERS[name].fn(model.denoise, x.clone(), sigmas)
    return float((out - model.exact(x, 0.98, sigma_end)).abs().max())


@pytest.mark.parametrize("name", sorted(EXPECTED_ORDER))
def test_empirical_convergence_order(name):
    # end at sigma = 0.05 so that every step is a full solver step (the last step onto 0 is Euler by design)
    errors = [error(name, n, 0.05) for n in (8, 16, 32, 64)]
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:], strict=False)]
    assert abs(orders[-1] - EXPECTED_ORDER[name]) < 0.3, (errors, orders)


@pytest.mark.parametrize("name", sorted(EXPECTED_ORDER))
def test_every_solver_reaches_sigma_zero_without_evaluating_there(name):
    seen = []
    model = GaussianFlow()

    def spy(x, sigma, **kw):
        seen.append(float(sigma[0]))
        return model.denoise(x, sigma)

    SAMPLERS[name].fn(spy, seeded_noise(1, (4,)), torch.linspace(1.0, 0.0, 6))
    assert 0.0 not in seen


def test_dpmpp_2m_matches_diffusers_multistep_on_eps_model():
    diffusers = pytest.importorskip("diffusers")
    from turbosample.samplers.model_sampling import DiscreteSampling
    from turbosample.samplers.schedulers import karras

    ms = DiscreteSampling()
    sched = diffusers.DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                  beta_end=0.012, algorithm_type="dpmsolver++", solver_order=2,
                                                  use_karras_sigmas=True, final_sigmas_type="zero",
                                                  lower_order_final=False)
    sched.set_timesteps(10)
    sigmas = karras(ms, 10)
    torch.testing.assert_close(sched.sigmas.float(), sigmas, rtol=1e-4, atol=1e-4)
    mean, std = 0.2, 0.7  # Gaussian data in the VE view: x = x0 + sigma * eps

    def denoise(x, sigma, **_):
        s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return mean + std ** 2 / (std ** 2 + s2) * (x - mean)

    x = seeded_noise(0, (1, 4)) * sigmas[0]
    ours = SAMPLERS["dpmpp_2m"].fn(denoise, x.clone(), sigmas)
    sample = x / (sigmas[0] ** 2 + 1) ** 0.5  # diffusers' variance-preserving latent
    for i, t in enumerate(sched.timesteps):
        s = sched.sigmas[i]
        eps = (sample * (s ** 2 + 1) ** 0.5 - denoise(sample * (s ** 2 + 1) ** 0.5, s.repeat(1))) / s
        sample = sched.step(eps, t, sample).prev_sample
    torch.testing.assert_close(ours, sample, rtol=2e-3, atol=2e-3)
