"""AYS optimizer: better than Karras on exact Gaussian models, KLUB descent, flow safety, bad input, JSON, node."""

import pytest
import torch
from analytic import GaussianFlow, GaussianVE

from turbosample.models.dit import DiTConfig, TinyDiT
from turbosample.nodes.ays_nodes import ays_opt_sigmas
from turbosample.nodes.spec import NodeInputError
from turbosample.nodes.txt2img import Settings, settings_from_api, to_api_prompt
from turbosample.samplers import ays_optimize as ays
from turbosample.samplers.denoiser import DiffusionModel
from turbosample.samplers.model_sampling import DiscreteSampling, FlowSampling
from turbosample.samplers.registry import get_sampler
from turbosample.samplers.sampling_utils import MODEL_SAMPLING_KEY
from turbosample.samplers.schedulers import SCHEDULERS, compute_sigmas

CASES = {"eps": (GaussianVE(), DiscreteSampling()), "flow": (GaussianFlow(), FlowSampling())}


def start(ms, shape, seed):
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return ms.noise_scaling(ms.sigma_max, noise, torch.zeros(shape), max_denoise=True)


def run(g, ms, sigmas, sampler, x_T):
    info = get_sampler(sampler)
    return info.fn(g.denoise, x_T.double(), sigmas.double(), extra_args={MODEL_SAMPLING_KEY: ms, "seed": 3},
                   callback=None, disable=True, **info.options)


def sde_error(g, ms, sigmas):
    """Euler-ancestral output distribution against the data N(mean, std^2): |mean error| + |std error|."""
    out = run(g, ms, sigmas, "euler_ancestral", start(ms, (64, 1, 8, 8), 11))
    return float((out.mean() - g.mean).abs() + (out.std() - g.std).abs())


def ode_error(g, ms, sigmas):
    """RMS distance of the Euler result from the exact ODE solution of the same start points."""
    x_T = start(ms, (64, 1, 8, 8), 11).double()
    return float((run(g, ms, sigmas, "euler", x_T) - g.exact(x_T, float(sigmas[0]), 0.0)).pow(2).mean().sqrt())


@pytest.mark.parametrize("kind", CASES)
@pytest.mark.parametrize("steps", [4, 8, 16])
def test_optimized_schedule_beats_karras_on_exact_gaussians(kind, steps):
    g, ms = CASES[kind]
    sigmas, history = ays.ays_optimize(g.denoise, ms, start(ms, (8, 1, 8, 8), 0), steps)
    assert sigmas.shape == (steps + 1,) and float(sigmas[-1]) == 0.0
    assert float(sigmas[0]) == pytest.approx(float(ms.sigma_max))
    assert (sigmas[1:] < sigmas[:-1]).all()
    karras = compute_sigmas(ms, "karras", steps)
    # the SDE whose KL bound is minimised: Euler-ancestral
    assert sde_error(g, ms, sigmas) < sde_error(g, ms, karras)
    if kind == "flow":  # the ODE too on the flow model (on the EPS model Karras' Euler error is ~5 % lower)
        assert ode_error(g, ms, sigmas) < ode_error(g, ms, karras)


