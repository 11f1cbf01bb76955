"""Auto-tune for the front ends: app settings <-> tuner candidates, the model to tune on, reports and workflows.

``tune_problem`` is the one place where a model is loaded for tuning: today the built-in model; a model loader
(``--model DIR``) plugs in there. Everything else (CLI ``turbosample tune``, the app's *Find settings*, the
``TurboSampleAutoTune`` node) goes through ``run_tune`` or the node function.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from ..tune.search import Budget, Target, TuneResult, tune
from ..tune.space import BOTTLENECK_STEP_BUDGET, Candidate, SearchSpace
from ..tune.standalone import TuneProblem
from .app_graph import to_api_prompt, to_ui_workflow
from .autotune_model import builtin_calibration, builtin_image  # noqa: F401  (re-exported)
from .model_folders import BUILTIN
from .txt2img import Settings
from .workflow import WorkflowError


def reference_of(settings: Settings) -> Settings:
    """The full-cost run the tuner compares with: these settings, every accelerator off."""
    return replace(settings, magcache_threshold=0.0, ras_ratio=1.0, loop_accelerator="none")


def check_tunable(settings: Settings) -> None:
    """WorkflowError unless the settings describe a run the tuner can take as its reference."""
    if settings.sigmas_from != "schedule":
        raise WorkflowError(f"auto-tune varies the step count of a schedule; 'Sigmas from' is "
                            f"{settings.sigmas_from!r}: set it to 'schedule'")
    if settings.denoise != 1.0:
        raise WorkflowError(f"auto-tune needs a full text-to-image run (denoise 1), got denoise {settings.denoise}")


def settings_for(candidate: Candidate, base: Settings) -> Settings:
    """The app settings that run ``candidate`` on ``base``'s prompt, seed, size, CFG and schedule."""
    values = {"sampler": candidate.sampler, "steps": candidate.steps,
              "magcache_threshold": candidate.magcache_threshold, "ras_ratio": candidate.ras_ratio,
              "loop_accelerator": candidate.loop}
    if candidate.magcache:
        values["magcache_max_skip_steps"] = candidate.magcache_k
    if candidate.loop == "bottleneck":
        defaults = Settings()
        values.update(bottleneck_scales=defaults.bottleneck_scales, bottleneck_noise=defaults.bottleneck_noise,
                      bottleneck_step_budget=BOTTLENECK_STEP_BUDGET)
    return replace(reference_of(base), **values)


def tune_problem(settings: Settings, options=None, seed_prompts: dict[int, str] | None = None) -> TuneProblem:
    """The loaded model, conditioning and latent shape the tuner runs on, for the app's settings: the built-in model,
    or a model folder (``settings.model``) loaded as the app and the CLI load it (``options``: where it runs, a
    ``nodes.pipeline.RunOptions``); images come from its VAE, and the tuner calibrates MagCache on it.
    ``seed_prompts`` gives tuning seeds their own prompt (same negative prompt)."""
    from .attention_nodes import patch_attention

    check_tunable(settings)
    if settings.model != BUILTIN:
        return folder_problem(settings, options, seed_prompts)
    from .builtin_nodes import builtin_space, check_latent_size, encode_text, load_builtin_model

    check_latent_size(settings.width, settings.height)
    (model,) = load_builtin_model(settings.flow_shift)
    if settings.attention != "sdpa":
        (model,) = patch_attention(model, settings.attention)
    calibration, _why = builtin_calibration(model)
    negative = encode_text(settings.negative_prompt)[0]
    per_seed = {seed: (encode_text(prompt)[0], negative) for seed, prompt in (seed_prompts or {}).items()}
    shape = builtin_space().latent_shape(1, settings.height, settings.width)
    return TuneProblem(model, encode_text(settings.prompt)[0], negative, shape, settings.cfg, settings.sampler,
                       settings.steps, settings.scheduler, to_image=builtin_image, magcache_calibration=calibration,
                       per_seed=per_seed)


