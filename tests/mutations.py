"""Mutation check: plant one-term bugs in the samplers and accelerators, run the CI tests that must catch them.

Each mutation below replaces one exact piece of code text (matched by text, not by line number; a text that is
not found exactly once is reported as "not planted") in a temporary copy of the repository, then runs the listed
test files there with pytest, as CI does (no ComfyUI: ``COMFYUI_DIR`` is removed from the environment). The work
tree is never modified: the copy lives in a temporary folder that is deleted afterwards, and the copy's
``turbosample`` package is put first on ``PYTHONPATH`` (checked before any mutation runs). Before planting, the
listed test files must pass on the unmodified copy.

A mutation is *caught* when pytest fails (the first failing test is reported), *survived* when every listed test
passes. The script exits with status 1 if any mutation survived, could not be planted, or broke the run
(a collection error or a timeout).

Usage (from the repository root, with the project's virtual environment)::

    .venv/bin/python tests/mutations.py                  # every mutation (15-20 minutes on 2 busy cores)
    .venv/bin/python tests/mutations.py -k flowturbo -k ras   # mutations whose id contains a word
    .venv/bin/python tests/mutations.py --list           # ids, files and test files, nothing run
    .venv/bin/python tests/mutations.py --tests tests    # run the whole CI suite for each mutation (slow)

The first five mutations are the bugs of issue 17 that survived the suite before its tests were added.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "turbosample"


@dataclass(frozen=True)
class Mutation:
    id: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


def m(id_: str, path: str, old: str, new: str, *tests: str) -> Mutation:
    return Mutation(id_, path, old, new, tuple(f"tests/{t}.py" for t in tests))


STEP = "test_step_formulas"
SDE = "test_sde_reference"
MUTATIONS: list[Mutation] = [
    # ---- issue 17's table ---------------------------------------------------------------------------------------
    m("flowturbo_refiner_sign", "samplers/flowturbo.py",
      "d = u + refiner(x, sigma * x.new_ones([x.shape[0]]), u)",
      "d = u - refiner(x, sigma * x.new_ones([x.shape[0]]), u)", "test_flowturbo", "test_train_refiner", STEP),
    m("flowturbo_refiner_given_d", "samplers/flowturbo.py",
      "d_next = d + refiner(x_euler, sigmas[i + 1] * x.new_ones([x.shape[0]]), u)",
      "d_next = d + refiner(x_euler, sigmas[i + 1] * x.new_ones([x.shape[0]]), d)", "test_flowturbo",
      "test_train_refiner", STEP),
    m("cfg_pp_2m_previous_guided", "samplers/cfg_pp.py", "        previous = denoised_u\n",
      "        previous = denoised\n", "test_cfg_pp", STEP),
    m("dpmpp_3m_sde_third_order_sign", "samplers/stochastic.py", "x = x + alpha_t * phi_2 * d1 - alpha_t * phi_3 * d2",
      "x = x + alpha_t * phi_2 * d1 + alpha_t * phi_3 * d2", "test_samplers_stochastic", "test_samplers_oracles",
      "test_solvers_order", SDE),
    m("ras_inactive_not_restored", "accel/ras.py",
      "out[rows] = keep_inactive(out[rows], st.active[rows], grid, self.parts.patch_size, st.prev_out[rows])",
      "out[rows] = out[rows]", "test_ras"),
    # ---- solvers.py: Euler, Heun, DPM-2, DPM-Solver++(2M), LMS, iPNDM --------------------------------------------
    m("euler_step_size", "samplers/solvers.py",
      "x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])",
      "x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i]) * 0.99", "test_solvers_order",
      "test_sampling_core"),
    m("heun_second_slope_at_start", "samplers/solvers.py",
      "d_next = to_d(x_euler, sigmas[i + 1], evaluate(model, x_euler, sigmas[i + 1], extra_args))",
      "d_next = to_d(x_euler, sigmas[i + 1], evaluate(model, x, sigmas[i + 1], extra_args))", "test_solvers_order"),
    m("dpm_2_midpoint", "samplers/solvers.py", "sigma_mid = (sigmas[i].log() + sigmas[i + 1].log()).div(2).exp()",
      "sigma_mid = (sigmas[i].log() + sigmas[i + 1].log()).div(3).exp()", "test_solvers_order"),
    m("dpmpp_2m_correction_weight", "samplers/solvers.py",
      "estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous",
      "estimate = (1 + 1 / r) * denoised - (1 / r) * previous", "test_solvers_order"),
    m("lms_nodes_shifted", "samplers/solvers.py", "nodes = grid[i - len(history) + 1:i + 1]",
      "nodes = grid[i - len(history) + 2:i + 2]", "test_solvers_order"),
    m("ipndm_ab3_coefficient", "samplers/solvers.py", "(23 / 12, -16 / 12, 5 / 12)", "(23 / 12, -15 / 12, 4 / 12)",
      "test_solvers_order", STEP),
    # ---- multistep.py: UniPC, DEIS, iPNDM-v, RES multistep -------------------------------------------------------
    m("unipc_predictor_sign", "samplers/multistep.py",
      "x_pred = x_base - b_h * sum(w * d for w, d in zip(rho_p, slopes, strict=True)) if slopes else x_base",
      "x_pred = x_base + b_h * sum(w * d for w, d in zip(rho_p, slopes, strict=True)) if slopes else x_base",
      "test_samplers_oracles"),
    m("unipc_corrector_new_value", "samplers/multistep.py",
      "return x_base - b_h * (correction + rho_c[-1] * (m_new - m0))",
      "return x_base - b_h * (correction + rho_c[0] * (m_new - m0))", "test_samplers_oracles"),
    m("unipc_bh2_is_bh1", "samplers/multistep.py", 'b_h = hh if variant == "bh1" else math.expm1(hh)',
      "b_h = hh", "test_samplers_oracles"),
    m("deis_basis", "samplers/multistep.py", "basis *= (tau - prev[k]) / (prev[j] - prev[k])",
      "basis *= (tau - prev[k]) / (prev[j] + prev[k])", "test_samplers_oracles"),
    m("ipndm_v_second_order", "samplers/multistep.py", "c = [1 + hn / (2 * h1), -hn / (2 * h1)]",
      "c = [1 + h1 / (2 * hn), -h1 / (2 * hn)]", "test_samplers_oracles", STEP),
    m("res_multistep_b2_sign", "samplers/multistep.py",
      "x = (-h).exp() * x + h * ((phi1 - b2) * denoised + b2 * previous)",
      "x = (-h).exp() * x + h * ((phi1 + b2) * denoised - b2 * previous)", "test_samplers_oracles"),
    m("ipndm_v_third_order", "samplers/multistep.py", "c = [c[0] + t1, c[1] - (1 + h1 / h2) * t1, t1 * h1 / h2]",
      "c = [c[0] + t1, c[1] - (1 + h2 / h1) * t1, t1 * h1 / h2]", "test_samplers_oracles", STEP),
    # ---- stochastic.py and the shared ancestral splits -----------------------------------------------------------
    m("ancestral_up_exponent", "samplers/sampling_utils.py",
      "up = eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5",
      "up = eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.25",
      "test_samplers_stochastic", "test_samplers_oracles", SDE),
    m("ancestral_rf_rescale", "samplers/sampling_utils.py", "rescale = (1 - sigma_to) / (1 - sigma_down)",
      "rescale = (1 - sigma_down) / (1 - sigma_to)", "test_samplers_stochastic", SDE),
    m("euler_ancestral_no_rescale", "samplers/stochastic.py",
      "            x = rescale * x + noise(sigma, sigma_next) * s_noise * renoise\n    return x\n\n\n@torch.no_grad()\n"
      "def sample_dpmpp_2s_ancestral",
      "            x = x + noise(sigma, sigma_next) * s_noise * renoise\n    return x\n\n\n@torch.no_grad()\n"
      "def sample_dpmpp_2s_ancestral", "test_samplers_stochastic", SDE),
    m("dpmpp_2s_midpoint", "samplers/stochastic.py",
      "sigma_mid = sigma_of_half_log_snr((lam + lam_down) / 2, flow)",
      "sigma_mid = sigma_of_half_log_snr((2 * lam + lam_down) / 3, flow)", "test_samplers_stochastic", SDE),
    m("dpmpp_2s_flow_data_step", "samplers/stochastic.py",
      "return denoised + (sigma_to / sigma) * (x - denoised)",
      "return denoised + (sigma_to / sigma) * (x - (1 - sigma) * denoised)", "test_samplers_stochastic", SDE),
    m("dpmpp_sde_stage_weight", "samplers/stochastic.py", "fac = 1 / (2 * r)", "fac = 1 / r",
      "test_samplers_stochastic", SDE),
    m("dpmpp_sde_alpha_ratio", "samplers/stochastic.py",
      "out = (alpha_to / alpha_s) * (-h).exp() * x - alpha_to * (-h).expm1() * x0",
      "out = (-h).exp() * x - alpha_to * (-h).expm1() * x0", "test_samplers_stochastic", SDE),
    m("dpmpp_2m_sde_midpoint_half", "samplers/stochastic.py", "x = x + 0.5 * alpha_t * phi_1 * slope",
      "x = x + alpha_t * phi_1 * slope", "test_samplers_stochastic", "test_samplers_oracles", SDE),
    m("dpmpp_2m_sde_heun_weight", "samplers/stochastic.py", "                x = x + alpha_t * phi_2 * slope",
      "                x = x + 0.5 * alpha_t * phi_2 * slope", "test_samplers_stochastic", "test_samplers_oracles",
      SDE),
    m("dpmpp_msde_noise_scale", "samplers/stochastic.py", "(-2 * h * eta).expm1().neg().sqrt()",
      "(-h * eta).expm1().neg().sqrt()", "test_samplers_stochastic", "test_samplers_oracles", SDE),
    m("dpmpp_3m_sde_d1", "samplers/stochastic.py", "d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)",
      "d1 = d1_0 + (d1_0 - d1_1) * r1 / (r0 + r1)", "test_samplers_stochastic", "test_samplers_oracles", SDE),
    m("ddim_posterior_std", "samplers/stochastic.py", "c = eta * sigma_next * (1 - snr_ratio).clamp(min=0) ** 0.5",
      "c = eta * sigma_next * (1 - snr_ratio).clamp(min=0)", "test_samplers_stochastic", "test_samplers_oracles",
      SDE),
    m("lcm_renoise_level", "samplers/stochastic.py",
      "x = ms.noise_scaling(sigmas[i + 1], noise(sigmas[i], sigmas[i + 1]), x)",
      "x = ms.noise_scaling(sigmas[i], noise(sigmas[i], sigmas[i + 1]), x)", "test_samplers_stochastic", SDE),
    # ---- cfg_pp.py and gradient_estimation.py --------------------------------------------------------------------
    m("cfg_pp_shift_alpha", "samplers/cfg_pp.py", "return x + signal_scale(sigma, flow) * (guided - uncond)",
      "return x + (guided - uncond)", "test_cfg_pp", STEP),
    m("euler_ancestral_cfg_pp_eps_guided", "samplers/cfg_pp.py",
      "eps_u = (x - signal_scale(sigma, flow) * denoised_u) / sigma",
      "eps_u = (x - signal_scale(sigma, flow) * denoised) / sigma", "test_cfg_pp", STEP),
    m("euler_ancestral_cfg_pp_up", "samplers/cfg_pp.py",
      "up = torch.minimum(level_next, eta * level_next * (1 - ratio ** 2).clamp(min=0) ** 0.5)",
      "up = torch.minimum(level_next, eta * level_next * (1 - ratio).clamp(min=0) ** 0.5)", "test_cfg_pp", STEP),
    m("cfg_pp_2m_correction_weight", "samplers/cfg_pp.py",
      "x = x - torch.expm1(-h) / (2 * r) * (denoised - previous)",
      "x = x - torch.expm1(-h) / r * (denoised - previous)", "test_cfg_pp", STEP),
    m("cfg_pp_2s_second_shift_stale_uncond", "samplers/cfg_pp.py",
      "x = exp_step(cfg_pp_shift(x, denoised_mid, uncond(), sigma, flow), denoised_mid, sigma, sigma_down)",
      "x = exp_step(cfg_pp_shift(x, denoised_mid, denoised_u, sigma, flow), denoised_mid, sigma, sigma_down)",
      "test_cfg_pp", STEP),
    m("res_multistep_cfg_pp_data_term", "samplers/cfg_pp.py",
      "x = (-h).exp() * shifted + h * (b1 * denoised_u + b2 * old)",
      "x = (-h).exp() * shifted + h * (b1 * denoised + b2 * old)", "test_cfg_pp", STEP),
    m("res_multistep_cfg_pp_history_guided", "samplers/cfg_pp.py", "old, old_down = denoised_u, sigma_down",
      "old, old_down = denoised, sigma_down", "test_cfg_pp", STEP),
    m("res_multistep_ancestral_c2_node", "samplers/cfg_pp.py",
      "c2 = (old_down.log() - sigmas[i - 1].log()) / h",
      "c2 = (sigma.log() - sigmas[i - 1].log()) / h", "test_cfg_pp", STEP),
    m("res_multistep_cfg_pp_first_step", "samplers/cfg_pp.py", "x = exp_step(shifted, denoised, sigma, sigma_down)",
      "x = exp_step(shifted, denoised_u, sigma, sigma_down)", "test_cfg_pp", STEP),
    m("gradient_estimation_gamma", "samplers/gradient_estimation.py",
      "x = x + (ge_gamma - 1) * (d - previous) * dt", "x = x + ge_gamma * (d - previous) * dt", "test_cfg_pp", STEP),
    m("gradient_estimation_cfg_pp_unshifted_d", "samplers/gradient_estimation.py",
      "d = (shifted - denoised) / sigma", "d = (x - denoised) / sigma", "test_cfg_pp", STEP),
    # ---- extra_samplers.py: ER-SDE, SEEDS-2/3, Heun++, DPM-2 ancestral -------------------------------------------
    m("er_sde_flow_alpha", "samplers/extra_samplers.py",
      "alpha_s, alpha_t = float(sigmas[i] / r_s), float(sigmas[i + 1] / r_t)", "alpha_s, alpha_t = 1.0, 1.0",
      "test_extra_samplers", SDE),
    m("er_sde_stage2_scale", "samplers/extra_samplers.py",
      "x = x + alpha_t * (dr + float(inv_f.sum()) * width * float(f_t)) * slope",
      "x = x + alpha_t * (dr + float(inv_f.sum()) * width * float(f_s)) * slope", "test_extra_samplers", SDE),
    m("er_sde_stage3_divisor", "samplers/extra_samplers.py",
      "curve = (slope - prev_slope) / (float(r_s - levels[i - 2]) / 2)",
      "curve = (slope - prev_slope) / float(r_s - levels[i - 2])", "test_extra_samplers", SDE),
    m("er_sde_noise_spread", "samplers/extra_samplers.py", "spread = float(r_t ** 2 - r_s ** 2 * ratio ** 2)",
      "spread = float(r_t ** 2 - r_s ** 2 * ratio)", "test_extra_samplers", SDE),
    m("seeds_2_estimate", "samplers/extra_samplers.py", "estimate = denoised + (denoised_1 - denoised) / (2 * r)",
      "estimate = denoised + (denoised_1 - denoised) / r", "test_extra_samplers", SDE),
    m("seeds_ou_decay", "samplers/extra_samplers.py",
      "return fresh if prev is None else prev * math.exp(-decay) + fresh",
      "return fresh if prev is None else prev + fresh", "test_extra_samplers", SDE),
    m("seeds_3_stage2_weight", "samplers/extra_samplers.py", "c_2 = (r_2 / r_1) * _phi2(r_2 * big)",
      "c_2 = (r_1 / r_2) * _phi2(r_2 * big)", "test_extra_samplers", SDE),
    m("seeds_3_final_weight", "samplers/extra_samplers.py", "c_t = _phi2(big) / r_2", "c_t = _phi2(big) / r_1",
      "test_extra_samplers", SDE),
    m("heunpp2_weights", "samplers/extra_samplers.py",
      "w_1, w_2 = sigmas[i + 1] / (3 * first), sigmas[i + 2] / (3 * first)",
      "w_1, w_2 = sigmas[i + 2] / (3 * first), sigmas[i + 1] / (3 * first)", "test_extra_samplers", SDE),
    m("heunpp2_penultimate_weight", "samplers/extra_samplers.py", "w_1 = sigmas[i + 1] / (2 * first)",
      "w_1 = sigmas[i + 1] / (3 * first)", "test_extra_samplers", SDE),
    m("dpm_2_ancestral_midpoint", "samplers/extra_samplers.py",
      "sigma_mid = ((sigma.log() + sigma_down.log()) / 2).exp()",
      "sigma_mid = ((sigma.log() + sigmas[i + 1].log()) / 2).exp()", "test_extra_samplers", SDE),
    # ---- sa_solver.py, dc_solver.py, dpm_solver_v3.py ------------------------------------------------------------
    m("sa_solver_decay", "samplers/sa_solver.py",
      "out = (sigma_t / sigma_s) * math.exp(-tau * tau * (lam_t - lam_s)) * x",
      "out = (sigma_t / sigma_s) * math.exp(-tau * (lam_t - lam_s)) * x", "test_sa_solver", SDE),
    m("sa_solver_noise_scale", "samplers/sa_solver.py",
      "math.sqrt(-math.expm1(-2 * tau * tau * (lams[i + 1] - lams[i])))",
      "math.sqrt(-math.expm1(-tau * tau * (lams[i + 1] - lams[i])))", "test_sa_solver", SDE),
    m("sa_solver_corrector_drops_noise", "samplers/sa_solver.py",
      "            if step_noise is not None:\n                x = x + step_noise\n",
      "            if step_noise is not None:\n                x = x + 0 * step_noise\n", "test_sa_solver", SDE),
    m("dc_solver_compensation_node", "samplers/dc_solver.py",
      "tau = nodes[-2] + ratio * (nodes[-1] - nodes[-2])", "tau = nodes[-1] + ratio * (nodes[-1] - nodes[-2])",
      "test_dc_solver"),
    m("dpm_solver_v3_integral_sign", "samplers/dpm_solver_v3.py",
      "return alpha_t * torch.exp(-big_l[-1]) * (x_s.double() / alpha_s - integral)",
      "return alpha_t * torch.exp(-big_l[-1]) * (x_s.double() / alpha_s + integral)", "test_dpm_solver_v3"),
    m("dpm_solver_v3_f", "samplers/dpm_solver_v3.py",
      "f_i = ((1 - l_i) * x.double() - alphas[i] * denoised.double()) / alphas[i]",
      "f_i = ((1 - l_i) * x.double() - denoised.double()) / alphas[i]", "test_dpm_solver_v3"),
    # ---- churn.py, restart.py, momentum.py, time_shift.py, paradigms.py, adaptive.py -----------------------------
    m("churn_flow_renoise_scale", "samplers/churn.py", "scale = (1 - sigma_to) / (1 - sigma)",
      "scale = (1 - sigma) / (1 - sigma_to)", "test_gap_samplers"),
    m("churn_gamma_cap", "samplers/churn.py", "return min(s_churn / steps, math.sqrt(2) - 1)",
      "return min(s_churn / steps, math.sqrt(2))", "test_gap_samplers"),
    m("restart_renoise_from_to", "samplers/restart.py", "x = add_noise(x, last, sigma, z * s_noise, flow)",
      "x = add_noise(x, sigma, last, z * s_noise, flow)", "test_gap_samplers"),
    m("momentum_ghvb_mix", "samplers/momentum.py", "velocity = (1 - beta) * velocity + beta * g",
      "velocity = beta * velocity + (1 - beta) * g", "test_gap_samplers"),
    m("momentum_hb_mix", "samplers/momentum.py",
      "velocity = (1 - beta) * velocity + beta * sum(c * v for c, v in zip(coeffs, history, strict=True))",
      "velocity = beta * velocity + (1 - beta) * sum(c * v for c, v in zip(coeffs, history, strict=True))",
      "test_gap_samplers"),
    m("time_shift_eps_variance", "samplers/time_shift.py",
      "return table ** 2 if flow else table ** 2 / (1 + table ** 2)", "return table ** 2", "test_gap_samplers"),
    m("time_shift_vp_input", "samplers/time_shift.py", "x * ((1 + s_s ** 2) / (1 + s ** 2)) ** 0.5",
      "x * ((1 + s_s ** 2) / (1 + s ** 2))", "test_gap_samplers"),
    m("paradigms_increment_sigma", "samplers/paradigms.py",
      "increments = to_d(points, sigmas[begin:end].reshape(view), denoised) * sigmas.diff()[begin:end].reshape(view)",
      "increments = to_d(points, sigmas[begin + 1:end + 1].reshape(view), denoised) * "
      "sigmas.diff()[begin:end].reshape(view)", "test_paradigms"),
    m("adaptive_ode_heun_average", "samplers/adaptive.py", "return low, x + (d + d_next) / 2 * (sigma_next - sigma)",
      "return low, x + (d + 2 * d_next) / 3 * (sigma_next - sigma)", "test_adaptive"),
    m("adaptive_sde_noise_scale", "samplers/adaptive.py",
      "low = y + 2 * step * (denoise_ve(y, u, retry) - y) + s * math.sqrt(2 * step) * z",
      "low = y + 2 * step * (denoise_ve(y, u, retry) - y) + s * math.sqrt(step) * z", "test_adaptive"),
    # ---- accelerators: DualFast, FlowTurbo, MagCache, RAS, Bottleneck --------------------------------------------
    m("dualfast_mix_sign", "samplers/dualfast.py", "mixed = (1 + c) * out - c * ref", "mixed = (1 - c) * out + c * ref",
      "test_dualfast"),
    m("dualfast_decay_schedule", "samplers/dualfast.py",
      "return coefficient * max(steps - 1 - i, 0) / max(steps - 2, 1)",
      "return coefficient * max(steps - i, 0) / max(steps - 1, 1)", "test_dualfast"),
    m("flowturbo_refiner_passes_d_next", "samplers/flowturbo.py", "            passed = d\n",
      "            passed = d_next\n", "test_flowturbo", STEP),
    m("flowturbo_heun_average", "samplers/flowturbo.py", "x = x + (d + d_next) / 2 * dt", "x = x + d_next * dt",
      "test_flowturbo", STEP),
    m("magcache_error_uses_step_ratio", "accel/magcache.py", "state.acc_err += abs(1.0 - state.acc_ratio)",
      "state.acc_err += abs(1.0 - ratio)", "test_magcache"),
    m("magcache_retention_rounding", "accel/magcache.py", "return int(retention_ratio * steps + 0.5)",
      "return int(retention_ratio * steps)", "test_magcache"),
    m("magcache_residual_not_added", "accel/magcache.py",
      "out_chunks[i] = chunks[i] + states[keys[i]].residual.to(chunks[i])",
      "out_chunks[i] = states[keys[i]].residual.to(chunks[i])", "test_magcache"),
    m("ras_stale_tokens_not_scattered", "accel/ras.py",
      "return scatter_tokens(st.prev_tokens.to(h.dtype), index, h)",
      "return scatter_tokens(torch.zeros_like(st.prev_tokens).to(h.dtype), index, h)", "test_ras",
      "test_stacking"),
    m("bottleneck_renoise_alpha", "samplers/bottleneck.py", "x = signal_scale(stage[0], flow) * x0 + stage[0] * eps",
      "x = x0 + stage[0] * eps", "test_bottleneck"),
    m("bottleneck_implied_noise_alpha", "samplers/bottleneck.py",
      'progress["eps"] = (info["x"] - signal_scale(sigma, flow) * info["denoised"]) / sigma',
      'progress["eps"] = (info["x"] - info["denoised"]) / sigma', "test_bottleneck"),
    m("bottleneck_noise_gain", "samplers/bottleneck.py",
      "gain = math.sqrt(eps.shape[-2] * eps.shape[-1] / (size[0] * size[1]))",
      "gain = eps.shape[-2] * eps.shape[-1] / (size[0] * size[1])", "test_bottleneck"),
    m("bottleneck_eps_shift_range", "samplers/bottleneck.py", "out = top * time_snr_shift(float(shift), out / top)",
      "out = time_snr_shift(float(shift), out)", "test_bottleneck"),
]


def copy_tree(dest: Path) -> Path:
    """The repository's tracked and untracked-but-not-ignored files, copied to ``dest/turbosample``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    root = dest / PACKAGE
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return root


