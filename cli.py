"""Command line: ``turbosample generate --prompt ... --out img.png`` and ``turbosample app``.

``--model DIR`` runs a diffusers pipeline folder (SD3/3.5, Flux, SD 1.x/2.x, SDXL, Wan 2.1/2.2) instead of the
built-in model; ``--models-dir DIR`` (or ``$TURBOSAMPLE_MODELS``) makes every pipeline folder in DIR available by name.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .nodes.settings_params import LABELS, setting_params
from .nodes.spec import NodeInputError
from .nodes.workflow import WorkflowError

TYPES = {"INT": int, "FLOAT": float, "STRING": str, "COMBO": str}


def add_setting_options(parser: argparse.ArgumentParser) -> None:
    """One option per setting, typed and documented from the node declarations (defaults: the app's)."""
    from .nodes.txt2img import Settings

    defaults = Settings().to_dict()
    for setting, p in setting_params().items():
        if setting == "model":  # a folder path or name: added by add_model_options
            continue
        flag = "--" + setting.replace("_", "-")
        limits = f" [{p.min}..{p.max}]" if p.min is not None and p.max is not None else ""
        help_text = f"{LABELS.get(setting, p.tooltip or p.title)}{limits}"
        default = f"default: {defaults[setting]!r}"
        kwargs = {"type": TYPES[p.type], "default": None, "help": f"{help_text} ({default})"}
        if p.type == "COMBO":
            kwargs["help"] = f"{help_text} (one of: {', '.join(p.options())}; {default})"
        parser.add_argument(flag, dest=setting, **kwargs)


def add_model_options(parser: argparse.ArgumentParser, many: bool) -> None:
    """--model, --models-dir and where the model runs (--device, --dtype, --offload)."""
    from .models.placement import DEVICES, DTYPES

    parser.add_argument("--model", action="append" if many else "store", default=None,
                        help="a diffusers pipeline folder (SD3/3.5, Flux, SD 1.x/2.x, SDXL or Wan 2.1/2.2 saved with "
                             "save_pretrained), the name of a folder under --models-dir, or 'builtin' (default)"
                        + ("; repeat to offer several, the first is selected" if many else ""))
    parser.add_argument("--models-dir", default=None,
                        help="a folder of pipeline folders, each offered by its name (default: $TURBOSAMPLE_MODELS)")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="where the model runs (default: auto = "
                        "cuda, else mps, else cpu)")
    parser.add_argument("--dtype", default="auto", choices=list(DTYPES), help="precision (default: auto = bf16 on a "
                        "CUDA card that has it, fp16 on other GPUs, fp32 on the CPU)")
    parser.add_argument("--offload", action="store_true", help="model CPU offload (diffusers/accelerate): each "
                        "model of a pipeline folder moves to the GPU only while it runs (GPUs with less memory)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turbosample", description="Fast diffusion sampling (built-in model, or "
                                     "your own diffusers pipeline folders with --model).")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate an image (or a video) from a prompt or a workflow file")
    gen.add_argument("--out", required=True, help="output PNG path (a video model: .mp4, .webp or .gif); a batch "
                                                  "writes NAME_1.png, NAME_2.png, ...")
    gen.add_argument("--workflow", help="run the settings of a workflow JSON (UI or API format), PNG or video")
    gen.add_argument("--save-workflow", help="also write the run's ComfyUI UI-format workflow JSON here")
    add_model_options(gen, many=False)
    add_setting_options(gen)
    add_tune_parser(sub)
    app = sub.add_parser("app", help="launch the Gradio web app")
    app.add_argument("--host", default="127.0.0.1")
    app.add_argument("--port", type=int, default=7860)
    app.add_argument("--share", action="store_true", help="ask Gradio for a public share link")
    add_model_options(app, many=True)
    return parser


