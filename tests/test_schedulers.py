import pytest
import torch

from turbosample.samplers.model_sampling import DiscreteSampling, FlowSampling
from turbosample.samplers.schedulers import SCHEDULERS, compute_sigmas, karras
from turbosample.samplers.validate import check_sigmas

# ComfyUI's definitions: ddim_uniform strides the table (its length and start follow the stride), beta drops
# repeated indices, vp ignores the model's own range, ays_svd is SVD's table (sigma 700 down). Exact values are
# compared with ComfyUI in the acceptance test (tests/comfy_oracle.py).
FREE_LENGTH = {"ddim_uniform", "beta"}
FREE_START = {"ddim_uniform", "vp", "ays_svd"}


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("ms", [DiscreteSampling(), FlowSampling(), FlowSampling(shift=3.0)],
                         ids=["discrete", "flow", "flow_shift3"])
def test_schedules_are_valid(name, ms):
    sigmas = compute_sigmas(ms, name, 10)
    assert float(sigmas[-1]) == 0.0
    check_sigmas(sigmas)
    if name not in FREE_LENGTH:
        assert sigmas.shape == (11,)
    if name not in FREE_START:
        assert float(sigmas[0]) == pytest.approx(float(ms.sigma_max), rel=1e-4)


def test_flow_simple_schedule_is_linear_in_sigma():
    sigmas = compute_sigmas(FlowSampling(), "simple", 4)
    torch.testing.assert_close(sigmas, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


def test_karras_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                             use_karras_sigmas=True)
    sched.set_timesteps(12)
    ms = DiscreteSampling()
    torch.testing.assert_close(karras(ms, 12), sched.sigmas.float(), rtol=1e-4, atol=1e-5)


def test_denoise_keeps_the_tail_of_a_longer_schedule():
    ms = FlowSampling()
    full = compute_sigmas(ms, "simple", 20)
    part = compute_sigmas(ms, "simple", 10, denoise=0.5)
    torch.testing.assert_close(part, full[-11:])


@pytest.mark.parametrize("sigmas, message", [
    (torch.tensor([1.0]), "at least 2"),
    (torch.tensor([]), "at least 2"),
    (torch.tensor([1.0, float("nan"), 0.0]), "NaN"),
    (torch.tensor([0.5, 0.8, 0.0]), "must not increase"),
    (torch.tensor([[1.0, 0.0]]), "1-D"),
    (torch.tensor([1.0, -0.1]), ">= 0"),
])
def test_bad_sigmas_are_named(sigmas, message):
    with pytest.raises(ValueError, match=message):
        check_sigmas(sigmas)


def test_bad_scheduler_arguments():
    with pytest.raises(ValueError, match="unknown scheduler 'nope'"):
        compute_sigmas(FlowSampling(), "nope", 10)
    with pytest.raises(ValueError, match="steps must be"):
        compute_sigmas(FlowSampling(), "simple", 0)
    with pytest.raises(ValueError, match="denoise"):
        compute_sigmas(FlowSampling(), "simple", 5, denoise=0.0)
