"""DC-Solver: neutral ratios are UniPC, calibrated ratios beat UniPC on exact Gaussian ODEs, CPR, files, nodes."""

import json

import numpy as np
import pytest
import torch
from analytic import GaussianFlow, GaussianVE

from turbosample.models.dit import DiTConfig, TinyDiT
from turbosample.nodes.dc_solver_nodes import NODES
from turbosample.nodes.spec import NodeInputError
from turbosample.samplers import dc_calibration as dcc
from turbosample.samplers.dc_solver import compensate, sample_dc_solver, unipc_grid
from turbosample.samplers.denoiser import DiffusionModel
from turbosample.samplers.model_sampling import FlowSampling
from turbosample.samplers.multistep import sample_uni_pc
from turbosample.samplers.registry import SAMPLERS
from turbosample.samplers.run import sample
from turbosample.samplers.schedulers import compute_sigmas

NODE = {n.node_id: n for n in NODES}


def karras(n: int, lo: float = 0.03, hi: float = 14.6, rho: float = 7.0) -> torch.Tensor:
    r = torch.linspace(0, 1, n, dtype=torch.float64)
    return torch.cat([(hi ** (1 / rho) + r * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho, torch.zeros(1)])


def flow_sigmas(n: int) -> torch.Tensor:
    return torch.linspace(1, 0, n + 1, dtype=torch.float64)


CASES = {"ve": (GaussianVE(), karras), "flow": (GaussianFlow(), flow_sigmas)}


def start(kind: str, sigmas: torch.Tensor, seed: int, batch: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 1, 4, 4, generator=g, dtype=torch.float64)
    return z * float(sigmas[0]) if kind == "ve" else z


def rms_error(model, out: torch.Tensor, x: torch.Tensor, sigmas: torch.Tensor) -> float:
    return float((out - model.exact(x, float(sigmas[0]), unipc_grid(sigmas)[-1])).pow(2).mean().sqrt())


@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_neutral_ratios_are_unipc_exactly(kind, steps, variant):
    model, make = CASES[kind]
    sigmas = make(steps)
    x = start(kind, sigmas, 0, batch=2)
    expected = sample_uni_pc(model.denoise, x, sigmas, variant=variant)
    assert torch.equal(sample_dc_solver(model.denoise, x, sigmas, ratios=[1.0] * steps, variant=variant), expected)
    assert torch.equal(sample_dc_solver(model.denoise, x, sigmas, variant=variant), expected)


def test_registered_with_one_call_per_step_and_never_evaluates_sigma_zero():
    info = SAMPLERS["dc_solver"]
    assert info.fn is sample_dc_solver and info.calls_per_step == 1
    model, sigmas = GaussianFlow(), flow_sigmas(6)
    seen = []

    def counting(x, sigma, **kw):
        seen.append(float(sigma[0]))
        return model.denoise(x, sigma)

    sample_dc_solver(counting, start("flow", sigmas, 0, 2), sigmas, ratios=[1, 1, 0.9, 1.1, 0.8, 1.2])
    assert len(seen) == 6 and min(seen) > 0


def test_compensation_is_lagrange_interpolation_in_log_sigma():
    lam = [0.0, 0.5, 1.5, 2.0]
    history = [(j, torch.full((2,), 3.0 - 2.0 * lam[j] + 0.5 * lam[j] ** 2)) for j in (0, 1, 2)]
    for ratio in (0.0, 0.4, 1.3):
        tau = lam[1] + ratio * (lam[2] - lam[1])
        out = compensate(history, lam, ratio)
        assert out[-1][0] == 2 and out[:-1] == history[:-1]
        torch.testing.assert_close(out[-1][1], torch.full((2,), 3.0 - 2.0 * tau + 0.5 * tau ** 2))
    assert compensate(history, lam, 1.0) is history
    short = history[:2]
    assert compensate(short, lam, 0.5) is short  # too few values: unchanged


@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.parametrize("steps", [5, 6, 8, 10])
def test_calibrated_ratios_beat_unipc_on_held_out_noise(kind, steps):
    # measured: VE 0.28 / 0.24 / 0.12 / 0.040 -> about 2e-5; flow 0.012 / 0.0096 / 0.021 / 0.017 -> under 1e-4
    model, make = CASES[kind]
    sigmas = make(steps)
    found = dcc.calibrate(model.denoise, start(kind, sigmas, 1), sigmas)
    ratios = found["ratios"]
    assert len(ratios) == steps and ratios[:2] == [1.0, 1.0] and any(r != 1.0 for r in ratios)
    assert all(lo <= hi for lo, hi in zip(found["loss"], found["loss_neutral"], strict=True))
    x = start(kind, sigmas, 2)  # held-out noise
    unipc = rms_error(model, sample_uni_pc(model.denoise, x, sigmas), x, sigmas)
    dc = rms_error(model, sample_dc_solver(model.denoise, x, sigmas, ratios=ratios), x, sigmas)
    assert dc < 0.1 * unipc


@pytest.mark.parametrize("kind", list(CASES))
def test_reference_states_follow_the_exact_ode(kind):
    model, make = CASES[kind]
    sigmas = make(5)
    x = start(kind, sigmas, 3, batch=2)
    ref = dcc.reference_states(model.denoise, x, sigmas)
    grid = unipc_grid(sigmas)
    assert len(ref) == 6
    for k, state in enumerate(ref):
        torch.testing.assert_close(state, model.exact(x, grid[0], grid[k]), rtol=0, atol=5e-4)


def test_cpr_recovers_its_polynomial_and_predicts_unseen_step_counts():
    rng = np.random.default_rng(0)
    weights = np.zeros(dcc.CPR_SHAPE)
    weights[:, :, :] = rng.normal(scale=0.05, size=dcc.CPR_SHAPE)
    weights[0, 2, 2] += 1.0  # constant term: ratios near 1
    fits = [(n, c, dcc.predict_cpr(weights, n, c)) for n in (5, 6, 8, 10, 12) for c in (2.0, 5.0, 7.5, 10.0)]
    refit = dcc.fit_cpr(fits)
    for n, c in ((7, 4.0), (9, 6.5), (15, 8.0)):
        np.testing.assert_allclose(dcc.predict_cpr(refit, n, c), dcc.predict_cpr(weights, n, c), atol=1e-8)
    assert dcc.predict_cpr(refit, 2, 5.0) == [1.0, 1.0]


def test_cpr_from_calibrations_beats_unipc_at_unseen_nfe():
    # measured (flow Gaussian, fit on 5/6/8/10/12 steps): 7 steps 0.019 -> 0.0023, 9 steps 0.019 -> 0.0028
    model = GaussianFlow()
    fits = [(n, 1.0, dcc.calibrate(model.denoise, start("flow", flow_sigmas(n), 1), flow_sigmas(n))["ratios"])
            for n in (5, 6, 8, 10, 12)]
    weights = dcc.fit_cpr(fits)
    assert not weights[:, :2].any()  # one cfg seen: no cfg terms
    for n in (7, 9):
        sigmas, x = flow_sigmas(n), start("flow", flow_sigmas(n), 2)
        unipc = rms_error(model, sample_uni_pc(model.denoise, x, sigmas), x, sigmas)
        dc = rms_error(model, sample_dc_solver(model.denoise, x, sigmas, ratios=dcc.predict_cpr(weights, n, 1.0)),
                       x, sigmas)
        assert dc < 0.3 * unipc


def test_calibration_file_round_trip_and_refusals(tmp_path):
    model, sigmas = GaussianFlow(), flow_sigmas(5)
    record = {**dcc.calibrate(model.denoise, start("flow", sigmas, 1, 2), sigmas), "model_id": "gauss:abc",
              "cfg": 1.0}
    path = dcc.save_calibration(tmp_path / "dc.json", record)
    loaded = dcc.load_calibration(path, model_id="gauss:abc", steps=5)
    assert loaded["ratios"] == record["ratios"] and loaded["sigmas"] == [float(s) for s in sigmas]
    ratios, calibrated = dcc.ratios_from_file(path, 5, "gauss:abc")
    x = start("flow", sigmas, 4, 2)
    out = sample_dc_solver(model.denoise, x, sigmas, ratios=ratios, calibrated_sigmas=calibrated)
    assert torch.equal(out, sample_dc_solver(model.denoise, x, sigmas, ratios=record["ratios"]))
    with pytest.raises(ValueError, match="calibrated for model 'gauss:abc', not 'other'"):
        dcc.load_calibration(path, model_id="other")
    with pytest.raises(ValueError, match="ratios for 5 steps, not 8"):
        dcc.load_calibration(path, steps=8)
    with pytest.raises(ValueError, match="one compensation ratio per step: 8 steps, got 5"):
        sample_dc_solver(model.denoise, start("flow", sigmas, 4, 2), flow_sigmas(8), ratios=ratios)
    with pytest.raises(ValueError, match="calibrate for this schedule"):
        sample_dc_solver(model.denoise, x, karras(5), ratios=ratios, calibrated_sigmas=calibrated)
    (tmp_path / "other.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(ValueError, match="not a turbosample-dc-solver-ratios file"):
        dcc.load_calibration(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read"):
        dcc.load_calibration(tmp_path / "broken.json")
    cpr = dcc.save_cpr(tmp_path / "cpr.json", dcc.fit_cpr([(5, 1.0, record["ratios"])]), "gauss:abc", [(5, 1.0)])
    assert len(dcc.ratios_from_file(cpr, 7, "gauss:abc", cfg=1.0)[0]) == 7
    with pytest.raises(ValueError, match="give the cfg"):
        dcc.ratios_from_file(cpr, 7, "gauss:abc")
    with pytest.raises(ValueError, match="not 'other'"):
        dcc.load_cpr(cpr, "other")


def test_bad_input():
    model, sigmas = GaussianFlow(), flow_sigmas(5)
    x = start("flow", sigmas, 0, 2)
    with pytest.raises(ValueError, match="must be finite"):
        sample_dc_solver(model.denoise, x, sigmas, ratios=[1, 1, float("nan"), 1, 1])
    with pytest.raises(ValueError, match="first 2 DC-Solver ratios must be 1.0"):
        sample_dc_solver(model.denoise, x, sigmas, ratios=[1, 0.5, 1, 1, 1])
    with pytest.raises(ValueError, match="list of numbers"):
        sample_dc_solver(model.denoise, x, sigmas, ratios=["a"] * 5)
    with pytest.raises(ValueError, match="variant"):
        sample_dc_solver(model.denoise, x, sigmas, variant="bh3")
    with pytest.raises(ValueError, match="enclose 1.0"):
        dcc.calibrate(model.denoise, x, sigmas, bounds=(1.2, 2.0))
    with pytest.raises(ValueError, match="x_T contains"):
        dcc.calibrate(model.denoise, x * float("nan"), sigmas)
    with pytest.raises(ValueError, match="must not increase"):
        dcc.calibrate(model.denoise, x, sigmas.flip(0))
    with pytest.raises(ValueError, match="more than 2 steps"):
        dcc.fit_cpr([(2, 1.0, [1.0, 1.0])])
    with pytest.raises(ValueError, match="shape"):
        dcc.predict_cpr(np.zeros(5), 6, 1.0)
    with pytest.raises(ValueError, match="needs 'model_id'"):
        dcc.save_calibration("/nonexistent/x.json", {"steps": 3})


def tiny_model(seed: int = 0) -> DiffusionModel:
    torch.manual_seed(seed)
    net = TinyDiT(DiTConfig(width=16, depth=1, heads=2, text_dim=8))
    torch.nn.init.normal_(net.final.linear.weight)
    return DiffusionModel(net, FlowSampling(), name="tiny")


def test_nodes_calibrate_then_sample_and_refuse_other_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TURBOSAMPLE_DC_SOLVER_DIR", str(tmp_path))
    model = tiny_model()
    pos, neg = [[torch.randn(1, 1, 8), {}]], [[torch.randn(1, 1, 8), {}]]
    latent = {"samples": torch.zeros(1, 3, 8, 8)}
    sigmas = compute_sigmas(model.model_sampling, "simple", 4)
    (path,) = NODE["TurboSampleDCSolverCalibrate"].run(
        model=model, positive=pos, negative=neg, latent_image=latent, sigmas=sigmas, seed=3, cfg=2.0, samples=2,
        filename="")
    record = json.loads(open(path).read())
    assert path.startswith(str(tmp_path)) and record["steps"] == 4 and record["cfg"] == 2.0
    assert record["model_id"] == dcc.model_id_of(model) and record["samples"] == 2
    assert record["sigmas"] == pytest.approx(sigmas.tolist())  # steps and sigmas come from the SIGMAS input
    direct = dcc.calibrate_for_model(model, pos, neg, 2.0, 4, (1, 3, 8, 8), samples=2, seed=3, scheduler="simple")
    assert record["ratios"] == direct["ratios"]  # the node calibrates exactly as the library does
    (info,) = NODE["TurboSampleDCSolverSampler"].run(model=model, calibration=path, cfg=2.0)
    out = sample(model, pos, neg, torch.zeros(1, 3, 8, 8), info, sigmas, seed=7, cfg=2.0)
    plain = sample(model, pos, neg, torch.zeros(1, 3, 8, 8), SAMPLERS["uni_pc"], sigmas, seed=7, cfg=2.0)
    assert out.shape == plain.shape and torch.isfinite(out).all()
    assert torch.equal(out, plain) == all(r == 1.0 for r in record["ratios"])
    with pytest.raises(ValueError, match="8 steps, got 4"):
        sample(model, pos, neg, torch.zeros(1, 3, 8, 8), info, compute_sigmas(model.model_sampling, "simple", 8),
               seed=7, cfg=2.0)
    with pytest.raises(NodeInputError, match="calibrated for model"):
        NODE["TurboSampleDCSolverSampler"].run(model=tiny_model(1), calibration=path, cfg=2.0)
    with pytest.raises(NodeInputError, match="cannot read"):
        NODE["TurboSampleDCSolverSampler"].run(model=model, calibration="missing.json", cfg=2.0)
    three = compute_sigmas(model.model_sampling, "simple", 3)
    with pytest.raises(NodeInputError, match="may only use"):
        NODE["TurboSampleDCSolverCalibrate"].run(
            model=model, positive=pos, negative=neg, latent_image=latent, sigmas=three, seed=3, cfg=2.0, samples=1,
            filename="../x")
    with pytest.raises(NodeInputError, match="built-in model"):
        NODE["TurboSampleDCSolverCalibrate"].run(
            model=object(), positive=pos, negative=neg, latent_image=latent, sigmas=three, seed=3, cfg=2.0,
            samples=1, filename="")
    with pytest.raises(NodeInputError, match="the SIGMAS have 61 steps; it calibrates runs of 3 to 60 steps"):
        NODE["TurboSampleDCSolverCalibrate"].run(
            model=model, positive=pos, negative=neg, latent_image=latent,
            sigmas=compute_sigmas(model.model_sampling, "simple", 61), seed=3, cfg=2.0, samples=1, filename="")
