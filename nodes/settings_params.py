"""The node input declaration behind each app/CLI setting, so all front ends share names, defaults and ranges."""

from __future__ import annotations

from .spec import Param
from .txt2img import GRAPH, _spec

LABELS = {"prompt": "Prompt", "negative_prompt": "Negative prompt", "sampler": "Sampler", "cfg": "CFG",
          "flow_shift": "Flow shift", "filename_prefix": "File name prefix"}
HELP = {"negative_prompt": "Text to steer away from (used by CFG); empty = the unconditional prompt.",
        "filename_prefix": "Names of saved images."}


def setting_params() -> dict[str, Param]:
    """Setting name -> the Param of the node input it feeds (first occurrence in the graph)."""
    out: dict[str, Param] = {}
    for _key, class_type, _pos, mapping in GRAPH:
        spec = _spec(class_type)
        for setting, name in mapping.items():
            out.setdefault(setting, spec.param(name))
    return out
