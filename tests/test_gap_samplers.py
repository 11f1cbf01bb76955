"""Restart, EDM churn, GHVB/HB momentum, Time-Shift and the flow-shift control, on the analytic Gaussian models.

Oracles: the exact probability-flow ODE and data distribution of Gaussian data (tests/analytic.py), the base
methods of solvers.py (exact reduction at the neutral parameter), a scalar linear test equation (stability), and
diffusers' FlowMatchEulerDiscreteScheduler with the Flux pipeline's calculate_shift (flow shift).
"""

import math

import pytest
import torch
from analytic import GaussianFlow, GaussianVE

from turbosample.samplers import churn, momentum, restart, solvers, time_shift
from turbosample.samplers.flow_shift import apply_flow_shift, image_tokens, resolution_mu, shifted_schedule
from turbosample.samplers.model_sampling import DiscreteSampling, FlowSampling
from turbosample.samplers.noise import seeded_noise
from turbosample.samplers.registry import SAMPLERS
from turbosample.samplers.schedulers import compute_sigmas

NEW = ["euler_churn", "heun_churn", "dpm_2_churn", "restart", "ghvb", "plms_hb", "euler_time_shift",
       "dpmpp_2m_time_shift"]


def setup(kind: str, steps: int, std: float = 0.5):
    """(model, model_sampling, sigmas, x at sigmas[0]) for Gaussian data of mean 0.3, in float64."""
    if kind == "flow":
        model, ms = GaussianFlow(0.3, std), FlowSampling()
        sigmas = compute_sigmas(ms, "simple", steps).double()
        start_mean = (1 - float(sigmas[0])) * 0.3
    else:
        model, ms = GaussianVE(0.3, std), DiscreteSampling()
        sigmas = compute_sigmas(ms, "karras", steps).double()
        start_mean = 0.3
    return model, ms, sigmas, start_mean, float(model.marginal_std(sigmas[0]))


def output_w2(run, target_mean: float, target_std: float) -> float:
    """Exact W2 distance of a sampler's output law from N(mean, std^2), for samplers linear in (x, noise draws).

    Element 0 gets x = 0, element 1 x = 1, element 2 + k a unit k-th noise draw (all others 0), so one run gives
    the affine map out = B + A x + sum_k C_k z_k and the output law N(B, A^2 + sum C_k^2).
    """
    n = 64
    x = torch.zeros(n, dtype=torch.float64)
    x[1] = 1.0
    draws = [0]

    def noise(sigma, sigma_next):
        z = torch.zeros(n, dtype=torch.float64)
        z[2 + draws[0]] = 1.0
        draws[0] += 1
        return z

    out = run(x, noise)
    b, a, c = out[0], out[1] - out[0], out[2:2 + draws[0]] - out[0]
    std = (a ** 2 + (c ** 2).sum()).sqrt()
    return float(((b - target_mean) ** 2 + (std - target_std) ** 2).sqrt())


# ---------------------------------------------------------------- common to every new sampler


@pytest.mark.parametrize("name", NEW)
def test_new_samplers_never_evaluate_at_sigma_zero_and_count_calls(name):
    seen = []
    model = GaussianFlow()

    def spy(x, sigma, **kw):
        assert "model_sampling" not in kw
        seen.append(float(sigma.min()))
        return model.denoise(x, sigma)

    info = SAMPLERS[name]
    out = info.fn(spy, seeded_noise(1, (4,)), torch.linspace(1.0, 0.0, 6),
                  extra_args={"seed": 0, "model_sampling": FlowSampling()}, **info.options)
    assert 0.0 not in seen and torch.isfinite(out).all()
    assert len(seen) == 5 * info.calls_per_step - (info.calls_per_step - 1)


@pytest.mark.parametrize("name", ["euler_churn", "heun_churn", "restart"])
def test_stochastic_new_samplers_are_deterministic_per_seed(name):
    model, ms, sigmas, mean, std0 = setup("flow", 24)
    x = mean + std0 * seeded_noise(0, (256,)).double()
    info = SAMPLERS[name]

    def run(seed):
        return info.fn(model.denoise, x.clone(), sigmas, {"seed": seed, "model_sampling": ms}, **info.options)

    assert torch.equal(run(3), run(3))
    assert (run(3) - run(4)).abs().max() > 1e-3


# ---------------------------------------------------------------- EDM churn


