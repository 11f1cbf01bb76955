import math

import pytest
import torch

from turbosample.samplers.model_sampling import DiscreteSampling, FlowSampling, is_flow, time_snr_shift


def test_discrete_sigmas_match_diffusers_scaled_linear_schedule():
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ref_sigmas = ((1 - ref.alphas_cumprod) / ref.alphas_cumprod) ** 0.5
    torch.testing.assert_close(DiscreteSampling().sigmas, ref_sigmas.float(), rtol=1e-5, atol=1e-6)


def test_discrete_timestep_sigma_roundtrip():
    ms = DiscreteSampling()
    t = torch.tensor([0.0, 10.0, 500.0, 999.0])
    assert torch.equal(ms.timestep(ms.sigma(t)), t.long())
    # interpolation between table entries is log-linear
    mid = ms.sigma(torch.tensor(10.5))
    assert math.isclose(float(mid), math.sqrt(float(ms.sigmas[10] * ms.sigmas[11])), rel_tol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "v_prediction"])
def test_discrete_denoised_recovers_x0_from_true_model_output(prediction):
    ms = DiscreteSampling(prediction=prediction)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    sigma = torch.tensor([0.5, 7.0])
    s = sigma.view(-1, 1, 1, 1)
    x = x0 + s * eps  # k-diffusion (VE) form
    if prediction == "eps":
        out = eps
    else:  # v = alpha eps - sigma_t x0 in the variance-preserving view
        alpha, sig = 1 / (1 + s ** 2) ** 0.5, s / (1 + s ** 2) ** 0.5
        out = alpha * eps - sig * x0
    torch.testing.assert_close(ms.calculate_denoised(sigma, out, x), x0, rtol=1e-5, atol=1e-5)


def test_flow_conventions():
    ms = FlowSampling()
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    sigma = torch.tensor([0.25, 0.9])
    xt = ms.noise_scaling(sigma, noise, x0)
    torch.testing.assert_close(xt, (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise)
    torch.testing.assert_close(ms.calculate_denoised(sigma, noise - x0, xt), x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ms.timestep(sigma), sigma * 1000)
    assert is_flow(ms) and not is_flow(DiscreteSampling())


def test_flow_shift_matches_sd3_formula_and_diffusers():
    diffusers = pytest.importorskip("diffusers")
    ms = FlowSampling(shift=3.0)
    t = torch.linspace(0.001, 1.0, 17)
    torch.testing.assert_close(ms.sigma(t * 1000), 3 * t / (1 + 2 * t))
    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    # diffusers stores the shifted training sigmas in descending order
    torch.testing.assert_close(ms.sigmas.flip(0), ref.sigmas.float(), rtol=1e-5, atol=1e-6)
    assert time_snr_shift(1.0, 0.3) == 0.3


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="prediction"):
        DiscreteSampling(prediction="flow")
    with pytest.raises(ValueError, match="shift"):
        FlowSampling(shift=0.0)