def environment(dest: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_DIR", "COMFYUI_PYTHON", "PYTHONPATH")}
    env.update(PYTHONPATH=str(dest), PYTHONDONTWRITEBYTECODE="1")
    return env


def run_pytest(root: Path, env: dict, tests: tuple[str, ...], timeout: float, first: bool = True,
               deselect: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """(outcome, details): "passed", "failed" (details: the failing tests), "error" or "timeout"."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *(["-x"] if first else []),
           *tests, *[f"--deselect={d}" for d in deselect]]
    try:
        out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", [f"over {timeout:.0f} s"]
    text = out.stdout + out.stderr
    last = text.strip().splitlines()[-1] if text.strip() else f"exit {out.returncode}"
    if out.returncode == 0:
        return "passed", []
    if out.returncode == 1:
        return "failed", re.findall(r"^FAILED (\S+)", text, flags=re.M) or [last]
    return "error", [last]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", action="append", default=[], help="run mutations whose id contains this (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--tests", nargs="+", help="test paths to run for every mutation instead of its own list")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run")
    args = parser.parse_args(argv)
    chosen = [mu for mu in MUTATIONS if not args.k or any(k in mu.id for k in args.k)]
    if args.list:
        for mu in chosen:
            print(f"{mu.id:40s} {mu.path:30s} {' '.join(mu.tests)}")
        return 0
    if not chosen:
        print("no mutation matches", args.k)
        return 2
    with tempfile.TemporaryDirectory(prefix="ts-mutations-") as tmp:
        root = copy_tree(Path(tmp))
        env = environment(Path(tmp))
        where = subprocess.run([sys.executable, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"], cwd=root,
                               env=env, capture_output=True, text=True)
        if not where.stdout.strip().startswith(str(root)):
            print(f"the copy's package is not the one imported ({where.stdout.strip() or where.stderr.strip()})")
            return 2
        all_tests = tuple(dict.fromkeys(t for mu in chosen for t in (args.tests or mu.tests)))
        missing = [t for t in all_tests if not (root / t).exists()]
        outcome, broken = run_pytest(root, env, tuple(t for t in all_tests if t not in missing), args.timeout * 4,
                                     first=False)
        if outcome not in ("passed", "failed"):
            print(f"baseline: the unmodified tests did not run ({outcome}: {broken[0]}); nothing planted")
            return 2
        caught = 0
        for t in missing:
            print(f"MISSING     test file {t} (left out of every run)")
        for t in broken:
            print(f"BROKEN      {t} fails on the unmodified code (deselected from every run)")
        print(f"baseline: {len(all_tests) - len(missing)} test files run on the unmodified copy\n")
        for mu in chosen:
            path = root / mu.path
            original = path.read_text()
            found = original.count(mu.old)
            if found != 1:
                print(f"NOT PLANTED {mu.id}: its text occurs {found} times in {mu.path} (the code changed?)")
                continue
            started = time.monotonic()
            path.write_text(original.replace(mu.old, mu.new))
            try:
                tests = tuple(t for t in (args.tests or mu.tests) if t not in missing)
                outcome, details = run_pytest(root, env, tests, args.timeout, deselect=tuple(broken))
            finally:
                path.write_text(original)
            took = time.monotonic() - started
            if outcome == "failed":
                caught += 1
                print(f"caught      {mu.id:40s} by {details[0]}  ({took:.0f} s)")
            else:
                label = {"passed": "SURVIVED", "error": "ERROR", "timeout": "TIMEOUT"}[outcome]
                print(f"{label:11s} {mu.id:40s} {' '.join(details)} (ran {' '.join(tests)})")
            sys.stdout.flush()
        print(f"\n{caught} of {len(chosen)} planted bugs caught"
              + (f"; {len(missing)} test files missing, {len(broken)} tests failing unmodified" if missing or broken
                 else ""))
        return 0 if caught == len(chosen) and not missing and not broken else 1


if __name__ == "__main__":
    sys.exit(main())
