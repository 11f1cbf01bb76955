"""Where nodes write their calibration files, and the file names users may give them."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .spec import NodeInputError


def user_dir(env_var: str, folder: str) -> Path:
    """$``env_var``, else ComfyUI's user directory / turbosample_<folder>, else ~/.cache/turbosample/<folder>."""
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    try:
        import folder_paths

        return Path(folder_paths.get_user_directory()) / f"turbosample_{folder}"
    except ImportError:
        return Path.home() / ".cache" / "turbosample" / folder


def output_path(directory: Path, filename: str, default: str, suffix: str) -> Path:
    """``directory`` / the given (or default) name with ``suffix``; NodeInputError for names that are not plain."""
    name = filename.strip() or default
    if not re.fullmatch(r"[\w.\-]+", name):
        raise NodeInputError(f"filename {name!r} may only use letters, digits, '_', '-' and '.'")
    return directory / (name if name.endswith(suffix) else name + suffix)
