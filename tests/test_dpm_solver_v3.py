"""DPM-Solver-v3 and its empirical model statistics (EMS) on the analytic Gaussian models, files and nodes.

For Gaussian data N(m, v) per element (see samplers/ems.py): l = 1 / (1 + v e^(2 lambda)), f = -l m for every
sample, so s = 0 (ridge) and b = -m dl/dlambda; with these statistics g is constant and one first-order step is
exact.
"""

import pytest
import torch
from analytic import GaussianFlow, GaussianVE

from turbosample.samplers.dpm_solver_v3 import sample_dpm_solver_v3
from turbosample.samplers.ems import (
    EMS,
    estimate_ems,
    load_ems,
    neutral_ems,
    save_ems,
    smooth_ell,
    smooth_in_lambda,
)
from turbosample.samplers.model_sampling import DiscreteSampling, FlowSampling
from turbosample.samplers.noise import seeded_noise
from turbosample.samplers.registry import SAMPLERS
from turbosample.samplers.schedulers import karras, simple

CASES = {"flow": (GaussianFlow, FlowSampling, simple), "eps": (GaussianVE, DiscreteSampling, karras)}


def closed_form(data, lambdas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(l, b) of Gaussian data at ``lambdas``."""
    v, m = data.std ** 2, data.mean
    snr = v * torch.exp(2 * lambdas)
    return 1 / (1 + snr), m * 2 * snr / (1 + snr) ** 2


@pytest.fixture(scope="module")
def estimated():
    out = {}
    for kind, (data_cls, ms_cls, _) in CASES.items():
        data, ms = data_cls(), ms_cls()
        raw = estimate_ems(data.denoise, ms, seeded_noise(0, (16, 2, 4, 4)), grid_points=48, smooth=0, sb_margin=0)
        out[kind] = (data, ms, raw)
    return out


@pytest.mark.parametrize("kind", sorted(CASES))
def test_ems_estimator_recovers_the_gaussian_closed_form(estimated, kind):
    data, _, ems = estimated[kind]
    l_true, b_true = closed_form(data, ems.lambdas)
    assert ems.stat_shape == (2, 1, 1)
    # l: Hutchinson is exact for a diagonal Jacobian, so only float32 rounding of the finite difference remains
    assert (ems.ell.flatten(1) - l_true[:, None]).abs().max() < 5e-4
    # s is free for constant f: the ridge must pick ~0; b carries the whole slope (finite differences in lambda)
    assert ems.s.abs().max() < 2e-2
    assert (ems.b.flatten(1) - b_true[:, None]).abs().max() < 1e-2 * 0.15 / b_true.abs().max() + 5e-3
    assert b_true.abs().max() > 0.1  # the check above is not vacuous


@pytest.mark.parametrize("kind", sorted(CASES))
def test_exact_statistics_make_one_first_order_step_exact(kind):
    data_cls, ms_cls, _ = CASES[kind]
    data, ms = data_cls(), ms_cls()
    lambdas = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    ell, b = closed_form(data, lambdas)
    ems = EMS(lambdas, ell[:, None], torch.zeros(2001, 1, dtype=torch.float64), b[:, None])
    start, end = (0.9, 0.05) if kind == "flow" else (10.0, 0.05)
    x = seeded_noise(1, (64, 1)).double() * data.marginal_std(torch.tensor(start))
    sigmas = torch.tensor([start, end], dtype=torch.float64)
    out = sample_dpm_solver_v3(data.denoise, x, sigmas, {"model_sampling": ms}, ems=ems, order=1)
    exact = data.exact(x, start, end)
    assert (out - exact).abs().max() < 1e-4
    neutral = sample_dpm_solver_v3(data.denoise, x, sigmas, {"model_sampling": ms}, order=1)
    assert (neutral - exact).abs().max() > 100 * (out - exact).abs().max()


@pytest.mark.parametrize("steps", [5, 6, 8, 10])
@pytest.mark.parametrize("kind", sorted(CASES))
def test_v3_with_estimated_ems_beats_dpmpp_2m_and_uni_pc(estimated, kind, steps):
    data, ms, _ = estimated[kind]
    ems = estimate_ems(data.denoise, ms, seeded_noise(0, (16, 1)), grid_points=48)
    sigmas = CASES[kind][2](ms, steps)[:-1]  # end at the last nonzero sigma: every step is a solver step
    x = seeded_noise(1, (256, 1)) * data.marginal_std(sigmas[0])
    exact = data.exact(x, float(sigmas[0]), float(sigmas[-1]))
    args = {"model_sampling": ms}
    errors = {name: float((SAMPLERS[name].fn(data.denoise, x, sigmas, args) - exact).abs().max())
              for name in ("dpmpp_2m", "uni_pc")}
    v3 = float((sample_dpm_solver_v3(data.denoise, x, sigmas, args, ems=ems) - exact).abs().max())
    assert v3 < 0.7 * min(errors.values()), (v3, errors)


def test_neutral_ems_is_euler_at_order_1_on_flow_and_eps():
    for data_cls, ms_cls, _ in CASES.values():
        data, ms = data_cls(), ms_cls()
        sigmas = torch.tensor([0.9, 0.6, 0.3, 0.1, 0.02], dtype=torch.float64)
        x = seeded_noise(2, (32, 1)).double()
        ours = sample_dpm_solver_v3(data.denoise, x, sigmas, {"model_sampling": ms}, ems=neutral_ems(), order=1,
                                    use_corrector=False)
        torch.testing.assert_close(ours, SAMPLERS["euler"].fn(data.denoise, x, sigmas), rtol=0, atol=1e-8)


@pytest.mark.parametrize("final_zero", [False, True])
def test_neutral_ems_order_2_is_res_multistep_on_eps(final_zero):
    data, ms = GaussianVE(), DiscreteSampling()
    sigmas = karras(ms, 8).double()
    sigmas = sigmas if final_zero else sigmas[:-1]
    x = seeded_noise(3, (32, 1)).double() * sigmas[0]
    ours = sample_dpm_solver_v3(data.denoise, x, sigmas, {"model_sampling": ms}, order=2, use_corrector=False,
                                lower_order_final=False)
    torch.testing.assert_close(ours, SAMPLERS["res_multistep"].fn(data.denoise, x, sigmas), rtol=0, atol=1e-8)


def test_corrector_changes_the_result_and_never_calls_a_flow_model_at_zero():
    data, ms = GaussianFlow(), FlowSampling()
    seen = []

    def spy(x, sigma, **_):
        seen.append(float(sigma[0]))
        return data.denoise(x, sigma)

    x = seeded_noise(4, (8, 1))
    sigmas = torch.linspace(1.0, 0.0, 7)
    with_c = SAMPLERS["dpm_solver_v3"].fn(spy, x, sigmas, {"model_sampling": ms})
    assert len(seen) == 6 and 0.0 not in seen and 1.0 not in seen
    without = sample_dpm_solver_v3(data.denoise, x, sigmas, {"model_sampling": ms}, use_corrector=False)
    assert (with_c - without).abs().max() > 1e-4


def test_ems_file_round_trip_and_refusals(estimated, tmp_path):
    _, _, ems = estimated["flow"]
    path = save_ems(tmp_path / "a.safetensors", ems, "builtin:abc", cfg=4.0)
    back = load_ems(path, "builtin:abc", "flow")
    for name in ("lambdas", "ell", "s", "b"):
        torch.testing.assert_close(getattr(back, name), getattr(ems, name), rtol=0, atol=0)
    assert back.meta["model_id"] == "builtin:abc" and back.meta["cfg"] == 4.0 and back.meta["reduce"] == "channel"
    with pytest.raises(ValueError, match="model 'builtin:abc', not 'other:def'"):
        load_ems(path, "other:def")
    with pytest.raises(ValueError, match="'flow' model"):
        load_ems(path, "builtin:abc", "eps")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="cannot read"):
        load_ems(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match=".safetensors"):
        save_ems(tmp_path / "a.npz", ems, "builtin:abc")


def test_bad_input_is_refused_with_a_clear_message(estimated):
    data, ms, ems = estimated["flow"]
    x, sigmas = seeded_noise(0, (2, 2, 4, 4)), torch.linspace(1.0, 0.0, 4)
    args = {"model_sampling": ms}
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        sample_dpm_solver_v3(data.denoise, x, sigmas, args, order=4)
    with pytest.raises(ValueError, match="do not fit samples"):
        sample_dpm_solver_v3(data.denoise, seeded_noise(0, (2, 3, 4, 4)), sigmas, args, ems=ems)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_dpm_solver_v3(data.denoise, x, torch.tensor([0.5, 0.7, 0.0]), args)
    with pytest.raises(ValueError, match="model_sampling"):
        sample_dpm_solver_v3(data.denoise, x, sigmas)
    with pytest.raises(ValueError, match="unknown EMS option"):
        estimate_ems(data.denoise, ms, x, grid=3)
    with pytest.raises(ValueError, match="grid_points"):
        estimate_ems(data.denoise, ms, x, grid_points=2)
    with pytest.raises(ValueError, match="unknown EMS reduction"):
        estimate_ems(data.denoise, ms, x, reduce="pixel")
    with pytest.raises(ValueError, match="NaN"):
        estimate_ems(data.denoise, ms, x * float("nan"))
    with pytest.raises(ValueError, match="smooth must be"):
        estimate_ems(data.denoise, ms, x, smooth=-1.0)
    with pytest.raises(ValueError, match="sb_margin must be"):
        estimate_ems(data.denoise, ms, x, sb_margin=float("nan"))
    with pytest.raises(ValueError, match="strictly increasing"):
        EMS(torch.tensor([0.0, 0.0]), torch.ones(2, 1), torch.zeros(2, 1), torch.zeros(2, 1))


def test_smoothing_keeps_lines_and_the_gaussian_l_but_removes_noise():
    lam = torch.linspace(-5, 5, 64, dtype=torch.float64)
    line = (0.3 * lam - 1)[:, None]
    assert torch.allclose(smooth_in_lambda(line, lam, 0.7), line, atol=1e-9)  # local-linear: no bias on lines
    l_true = 1 / (1 + 0.4 * torch.exp(2 * lam))[:, None]  # Gaussian data: a line in logit space
    assert torch.allclose(smooth_ell(l_true, lam, 0.5), l_true, atol=1e-6)
    noisy = l_true + 0.01 * seeded_noise(3, (64, 1)).double()  # Hutchinson-like additive noise, l > 1 included
    assert (noisy > 1).any()

    def error(values, where):
        return (values - l_true)[where[:, 0]].abs().mean()

    high_noise, middle = lam[:, None] < -2, (l_true > 0.05) & (l_true < 0.95)
    smoothed = smooth_ell(noisy, lam, 0.5)
    # where f multiplies the l error by x / alpha ~ e^-lambda, the smoothed l must be far closer
    assert error(smoothed, high_noise) < 0.3 * error(noisy, high_noise)
    assert error(smoothed, middle) < error(noisy, middle)
    assert torch.equal(smooth_ell(noisy, lam, 0.0), noisy)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_default_estimate_keeps_s_b_at_zero_at_the_noisy_end_only(kind):
    data_cls, ms_cls, _ = CASES[kind]
    data, ms = data_cls(), ms_cls()
    ems = estimate_ems(data.denoise, ms, seeded_noise(0, (16, 1)), grid_points=48)  # sb_margin 1, smooth 0.5
    noisy_end = ems.lambdas < ems.lambdas[0] + 1.0
    assert noisy_end.sum() >= 3 and (~noisy_end).sum() >= 3
    assert (ems.s[noisy_end] == 0).all() and (ems.b[noisy_end] == 0).all()
    l_true, b_true = closed_form(data, ems.lambdas)
    assert (ems.b[~noisy_end, 0] - b_true[~noisy_end]).abs().max() < 0.1 * b_true.abs().max()
    assert (ems.ell[:, 0] - l_true).abs().max() < 2e-3  # smoothing in logit space leaves the Gaussian l alone


def test_nodes_compute_a_file_for_the_model_and_refuse_it_for_other_weights(tmp_path, monkeypatch):
    import dataclasses

    from turbosample.nodes.builtin_nodes import encode_text, load_builtin_model
    from turbosample.nodes.registry import NODE_BY_ID
    from turbosample.nodes.spec import NodeInputError
    from turbosample.samplers.run import sample

    monkeypatch.setenv("TURBOSAMPLE_EMS_DIR", str(tmp_path))
    (model,) = load_builtin_model(1.0)
    (pos,), (neg,) = encode_text("red apple"), encode_text("")
    latent = {"samples": torch.zeros(1, 8, 4, 4)}
    (path,) = NODE_BY_ID["TurboSampleDPMSolverV3EMS"].run(
        model=model, positive=pos, negative=neg, latent_image=latent, seed=0, cfg=2.0, batch=1, grid_points=8,
        reduce="channel", filename="apple", smooth=0.5, sb_margin=1.0)
    assert path.endswith("apple.safetensors")
    node = NODE_BY_ID["TurboSampleDPMSolverV3Sampler"]
    (info,) = node.run(model=model, ems="apple", order=2, use_corrector=True, half=False)
    assert info.options["ems"].stat_shape == (8, 1, 1)  # one per latent channel
    out = sample(model, pos, neg, torch.zeros(1, 8, 4, 4), info, simple(model.model_sampling, 4), seed=0, cfg=2.0)
    assert torch.isfinite(out).all() and out.shape == (1, 8, 4, 4)
    other_net = dataclasses.replace(model, diffusion_model=torch.nn.Linear(2, 2))
    with pytest.raises(NodeInputError, match="statistics of model"):
        node.run(model=other_net, ems="apple", order=2, use_corrector=True, half=False)
    with pytest.raises(NodeInputError, match="give the .safetensors path"):
        node.run(model=model, ems=" ", order=2, use_corrector=True, half=False)


def test_ems_node_passes_smooth_and_sb_margin_into_the_estimate_and_the_file(tmp_path, monkeypatch):
    from turbosample.nodes.builtin_nodes import encode_text, load_builtin_model
    from turbosample.nodes.registry import NODE_BY_ID
    from turbosample.samplers.ems import DEFAULTS, load_ems

    monkeypatch.setenv("TURBOSAMPLE_EMS_DIR", str(tmp_path))
    (model,) = load_builtin_model(1.0)
    (pos,), (neg,) = encode_text("rocket"), encode_text("")
    node = NODE_BY_ID["TurboSampleDPMSolverV3EMS"]
    common = dict(model=model, positive=pos, negative=neg, latent_image={"samples": torch.zeros(1, 8, 4, 4)}, seed=0,
                  cfg=2.0, batch=1, grid_points=8, reduce="channel")
    widgets = node.defaults()
    default = load_ems(node.run(**common, filename="default", smooth=widgets["smooth"],
                                sb_margin=widgets["sb_margin"])[0])
    explicit = load_ems(node.run(**common, filename="explicit", smooth=DEFAULTS["smooth"],
                                 sb_margin=DEFAULTS["sb_margin"])[0])
    raw = load_ems(node.run(**common, filename="raw", smooth=0.0, sb_margin=0.0)[0])
    assert default.meta["smooth"] == 0.5 and default.meta["sb_margin"] == 1.0
    assert raw.meta["smooth"] == 0.0 and raw.meta["sb_margin"] == 0.0
    for name in ("ell", "s", "b"):
        assert torch.equal(getattr(default, name), getattr(explicit, name))
    assert not torch.allclose(default.ell, raw.ell)  # smoothing changed l
    assert (default.s[0] == 0).all() and not (raw.s[0] == 0).all()  # the margin zeroes s at the noisy end