@pytest.mark.parametrize("method", ["euler", "heun", "dpm_2"])
@pytest.mark.parametrize("kind", ["flow", "ve"])
def test_churn_off_is_the_base_method_bit_for_bit(method, kind):
    model, ms, sigmas, mean, std0 = setup(kind, 9)
    x = mean + std0 * seeded_noise(2, (64,)).double()
    base = getattr(solvers, f"sample_{method}")(model.denoise, x.clone(), sigmas)
    args = {"seed": 1, "model_sampling": ms}
    off = churn.sample_churn(model.denoise, x.clone(), sigmas, args, method=method, s_churn=0.0)
    assert torch.equal(off, base)
    # churn on, but a [s_tmin, s_tmax] window that holds none of the sigmas
    out_of_window = churn.sample_churn(model.denoise, x.clone(), sigmas, args, method=method, s_churn=40.0,
                                       s_tmin=1e6, s_tmax=1e7)
    assert torch.equal(out_of_window, base)


def test_churn_gamma_follows_edm():
    sigma = torch.tensor(1.0)
    assert churn.churn_gamma(sigma, 256, 40.0, 0.05, 50.0, flow=False) == pytest.approx(40 / 256)
    assert churn.churn_gamma(sigma, 20, 40.0, 0.05, 50.0, flow=False) == pytest.approx(math.sqrt(2) - 1)
    assert churn.churn_gamma(torch.tensor(0.01), 20, 40.0, 0.05, 50.0, flow=False) == 0.0
    # flow sigma 0.5 is VE level 1 (inside the window); 0.04 is level 0.0417 (outside); sigma 1 never churns
    assert churn.churn_gamma(torch.tensor(0.5), 256, 40.0, 0.05, 50.0, flow=True) == pytest.approx(40 / 256)
    assert churn.churn_gamma(torch.tensor(0.04), 256, 40.0, 0.05, 50.0, flow=True) == 0.0
    assert churn.churn_gamma(torch.tensor(1.0), 256, 40.0, 0.0, math.inf, flow=True) == 0.0


@pytest.mark.parametrize("flow", [True, False])
def test_renoising_formula_lands_exactly_on_the_higher_noise_level(flow):
    """x = a x0 + s eps -> add_noise(x, s, s_hi, z): x0 coefficient a(s_hi), noise variance s_hi^2 (per element)."""
    s, s_hi = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    alpha = (lambda v: 1 - v) if flow else (lambda v: torch.ones_like(v))
    # push the three basis directions (x0, eps, z) through the affine formula separately
    x0_part = churn.add_noise(alpha(s).reshape(1), s, s_hi, torch.zeros(1, dtype=torch.float64), flow)
    eps_part = churn.add_noise(s.reshape(1), s, s_hi, torch.zeros(1, dtype=torch.float64), flow)
    z_part = churn.add_noise(torch.zeros(1, dtype=torch.float64), s, s_hi, torch.ones(1, dtype=torch.float64), flow)
    assert float(x0_part) == pytest.approx(float(alpha(s_hi)), abs=1e-12)
    assert float(eps_part ** 2 + z_part ** 2) == pytest.approx(float(s_hi ** 2), abs=1e-12)


@pytest.mark.parametrize("kind", ["flow", "ve"])
def test_heun_churn_reaches_the_data_distribution(kind):
    """Exact denoiser: churned Heun (churn 10, s_noise 1) must still produce N(0.3, 0.5^2) at 60 steps."""
    model, ms, sigmas, mean, std0 = setup(kind, 60)
    w2 = output_w2(lambda x, noise: churn.sample_churn(
        model.denoise, mean + std0 * x, sigmas, {"model_sampling": ms}, method="heun", s_churn=10.0,
        noise_sampler=noise), 0.3, 0.5)
    assert w2 < 5e-3


def test_churn_registry_uses_the_edm_imagenet_settings():
    assert SAMPLERS["heun_churn"].options == {"method": "heun", "s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0,
                                              "s_noise": 1.003}


def test_churn_rejects_bad_settings():
    model, ms, sigmas, _, _ = setup("flow", 4)
    with pytest.raises(ValueError, match="s_churn"):
        churn.sample_churn(model.denoise, torch.zeros(2), sigmas, {"model_sampling": ms}, s_churn=-1.0)
    with pytest.raises(ValueError, match="model_sampling"):
        churn.sample_churn(model.denoise, torch.zeros(2), sigmas, {}, s_churn=1.0)
    with pytest.raises(ValueError, match="method"):
        churn.sample_churn(model.denoise, torch.zeros(2), sigmas, {}, method="rk4")


# ---------------------------------------------------------------- Restart


