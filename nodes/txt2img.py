"""The text-to-image graph shared by the Gradio app and the CLI, as ComfyUI workflow JSON.

Settings map to widget inputs of the declared nodes; the same graph is exported as UI and API JSON,
executed by :func:`run_api` here and by ComfyUI's ``/prompt`` there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .registry import NODE_BY_ID
from .workflow import CORE_SINKS, WorkflowError, check_api

# (node key, class_type, UI position, {setting: widget input})
GRAPH = (
    ("model", "TurboSampleBuiltinModelLoader", (40, 60), {"flow_shift": "flow_shift"}),
    ("positive", "TurboSampleBuiltinTextEncode", (40, 200), {"prompt": "text"}),
    ("negative", "TurboSampleBuiltinTextEncode", (40, 420), {"negative_prompt": "text"}),
    ("latent", "TurboSampleEmptyLatent", (40, 640), {"width": "width", "height": "height",
                                                     "batch_size": "batch_size"}),
    ("sampler", "TurboSampleSamplerSelect", (420, 60), {"sampler": "sampler_name"}),
    ("sigmas", "TurboSampleScheduler", (420, 200), {"scheduler": "scheduler", "steps": "steps",
                                                    "denoise": "denoise"}),
    ("sample", "TurboSampleSample", (800, 60), {"seed": "seed", "cfg": "cfg"}),
    ("decode", "TurboSampleDecode", (1180, 60), {}),
    ("save", "SaveImage", (1420, 60), {"filename_prefix": "filename_prefix"}),
)
# (from key, output slot, to key, input name)
EDGES = (
    ("model", 0, "sigmas", "model"), ("model", 0, "sample", "model"),
    ("positive", 0, "sample", "positive"), ("negative", 0, "sample", "negative"),
    ("sampler", 0, "sample", "sampler"), ("sigmas", 0, "sample", "sigmas"),
    ("latent", 0, "sample", "latent_image"), ("sample", 0, "decode", "samples"), ("decode", 0, "save", "images"),
)


def _spec(class_type: str):
    return NODE_BY_ID.get(class_type) or CORE_SINKS[class_type]


def _default(class_type: str, name: str):
    return _spec(class_type).param(name).default


@dataclass
class Settings:
    prompt: str = "grinning face"
    negative_prompt: str = ""
    seed: int = _default("TurboSampleSample", "seed")
    steps: int = _default("TurboSampleScheduler", "steps")
    cfg: float = _default("TurboSampleSample", "cfg")
    width: int = _default("TurboSampleEmptyLatent", "width")
    height: int = _default("TurboSampleEmptyLatent", "height")
    batch_size: int = _default("TurboSampleEmptyLatent", "batch_size")
    sampler: str = _default("TurboSampleSamplerSelect", "sampler_name")
    scheduler: str = _default("TurboSampleScheduler", "scheduler")
    denoise: float = _default("TurboSampleScheduler", "denoise")
    flow_shift: float = _default("TurboSampleBuiltinModelLoader", "flow_shift")
    filename_prefix: str = "turbosample"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Settings:
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise WorkflowError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**values)


def node_ids() -> dict[str, str]:
    return {key: str(i + 1) for i, (key, *_rest) in enumerate(GRAPH)}


def to_api_prompt(settings: Settings) -> dict:
    """The API-format prompt of the graph; raises WorkflowError if a setting is out of range."""
    ids, values = node_ids(), settings.to_dict()
    api = {}
    for key, class_type, _pos, mapping in GRAPH:
        inputs = {name: values[setting] for setting, name in mapping.items()}
        api[ids[key]] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": _spec(class_type).display_name}}
    for src, slot, dst, name in EDGES:
        api[ids[dst]]["inputs"][name] = [ids[src], slot]
    return check_api(api)


def to_ui_workflow(settings: Settings) -> dict:
    """The UI-format (v0.4) workflow that ComfyUI opens by drag and drop."""
    api = to_api_prompt(settings)
    ids = node_ids()
    links, out_links = [], {}
    for n, (src, slot, dst, name) in enumerate(EDGES, start=1):
        spec_dst = _spec(api[ids[dst]]["class_type"])
        to_slot = [p.name for p in spec_dst.sockets].index(name)
        out_type = _spec(api[ids[src]]["class_type"]).outputs[slot].type
        links.append([n, int(ids[src]), slot, int(ids[dst]), to_slot, out_type])
        out_links.setdefault((ids[src], slot), []).append(n)
    link_to = {(str(lk[3]), lk[4]): lk[0] for lk in links}
    nodes = []
    for order, (key, class_type, pos, _mapping) in enumerate(GRAPH):
        nid, spec = ids[key], _spec(class_type)
        widgets = []
        for p in spec.widgets:
            widgets.append(api[nid]["inputs"][p.name])
            if p.seed:
                widgets.append("fixed")
        nodes.append({
            "id": int(nid), "type": class_type, "pos": list(pos), "size": [320, 120 + 26 * len(spec.widgets)],
            "flags": {}, "order": order, "mode": 0,
            "inputs": [{"name": p.name, "type": p.type, "link": link_to.get((nid, i))}
                       for i, p in enumerate(spec.sockets)],
            "outputs": [{"name": o.name, "type": o.type, "links": out_links.get((nid, j), []), "slot_index": j}
                        for j, o in enumerate(spec.outputs)],
            "properties": {"Node name for S&R": class_type}, "widgets_values": widgets,
        })
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]},
                                                  "turbosample": {"settings": settings.to_dict()}},
            "version": 0.4}


def settings_from_api(api: dict) -> Settings:
    """Read the app's settings back from a prompt of this graph's shape (any node ids)."""
    by_type: dict[str, list[dict]] = {}
    for node in api.values():
        by_type.setdefault(node["class_type"], []).append(node)
    expected = {class_type: sum(1 for _k, c, _p, _m in GRAPH if c == class_type) for _k, class_type, _p, _m in GRAPH}
    wrong = [f"{c} x{len(by_type.get(c, []))} (expected {n})" for c, n in expected.items()
             if c != "SaveImage" and len(by_type.get(c, [])) != n]
    if wrong:
        raise WorkflowError("this workflow is not the app's text-to-image graph: " + ", ".join(wrong))
    sample = by_type["TurboSampleSample"][0]["inputs"]

    def linked(ref) -> dict:
        if not isinstance(ref, list) or str(ref[0]) not in api:
            raise WorkflowError("the Sample node's inputs are not linked as in the app's graph")
        return api[str(ref[0])]["inputs"]

    values: dict = {"seed": sample["seed"], "cfg": sample["cfg"],
                    "prompt": linked(sample["positive"])["text"],
                    "negative_prompt": linked(sample["negative"])["text"]}
    sigmas = linked(sample["sigmas"])
    values.update(scheduler=sigmas["scheduler"], steps=sigmas["steps"], denoise=sigmas["denoise"],
                  sampler=linked(sample["sampler"])["sampler_name"],
                  flow_shift=linked(sample["model"])["flow_shift"])
    latent = linked(sample["latent_image"])
    values.update(width=latent["width"], height=latent["height"], batch_size=latent["batch_size"])
    saves = by_type.get("SaveImage")
    if saves:
        values["filename_prefix"] = saves[0]["inputs"]["filename_prefix"]
    return Settings.from_dict(values)


SHIPPED = {"builtin_txt2img": Settings(prompt="grinning face", seed=1)}


def write_shipped_workflows(folder) -> list:
    """(Re)write workflows/<name>.json (UI format) and workflows/api/<name>.json for every shipped workflow.

    ComfyUI lists ``workflows/*.json`` as templates, so the API-format copies live one folder down.
    """
    import json
    from pathlib import Path

    folder = Path(folder)
    written = []
    for name, settings in SHIPPED.items():
        for path, data in ((folder / f"{name}.json", to_ui_workflow(settings)),
                           (folder / "api" / f"{name}.json", to_api_prompt(settings))):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2) + "\n")
            written.append(path)
    return written


if __name__ == "__main__":
    import sys

    for p in write_shipped_workflows(sys.argv[1] if len(sys.argv) > 1 else "workflows"):
        print(p)