def folder_problem(settings: Settings, options=None, seed_prompts: dict[int, str] | None = None) -> TuneProblem:
    """A model folder's TuneProblem: its MODEL, its own text encoders and VAE (first frame of a video)."""
    from .attention_nodes import patch_attention
    from .folder_nodes import decode_folder, encode_folder_prompts, folder_latent, load_folder_model

    where = {} if options is None else {"device": options.device, "dtype": options.dtype, "offload": options.offload}
    model, pipeline = load_folder_model(settings.model, settings.flow_shift, settings.width, settings.height, **where)
    if settings.attention != "sdpa":
        (model,) = patch_attention(model, settings.attention)
    positive, negative = encode_folder_prompts(pipeline, settings.prompt, settings.negative_prompt, settings.guidance)
    per_seed = {seed: encode_folder_prompts(pipeline, prompt, settings.negative_prompt, settings.guidance)
                for seed, prompt in (seed_prompts or {}).items()}
    (latent,) = folder_latent(pipeline, settings.width, settings.height, settings.frames, 1)

    def to_image(samples):
        return decode_folder(pipeline, {"samples": samples[:1]})[0][0].float().cpu().numpy()

    return TuneProblem(model, positive, negative, tuple(latent["samples"].shape), settings.cfg, settings.sampler,
                       settings.steps, settings.scheduler, to_image=to_image, magcache_calibration=None,
                       per_seed=per_seed)


def tuning_seeds(settings: Settings, count: int) -> tuple[int, ...]:
    """``count`` seeds from the settings' seed on (the reference and every candidate use these)."""
    if count < 1:
        raise ValueError(f"tune on at least one seed, got {count}")
    return tuple(settings.seed + k for k in range(count))


def seed_prompt_plan(settings: Settings, seeds: int, more_prompts: Sequence[str] = ()) -> dict[int, str]:
    """Which prompt each tuning seed runs: the settings' prompt first, then ``more_prompts`` in turn (one seed
    each, repeating the list when there are more seeds than prompts). At least one seed per prompt."""
    prompts = [settings.prompt, *more_prompts]
    chosen = tuning_seeds(settings, max(seeds, len(prompts)))
    return {seed: prompts[k % len(prompts)] for k, seed in enumerate(chosen)}


def run_tune(settings: Settings, target: Target, budget: Budget = Budget(), seeds: int = 2,
             space: SearchSpace = SearchSpace(), cancel: threading.Event | None = None,
             progress: Callable[[str, TuneResult], None] | None = None, options=None,
             more_prompts: Sequence[str] = ()) -> TuneResult:
    """Tune ``settings``' run (accelerators off = the reference) on the model ``tune_problem`` loads (``options``:
    where a model folder runs). ``more_prompts``: tune on these prompts too (``seed_prompt_plan``), so that the
    choice is not fitted to one prompt."""
    from ..tune.standalone import StandaloneBackend

    plan = seed_prompt_plan(settings, seeds, more_prompts)
    problem = tune_problem(settings, options, {seed: p for seed, p in plan.items() if p != settings.prompt})
    result = tune(StandaloneBackend(problem), target, budget, space, tuple(plan), cancel, progress)
    if more_prompts:
        result.notes.append("tuned on several prompts: " + "; ".join(f"seed {s}: {p!r}" for s, p in plan.items()))
    if problem.magcache_calibration is None:
        result.notes.append(builtin_calibration(problem.model)[1])
    return result


def chosen_settings(result: TuneResult, base: Settings) -> Settings | None:
    return settings_for(result.chosen.candidate, base) if result.chosen is not None else None


def report_json(result: TuneResult, base: Settings) -> dict:
    """The ``--report`` JSON: ``chosen`` carries its measured ``speedup`` and ``psnr_db`` and its app settings."""
    from ..tune.report import result_dict

    return result_dict(result, lambda c: settings_for(c, base).to_dict(),
                       {"reference_settings": reference_of(base).to_dict()})


def write_report(result: TuneResult, base: Settings, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report_json(result, base), indent=2) + "\n")
    return path


def write_workflow(settings: Settings, path: str | Path) -> Path:
    """The setting as a ComfyUI workflow: UI format (CLI ``--workflow``, app *Load*, ComfyUI drag and drop), or the
    API format when the name ends in ``_api.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_api_prompt(settings) if path.name.endswith("_api.json") else to_ui_workflow(settings)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