@pytest.mark.parametrize("kind", CASES)
def test_klub_estimate_decreases_over_the_sweeps(kind):
    g, ms = CASES[kind]
    grid = ays.candidate_grid(*ays.edm_range(ms), 64)
    data = g.mean + g.std * torch.randn((6, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    matrix = ays.klub_matrix(ays.edm_denoiser(g.denoise, kind == "flow"), data, grid, 32, seed=2)
    assert (matrix.triu(1) >= 0).all() and (matrix.tril() == 0).all()
    assert (matrix[0, 2:] >= matrix[0, 1:-1] - 1e-12).all()  # a longer first step adds terms, never removes
    start_path = list(range(0, 64, 7))[:-1] + [63]  # evenly spaced in log sigma
    path, history = ays.optimize_path(matrix, start_path)
    assert all(b <= a + 1e-12 for a, b in zip(history, history[1:], strict=False))
    assert history[-1] < 0.9 * history[0]
    assert history[-1] == pytest.approx(ays.schedule_klub(matrix, path))
    for i in range(1, len(path) - 1):  # a fixed point: no single interior point can do better
        lo, hi = path[i - 1], path[i + 1]
        best = min(float(matrix[lo, c] + matrix[c, hi]) for c in range(lo + 1, hi))
        assert float(matrix[lo, path[i]] + matrix[path[i], hi]) <= best + 1e-12


def test_flow_model_is_never_called_at_sigma_0_or_1_and_edm_view_is_consistent():
    g, ms = GaussianFlow(), FlowSampling()
    seen = []

    def recording(x, sigma, **kw):
        assert MODEL_SAMPLING_KEY not in kw  # ComfyUI's model function refuses it
        seen.append(sigma.clone())
        return g.denoise(x, sigma)

    ays.ays_optimize(recording, ms, start(ms, (2, 1, 4, 4), 0), 5, mc_points=8, grid_points=24, data_steps=6)
    s = torch.cat(seen)
    assert (s > 0).all() and float(s.max()) <= 1.0
    # the EDM view of a flow denoiser equals the VE Gaussian's denoiser with the same data
    y, sig = torch.randn(3, 5), torch.tensor([0.1, 1.0, 7.0])
    torch.testing.assert_close(ays.edm_denoiser(g.denoise, True)(y, sig), GaussianVE().denoise(y, sig))


def test_coarse_to_fine_counts_and_subdivision():
    assert ays.step_counts(16, 4) == [4, 8, 16]
    assert ays.step_counts(10, 4) == [3, 5, 10]
    assert ays.step_counts(3, 4) == [3]
    g, ms = CASES["eps"]
    one, _ = ays.ays_optimize(g.denoise, ms, start(ms, (2, 1, 4, 4), 0), 1, mc_points=8, grid_points=16,
                              data_steps=4)
    assert one.tolist() == [pytest.approx(float(ms.sigma_max)), 0.0]


def test_bad_input_is_named():
    g, ms = CASES["eps"]
    x = start(ms, (2, 1, 4, 4), 0)
    for steps in (0, -1, 2.5):
        with pytest.raises(ValueError, match="steps"):
            ays.ays_optimize(g.denoise, ms, x, steps)
    with pytest.raises(ValueError, match="NaN"):
        ays.ays_optimize(lambda x, s, **_: x * float("nan"), ms, x, 4, data_steps=4)
    with pytest.raises(ValueError, match="NaN"):
        ays.ays_optimize(g.denoise, ms, x * float("nan"), 4)
    with pytest.raises(ValueError, match="candidate"):
        ays.ays_optimize(g.denoise, ms, x, 20, grid_points=10, data_steps=4, mc_points=4)
    with pytest.raises(ValueError, match="unknown AYS optimizer option"):
        ays.ays_optimize(g.denoise, ms, x, 4, iterations=3)
    with pytest.raises(ValueError, match="strictly decreasing"):
        ays.check_result(torch.tensor([3.0, 1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="NaN"):
        ays.check_result(torch.tensor([3.0, float("nan"), 0.0]))
    with pytest.raises(ValueError, match="sigma_min"):
        ays.candidate_grid(1.0, 0.5, 10)


def tiny_model() -> DiffusionModel:
    torch.manual_seed(0)
    net = TinyDiT(DiTConfig(width=16, depth=1, heads=2, text_dim=8))
    torch.nn.init.normal_(net.final.linear.weight, std=0.1)
    return DiffusionModel(net, FlowSampling(), name="tiny")


def test_node_json_round_trip_and_refusal_for_another_model(tmp_path):
    model = tiny_model()
    pos, neg = [[torch.randn(1, 1, 8), {}]], [[torch.randn(1, 1, 8), {}]]
    latent = {"samples": torch.zeros(1, 3, 8, 8)}
    (sigmas,) = ays_opt_sigmas(model, pos, neg, latent, seed=2, cfg=3.0, steps=4, batch=2, mc_points=8)
    again = ays.ays_for_model(model, pos, neg, 3.0, 4, (2, 3, 8, 8), seed=2, mc_points=8)
    torch.testing.assert_close(sigmas, again)
    assert sigmas.shape == (5,) and float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0
    with pytest.raises(NodeInputError, match="steps"):
        ays_opt_sigmas(model, pos, neg, latent, seed=2, cfg=3.0, steps=0, batch=2, mc_points=8)

    path, model_id = tmp_path / "ays.json", ays.model_id_of(model)
    ays.save_schedule(path, sigmas, model_id, cfg=3.0)
    torch.testing.assert_close(ays.load_schedule(path, model_id=model_id, steps=4), sigmas)
    other = tiny_model()
    torch.nn.init.zeros_(other.diffusion_model.final.linear.weight)
    assert ays.model_id_of(other) != model_id
    with pytest.raises(ValueError, match="made for model"):
        ays.load_schedule(path, model_id=ays.model_id_of(other))
    with pytest.raises(ValueError, match="4-step"):
        ays.load_schedule(path, model_id=model_id, steps=8)
    (tmp_path / "bad.json").write_text('{"format": "turbosample-gits-schedule"}')
    with pytest.raises(ValueError, match="not a"):
        ays.load_schedule(tmp_path / "bad.json")


def test_ays_opt_in_the_graph_and_ays_svd_scheduler():
    settings = Settings(sigmas_from="ays_opt", steps=6)
    api = to_api_prompt(settings)
    node = next(n for n in api.values() if n["class_type"] == "TurboSampleAYSOptimizeScheduler")
    assert node["inputs"]["steps"] == 6 and isinstance(node["inputs"]["positive"], list)
    assert settings_from_api(api) == settings
    assert "ays_svd" in SCHEDULERS
    eps = compute_sigmas(DiscreteSampling(), "ays_svd", 10)
    assert float(eps[0]) == 700.0 and float(eps[-2]) == pytest.approx(0.034) and float(eps[-1]) == 0.0
