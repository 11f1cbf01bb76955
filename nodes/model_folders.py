"""Which model folders the app and the CLI can use, by name: folders given with ``--model DIR`` and the pipeline
folders directly under ``--models-dir`` (or ``$TURBOSAMPLE_MODELS``).

Workflows name a model by its folder name only. A name is a single path component and is looked up among those
folders; it never reaches a path outside them (``../x``, ``/abs`` or ``a/b`` are refused).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..models.diffusers_folder import ModelFolderError, inspect_folder

BUILTIN = "builtin"
ENV = "TURBOSAMPLE_MODELS"
_STATE: dict = {"models_dir": None, "folders": {}}


def configure(models_dir: str | Path | None = None, folders: tuple[str | Path, ...] = ()) -> list[str]:
    """Set the models folder and register ``--model`` folders (each checked now: a bad one is refused with its
    reason); returns the registered names. Replaces the previous configuration."""
    _STATE["models_dir"] = Path(models_dir).expanduser() if models_dir else None
    _STATE["folders"] = {}
    return [add_folder(folder) for folder in folders]


def add_folder(folder: str | Path) -> str:
    """Register one pipeline folder (``--model DIR``) under its folder name; ModelFolderError if it cannot be used."""
    info = inspect_folder(folder)
    name, path = info.name, info.path.resolve()
    known = _STATE["folders"].get(name)
    if name == BUILTIN or (known is not None and known != path):
        raise ModelFolderError(f"two model folders are named {name!r} ({known or 'the built-in model'} and {path}); "
                               "workflows name models by folder name, so rename one")
    _STATE["folders"][name] = path
    return name


def models_dir() -> Path | None:
    """``--models-dir``, else ``$TURBOSAMPLE_MODELS``, else None."""
    if _STATE["models_dir"] is not None:
        return _STATE["models_dir"]
    env = os.environ.get(ENV)
    return Path(env).expanduser() if env else None


def available() -> list[str]:
    """Folder names to choose from: ``--model`` folders, then pipeline folders (with model_index.json) under the
    models folder, sorted."""
    names = dict.fromkeys(_STATE["folders"])
    root = models_dir()
    if root is not None and root.is_dir():
        names.update(dict.fromkeys(sorted(p.name for p in root.iterdir()
                                          if p.is_dir() and (p / "model_index.json").is_file())))
    names.pop(BUILTIN, None)
    return list(names)


def choices() -> list[str]:
    """The Model setting's choices: the built-in model, then the folders."""
    return [BUILTIN, *available()]


def check_name(name: str) -> str:
    if not name or name in (".", "..") or Path(name).name != name or "/" in name or "\\" in name:
        raise ModelFolderError(f"model {name!r} is not a folder name; workflows name a model folder by its name "
                               "alone (no path)")
    return name


def resolve(name: str) -> Path:
    """The folder of a model name; ModelFolderError naming where it was looked for."""
    check_name(name)
    if name in _STATE["folders"]:
        return _STATE["folders"][name]
    root = models_dir()
    if root is not None and (root / name).is_dir():
        return root / name
    where = f"the models folder {root}" if root is not None else f"no models folder (--models-dir or ${ENV})"
    given = _STATE["folders"]
    extra = f" or the --model folders ({', '.join(given)})" if given else ""
    raise ModelFolderError(f"model folder {name!r} was not found: looked in {where}{extra}. Put the folder there, "
                           f"start with --models-dir DIR or --model DIR/{name}")
