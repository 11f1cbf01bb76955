"""The shipped workflows, in the order ComfyUI's template browser should show them.

ComfyUI 0.3.64 lists ``workflows/*.json`` of a custom node folder as templates and its frontend (1.27) shows each
file's name as the card's title and, with ``-`` and ``_`` read as spaces, as its description; ``<name>.jpg`` beside
it is the thumbnail (``bench/make_thumbnails.py`` makes them by running the workflows). The server lists files in
directory order, so the names start with a number: listings that sort by name (and a reader of the folder) see
text-to-image first. The API-format copy of each is ``workflows/api/<slug>.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .graph_json import api_prompt, ui_workflow
from .model_workflows import GRAPHS, SPECS
from .txt2img import SHIPPED, to_api_prompt, to_ui_workflow


@dataclass(frozen=True)
class Template:
    slug: str  # workflows/api/<slug>.json; the built-in model's are SHIPPED keys
    title: str  # the template's file name, shown as its title
    description: str  # README and the thumbnail's caption

    @property
    def builtin(self) -> bool:
        return self.slug in SHIPPED

    def files(self) -> tuple[dict, dict]:
        """(UI workflow, API prompt)."""
        if self.builtin:
            return to_ui_workflow(SHIPPED[self.slug]), to_api_prompt(SHIPPED[self.slug])
        nodes, edges = GRAPHS[self.slug]()
        return ui_workflow(nodes, edges, SPECS), api_prompt(nodes, edges, SPECS)


TEMPLATES: tuple[Template, ...] = (
    Template("builtin_txt2img", "01 Text to image (built-in model)",
             "The built-in model, Euler 28 steps, CFG 4: the graph the app and the CLI run."),
    Template("builtin_magcache", "02 MagCache (built-in model)",
             "Skips the block stack on steps where the calibrated error stays small (threshold 0.1)."),
    Template("builtin_ras", "03 RAS (built-in model)",
             "Region-adaptive sampling: half the image tokens recomputed on sparse steps."),
    Template("builtin_magcache_ras", "04 MagCache and RAS (built-in model)",
             "Both accelerators stacked: MagCache skips steps, RAS drops tokens on the others."),
    Template("builtin_bottleneck", "05 Bottleneck Sampling (built-in model)",
             "Full, low, full resolution stages around Euler, 0.68 of the steps."),
    Template("builtin_dualfast", "06 DualFast 8 steps (built-in model)",
             "Euler with DualFast's error correction at 8 steps, no extra model calls."),
    Template("builtin_flowturbo", "07 FlowTurbo 9 steps (built-in model)",
             "Heun, pseudo-corrector and refiner blocks with the shipped velocity refiner."),
    Template("builtin_gits_8_steps", "08 GITS schedule 8 steps (built-in model)",
             "Eight timesteps searched on the model by GITS, then Euler."),
    Template("builtin_ays_optimized", "09 AYS optimized schedule 8 steps (built-in model)",
             "Align Your Steps optimizer fits eight steps to the model, then Euler."),
    Template("builtin_uni_pc_8_steps", "10 UniPC 8 steps (built-in model)", "UniPC, a multistep solver, at 8 steps."),
    Template("builtin_restart", "11 Restart sampling (built-in model)",
             "Restart: noise added back and re-solved in a window, 24 steps."),
    Template("builtin_ghvb_momentum", "12 GHVB momentum (built-in model)",
             "Heavy-ball momentum multistep sampler, 24 steps."),
    Template("builtin_time_shift", "13 Time-Shift sampler (built-in model)",
             "DPM++ 2M with Time-Shift's timestep correction, 10 steps."),
    Template("builtin_sa_solver", "14 SA-Solver (built-in model)", "Stochastic Adams solver, 16 steps."),
    Template("builtin_cfg_pp", "15 CFG++ (built-in model)", "DPM++ 2M CFG++ (cfg is the paper's lambda: 1), 12 steps."),
    Template("builtin_adaptive_ode", "16 Adaptive ODE (built-in model)",
             "Error-controlled step sizes; only the schedule's end points are used."),
    Template("builtin_paradigms", "17 ParaDiGMS (built-in model)",
             "Parallel Picard iteration: one batched model call per round over a window of steps."),
    Template("builtin_dc_solver", "18 DC-Solver 6 steps (built-in model)",
             "Calibrates DC-Solver's compensation on the run's own schedule, then samples 6 steps."),
    Template("builtin_dpm_solver_v3", "19 DPM-Solver-v3 8 steps (built-in model)",
             "Estimates the model's statistics, then DPM-Solver-v3 at 8 steps."),
    Template("flux_dev_magcache_ras", "20 Flux-dev with MagCache and RAS",
             "Flux-dev from ComfyUI's loaders; MagCache on the published Flux curve (28 steps), then RAS."),
    Template("sd35_dualfast", "21 SD3.5 with DualFast",
             "SD3.5 checkpoint and three text encoders; the pack's DualFast around DPM++ 2M and its scheduler."),
    Template("wan21_t2v_magcache", "22 Wan 2.1 text to video with MagCache",
             "Wan 2.1 1.3B text to video, 33 frames; MagCache on the published curve (50 steps)."),
)
BY_SLUG = {t.slug: t for t in TEMPLATES}


def write_templates(folder: str | Path) -> list[Path]:
    """(Re)write ``<folder>/<title>.json`` (UI) and ``<folder>/api/<slug>.json`` for every template; other
    workflow JSON in ``folder`` (an old name) is removed."""
    import json

    folder = Path(folder)
    (folder / "api").mkdir(parents=True, exist_ok=True)
    keep = {folder / f"{t.title}.json" for t in TEMPLATES} | {folder / "api" / f"{t.slug}.json" for t in TEMPLATES}
    for stale in [*folder.glob("*.json"), *(folder / "api").glob("*.json")]:
        if stale not in keep:
            stale.unlink()
    written = []
    for t in TEMPLATES:
        ui, api = t.files()
        for path, data in ((folder / f"{t.title}.json", ui), (folder / "api" / f"{t.slug}.json", api)):
            path.write_text(json.dumps(data, indent=2) + "\n")
            written.append(path)
    return written


if __name__ == "__main__":
    import sys

    for p in write_templates(sys.argv[1] if len(sys.argv) > 1 else "workflows"):
        print(p)
