"""Brownian-tree noise and the ancestral/SDE samplers: determinism, path consistency, distribution, flow safety.

Oracles here: Brownian statistics, and the data distribution of Gaussian data with an exact denoiser (mean and
std bands). The exact step formulas of every sampler here (flow and EPS) are checked against hand-written
references with the same noise in tests/test_sde_reference.py, and against diffusers in test_samplers_oracles.py.
"""

import math

import pytest
import torch
from analytic import GaussianFlow, GaussianVE

from turbosample.samplers.denoiser import DiffusionModel
from turbosample.samplers.model_sampling import DiscreteSampling, FlowSampling
from turbosample.samplers.noise import seeded_noise
from turbosample.samplers.noise_sources import BrownianNoise, BrownianTree
from turbosample.samplers.registry import SAMPLERS, SamplerInfo
from turbosample.samplers.run import sample
from turbosample.samplers.schedulers import compute_sigmas

STOCHASTIC = ("euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "lcm")
NEW = STOCHASTIC + ("ddim", "uni_pc", "uni_pc_bh2", "deis", "ipndm_v", "res_multistep")


def test_brownian_path_is_a_function_of_seed_and_time_only():
    a, b = BrownianTree((64,), seed=3), BrownianTree((64,), seed=3)
    times = [0.9, 0.1, 0.5, 3.7, 0.33]
    first = {t: a.value(t).clone() for t in times}
    for t in reversed(times):  # other query order, other instance
        torch.testing.assert_close(b.value(t), first[t], rtol=0, atol=0)
    assert not torch.equal(BrownianTree((64,), seed=4).value(0.5), first[0.5])


def test_brownian_increments_add_up_across_step_counts():
    x = torch.zeros(2, 8)
    coarse = torch.linspace(1.0, 0.1, 6)
    fine = torch.linspace(1.0, 0.1, 11)  # contains every coarse point
    ns_c, ns_f = BrownianNoise(x, 11), BrownianNoise(x, 11)
    for i in range(5):
        s0, s1, mid = coarse[i], coarse[i + 1], fine[2 * i + 1]
        dw_coarse = ns_c(s0, s1) * (s0 - s1).sqrt()
        dw_fine = ns_f(s0, mid) * (s0 - mid).sqrt() + ns_f(mid, s1) * (mid - s1).sqrt()
        torch.testing.assert_close(dw_fine, dw_coarse, rtol=0, atol=1e-5)


def test_brownian_tree_has_brownian_statistics():
    tree = BrownianTree((40000,), seed=0)
    w1, w2, w3 = tree.value(0.3), tree.value(0.7), tree.value(2.5)
    for t, w in ((0.3, w1), (0.7, w2), (2.5, w3)):
        assert abs(float(w.var()) / t - 1) < 0.03
    d1, d2 = w2 - w1, w3 - w2
    assert abs(float(d1.var()) / 0.4 - 1) < 0.03 and abs(float(d2.var()) / 1.8 - 1) < 0.03
    assert abs(float((d1 * d2).mean()) / math.sqrt(0.4 * 1.8)) < 0.03  # independent increments


def test_brownian_noise_matches_x():
    x = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    z = BrownianNoise(x, 5)(torch.tensor(0.8), torch.tensor(0.6))
    assert z.dtype == torch.float64 and z.shape == x.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the same noise on CPU and GPU")
def test_brownian_noise_is_the_same_on_cpu_and_gpu():
    x = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    z = BrownianNoise(x, 5)(torch.tensor(0.8), torch.tensor(0.6))
    zc = BrownianNoise(x.cuda(), 5)(torch.tensor(0.8), torch.tensor(0.6))
    assert zc.device.type == "cuda"
    torch.testing.assert_close(zc.cpu(), z, rtol=0, atol=0)


def run(name, seed, flow=True, steps=8, n=64):
    model, ms = (GaussianFlow(), FlowSampling()) if flow else (GaussianVE(), DiscreteSampling())
    sigmas = compute_sigmas(ms, "simple" if flow else "karras", steps)
    x = seeded_noise(0, (n,)) * (1.0 if flow else float(sigmas[0]))
    return SAMPLERS[name].fn(model.denoise, x, sigmas, extra_args={"seed": seed, "model_sampling": ms})


@pytest.mark.parametrize("name", STOCHASTIC)
def test_same_seed_same_result_other_seed_other_result(name):
    for flow in (True, False):
        torch.testing.assert_close(run(name, 1, flow), run(name, 1, flow), rtol=0, atol=0)
        assert (run(name, 1, flow) - run(name, 2, flow)).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
                                  "dpmpp_3m_sde", "ddpm"])