@pytest.mark.parametrize("kind", ["flow", "ve"])
def test_restart_below_20_steps_is_heun_bit_for_bit(kind):
    model, ms, sigmas, mean, std0 = setup(kind, 12)
    x = mean + std0 * seeded_noise(5, (64,)).double()
    out = restart.sample_restart(model.denoise, x.clone(), sigmas, {"seed": 0, "model_sampling": ms})
    assert torch.equal(out, solvers.sample_heun(model.denoise, x.clone(), sigmas))


def test_restart_plan_keeps_the_step_budget_and_the_schedule_ends():
    sigmas = compute_sigmas(FlowSampling(), "simple", 28).double()
    plan = restart.restart_plan(sigmas, flow=True)
    assert len(plan) == 28  # 19 main steps + one 9-step restart segment
    assert float(plan[0][0]) == 1.0 and float(plan[-1][1]) == 0.0
    jumps = [(a, b) for (_, a), (b, _) in zip(plan, plan[1:], strict=False) if b > a]
    assert len(jumps) == 1
    lo, hi = jumps[0]
    # t_min 0.1 / t_max 2 are VE levels; on the flow model they snap to main sigmas near 0.1/1.1 and 2/3
    assert abs(float(lo) - 0.1 / 1.1) < 0.03 and abs(float(hi) - 2 / 3) < 0.03
    explicit = restart.restart_plan(sigmas, flow=True, segments=[(4, 3, 0.2, 1.0)])
    assert len(explicit) == 28 and sum(1 for (_, a), (b, _) in zip(explicit, explicit[1:], strict=False)
                                       if b > a) == 3


@pytest.mark.parametrize("kind", ["flow", "ve"])
def test_restart_contracts_model_error_made_at_high_noise(kind):
    """The paper's claim: the re-noising contracts errors accumulated earlier. With a denoiser that is biased only
    above the restart interval, Restart's output law (same model calls) is much closer to the data than Heun's."""
    model, ms, sigmas, mean, std0 = setup(kind, 28)
    high = 0.7 if kind == "flow" else 2.5

    def biased(x, sigma, **_):
        return model.denoise(x, sigma) + 0.05 * (sigma > high).to(x)

    calls = {"restart": 0, "heun": 0}

    def counted(key):
        def fn(x, sigma, **kw):
            calls[key] += 1
            return biased(x, sigma)
        return fn

    w2_restart = output_w2(lambda x, noise: restart.sample_restart(
        counted("restart"), mean + std0 * x, sigmas, {"model_sampling": ms}, noise_sampler=noise), 0.3, 0.5)
    w2_heun = output_w2(lambda x, noise: solvers.sample_heun(counted("heun"), mean + std0 * x, sigmas), 0.3, 0.5)
    assert calls["restart"] == calls["heun"]
    assert w2_restart < 0.7 * w2_heun, (w2_restart, w2_heun)


def test_restart_rejects_bad_segments():
    sigmas = compute_sigmas(FlowSampling(), "simple", 10)
    with pytest.raises(ValueError, match="main pass"):
        restart.restart_plan(sigmas, True, [(5, 2, 0.1, 2.0)])
    with pytest.raises(ValueError, match="t_min < t_max"):
        restart.restart_plan(sigmas, True, [(2, 1, 2.0, 0.1)])
    with pytest.raises(ValueError, match="steps, K"):
        restart.restart_plan(sigmas, True, [(2, 1, 0.1)])


# ---------------------------------------------------------------- GHVB / heavy ball


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("method", ["ghvb", "hb"])
def test_momentum_with_beta_one_is_adams_bashforth(order, method):
    model, ms, sigmas, mean, std0 = setup("ve", 10)
    x = mean + std0 * seeded_noise(6, (64,)).double()
    out = momentum.sample_momentum(model.denoise, x.clone(), sigmas, {"model_sampling": ms}, method=method,
                                   order=order, beta=1.0)
    expected = solvers.sample_ipndm(model.denoise, x.clone(), sigmas, max_order=order)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_momentum_order_one_beta_one_is_euler_up_to_the_last_step():
    model, ms, _, mean, std0 = setup("flow", 8)
    sigmas = torch.linspace(0.95, 0.05, 9, dtype=torch.float64)  # no step onto 0: every step is a full step
    x = mean + std0 * seeded_noise(6, (64,)).double()
    out = momentum.sample_momentum(model.denoise, x.clone(), sigmas, {}, method="ghvb", order=1, beta=1.0)
    assert torch.equal(out, solvers.sample_euler(model.denoise, x.clone(), sigmas))


