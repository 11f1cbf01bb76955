"""The TurboSampleAutoTune node: MODEL + conditioning + steps + target -> patched MODEL, SAMPLER, SIGMAS, report.

Stand-alone (the app's graphs) it tunes our ``DiffusionModel``; in ComfyUI (``nodes.autotune_comfy``) it runs every
candidate through ComfyUI's own sampling on the connected MODEL. Either way the outputs are the chosen setting,
ready for TurboSample Sample / SamplerCustom(Advanced), and the report plot as an IMAGE.
"""

from __future__ import annotations

import threading

from ..samplers.registry import SAMPLERS
from ..samplers.schedulers import SCHEDULERS
from ..tune.search import Budget
from ..tune.space import SearchSpace
from .autotune_io import image_tensor, seeds_from, target_of, write_node_report
from .builtin_nodes import SEED
from .categories import ACCELERATORS
from .spec import NodeInputError, NodeSpec, Output, Param

CATEGORY = ACCELERATORS


def autotune(model, positive, negative, latent_image, sampler_name: str, scheduler: str, steps: int, cfg: float,
             seed: int, seeds: int, target_speedup: float, min_psnr: float, budget_runs: float,
             report_filename: str, cancel: threading.Event | None = None) -> tuple:
    """Stand-alone: tune our DiffusionModel; returns the chosen (or, with nothing measured, the reference) setting."""
    from ..models.builtin import MODEL_ID
    from ..samplers.denoiser import DiffusionModel
    from ..tune.search import tune
    from ..tune.space import sampler_info
    from ..tune.standalone import StandaloneBackend, TuneProblem
    from .autotune_model import builtin_calibration, builtin_image, is_builtin_latent

    if not isinstance(model, DiffusionModel):
        raise NodeInputError("TurboSample Auto-Tune outside ComfyUI takes the built-in model (a DiffusionModel)")
    target = target_of(target_speedup, min_psnr)
    latent = latent_image["samples"]
    builtin = model.name == MODEL_ID and is_builtin_latent(latent)
    calibration = builtin_calibration(model)[0] if model.name == MODEL_ID else None
    problem = TuneProblem(model, positive, negative, (1, *latent.shape[1:]), cfg, sampler_name, steps, scheduler,
                          to_image=builtin_image if builtin else None, magcache_calibration=calibration)
    backend = StandaloneBackend(problem)
    result = tune(backend, target, Budget(runs=budget_runs), SearchSpace(), seeds_from(seed, seeds), cancel)
    write_node_report(result, report_filename)
    c = result.chosen.candidate if result.chosen is not None else problem.reference
    return (backend.patched(c, counted=False), sampler_info(c, backend.dc_records.get(c.steps)),
            backend.sigmas(c.steps), image_tensor(result))


def comfy_autotune(**values) -> tuple:
    from .autotune_comfy import comfy_autotune as run

    return run(**values)


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("TurboSampleAutoTune", "TurboSample Auto-Tune", CATEGORY,
             "Finds the fastest setting that stays close to the full run on this model and prompt: runs the full "
             "run (sampler_name, steps, scheduler; no accelerator) on a few seeds, then searches sampler x steps x "
             "MagCache (threshold, K) x RAS ratio x Bottleneck within the budget, timing every candidate on this "
             "device (alternating with short plain runs) and scoring it against the full run (PSNR, SSIM, LPIPS on "
             "the built-in model's images; PSNR on latents for other models: no VAE here). Returns the chosen "
             "setting as MODEL (MagCache/RAS applied), SAMPLER and SIGMAS, and the report (Pareto plot speed-up vs "
             "PSNR, fewer steps of the same sampler as the bar, best settings) as an IMAGE. An unreachable target "
             "returns the best reached; Cancel ends the search and returns the best measured so far.",
             (Param("model", "MODEL"), Param("positive", "CONDITIONING"), Param("negative", "CONDITIONING"),
              Param("latent_image", "LATENT", tooltip="Size of the runs (its content is not used)."),
              Param("sampler_name", "COMBO", "euler", choices=lambda: list(SAMPLERS),
                    tooltip="Sampler of the full run (the reference)."),
              Param("scheduler", "COMBO", "simple", choices=lambda: list(SCHEDULERS),
                    tooltip="Schedule shape of the reference and of every candidate."),
              Param("steps", "INT", 28, 2, 1000, tooltip="Steps of the full run (the reference)."),
              Param("cfg", "FLOAT", 4.0, 0.0, 30.0, 0.1, tooltip="Guidance scale."),
              SEED,
              Param("seeds", "INT", 2, 1, 8, tooltip="Tuning seeds, from seed on."),
              Param("target_speedup", "FLOAT", 2.0, 0.0, 100.0, 0.1,
                    tooltip="Be this many times faster, as faithful as possible (0: use min_psnr)."),
              Param("min_psnr", "FLOAT", 0.0, 0.0, 99.0, 0.5,
                    tooltip="Or: keep PSNR against the full run >= this (dB), as fast as possible (0 = off)."),
              Param("budget_runs", "FLOAT", 10.0, 0.5, 1000.0, 0.5,
                    tooltip="Search budget in full runs' worth of wall time (the reference comes on top)."),
              Param("report_filename", "STRING", "",
                    tooltip="Also write the JSON report under this name in the auto-tune folder (empty = no file).")),
             (Output("MODEL", "MODEL"), Output("SAMPLER", "SAMPLER"), Output("SIGMAS", "SIGMAS"),
              Output("report", "IMAGE")), autotune, comfy_fn=comfy_autotune),
)
