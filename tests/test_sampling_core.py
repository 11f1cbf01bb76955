import threading

import pytest
import torch
from analytic import GaussianFlow

from turbosample.samplers.denoiser import DiffusionModel, cfg_denoiser
from turbosample.samplers.model_sampling import FlowSampling
from turbosample.samplers.noise import seeded_noise
from turbosample.samplers.registry import get_sampler
from turbosample.samplers.run import Interrupted, sample
from turbosample.samplers.schedulers import compute_sigmas
from turbosample.samplers.solvers import sample_euler


def euler_error(model: GaussianFlow, steps: int) -> float:
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    x1 = seeded_noise(0, (64,))
    out = sample_euler(model.denoise, x1.clone(), sigmas)
    return float((out - model.exact(x1, 1.0, 0.0)).abs().max())


def test_euler_converges_with_order_one_on_gaussian_flow():
    model = GaussianFlow()
    errors = [euler_error(model, n) for n in (16, 32, 64, 128)]
    orders = [torch.log2(torch.tensor(a / b)).item() for a, b in zip(errors, errors[1:], strict=False)]
    assert all(0.85 < p < 1.15 for p in orders), orders
    assert errors[-1] < 0.03 and errors[0] > errors[-1] * 6


def test_euler_matches_diffusers_flow_match_euler():
    diffusers = pytest.importorskip("diffusers")
    model = GaussianFlow()
    sigmas = compute_sigmas(FlowSampling(shift=2.0), "simple", 8)
    x = seeded_noise(3, (2, 3, 4, 4))
    ours = sample_euler(model.denoise, x.clone(), sigmas)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)
    sched.set_timesteps(sigmas=sigmas[:-1].tolist())
    y = x.clone()
    for i, t in enumerate(sched.timesteps):
        sigma = sched.sigmas[i]
        velocity = (y - model.denoise(y, sigma.repeat(2))) / sigma
        y = sched.step(velocity, t, y).prev_sample
    torch.testing.assert_close(ours, y, rtol=1e-5, atol=1e-5)


def test_euler_never_evaluates_the_model_at_sigma_zero():
    seen = []

    def model(x, sigma, **_):
        seen.append(float(sigma[0]))
        return torch.zeros_like(x)

    sample_euler(model, torch.ones(1, 2), torch.tensor([1.0, 0.5, 0.0]))
    assert seen == [1.0, 0.5]


def test_seeded_noise_is_reproducible_and_matches_comfyui_prepare_noise():
    a = seeded_noise(42, (2, 3, 8, 8))
    b = seeded_noise(42, (2, 3, 8, 8))
    assert torch.equal(a, b)
    ref = torch.randn((2, 3, 8, 8), generator=torch.manual_seed(42), device="cpu")
    assert torch.equal(a, ref)
    assert not torch.equal(a, seeded_noise(43, (2, 3, 8, 8)))


class TinyVelocityNet(torch.nn.Module):
    """Velocity of the analytic Gaussian, with the context shifting the data mean (tests CFG plumbing)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward(self, x, timestep, context=None, **_):
        self.calls += 1
        sigma = timestep / 1000
        mean = context.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        model = GaussianFlow(mean=0.0)
        x0 = model.denoise(x - (1 - sigma.view(-1, 1, 1, 1)) * mean, sigma) + mean
        return (x - x0) / sigma.view(-1, 1, 1, 1)


def make_model():
    return DiffusionModel(TinyVelocityNet(), FlowSampling())


def test_cfg_combines_branches_in_one_batched_call():
    model = make_model()
    pos, neg = [[torch.ones(1, 1, 4), {}]], [[torch.zeros(1, 1, 4), {}]]
    x, sigma = torch.randn(2, 3, 4, 4), torch.tensor([0.5, 0.5])
    guided = cfg_denoiser(model, pos, neg, 3.0)(x, sigma)
    assert model.diffusion_model.calls == 1
    c = cfg_denoiser(model, pos, neg, 1.0)(x, sigma)
    u = cfg_denoiser(model, neg, neg, 1.0)(x, sigma)
    torch.testing.assert_close(guided, u + 3.0 * (c - u))


def test_sample_run_is_deterministic_and_interruptible():
    model = make_model()
    pos, neg = [[torch.ones(1, 1, 4), {}]], [[torch.zeros(1, 1, 4), {}]]
    latent = torch.zeros(1, 3, 8, 8)
    sigmas = compute_sigmas(model.model_sampling, "simple", 6)
    a = sample(model, pos, neg, latent, get_sampler("euler"), sigmas, seed=5, cfg=2.0)
    b = sample(model, pos, neg, latent, get_sampler("euler"), sigmas, seed=5, cfg=2.0)
    assert torch.equal(a, b)
    cancel = threading.Event()
    steps = []

    def stop_after_two(info):
        steps.append(info["i"])
        if info["i"] == 1:
            cancel.set()

    with pytest.raises(Interrupted):
        sample(model, pos, neg, latent, get_sampler("euler"), sigmas, seed=5, cfg=2.0, callback=stop_after_two,
               cancel=cancel)
    assert steps == [0, 1]


def test_sample_rejects_nan_latent_and_unknown_sampler():
    model = make_model()
    cond = [[torch.zeros(1, 1, 4), {}]]
    sigmas = compute_sigmas(model.model_sampling, "simple", 2)
    with pytest.raises(ValueError, match="input latent contains 1 NaN"):
        bad = torch.zeros(1, 3, 4, 4)
        bad[0, 0, 0, 0] = float("nan")
        sample(model, cond, cond, bad, get_sampler("euler"), sigmas, seed=0, cfg=1.0)
    with pytest.raises(ValueError, match="unknown sampler 'bogus'"):
        get_sampler("bogus")