def _order(method, order, beta):
    model = GaussianFlow()
    errors = []
    for n in (16, 32, 64, 128):
        sigmas = torch.linspace(0.98, 0.05, n + 1, dtype=torch.float64)
        x = seeded_noise(0, (256,)).double() * float(model.marginal_std(torch.tensor(0.98)))
        out = momentum.sample_momentum(model.denoise, x.clone(), sigmas, {}, method=method, order=order, beta=beta)
        errors.append(float((out - model.exact(x, 0.98, 0.05)).abs().max()))
    return math.log2(errors[-2] / errors[-1])


def test_momentum_convergence_orders():
    """HB is first order for beta < 1 (the paper's analysis); GHVB keeps the Adams order (2 here)."""
    assert abs(_order("hb", 2, 0.8) - 1) < 0.2
    assert abs(_order("hb", 4, 0.5) - 1) < 0.2
    assert abs(_order("ghvb", 2, 0.8) - 2) < 0.2


def test_momentum_enlarges_the_stability_region():
    """y' = lam y with h lam = -0.5: outside AB4's real stability interval (about -0.3); momentum damps it."""
    lam = 5.0

    def linear(x, sigma, **_):  # dx/dsigma = lam x
        return x - sigma.reshape(-1, 1) * lam * x

    sigmas = torch.linspace(10.1, 0.1, 101, dtype=torch.float64)
    x = torch.ones(1, 1, dtype=torch.float64)

    def final(method, beta):
        return float(momentum.sample_momentum(linear, x.clone(), sigmas, {}, method=method, order=4,
                                              beta=beta).abs())

    assert final("ghvb", 1.0) > 1e6  # plain AB4 diverges
    assert final("ghvb", 0.8) < final("ghvb", 1.0) * 1e-3
    assert final("ghvb", 0.3) < 10 and final("hb", 0.5) < 1e-6


def test_momentum_split_order_and_bad_input():
    assert momentum.split_order(3.8) == (4, pytest.approx(0.8))
    assert momentum.split_order(2) == (2, 1.0)
    with pytest.raises(ValueError, match="beta"):
        momentum.sample_momentum(GaussianFlow().denoise, torch.zeros(2), torch.tensor([1.0, 0.0]), beta=0.0)
    with pytest.raises(ValueError, match="order"):
        momentum.sample_momentum(GaussianFlow().denoise, torch.zeros(2), torch.tensor([1.0, 0.0]), order=6)


# ---------------------------------------------------------------- Time-Shift


@pytest.mark.parametrize("base", ["euler", "dpmpp_2m", "ipndm"])
def test_time_shift_neutral_settings_are_the_base_sampler(base):
    model, ms, sigmas, mean, std0 = setup("flow", 10)
    x = mean + std0 * seeded_noise(7, (2, 128)).double()
    args = {"seed": 0, "model_sampling": ms}
    expected = SAMPLERS[base].fn(model.denoise, x.clone(), sigmas, args, **SAMPLERS[base].options)
    for window, cutoff in ((0, 300), (30, 999)):
        out = time_shift.sample_time_shift(model.denoise, x.clone(), sigmas, args, base=base, window=window,
                                           cutoff=cutoff)
        assert torch.equal(out, expected)


