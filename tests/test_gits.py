"""GITS: DP against brute force, schedules that beat uniform on exact Gaussian ODEs, CFG wiring, JSON round trip."""

import itertools

import pytest
import torch
from analytic import GaussianFlow, GaussianVE

from turbosample.models.dit import DiTConfig, TinyDiT
from turbosample.samplers import gits
from turbosample.samplers.denoiser import DiffusionModel
from turbosample.samplers.model_sampling import DiscreteSampling, FlowSampling
from turbosample.samplers.noise import seeded_noise
from turbosample.samplers.schedulers import simple
from turbosample.samplers.solvers import sample_euler, sample_ipndm


def brute_force(cost: torch.Tensor, steps: int, coeff: float) -> tuple[float, list[int]]:
    n = cost.shape[0]
    best = min(([0, *inner, n - 1] for inner in itertools.combinations(range(1, n - 1), steps - 1)),
               key=lambda p: sum(coeff ** m * float(cost[a, b]) for m, (a, b) in enumerate(itertools.pairwise(p))))
    return sum(coeff ** m * float(cost[a, b]) for m, (a, b) in enumerate(itertools.pairwise(best))), best


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("coeff", [0.9, 1.0, 1.15])
def test_dp_matches_brute_force(seed, coeff):
    gen = torch.Generator().manual_seed(seed)
    n = 9
    cost = torch.rand(n, n, generator=gen, dtype=torch.float64)
    for steps in range(1, n):
        path = gits.dp_path(cost, steps, coeff)
        value, best = brute_force(cost, steps, coeff)
        assert len(path) == steps + 1 and path[0] == 0 and path[-1] == n - 1
        assert all(a < b for a, b in itertools.pairwise(path))
        assert path == best
        assert gits.path_cost(cost, path, coeff) == pytest.approx(value, rel=1e-12)


def test_cost_is_the_euler_jump_error_against_the_teacher():
    g, fine = GaussianFlow(), torch.tensor([1.0, 0.7, 0.4, 0.15, 0.0])
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    traj, derivs = gits.teacher_trajectory(g.denoise, x, fine, "ipndm")
    torch.testing.assert_close(traj[-1], sample_ipndm(g.denoise, x, fine))
    cost = gits.cost_matrix(traj, derivs, fine, "l2")
    # from teacher point 1, one Euler step of the library sampler onto sigma = 0.15, against teacher point 3
    jump = sample_euler(g.denoise, traj[1], fine[[1, 3]])
    expected = (jump - traj[3]).flatten(1).norm(dim=1).mean()
    assert float(cost[1, 3]) == pytest.approx(float(expected), rel=1e-5)
    assert float(cost[0, 1]) > 0 and (torch.tril(cost) == 0).all()


@pytest.mark.parametrize("gaussian,ms", [(GaussianFlow(), FlowSampling()), (GaussianVE(), DiscreteSampling())],
                         ids=["flow", "ve"])
@pytest.mark.parametrize("steps", [4, 6, 8])
def test_gits_beats_uniform_schedule_on_exact_ode(gaussian, ms, steps):
    fine = gits.default_fine_sigmas(ms)
    s_max = float(fine[0])
    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * float(gaussian.marginal_std(
        torch.tensor(s_max)))
    exact = gaussian.exact(x, s_max, 0.0)
    sigmas = gits.gits_schedule(gaussian.denoise, x, fine, steps)
    assert sigmas.shape == (steps + 1,) and (sigmas[1:] < sigmas[:-1]).all()
    assert float(sigmas[0]) == pytest.approx(float(ms.sigma_max)) and float(sigmas[-1]) == 0.0
    assert all(float(s) in fine.tolist() for s in sigmas)

    def error(schedule):
        return float((sample_euler(gaussian.denoise, x, schedule) - exact).pow(2).mean().sqrt())

    assert error(sigmas) < error(simple(ms, steps))


def test_dev_metric_gives_a_valid_schedule():
    g, ms = GaussianFlow(), FlowSampling()
    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    sigmas = gits.gits_schedule(g.denoise, x, gits.default_fine_sigmas(ms, 21), 5, metric="dev", coeff=1.2)
    assert sigmas.shape == (6,) and (sigmas[1:] < sigmas[:-1]).all() and float(sigmas[0]) == 1.0


def test_bad_input():
    g, fine, x = GaussianFlow(), torch.linspace(1, 0, 6), torch.randn(2, 1, 2, 2)
    with pytest.raises(ValueError, match="fine sigmas"):
        gits.gits_schedule(g.denoise, x, fine, 6)
    with pytest.raises(ValueError, match="steps"):
        gits.gits_schedule(g.denoise, x, fine, 0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        gits.gits_schedule(g.denoise, x, torch.tensor([1.0, 0.5, 0.5, 0.0]), 2)
    with pytest.raises(ValueError, match="metric"):
        gits.gits_schedule(g.denoise, x, fine, 2, metric="mse")
    with pytest.raises(ValueError, match="unknown sampler"):
        gits.gits_schedule(g.denoise, x, fine, 2, solver="nope")
    with pytest.raises(ValueError, match="fine points"):
        gits.dp_path(torch.rand(4, 4), 4)
    with pytest.raises(ValueError, match="coeff"):
        gits.dp_path(torch.rand(4, 4), 2, coeff=0.0)


def tiny_model() -> DiffusionModel:
    torch.manual_seed(0)
    net = TinyDiT(DiTConfig(width=16, depth=1, heads=2, text_dim=8))
    torch.nn.init.normal_(net.final.linear.weight)
    return DiffusionModel(net, FlowSampling(), name="tiny")


def test_model_helper_uses_cfg_and_json_round_trip(tmp_path):
    model = tiny_model()
    pos, neg = [[torch.randn(1, 1, 8), {}]], [[torch.randn(1, 1, 8), {}]]
    fine = gits.default_fine_sigmas(model.model_sampling, 13)
    sigmas = gits.gits_for_model(model, pos, neg, 3.0, 4, (2, 3, 8, 8), seed=5, fine_sigmas=fine)

    def cfg_by_hand(x, sigma, **_):  # the two branches in separate calls
        c, u = pos[0][0].expand(len(x), -1, -1), neg[0][0].expand(len(x), -1, -1)
        p, n = model.denoise(x, sigma, c), model.denoise(x, sigma, u)
        return n + 3.0 * (p - n)

    expected = gits.gits_schedule(cfg_by_hand, seeded_noise(5, (2, 3, 8, 8)), fine, 4)
    torch.testing.assert_close(sigmas, expected)
    assert sigmas.shape == (5,) and float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0

    path = tmp_path / "gits.json"
    gits.save_schedule(path, sigmas, "tiny", coeff=1.15)
    torch.testing.assert_close(gits.load_schedule(path, model_id="tiny", steps=4), sigmas)
    with pytest.raises(ValueError, match="model"):
        gits.load_schedule(path, model_id="other")
    with pytest.raises(ValueError, match="4-step"):
        gits.load_schedule(path, steps=6)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a"):
        gits.load_schedule(tmp_path / "bad.json")
