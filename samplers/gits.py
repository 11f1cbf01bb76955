"""GITS: a time schedule searched on the user's own model by dynamic programming over a fine teacher trajectory
(Chen, Zhou, Wang, Shen, Lyu, "On the Trajectory Regularity of ODE-based Diffusion Sampling", ICML 2024).

What was verified against the official code, zju-pi/diff-sampler ``gits-main`` (``gits_utils.py``, ``sample.py``,
``launch.sh``, ``README.md``; stored commit 20a0e1d, read 2026-11):

* Teacher: a deterministic solver (``solver_tea``, default ``ipndm``) on a fine grid of ``num_steps_tea`` = 61
  timestamps (launch.sh / README; sample.py's click default says 21), EDM polynomial rho = 7 between sigma_max and
  sigma_min. It stores every teacher point x_i and the derivative d_i = (x_i - D(x_i)) / sigma_i there.
* Cost: ``cost[i, j]`` for j > i is the distance between the Euler jump ``x_i + (sigma_j - sigma_i) d_i`` and the
  teacher point x_j, always an Euler jump whatever the student solver. Metrics: ``l2`` / ``l1`` = per-sample norm
  over all pixels (not the mean square), averaged over the batch; ``dev`` (the default of sample.py and launch.sh) =
  the jump's distance from the straight line teacher x_T -> teacher x_0 minus the teacher point's own distance.
* DP: V[i][1] = cost[i][last]; V[j][k] = min over i of cost[j][i] + coeff V[i][k-1], so a path of K jumps costs
  c_1 + coeff c_2 + coeff^2 c_3 + ... (coeff > 1 weighs later, low-noise jumps more). Backtracking takes the
  first (smallest) index that attains the minimum. coeff default 1.15 (sample.py, launch.sh); 1.20 in launch.sh
  for Stable Diffusion with CFG; ComfyUI's GITSScheduler tables span 0.80 - 1.50.
* Left out: the warm-up average over 256 samples in rounds (here: one batch the caller chooses) and AFS.

Differences here: the fine grid ends at sigma = 0 (the models' own convention; flow models reach x0 there) instead
of EDM's sigma_min = 0.002, and the default fine grid for a flow model is its own ``simple`` schedule (uniform in
timestep), for other models Karras rho = 7 as the paper.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from .denoiser import DiffusionModel, cfg_denoiser
from .model_sampling import is_flow
from .noise import noisy_start, seeded_noise
from .registry import get_sampler
from .schedule_file import load_schedule_file, save_schedule_file
from .schedulers import karras, simple
from .solvers import to_d
from .validate import check_finite, check_sigmas, check_steps

DEFAULT_FINE_POINTS = 61
DEFAULT_COEFF = 1.15
METRICS = ("l2", "l1", "dev")
FORMAT = "turbosample-gits-schedule"


def default_fine_sigmas(model_sampling, points: int = DEFAULT_FINE_POINTS) -> torch.Tensor:
    """``points`` sigmas ending in 0: the flow model's ``simple`` schedule, else Karras rho = 7 (GITS/EDM)."""
    if int(points) != points or points < 3:
        raise ValueError(f"the fine grid needs a whole number >= 3 of points, got {points}")
    return (simple if is_flow(model_sampling) else karras)(model_sampling, int(points) - 1)