@pytest.mark.parametrize("flow", [True, False])
def test_time_shift_picks_the_table_sigma_matching_the_sample_variance(flow):
    ms = FlowSampling() if flow else DiscreteSampling()
    table = ms.sigmas.double()
    t, target = 600, 610  # the sample at table index 600 has exactly the noise variance of index 610
    s, s_target = table[t], table[target]
    var = s_target ** 2 if flow else s_target ** 2 / (1 + s_target ** 2)
    z = torch.randn(1, 4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = (z - z.mean()) / z.std()
    x = z * var.sqrt() * (1.0 if flow else (1 + s ** 2).sqrt())
    sigma = s.reshape(1)
    picked = time_shift.shifted_sigmas(x, sigma, table.float(), flow, window=30, cutoff=300)
    assert float(picked) == pytest.approx(float(s_target), rel=1e-5)
    narrow = time_shift.shifted_sigmas(x, sigma, table.float(), flow, window=10, cutoff=300)  # 610 outside +-5
    assert float(narrow) == pytest.approx(float(table[605]), rel=1e-5)
    below_cutoff = time_shift.shifted_sigmas(x, sigma, table.float(), flow, window=30, cutoff=700)
    assert float(below_cutoff) == float(sigma)


def test_time_shift_keeps_the_network_input_and_returns_x0_for_the_solver_sigma():
    """EPS model: the network at t_s sees the same VP-scaled input; eps(t_s) is turned into x0 at the solver sigma."""
    ms = DiscreteSampling()
    seen = {}

    def net(x, sigma, **_):  # an EPS 'network' that returns eps = 0.1 * VP input
        seen["vp_input"] = x / (1 + sigma.reshape(-1, 1) ** 2).sqrt()
        seen["sigma"] = sigma.clone()
        return x - sigma.reshape(-1, 1) * 0.1 * seen["vp_input"]

    denoise = time_shift.time_shift_denoiser(net, ms, window=200, cutoff=0)
    sigma = torch.tensor([5.0])
    x = 3.0 * torch.randn(1, 512, generator=torch.Generator().manual_seed(1))
    out = denoise(x, sigma)
    assert float(seen["sigma"]) != 5.0  # shifted
    torch.testing.assert_close(seen["vp_input"], x / (1 + 25.0) ** 0.5)
    torch.testing.assert_close(out, x - 5.0 * 0.1 * seen["vp_input"])


# ---------------------------------------------------------------- flow shift


def test_constant_flow_shift_matches_diffusers_flow_match_euler():
    diffusers = pytest.importorskip("diffusers")
    for steps in (4, 10, 28):
        sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
        sched.set_timesteps(steps)
        torch.testing.assert_close(shifted_schedule("normal", steps, shift=3.0), sched.sigmas.float(),
                                   rtol=1e-5, atol=1e-6)


def test_resolution_dependent_shift_matches_diffusers_and_flux_calculate_shift():
    diffusers = pytest.importorskip("diffusers")
    try:  # the Flux pipeline's function (the module pulls in transformers)
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    except Exception:  # pragma: no cover
        pytest.skip("diffusers' Flux pipeline module does not import here")
    for tokens in (256, 1024, 4096, 6000):
        mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
        assert resolution_mu(tokens) == pytest.approx(mu, rel=1e-12)
        sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                          base_image_seq_len=256, max_image_seq_len=4096)
        sched.set_timesteps(20, mu=mu)
        # diffusers spaces down to the unshifted 1/1000, then warps
        unshifted = torch.cat([torch.linspace(1.0, 1e-3, 20, dtype=torch.float64), torch.zeros(1)])
        torch.testing.assert_close(apply_flow_shift(unshifted, mu=mu).float(), sched.sigmas.float(),
                                   rtol=1e-5, atol=1e-6)
        # the ComfyUI-style schedule differs only near its end (ComfyUI spaces down to the shifted sigma_min)
        ours = shifted_schedule("normal", 20, image_seq_len=tokens)
        assert float(ours[0]) == pytest.approx(1.0) and float(ours[-1]) == 0.0
        assert 0 < (ours - sched.sigmas.float()).abs().max() < 1e-2  # largest at the last non-zero sigma


def test_flow_shift_table_shapes_are_the_warped_unshifted_ones():
    """Table-based shapes pick entries of the model's table, so they must equal the warp of the unshifted shape
    (1000-entry table for the constant shift, 10000 entries for the Flux-style shift, as in ComfyUI)."""
    plain, plain_flux = FlowSampling(), FlowSampling(timesteps=10000, multiplier=10000.0)
    mu = resolution_mu(1024)
    for name in ("simple", "ddim_uniform"):
        torch.testing.assert_close(shifted_schedule(name, 12, shift=3.0),
                                   apply_flow_shift(compute_sigmas(plain, name, 12), shift=3.0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(shifted_schedule(name, 12, image_seq_len=1024),
                                   apply_flow_shift(compute_sigmas(plain_flux, name, 12), mu=mu), rtol=1e-5,
                                   atol=1e-6)


def test_flow_shift_keeps_any_shape_valid_and_rejects_bad_input():
    for name in ("karras", "beta", "kl_optimal", "ays_sd1"):
        sigmas = shifted_schedule(name, 10, image_seq_len=image_tokens(64, 64, 4))
        assert float(sigmas[0]) == pytest.approx(1.0) and float(sigmas[-1]) == 0.0
        assert (sigmas[1:] <= sigmas[:-1]).all()
    assert image_tokens(64, 64, 4) == 256 and resolution_mu(256) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="exactly one"):
        apply_flow_shift(torch.tensor([1.0, 0.0]), shift=2.0, mu=0.5)
    with pytest.raises(ValueError, match="either"):
        shifted_schedule("simple", 4, shift=2.0, image_seq_len=256)
    with pytest.raises(ValueError, match="sigmas in"):
        apply_flow_shift(torch.tensor([14.6, 0.0]), shift=2.0)
