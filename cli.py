"""Command line: ``turbosample generate --prompt ... --out img.png`` and ``turbosample app``."""

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
        flag = "--" + setting.replace("_", "-")
        limits = f" [{p.min}..{p.max}]" if p.min is not None and p.max is not None else ""
        help_text = f"{LABELS.get(setting, p.tooltip or p.title)}{limits}"
        default = f"default: {defaults[setting]!r}"
        kwargs = {"type": TYPES[p.type], "default": None, "help": f"{help_text} ({default})"}
        if p.type == "COMBO":
            kwargs["help"] = f"{help_text} (one of: {', '.join(p.options())}; {default})"
        parser.add_argument(flag, dest=setting, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turbosample", description="Fast diffusion sampling (built-in model).")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate an image from a prompt or a workflow file")
    gen.add_argument("--out", required=True, help="output PNG path; a batch writes NAME_1.png, NAME_2.png, ...")
    gen.add_argument("--workflow", help="run the settings of a workflow JSON (UI or API format) or PNG")
    gen.add_argument("--save-workflow", help="also write the run's ComfyUI UI-format workflow JSON here")
    add_setting_options(gen)
    app = sub.add_parser("app", help="launch the Gradio web app")
    app.add_argument("--host", default="127.0.0.1")
    app.add_argument("--port", type=int, default=7860)
    app.add_argument("--share", action="store_true", help="ask Gradio for a public share link")
    return parser


def settings_from_args(args: argparse.Namespace):
    from .nodes.pipeline import workflow_from_png
    from .nodes.txt2img import Settings, settings_from_api
    from .nodes.workflow import parse_json, to_api

    base = Settings()
    if args.workflow:
        path = Path(args.workflow)
        if not path.exists():
            raise WorkflowError(f"workflow file not found: {path}")
        data = workflow_from_png(path) if path.suffix.lower() == ".png" else parse_json(path.read_bytes())
        base = settings_from_api(to_api(data))
    values = base.to_dict()
    for setting, p in setting_params().items():
        given = getattr(args, setting)
        if given is not None:
            values[setting] = p.coerce(given, where="--" + setting.replace("_", "-"))
    return Settings.from_dict(values)


def output_png(spec: str) -> Path:
    """The --out path as a .png (added when there is no suffix; another suffix is an error); folders are made."""
    out = Path(spec)
    if not out.suffix:
        out = out.with_name(out.name + ".png")
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png file (images carry their workflow in PNG metadata), got {spec!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def run_generate(args: argparse.Namespace) -> int:
    import json

    from .nodes.pipeline import generate, save_png
    from .nodes.txt2img import to_ui_workflow

    settings = settings_from_args(args)
    out = output_png(args.out)  # checked before the run, so a bad name loses no work
    start = time.time()

    def on_step(i: int, total: int, _preview) -> None:
        print(f"\rstep {i}/{total}", end="", file=sys.stderr, flush=True)

    images = generate(settings, on_step=on_step)
    print(file=sys.stderr)
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}_{i + 1}{out.suffix}")
                                            for i in range(len(images))]
    for image, path in zip(images, paths, strict=True):
        save_png(image, path, settings)
        print(path)
    if args.save_workflow:
        Path(args.save_workflow).write_text(json.dumps(to_ui_workflow(settings), indent=2))
    print(f"{len(images)} image(s) in {time.time() - start:.1f} s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return run_generate(args)
        from .web.app import launch

        launch(host=args.host, port=args.port, share=args.share)
        return 0
    except (NodeInputError, WorkflowError, ValueError, FileNotFoundError) as exc:
        print(f"turbosample: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nturbosample: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
