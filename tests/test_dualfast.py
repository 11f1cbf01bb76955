"""DualFast: coefficient 0 is the base sampler bit for bit; the mixed output against a hand-written Euler update
and schedule; effect on the exact Gaussian model's error (tests/analytic.py); UniPC's corrector-only scope."""

import pytest
import torch
from analytic import GaussianFlow

from turbosample.samplers import solvers
from turbosample.samplers.dualfast import corrected_denoiser, sample_dualfast
from turbosample.samplers.model_sampling import FlowSampling
from turbosample.samplers.noise import seeded_noise
from turbosample.samplers.registry import SAMPLERS
from turbosample.samplers.schedulers import compute_sigmas


def toy_denoiser(x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
    """A nonlinear stand-in for a network (its x0 depends on x and sigma in a non-Gaussian way)."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return torch.tanh(0.8 * x) * (1 - s) + 0.1 * torch.sin(3 * x) * s


SIGMAS = compute_sigmas(FlowSampling(), "simple", 6)


@pytest.mark.parametrize("base", ["euler", "dpmpp_2m", "uni_pc"])
def test_coefficient_zero_reproduces_the_base_sampler_exactly(base):
    x = seeded_noise(3, (2, 3, 8, 8))
    expected = SAMPLERS[base].fn(toy_denoiser, x.clone(), SIGMAS)
    assert torch.equal(sample_dualfast(toy_denoiser, x.clone(), SIGMAS, base=base, coefficient=0.0), expected)
    wrapped = corrected_denoiser(toy_denoiser, SIGMAS, 0.0, schedule="constant")  # the wrapper itself, c = 0
    assert torch.equal(SAMPLERS[base].fn(wrapped, x.clone(), SIGMAS), expected)


@pytest.mark.parametrize("base", ["euler_dualfast", "dpmpp_2m_dualfast"])
def test_registered_variants_are_one_call_samplers_that_change_the_result(base):
    info = SAMPLERS[base]
    assert info.calls_per_step == 1
    calls = []

    def spy(x, sigma, **kw):
        calls.append(float(sigma[0]))
        return toy_denoiser(x, sigma)

    x = seeded_noise(4, (1, 3, 8, 8))
    out = info.fn(spy, x.clone(), SIGMAS, **{**info.options, "coefficient": 0.3})
    assert calls == [float(s) for s in SIGMAS[:-1]]  # zero extra model calls
    plain = SAMPLERS[info.options["base"]].fn(toy_denoiser, x.clone(), SIGMAS)
    assert not torch.allclose(out, plain)


@pytest.mark.parametrize("target", ["d", "x0"])
def test_euler_update_uses_the_mixed_output_of_the_previous_step(target):
    # oracle written out by hand: Euler with out_new = (1 + c) out_i - c out_{i-1}, c constant
    c, sigmas = 0.4, torch.tensor([1.0, 0.7, 0.35, 0.0])
    x = seeded_noise(5, (1, 2, 4, 4))
    got = sample_dualfast(toy_denoiser, x.clone(), sigmas, base="euler", coefficient=c, schedule="constant",
                          target=target)
    y, previous = x.clone(), None
    for i in range(3):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = toy_denoiser(y, s.reshape(1))
        raw = (y - x0) / s if target == "d" else x0
        mixed = raw if previous is None else (1 + c) * raw - c * previous
        previous = raw
        d = mixed if target == "d" else (y - mixed) / s
        y = y + d * (s_next - s)
    assert torch.allclose(got, y, atol=1e-6)


def test_linear_schedule_and_first_reference():
    # linear: c_i = c * i / (steps - 1); reference "first": always the first step's output
    c, sigmas = 0.6, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    x = seeded_noise(6, (1, 2, 4, 4))
    got = sample_dualfast(toy_denoiser, x.clone(), sigmas, base="euler", coefficient=c, schedule="linear",
                          reference="first")
    y, first = x.clone(), None
    for i in range(4):
        s = sigmas[i]
        d = (y - toy_denoiser(y, s.reshape(1))) / s
        first = d if first is None else first
        ci = c * i / 3
        y = y + ((1 + ci) * d - ci * first) * (sigmas[i + 1] - s)
    assert torch.allclose(got, y, atol=1e-6)


@pytest.mark.parametrize("steps", [2, 3, 5])
def test_decay_schedule_is_strongest_first_and_off_at_the_last_step(steps):
    # decay: c_i = c * (steps - 1 - i) / (steps - 2): c at the first corrected step, 0 at the last one
    c, sigmas = 0.8, torch.linspace(1.0, 0.0, steps + 1)
    x = seeded_noise(7, (1, 2, 4, 4))
    got = sample_dualfast(toy_denoiser, x.clone(), sigmas, base="euler", coefficient=c, schedule="decay")
    y, previous = x.clone(), None
    for i in range(steps):
        s = sigmas[i]
        d = (y - toy_denoiser(y, s.reshape(1))) / s
        ci = c * (steps - 1 - i) / max(steps - 2, 1)
        mixed = d if previous is None else (1 + ci) * d - ci * previous
        previous = d
        y = y + mixed * (sigmas[i + 1] - s)
    assert torch.allclose(got, y, atol=1e-6)
    if steps == 2:  # the only corrected step is the last: the base sampler exactly
        assert torch.equal(got, sample_dualfast(toy_denoiser, x.clone(), sigmas, base="euler", coefficient=0.0))


def test_bad_options_give_clear_errors():
    x = seeded_noise(0, (1, 2, 4, 4))
    with pytest.raises(ValueError, match="one-call-per-step"):
        sample_dualfast(toy_denoiser, x, SIGMAS, base="heun", coefficient=0.2)
    with pytest.raises(ValueError, match="unknown base sampler"):
        sample_dualfast(toy_denoiser, x, SIGMAS, base="nope", coefficient=0.2)
    with pytest.raises(ValueError, match="schedule"):
        sample_dualfast(toy_denoiser, x, SIGMAS, coefficient=0.2, schedule="cosine")
    with pytest.raises(ValueError, match="reference"):
        sample_dualfast(toy_denoiser, x, SIGMAS, coefficient=0.2, reference="last")


def euler_error(flow: GaussianFlow, x: torch.Tensor, steps: int, **dualfast) -> float:
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    exact = flow.exact(x, 1.0, 0.0)
    if dualfast:
        out = sample_dualfast(flow.denoise, x.clone(), sigmas, base="euler", **dualfast)
    else:
        out = solvers.sample_euler(flow.denoise, x.clone(), sigmas)
    return float((out - exact).pow(2).mean())


@pytest.mark.parametrize("steps", [4, 6, 8])
def test_on_the_exact_gaussian_model_positive_coefficient_lowers_euler_error(steps):
    # The analytic model has no approximation error, so only the discretization side can show: extrapolating
    # away from the previous step's derivative (c > 0) acts like an Adams-Bashforth predictor and lowers
    # Euler's error against the exact ODE solution; the opposite sign raises it.
    flow, x = GaussianFlow(), seeded_noise(7, (4, 256))
    base = euler_error(flow, x, steps)
    assert euler_error(flow, x, steps, coefficient=0.3, schedule="constant") < base
    assert euler_error(flow, x, steps, coefficient=-0.3, schedule="constant") > base


def test_on_the_exact_gaussian_model_the_correction_does_not_help_a_second_order_solver():
    # With no approximation error to correct, DPM-Solver++(2M) at 8 steps is already accurate; the mixing
    # only adds error there (the gains measured on the built-in model are not a discretization effect).
    flow, x = GaussianFlow(), seeded_noise(7, (4, 256))
    sigmas = torch.linspace(1.0, 0.0, 9)
    exact = flow.exact(x, 1.0, 0.0)
    plain = float((solvers.sample_dpmpp_2m(flow.denoise, x.clone(), sigmas) - exact).pow(2).mean())
    mixed = sample_dualfast(flow.denoise, x.clone(), sigmas, base="dpmpp_2m", coefficient=0.3)
    assert float((mixed - exact).pow(2).mean()) > plain


def test_unipc_corrector_scope_mixes_only_what_the_corrector_sees():
    from turbosample.samplers.dualfast import output_mixer
    from turbosample.samplers.multistep import sample_uni_pc

    x = seeded_noise(4, (1, 2, 8, 8))
    plain = sample_uni_pc(toy_denoiser, x.clone(), SIGMAS)
    seen = []

    def identity(x_, sigma, x0):
        seen.append(float(sigma))
        return x0

    assert torch.equal(sample_uni_pc(toy_denoiser, x.clone(), SIGMAS, corrector_value=identity), plain)
    assert seen == [float(s) for s in SIGMAS[:-1]]  # every model output once, in call order
    # scope "corrector" (UniPC's default) = the hook fed by DualFast's mixer; scope "all" wraps the denoiser
    mixer = output_mixer(SIGMAS, 0.4, "decay")
    by_hand = sample_uni_pc(toy_denoiser, x.clone(), SIGMAS, corrector_value=mixer)
    got = sample_dualfast(toy_denoiser, x.clone(), SIGMAS, base="uni_pc", coefficient=0.4)
    assert torch.equal(got, by_hand) and not torch.allclose(got, plain)
    everywhere = sample_dualfast(toy_denoiser, x.clone(), SIGMAS, base="uni_pc", coefficient=0.4, scope="all")
    wrapped = sample_uni_pc(corrected_denoiser(toy_denoiser, SIGMAS, 0.4, "decay"), x.clone(), SIGMAS)
    assert torch.equal(everywhere, wrapped) and not torch.allclose(everywhere, got)
    with pytest.raises(ValueError, match="needs a predictor-corrector base"):
        sample_dualfast(toy_denoiser, x.clone(), SIGMAS, base="euler", coefficient=0.4, scope="corrector")
    with pytest.raises(ValueError, match="unknown DualFast scope"):
        sample_dualfast(toy_denoiser, x.clone(), SIGMAS, base="uni_pc", coefficient=0.4, scope="both")