@torch.no_grad()
def teacher_trajectory(denoiser, x_T: torch.Tensor, fine_sigmas: torch.Tensor, solver: str = "ipndm",
                       extra_args: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Points x_i (n, B, ...) on ``fine_sigmas`` and the ODE derivatives d_i (n - 1, B, ...) at the first n - 1."""
    info = get_sampler(solver)
    xs: list[torch.Tensor] = []
    ds: list[torch.Tensor] = []

    def record(step: dict) -> None:
        xs.append(step["x"])
        ds.append(to_d(step["x"], step["sigma"], step["denoised"]))

    last = info.fn(denoiser, x_T, fine_sigmas, extra_args=extra_args, callback=record, disable=True, **info.options)
    if len(xs) != len(fine_sigmas) - 1:
        raise ValueError(f"teacher solver {solver!r} reported {len(xs)} steps for {len(fine_sigmas) - 1}")
    return torch.stack([*xs, last]), torch.stack(ds)


def _deviation(points: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Per-sample distance of ``points`` (..., B, F) from the line start -> end (B, F)."""
    unit = end - start
    unit = unit / unit.norm(dim=-1, keepdim=True)
    rel = end - points
    return (rel - (rel * unit).sum(-1, keepdim=True) * unit).norm(dim=-1)


def cost_matrix(traj: torch.Tensor, derivs: torch.Tensor, fine_sigmas: torch.Tensor,
                metric: str = "l2") -> torch.Tensor:
    """cost[i, j] (j > i): batch-mean error of an Euler jump from teacher point i to sigma_j against point j."""
    if metric not in METRICS:
        raise ValueError(f"unknown GITS metric {metric!r}; choose one of {', '.join(METRICS)}")
    n = len(fine_sigmas)
    flat = traj.flatten(2).double()  # (n, B, F)
    d = derivs.flatten(2).double()
    sig = fine_sigmas.to(flat.device, torch.float64)
    cost = torch.zeros(n, n, dtype=torch.float64)
    dev_teacher = _deviation(flat, flat[0], flat[-1]) if metric == "dev" else None
    for i in range(n - 1):
        jumps = flat[i] + (sig[i + 1:] - sig[i])[:, None, None] * d[i]  # (n - i - 1, B, F)
        if metric == "dev":
            err = _deviation(jumps, flat[0], flat[-1]) - dev_teacher[i + 1:]
        else:
            err = (jumps - flat[i + 1:]).norm(p=2 if metric == "l2" else 1, dim=-1)
        cost[i, i + 1:] = err.mean(dim=1).cpu()
    return cost


def dp_path(cost: torch.Tensor | np.ndarray, steps: int, coeff: float = DEFAULT_COEFF) -> list[int]:
    """Indices 0 = i_0 < ... < i_steps = n - 1 minimising sum_m coeff^m cost[i_m, i_m+1] (official recursion)."""
    c = np.asarray(cost, dtype=np.float64)
    steps = check_steps(steps)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"the cost matrix must be square, got shape {tuple(c.shape)}")
    n = c.shape[0]
    if steps > n - 1:
        raise ValueError(f"{steps} steps need at least {steps + 1} fine points, got {n}")
    if not coeff > 0:
        raise ValueError(f"coeff must be > 0, got {coeff}")
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    # value[k][i]: best cost of k jumps from i to n - 1; choice[k][i]: the next index on that path
    value = np.full((steps + 1, n), np.inf)
    choice = np.zeros((steps + 1, n), dtype=np.int64)
    value[1, : n - 1] = c[: n - 1, n - 1]
    choice[1] = n - 1
    for k in range(2, steps + 1):
        total = np.where(upper, c + coeff * value[k - 1][None, :], np.inf)
        choice[k] = total.argmin(axis=1)  # first minimum, as the official backtracking
        value[k] = total[np.arange(n), choice[k]]
    path = [0]
    for k in range(steps, 0, -1):
        path.append(int(choice[k][path[-1]]))
    return path


def path_cost(cost, path: list[int], coeff: float = DEFAULT_COEFF) -> float:
    """The DP objective of one path (for checks and reports)."""
    return float(sum(coeff ** m * float(cost[a][b]) for m, (a, b) in enumerate(itertools.pairwise(path))))


def gits_schedule(denoiser, x_T: torch.Tensor, fine_sigmas: torch.Tensor, steps: int, solver: str = "ipndm",
                  coeff: float = DEFAULT_COEFF, metric: str = "l2", extra_args: dict | None = None) -> torch.Tensor:
    """``steps + 1`` sigmas picked from ``fine_sigmas`` (strictly decreasing, first = fine_sigmas[0]).

    ``denoiser(x, sigma_batch, **extra_args)`` returns x0; ``x_T`` is a batch of start points at fine_sigmas[0];
    ``solver`` integrates the teacher on the fine grid (the cost always uses Euler jumps, as the official code).
    """
    fine = check_sigmas(torch.as_tensor(fine_sigmas).float().cpu())
    steps = check_steps(steps)
    if steps > len(fine) - 1:
        raise ValueError(f"{steps} steps need at least {steps + 1} fine sigmas, got {len(fine)}")
    if (fine[1:] >= fine[:-1]).any():
        raise ValueError("fine_sigmas must be strictly decreasing")
    check_finite(x_T, "x_T")
    traj, derivs = teacher_trajectory(denoiser, x_T, fine.to(x_T.device), solver, extra_args)
    check_finite(traj, "teacher trajectory")
    return fine[dp_path(cost_matrix(traj, derivs, fine, metric), steps, coeff)]


def gits_for_model(model: DiffusionModel, positive: list, negative: list, cfg: float, steps: int,
                   latent_shape: tuple[int, ...], seed: int = 0, fine_sigmas: torch.Tensor | None = None,
                   solver: str = "ipndm", coeff: float = DEFAULT_COEFF, metric: str = "l2") -> torch.Tensor:
    """GITS schedule of a DiffusionModel under CFG; ``latent_shape`` (B, C, H, W) sets the warm-up batch."""
    ms = model.model_sampling
    fine = default_fine_sigmas(ms) if fine_sigmas is None else check_sigmas(torch.as_tensor(fine_sigmas).float())
    device = next(model.diffusion_model.parameters()).device
    noise = seeded_noise(seed, tuple(latent_shape), device=device)
    x_T = noisy_start(ms, fine[0].to(device), noise)
    options = {"sample_sigmas": fine.to(device), "run_state": {}}
    return gits_schedule(cfg_denoiser(model, positive, negative, cfg, options), x_T, fine, steps, solver, coeff,
                         metric)


def save_schedule(path: str | Path, sigmas: torch.Tensor, model_id: str, **info: object) -> None:
    """Write the schedule as JSON with the model id and step count it was searched for (plus ``info``)."""
    save_schedule_file(path, sigmas, FORMAT, model_id, **info)


def load_schedule(path: str | Path, model_id: str | None = None, steps: int | None = None) -> torch.Tensor:
    """Read a saved schedule; ValueError if it is not one or belongs to another model id / step count."""
    return load_schedule_file(path, FORMAT, "a GITS schedule", model_id, steps)
