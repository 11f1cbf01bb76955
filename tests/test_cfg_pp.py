"""CFG++ samplers, RES multistep ancestral, gradient estimation and cfg_denoiser's post-CFG hook.

Oracles here: the plain samplers where CFG++ must reduce to them (cfg 0, equal prompts), plain Euler CFG with the
equivalent step-dependent scale, the exact Gaussian ODE (convergence), the data distribution, and the flow <-> VE
equivalence. With guided != unguided estimates every step formula (2M, 2S, RES, gradient estimation corrections)
is checked against the paper's / ComfyUI's formulas, written by hand, in tests/test_step_formulas.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from analytic import GaussianFlow, GaussianVE

from turbosample.samplers import cfg_pp, gradient_estimation, multistep, solvers, stochastic
from turbosample.samplers.denoiser import DiffusionModel, cfg_denoiser
from turbosample.samplers.model_sampling import DiscreteSampling, FlowSampling
from turbosample.samplers.noise_sources import BrownianNoise
from turbosample.samplers.registry import SAMPLERS
from turbosample.samplers.schedulers import compute_sigmas

COND_MEAN, UNCOND_MEAN, STD = 0.6, -0.2, 0.5
CFG_PP = [n for n in SAMPLERS if n.endswith("_cfg_pp")]
# cfg_pp sampler -> the plain sampler it must equal at cfg 1 (None: not true for every model family, see below)
PLAIN = {"euler_cfg_pp": solvers.sample_euler, "dpmpp_2m_cfg_pp": solvers.sample_dpmpp_2m,
         "dpmpp_2s_ancestral_cfg_pp": stochastic.sample_dpmpp_2s_ancestral,
         "res_multistep_cfg_pp": multistep.sample_res_multistep,
         "res_multistep_ancestral_cfg_pp": cfg_pp.sample_res_multistep_ancestral,
         "gradient_estimation_cfg_pp": gradient_estimation.sample_gradient_estimation,
         "euler_ancestral_cfg_pp": stochastic.sample_euler_ancestral}


class ExactEPS(DiscreteSampling):
    """EPS/V sampling whose timestep is sigma itself, so an analytic network knows sigma exactly."""

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma


def make_ms(kind: str):
    return FlowSampling(1.0) if kind == "flow" else ExactEPS(prediction=kind)


class AnalyticNet(torch.nn.Module):
    """A network whose x0 is the exact Gaussian denoiser for data mean = context[:, 0, 0] (std STD).

    Records every sigma it is called at.
    """

    def __init__(self, ms):
        super().__init__()
        self.ms, self.flow = ms, ms.prediction == "flow"
        self.device_probe = torch.nn.Parameter(torch.zeros(()))  # run.sample reads the device from a parameter
        self.sigmas_seen: list[float] = []

    def forward(self, x_in: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        sigma = t / self.ms.multiplier if self.flow else t
        self.sigmas_seen += [float(s) for s in sigma]
        ones = torch.ones_like(x_in)
        x = x_in / self.ms.calculate_input(sigma, ones)
        shape = (-1, *([1] * (x.ndim - 1)))
        m, s = context[:, 0, 0].reshape(shape).to(x), sigma.reshape(shape).to(x)
        if self.flow:  # x = (1 - s) x0 + s noise
            target = m + (1 - s) * STD ** 2 / ((1 - s) ** 2 * STD ** 2 + s ** 2) * (x - (1 - s) * m)
        else:  # x = x0 + s noise
            target = m + STD ** 2 / (STD ** 2 + s ** 2) * (x - m)
        # invert calculate_denoised (affine in the model output) for the output that yields ``target``
        base = self.ms.calculate_denoised(sigma, torch.zeros_like(x), x)
        slope = self.ms.calculate_denoised(sigma, ones, x) - base
        return (target - base) / slope


def cond(value: float) -> list:
    return [[torch.full((1, 1, 1), value, dtype=torch.float64), {}]]


def setup(kind: str, cfg: float, steps: int = 10):
    ms = make_ms(kind)
    net = AnalyticNet(ms)
    model = DiffusionModel(net, ms)
    sigmas = compute_sigmas(FlowSampling(3.0) if kind == "flow" else DiscreteSampling(), "karras" if kind != "flow"
                            else "simple", steps).double()
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x * sigmas[0] if kind != "flow" else x
    return net, model, cfg_denoiser(model, cond(COND_MEAN), cond(UNCOND_MEAN), cfg), ms, sigmas, x


def branch(model: DiffusionModel, mean: float):
    return lambda x, s, **_: model.denoise(x, s, torch.full((x.shape[0], 1, 1), mean, dtype=x.dtype))


def run(fn, denoiser, x, sigmas, ms, **kw):
    return fn(denoiser, x.clone(), sigmas, extra_args={"model_sampling": ms, "seed": 3}, **kw)


# ---- the post-CFG hook --------------------------------------------------------------------------------------------

def test_hook_gets_cond_and_uncond_x0_and_replaces_denoised():
    _, model, denoise, _, sigmas, x = setup("eps", 2.5)
    sigma = sigmas[3] * torch.ones(x.shape[0], dtype=x.dtype)
    seen = []

    def hook(args):
        seen.append(args)
        return args["denoised"] * 0 + 7.0

    out = denoise(x, sigma, model_options=cfg_pp.set_model_options_post_cfg_function({}, hook))
    c, u = branch(model, COND_MEAN)(x, sigma), branch(model, UNCOND_MEAN)(x, sigma)
    assert not torch.allclose(c, u)
    a = seen[0]
    torch.testing.assert_close(a["cond_denoised"], c)
    torch.testing.assert_close(a["uncond_denoised"], u)
    torch.testing.assert_close(a["denoised"], u + 2.5 * (c - u))
    assert a["input"] is x and a["sigma"] is sigma and a["cond_scale"] == 2.5 and "model_options" in a
    assert torch.all(out == 7.0)
    torch.testing.assert_close(denoise(x, sigma), u + 2.5 * (c - u))  # no hook: plain CFG


def test_hooks_chain_in_order_and_options_are_not_mutated():
    _, _, denoise, _, sigmas, x = setup("flow", 2.0)
    sigma = sigmas[2] * torch.ones(x.shape[0], dtype=x.dtype)
    options = cfg_pp.set_model_options_post_cfg_function({}, lambda a: a["denoised"] + 1)
    chained = cfg_pp.set_model_options_post_cfg_function(dict(options), lambda a: a["denoised"] * 2)
    assert len(options["sampler_post_cfg_function"]) == 1 and len(chained["sampler_post_cfg_function"]) == 2
    torch.testing.assert_close(denoise(x, sigma, model_options=chained), (denoise(x, sigma) + 1) * 2)


@pytest.mark.parametrize("disable", [False, True])
def test_cfg1_runs_the_uncond_branch_only_when_asked(disable):
    _, model, denoise, _, sigmas, x = setup("v_prediction", 1.0)
    sigma = sigmas[2] * torch.ones(x.shape[0], dtype=x.dtype)
    got = {}
    options = cfg_pp.set_model_options_post_cfg_function({}, lambda a: got.update(a) or a["denoised"], disable)
    out = denoise(x, sigma, model_options=options)
    c = branch(model, COND_MEAN)(x, sigma)
    torch.testing.assert_close(out, c)
    want_u = branch(model, UNCOND_MEAN)(x, sigma) if disable else torch.zeros_like(c)
    torch.testing.assert_close(got["uncond_denoised"], want_u)


def test_cfg_pp_sampler_without_a_cfg_denoiser_is_refused():
    with pytest.raises(ValueError, match="sampler_post_cfg_function"):
        cfg_pp.sample_euler_cfg_pp(GaussianVE().denoise, torch.ones(1, 2), torch.tensor([2.0, 1.0, 0.0]),
                                   extra_args={"model_sampling": DiscreteSampling()})


# ---- where CFG++ reduces to the plain sampler -----------------------------------------------------------------------
# Not at cfg 1: there CFG++ steps with the cond x0 but re-noises with the uncond noise estimate. It is the plain
# sampler (a) at cfg 0, on the uncond model, and (b) when both prompts are the same, at any cfg.

# Not euler_ancestral_cfg_pp on flow models: its step splits noise in the VE-equivalent level (as ComfyUI's),
# euler_ancestral uses the rectified-flow split: different paths, both exact in distribution
# (test_ancestral_samplers_draw_from_the_data_distribution).
@pytest.mark.parametrize("kind, name", [(kind, name) for kind in ("eps", "v_prediction", "flow")
                                        for name in sorted(PLAIN)
                                        if not (name == "euler_ancestral_cfg_pp" and kind == "flow")])
@pytest.mark.parametrize("case", ["cfg0", "same_prompts"])
def test_cfg_pp_reduces_to_the_plain_sampler(kind, name, case):
    _, model, denoise, ms, sigmas, x = setup(kind, 0.0)
    plain_model = branch(model, UNCOND_MEAN)
    if case == "same_prompts":
        denoise = cfg_denoiser(model, cond(COND_MEAN), cond(COND_MEAN), 2.5)
        plain_model = branch(model, COND_MEAN)
    noisy = "ancestral" in name
    ours = run(SAMPLERS[name].fn, denoise, x, sigmas, ms, **({"noise_sampler": BrownianNoise(x, 5)} if noisy else {}))
    plain = run(PLAIN[name], plain_model, x, sigmas, ms, **({"noise_sampler": BrownianNoise(x, 5)} if noisy else {}))
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, plain, rtol=0, atol=1e-9)


def test_res_multistep_ancestral_with_eta0_is_res_multistep():
    for kind in ("eps", "flow"):
        _, _, denoise, ms, sigmas, x = setup(kind, 3.0)
        torch.testing.assert_close(run(cfg_pp.sample_res_multistep_ancestral, denoise, x, sigmas, ms, eta=0.0),
                                   run(multistep.sample_res_multistep, denoise, x, sigmas, ms), rtol=0, atol=1e-12)


# ---- cfg != 1 -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["eps", "v_prediction", "flow"])
def test_euler_cfg_pp_is_cfg_with_the_step_dependent_scale(kind):
    """CFG++ at lambda = plain Euler/DDIM CFG at w_i = lambda alpha_next / (alpha_next - alpha sigma_next / sigma).

    An independent check of the alpha_s handling: the reference never sees an uncond noise estimate.
    """
    lam = 0.7
    _, model, denoise, ms, sigmas, x = setup(kind, lam)
    ours = run(cfg_pp.sample_euler_cfg_pp, denoise, x, sigmas, ms)
    flow = kind == "flow"
    scales = {}
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        a, a_next = (1 - s, 1 - s_next) if flow else (1.0, 1.0)
        scales[s] = lam if s_next == 0 else lam * a_next / (a_next - a * s_next / s)
    c, u = branch(model, COND_MEAN), branch(model, UNCOND_MEAN)

    def varying_cfg(x_, s):
        w = scales[float(s[0])]
        return u(x_, s) + w * (c(x_, s) - u(x_, s))

    reference = solvers.sample_euler(varying_cfg, x.clone(), sigmas)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-9)
    assert max(scales.values()) > 2.5 * lam  # the step-size dependence the registry note describes


@pytest.mark.parametrize("name", CFG_PP)
@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_cfg_pp_guidance_grows_with_cfg(name, kind):
    """cfg 0 samples the uncond Gaussian; the sample mean then moves monotonically towards (and past) the cond one."""
    means = []
    for lam in (0.0, 0.5, 1.0):
        _, _, denoise, ms, sigmas, _ = setup(kind, lam, steps=12)
        x = torch.randn(2000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        x = x * sigmas[0] if kind != "flow" else x
        kw = {"noise_sampler": BrownianNoise(x, 2)} if "ancestral" in name else {}
        means.append(float(run(SAMPLERS[name].fn, denoise, x, sigmas, ms, **kw).mean()))
    assert abs(means[0] - UNCOND_MEAN) < 0.06
    assert means[0] + 0.2 < means[1] < means[2] - 0.2, means


# ---- accuracy on the analytic models ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_gradient_estimation_converges_and_beats_euler(kind):
    """Against the exact ODE solution on a schedule without the final jump to 0 (same end point at every count)."""
    errors = {}
    for steps in (8, 16, 32, 64):
        _, _, denoise, ms, _, x = setup(kind, 1.0)
        if kind == "flow":
            sigmas = torch.linspace(1.0, 0.05, steps + 1, dtype=torch.float64)
            gauss = GaussianFlow(COND_MEAN, STD)
        else:
            sigmas = torch.linspace(math.log(14.6), math.log(0.05), steps + 1, dtype=torch.float64).exp()
            x = x / x.std() * 14.6
            gauss = GaussianVE(COND_MEAN, STD)
        exact = gauss.exact(x, float(sigmas[0]), float(sigmas[-1]))
        ge = run(gradient_estimation.sample_gradient_estimation, denoise, x, sigmas, ms)
        eu = run(solvers.sample_euler, denoise, x, sigmas, ms)
        errors[steps] = (float((ge - exact).abs().max()), float((eu - exact).abs().max()))
    assert all(g < e for g, e in errors.values()), errors
    assert math.log2(errors[32][0] / errors[64][0]) > 0.8, errors  # first order, like Euler


@pytest.mark.parametrize("kind", ["eps", "flow"])
@pytest.mark.parametrize("name", ["res_multistep_ancestral", "euler_ancestral_cfg_pp"])
def test_ancestral_samplers_draw_from_the_data_distribution(kind, name):
    """With both prompts the same the final samples must follow N(COND_MEAN, STD^2): checks the noise split.

    (The other ancestral CFG++ samplers equal tested plain ones in that case, see test_cfg_pp_reduces_....)
    """
    _, model, _, ms, sigmas, _ = setup(kind, 1.0, steps=96)  # Euler ancestral's std is 0.43 at 24 steps, 0.48 here
    denoise = cfg_denoiser(model, cond(COND_MEAN), cond(COND_MEAN), 2.0)
    x = torch.randn(4000, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x = x * (sigmas[0] ** 2 + STD ** 2) ** 0.5 + COND_MEAN if kind != "flow" else x
    out = run(SAMPLERS[name].fn, denoise, x, sigmas, ms, noise_sampler=BrownianNoise(x, 9))
    assert abs(float(out.mean()) - COND_MEAN) < 0.01
    assert abs(float(out.std()) - STD) < 0.04


# ---- flow models: never evaluated at sigma = 0 ---------------------------------------------------------------------

@pytest.mark.parametrize("name", CFG_PP + ["res_multistep_ancestral", "gradient_estimation"])
def test_flow_model_never_evaluated_at_sigma_zero(name):
    net, _, denoise, ms, sigmas, x = setup("flow", 2.0, steps=6)
    assert float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0
    out = run(SAMPLERS[name].fn, denoise, x, sigmas, ms)
    assert torch.isfinite(out).all()
    assert net.sigmas_seen and min(net.sigmas_seen) > 0


def test_default_run_through_our_loop():
    from turbosample.samplers.run import sample

    for name in CFG_PP + ["res_multistep_ancestral", "gradient_estimation"]:
        net, model, _, ms, sigmas, _ = setup("flow", 1.0, steps=5)
        latent = torch.zeros(1, 3, 4, 4)
        out = sample(model, cond(COND_MEAN), cond(UNCOND_MEAN), latent, SAMPLERS[name], sigmas.float(), seed=1,
                     cfg=1.5)
        assert out.shape == latent.shape and torch.isfinite(out).all(), name


@pytest.mark.parametrize("name", ["euler_cfg_pp", "dpmpp_2m_cfg_pp", "res_multistep_cfg_pp",
                                  "gradient_estimation_cfg_pp", "euler_ancestral_cfg_pp"])
def test_flow_cfg_pp_step_matches_the_equivalent_ve_model(name):
    """x = (1 - s) x0 + s eps is the VE process x / (1 - s) at sigma s / (1 - s): a CFG++ step must commute with that
    map. One step then the final x0 (all samplers' first step is the Euler CFG++ step); needs the alpha_s shift."""
    _, flow_model, _, flow_ms, _, x = setup("flow", 1.0)
    _, ve_model, _, ve_ms, _, _ = setup("eps", 1.0)
    flow_sig = torch.tensor([0.8, 0.4, 0.0], dtype=torch.float64)
    ve_sig = flow_sig / (1 - flow_sig)
    runs = []
    for model, ms, sig, x0 in ((flow_model, flow_ms, flow_sig, x), (ve_model, ve_ms, ve_sig, x / 0.2)):
        denoise = cfg_denoiser(model, cond(COND_MEAN), cond(UNCOND_MEAN), 1.8)
        sig = sig[:2] if "ancestral" in name else sig  # stop at the noisy level: compare x (scaled), not x0
        kw = {"noise_sampler": lambda a, b: torch.ones_like(x)} if "ancestral" in name else {}
        runs.append(run(SAMPLERS[name].fn, denoise, x0, sig, ms, **kw))
    scale = 1 - flow_sig[1] if "ancestral" in name else 1.0
    # DiffusionModel runs the network in its parameters' dtype (float32 here) with a float32 timestep: each model
    # output carries a relative rounding of 2^-24 = 6e-8 on values up to ~20 (the VE run's x / 0.2), through two
    # calls and the rescaling by 0.2: ~1e-6 at most (7e-7 measured). A missing alpha_s moves the result by ~0.1.
    torch.testing.assert_close(runs[0], runs[1] * scale, rtol=0, atol=1e-5)
