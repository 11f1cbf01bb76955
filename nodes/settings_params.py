"""The node input declaration behind each app/CLI setting, so all front ends share names, defaults and ranges."""

from __future__ import annotations

from .spec import Param
from .txt2img import BASE_GRAPH, LOOP_ACCELERATORS, MODEL_PATCHES, SAMPLER_NODES, SIGMAS_NODES, _spec

LABELS = {"prompt": "Prompt", "negative_prompt": "Negative prompt", "sampler": "Sampler", "cfg": "CFG",
          "flow_shift": "Flow shift", "filename_prefix": "File name prefix", "magcache_threshold": "MagCache threshold",
          "magcache_max_skip_steps": "MagCache K", "ras_ratio": "RAS token ratio",
          "loop_accelerator": "Loop accelerator",
          "dualfast_coefficient": "DualFast coefficient", "attention": "Attention backend",
          "flowturbo_schedule": "FlowTurbo schedule", "sigmas_from": "Sigmas from",
          "bottleneck_scales": "Bottleneck scales", "bottleneck_noise": "Bottleneck noise",
          "bottleneck_step_budget": "Bottleneck step budget", "model": "Model", "frames": "Frames",
          "guidance": "Flux guidance"}
HELP = {"negative_prompt": "Text to steer away from (used by CFG); empty = the unconditional prompt.",
        "filename_prefix": "Names of saved images.",
        "magcache_threshold": "MagCache: reuse the block-stack residual while the calibrated error stays below "
                              "this budget (0 = off; 0.05-0.2 typical).",
        "magcache_max_skip_steps": "MagCache: most steps skipped in a row (K).",
        "ras_ratio": "RAS: fraction of image tokens recomputed on sparse steps (1 = off).",
        "bottleneck_step_budget": "Bottleneck: model steps run in all, as a fraction of Steps (0.68 = the paper's 34 "
                                  "for a 50-step run; 1 = all of them); the progress bar still counts to Steps.",
        "attention": "sdpa: torch's fused attention; auto: xformers only where it works and is faster; "
                     "xformers: error if it cannot run here.",
        "loop_accelerator": "Bottleneck: high -> low -> high resolution stages; DualFast: error-corrected "
                            "solver step (sampler = its base sampler); dc_solver / dpm_solver_v3: learn from this "
                            "model, prompt and CFG first (every run: ~200 + 20 x steps / ~100 extra model calls), "
                            "then sample with UniPC + compensation / DPM-Solver-v3 (sampler ignored)."}
SIGMAS_FROM = Param("sigmas_from", "COMBO", "schedule", choices=lambda: list(SIGMAS_NODES),
                    tooltip="schedule: the scheduler's shape; gits: search the steps on this model, prompt and CFG "
                            "(about 60 extra model calls); ays_opt: Align Your Steps optimizer on this model, "
                            "prompt and CFG (about 400 extra model calls).")
LOOP_ACCELERATOR = Param("loop_accelerator", "COMBO", "none", choices=lambda: list(LOOP_ACCELERATORS),
                         tooltip="Sampler-level accelerator wrapped around the sampler.")


def setting_params() -> dict[str, Param]:
    """Setting name -> the Param of the node input it feeds (first occurrence in the graph); width and height take
    the model folders' wider range (each model checks its own sizes), model / frames / guidance are model-folder
    settings."""
    out: dict[str, Param] = {"loop_accelerator": LOOP_ACCELERATOR, "sigmas_from": SIGMAS_FROM}
    nodes = [(c, m) for _k, c, _p, m in BASE_GRAPH] + [(c, m) for _k, c, _p, m, _f in MODEL_PATCHES]
    for class_type, mapping in nodes + list(SAMPLER_NODES.values()) + list(SIGMAS_NODES.values()):
        spec = _spec(class_type)
        for setting, name in mapping.items():
            out.setdefault(setting, spec.param(name))
    return {**out, **folder_params()}


def folder_params() -> dict[str, Param]:
    """The settings of model folders, from the folder nodes' declarations, and the Model choice."""
    from .folder_nodes import NODE_BY_ID
    from .model_folders import BUILTIN, choices

    latent = NODE_BY_ID["TurboSampleFolderLatent"]
    return {"model": Param("model", "COMBO", BUILTIN, choices=choices,
                           tooltip="The built-in model, or a diffusers pipeline folder (--models-dir / --model)."),
            "width": latent.param("width"), "height": latent.param("height"), "frames": latent.param("frames"),
            "guidance": NODE_BY_ID["TurboSampleFolderTextEncode"].param("guidance")}