def add_tune_parser(sub) -> None:
    """``turbosample tune``: auto-tune the given run (its settings with every accelerator off are the reference)."""
    tune = sub.add_parser("tune", help="find the fastest setting that stays close to the full run (auto-tune)",
                          description="Runs the given settings with every accelerator off (the reference) on a few "
                                      "seeds, then searches sampler x steps x MagCache x RAS x loop accelerators on "
                                      "this model and prompt, measuring wall time and PSNR/SSIM/LPIPS.")
    goal = tune.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-speedup", type=float, metavar="X", help="be X times faster; maximise fidelity")
    goal.add_argument("--min-psnr", type=float, metavar="DB", help="keep PSNR >= DB against the full run; maximise "
                                                                    "speed")
    tune.add_argument("--budget-runs", type=float, default=None, metavar="N",
                      help="search budget in full runs' worth of wall time (default 10 unless --budget-calls or "
                           "--budget-seconds is given)")
    tune.add_argument("--budget-calls", type=int, default=None, metavar="N", help="search budget in model calls of "
                                                                                   "the reference (as time)")
    tune.add_argument("--budget-seconds", type=float, default=None, metavar="S", help="search budget in seconds")
    tune.add_argument("--seeds", type=int, default=2, metavar="N", help="tuning seeds, from --seed on (default 2)")
    tune.add_argument("--more-prompts", nargs="+", default=[], metavar="PROMPT",
                      help="tune on these prompts too, so that the choice is not fitted to one prompt: tuning seed k "
                           "runs --prompt, then each of these in turn (at least one seed each; same negative prompt)")
    tune.add_argument("--samplers", nargs="+", metavar="NAME", help="samplers to try (default: "
                                                                    "euler, euler_dualfast, dpmpp_2m, "
                                                                    "dpmpp_2m_dualfast, uni_pc, res_multistep)")
    tune.add_argument("--with-dc-solver", action="store_true",
                      help="also try DC-Solver (one-off calibration of ~200 + 20 x steps model calls per step count; "
                           "the app and CLI repeat it on every run of the saved workflow, ComfyUI caches it)")
    tune.add_argument("--report", metavar="FILE", help="write the JSON report (chosen setting under 'chosen')")
    tune.add_argument("--save-workflow", metavar="FILE", help="write the chosen setting as a workflow (UI format; "
                                                              "a name ending in _api.json: API format)")
    tune.add_argument("--plot", metavar="FILE", help="write the Pareto plot (speed-up vs PSNR) as PNG")
    tune.add_argument("--workflow", help="take the reference run's settings from a workflow JSON or PNG")
    add_model_options(tune, many=False)
    add_setting_options(tune)