@pytest.mark.parametrize("kind", ["flow", "eps", "v"])
def test_stochastic_samplers_reach_the_data_distribution(name, kind):
    """Gaussian data with an exact denoiser: the samples' mean and std must match the data's (0.3, 0.5).

    Feeding the EPS/V noise formulas to a flow model (or the reverse) moves the mean by ~0.2 and the std by ~0.1.
    """
    flow = kind == "flow"
    model = GaussianFlow() if flow else GaussianVE()
    ms = FlowSampling() if flow else DiscreteSampling(prediction="eps" if kind == "eps" else "v_prediction")
    steps = 100 if name in ("euler_ancestral", "ddpm") else 30  # first-order methods need more steps
    sigmas = compute_sigmas(ms, "simple" if flow else "karras", steps)
    x = seeded_noise(0, (20000,)) * float(model.marginal_std(sigmas[0]))
    out = SAMPLERS[name].fn(model.denoise, x, sigmas, extra_args={"seed": 9, "model_sampling": ms})
    assert abs(float(out.mean()) - 0.3) < 0.015
    assert abs(float(out.std()) - 0.5) < 0.03


@pytest.mark.parametrize("name", NEW)
def test_flow_model_is_never_evaluated_at_sigma_zero(name):
    seen = []
    model = GaussianFlow()

    def spy(x, sigma, **kw):
        assert "model_sampling" not in kw  # ours; the model gets only ComfyUI-style extra_args
        seen.append(float(sigma[0]))
        return model.denoise(x, sigma)

    out = SAMPLERS[name].fn(spy, seeded_noise(1, (4,)), torch.linspace(1.0, 0.0, 6),
                            extra_args={"seed": 0, "model_sampling": FlowSampling()})
    assert 0.0 not in seen and torch.isfinite(out).all()
    assert len(seen) == 5 * SAMPLERS[name].calls_per_step - (SAMPLERS[name].calls_per_step - 1)  # none for 0


def test_lcm_renoises_the_x0_estimate_with_the_model_noise_scaling():
    model, ms = GaussianFlow(), FlowSampling()
    sigmas = torch.tensor([1.0, 0.6, 0.0])
    x = seeded_noise(0, (16,))
    out = SAMPLERS["lcm"].fn(model.denoise, x, sigmas, extra_args={"model_sampling": ms},
                             noise_sampler=BrownianNoise(x, 4))
    z = BrownianNoise(x, 4)(sigmas[0], sigmas[1])
    x1 = 0.6 * z + 0.4 * model.denoise(x, sigmas[:1])
    torch.testing.assert_close(out, model.denoise(x1, sigmas[1:2]))


def test_stochastic_sampler_without_model_sampling_is_a_clear_error():
    with pytest.raises(ValueError, match="model_sampling"):
        SAMPLERS["euler_ancestral"].fn(GaussianFlow().denoise, torch.zeros(4), torch.tensor([1.0, 0.0]))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, timestep, context=None):
        return x * self.scale  # a velocity: any fixed map will do


def test_run_sample_passes_the_seed_to_the_sampler():
    seen = []

    def spy(model, x, sigmas, extra_args=None, callback=None, disable=None):
        seen.append(dict(extra_args))
        return SAMPLERS["euler_ancestral"].fn(model, x, sigmas, extra_args, callback, disable)

    dm = DiffusionModel(Net(), FlowSampling())
    cond = [[torch.zeros(1, 1, 4), {}]]
    info = SamplerInfo("spy", spy, 1, "spy")
    sigmas = torch.linspace(1, 0, 5)
    a = sample(dm, cond, cond, torch.zeros(1, 3, 8, 8), info, sigmas, seed=12, cfg=1.0)
    b = sample(dm, cond, cond, torch.zeros(1, 3, 8, 8), info, sigmas, seed=12, cfg=1.0)
    c = sample(dm, cond, cond, torch.zeros(1, 3, 8, 8), info, sigmas, seed=13, cfg=1.0)
    assert seen[0]["seed"] == 12 and seen[2]["seed"] == 13 and seen[0]["model_sampling"] is dm.model_sampling
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3