def json_path(spec: str | None, suffix: str, what: str) -> Path | None:
    """An output path checked before any work (so a bad name loses nothing); folders are made."""
    if spec is None:
        return None
    path = Path(spec)
    if path.suffix.lower() != suffix:
        raise ValueError(f"{what} must be a {suffix} file, got {spec!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def run_tune_command(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .nodes.autotune import chosen_settings, run_tune, write_report, write_workflow
    from .tune.report import pareto_plot, summary_markdown, table_markdown
    from .tune.search import Budget, Target
    from .tune.space import SearchSpace

    settings = settings_from_args(args)
    target = Target(speedup=args.target_speedup, min_psnr=args.min_psnr)
    no_budget = args.budget_runs is None and args.budget_calls is None and args.budget_seconds is None
    budget = Budget(10.0 if no_budget else args.budget_runs, args.budget_seconds, args.budget_calls)
    space = SearchSpace()
    if args.samplers:
        space = SearchSpace(samplers=tuple(args.samplers))
    if args.with_dc_solver:
        space = SearchSpace(samplers=space.samplers, loops=(*space.loops, "dc_solver"))
    report, workflow = json_path(args.report, ".json", "--report"), json_path(args.save_workflow, ".json",
                                                                              "--save-workflow")
    plot = json_path(args.plot, ".png", "--plot")
    cancel = threading.Event()

    def stop(_signum, _frame) -> None:
        print("\nturbosample: stopping after the current run (Ctrl-C again to abort)", file=sys.stderr)
        cancel.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def progress(message: str, _so_far) -> None:
        print(f"\r{message[:100]:<100}", end="", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, stop)
    try:
        result = run_tune(settings, target, budget, args.seeds, space, cancel, progress, run_options(args),
                          more_prompts=args.more_prompts)
    finally:
        signal.signal(signal.SIGINT, previous)
    print(file=sys.stderr)
    print(summary_markdown(result))
    print()
    print(table_markdown(result))
    if report:
        print(f"report: {write_report(result, settings, report)}")
    if plot:
        pareto_plot(result).save(plot)
        print(f"plot: {plot}")
    chosen = chosen_settings(result, settings)
    if workflow and chosen is not None:
        print(f"workflow: {write_workflow(chosen, workflow)}")
    elif workflow:
        print("no setting to save: nothing was measured", file=sys.stderr)
    return 0


def configure_models(models_dir: str | None, models: list[str]) -> list[str]:
    """Register --models-dir and the --model folders; returns the model names in the order given."""
    from .models.diffusers_folder import inspect_folder
    from .nodes.model_folders import BUILTIN, configure, resolve

    for m in models:
        if Path(m).name != m:  # a path: it must be a pipeline folder (the message says what is wrong)
            inspect_folder(m)
    folders = [m for m in models if m != BUILTIN and Path(m).expanduser().is_dir()]
    configure(models_dir, tuple(folders))
    names = []
    for m in models:
        if m == BUILTIN:
            names.append(BUILTIN)
        elif Path(m).expanduser().is_dir():
            names.append(Path(m).expanduser().resolve().name)
        else:
            resolve(m)  # a name: must be a folder under --models-dir (else a message says where it looked)
            names.append(m)
    return names


def run_options(args: argparse.Namespace):
    """Where the model runs; a device this machine lacks, or --offload on the CPU, is refused now."""
    from .models.placement import check_offload, resolve_device
    from .nodes.pipeline import RunOptions

    check_offload(args.offload, resolve_device(args.device))
    return RunOptions(args.device, args.dtype, args.offload)


def settings_from_args(args: argparse.Namespace):
    """The run's settings: a workflow's (or the defaults; a model folder's own defaults for what is not given),
    then every option given."""
    from .nodes.folder_graph import folder_of
    from .nodes.pipeline import settings_from_file
    from .nodes.txt2img import Settings

    names = configure_models(args.models_dir, [args.model] if args.model else [])
    base = settings_from_file(args.workflow) if args.workflow else Settings()
    values = base.to_dict()
    if names:
        values["model"] = names[0]
        if not args.workflow and names[0] != base.model:
            values.update(folder_of(names[0]).defaults())
    for setting, p in setting_params().items():
        given = getattr(args, setting, None) if setting != "model" else None
        if given is not None:
            values[setting] = p.coerce(given, where="--" + setting.replace("_", "-"))
    return Settings.from_dict(values)


def output_target(spec: str, video: bool) -> Path:
    """The --out path: a .png, or for a video model .mp4 / .webp / .gif (the suffix is added when there is none;
    another is an error); folders are made."""
    from .nodes.media import VIDEO_SUFFIXES, default_video_suffix

    out = Path(spec)
    allowed = VIDEO_SUFFIXES if video else (".png",)
    if not out.suffix:
        out = out.with_name(out.name + (default_video_suffix() if video else ".png"))
    if out.suffix.lower() not in allowed:
        what = "this model makes videos: --out must end in " + ", ".join(allowed) if video else \
            "--out must be a .png file (images carry their workflow in PNG metadata)"
        raise ValueError(f"{what}, got {spec!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def run_generate(args: argparse.Namespace) -> int:
    import json

    from .nodes.app_graph import to_ui_workflow
    from .nodes.pipeline import generate, group_frames, is_video, save_output

    settings = settings_from_args(args)
    options = run_options(args)
    out = output_target(args.out, is_video(settings))  # checked before the run, so a bad name loses no work
    start = time.time()

    def on_step(i: int, total: int, _preview) -> None:
        print(f"\rstep {i}/{total}", end="", file=sys.stderr, flush=True)

    outputs = group_frames(generate(settings, on_step=on_step, options=options), settings)
    print(file=sys.stderr)
    paths = [out] if len(outputs) == 1 else [out.with_name(f"{out.stem}_{i + 1}{out.suffix}")
                                             for i in range(len(outputs))]
    for frames, path in zip(outputs, paths, strict=True):
        save_output(frames, path, settings)
        print(path)
    if args.save_workflow:
        Path(args.save_workflow).write_text(json.dumps(to_ui_workflow(settings), indent=2))
    what = "video(s)" if is_video(settings) else "image(s)"
    print(f"{len(outputs)} {what} in {time.time() - start:.1f} s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from .samplers.run import OutOfMemory

    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return run_generate(args)
        if args.command == "tune":
            return run_tune_command(args)
        from .web.app import launch

        names = configure_models(args.models_dir, args.model or [])
        launch(host=args.host, port=args.port, share=args.share, model=names[0] if names else None,
               options=run_options(args))
        return 0
    except (NodeInputError, WorkflowError, ValueError, FileNotFoundError, OutOfMemory, FloatingPointError) as exc:
        print(f"turbosample: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nturbosample: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
