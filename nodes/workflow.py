"""ComfyUI workflow JSON (UI "workflow" format v0.4 and API "prompt" format): check, convert and run.

The node declarations are the schema: a UI workflow's ``widgets_values`` are matched positionally to
each node's widget inputs (a seed input is followed by ComfyUI's control_after_generate entry).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .spec import NodeInputError, NodeSpec, Output, Param

SEED_CONTROLS = ("fixed", "increment", "decrement", "randomize")


class WorkflowError(ValueError):
    """A workflow file that cannot be read, checked or run; the message lists every problem found."""


# Core ComfyUI output nodes that shipped workflows may end in (declared as in ComfyUI's nodes.py).
CORE_SINKS: dict[str, NodeSpec] = {
    "SaveImage": NodeSpec("SaveImage", "Save Image", "image", "", (
        Param("images", "IMAGE"), Param("filename_prefix", "STRING", "ComfyUI")), (), fn=lambda **_: (),
        output_node=True),
    "PreviewImage": NodeSpec("PreviewImage", "Preview Image", "image", "", (Param("images", "IMAGE"),), (),
                             fn=lambda **_: (), output_node=True),
}


def known_specs() -> dict[str, NodeSpec]:
    """The nodes the app runs: the pack's, the app's own model-folder nodes and the output nodes."""
    from .folder_nodes import NODE_BY_ID as FOLDER_NODES
    from .registry import NODE_BY_ID

    return {**NODE_BY_ID, **FOLDER_NODES, **CORE_SINKS}


def reading_specs(types: set) -> dict[str, NodeSpec]:
    """The declarations to read a workflow with: what the app runs, and for a model folder's ComfyUI export (the
    pack's TurboSample Sample with only ComfyUI core nodes besides) also those core nodes, so it reads back into
    the app's settings. Any other graph keeps ``known_specs``, and the nodes it lacks are named."""
    from .core_specs import CORE_NODES

    specs = known_specs()
    missing = set(types) - set(specs)
    if "TurboSampleSample" in types and missing and missing <= set(CORE_NODES) - EXPORT_FREE:
        return {**specs, **CORE_NODES, **CORE_SINKS}
    return specs


# core nodes a model folder's export never has (its sampling is the pack's): their graphs are not exports
EXPORT_FREE = {"KSampler", "SamplerCustomAdvanced", "BasicGuider", "CFGGuider", "RandomNoise", "KSamplerSelect",
               "BasicScheduler"}


def parse_json(text: str | bytes) -> dict:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WorkflowError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WorkflowError("a workflow must be a JSON object")
    return data


def check_known(types: dict[str, str], specs: dict[str, NodeSpec]) -> None:
    """WorkflowError naming the node types (node id -> class) this app lacks, before any other check."""
    missing: dict[str, list[str]] = {}
    for nid, class_type in types.items():
        if class_type not in specs:
            missing.setdefault(str(class_type), []).append(str(nid))
    if missing:
        listed = ", ".join(f"{t} (node {', '.join(ids)})" for t, ids in sorted(missing.items()))
        raise WorkflowError(f"this workflow needs nodes this app does not have: {listed}. The app runs the "
                            "TurboSample text-to-image graph (the built-in model, or a model folder and its ComfyUI "
                            "export); open this workflow in ComfyUI")


def is_ui_format(data: dict) -> bool:
    return isinstance(data.get("nodes"), list) and "links" in data


def split_widget_values(spec: NodeSpec, values: list, where: str) -> dict:
    """Map a UI node's positional ``widgets_values`` onto the spec's widget inputs."""
    out, i = {}, 0
    for p in spec.widgets:
        if i >= len(values):
            raise WorkflowError(f"{where}: widgets_values has {len(values)} entries; input {p.name!r} is missing")
        out[p.name] = values[i]
        i += 1
        if p.seed and i < len(values) and values[i] in SEED_CONTROLS:
            i += 1
    if i != len(values):
        raise WorkflowError(f"{where}: widgets_values has {len(values)} entries, {spec.node_id} takes {i}")
    return out


def ui_to_api(ui: dict, specs: dict[str, NodeSpec] | None = None) -> dict:
    """Convert (and check) a UI-format workflow into the API prompt format; muted/bypassed nodes dropped."""
    specs = specs or reading_specs({n.get("type") for n in ui.get("nodes", []) if isinstance(n, dict)})
    problems: list[str] = []
    nodes = {}
    for node in ui.get("nodes", []):
        if not isinstance(node, dict) or "id" not in node or "type" not in node:
            problems.append(f"malformed node entry {str(node)[:60]!r}")
            continue
        nodes[node["id"]] = node
    links = {}
    for link in ui.get("links", []):
        if not isinstance(link, list) or len(link) < 6:
            problems.append(f"malformed link {link!r}")
            continue
        links[link[0]] = link
    check_known({nid: node["type"] for nid, node in nodes.items() if node.get("mode", 0) not in (2, 4)}, specs)
    api: dict[str, dict] = {}
    for nid, node in nodes.items():
        if node.get("mode", 0) in (2, 4):
            continue
        where = f"node {nid} ({node['type']})"
        spec = specs[node["type"]]
        try:
            inputs: dict[str, Any] = split_widget_values(spec, list(node.get("widgets_values") or []), where)
        except WorkflowError as exc:
            problems.append(str(exc))
            continue
        for slot in node.get("inputs", []):
            link_id = slot.get("link")
            if link_id is None:
                continue
            link = links.get(link_id)
            if link is None:
                problems.append(f"{where}: input {slot.get('name')!r} refers to missing link {link_id}")
                continue
            inputs[slot["name"]] = [str(link[1]), link[2]]
        title = node.get("title", spec.display_name)
        api[str(nid)] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": title}}
    if problems:
        raise WorkflowError("; ".join(problems))
    check_api(api, specs)
    return api


def output_type(spec: NodeSpec, slot: int) -> str | None:
    return spec.outputs[slot].type if 0 <= slot < len(spec.outputs) else None


def check_api(api: dict, specs: dict[str, NodeSpec] | None = None) -> dict:
    """Every node known, every input present, widget values in range, every link type-checked."""
    if not isinstance(api, dict) or not api:
        raise WorkflowError("the prompt has no nodes")
    specs = specs or reading_specs({n.get("class_type") for n in api.values() if isinstance(n, dict)})
    problems = []
    check_known({nid: node["class_type"] for nid, node in api.items()
                 if isinstance(node, dict) and "class_type" in node}, specs)
    for nid, node in api.items():
        if not isinstance(node, dict) or "class_type" not in node:
            problems.append(f"node {nid}: no class_type")
            continue
        spec = specs[node["class_type"]]
        where = f"node {nid} ({node['class_type']})"
        inputs = node.get("inputs", {})
        for p in spec.inputs:
            if p.name not in inputs:
                problems.append(f"{where}: input {p.name!r} is not set")
                continue
            value = inputs[p.name]
            if isinstance(value, list):
                src = api.get(str(value[0])) if len(value) == 2 else None
                src_spec = specs.get(src.get("class_type")) if isinstance(src, dict) else None
                got = output_type(src_spec, value[1]) if src_spec else None
                if got is None:
                    problems.append(f"{where}: input {p.name!r} links to a missing node or output {value}")
                elif got != p.type:
                    problems.append(f"{where}: input {p.name!r} wants {p.type} but is linked to a {got}")
            elif not p.is_widget:
                problems.append(f"{where}: input {p.name!r} ({p.type}) must be linked to another node")
            else:
                try:
                    p.coerce(value, where)
                except NodeInputError as exc:
                    problems.append(str(exc))
    if problems:
        raise WorkflowError("; ".join(problems))
    return api


def to_api(data: dict) -> dict:
    """API prompt from either format (UI format converted; ``{"prompt": ...}`` wrappers unwrapped)."""
    if is_ui_format(data):
        return ui_to_api(data)
    if isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    if not all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        raise WorkflowError("this JSON is neither a ComfyUI UI workflow (nodes + links) nor an API prompt "
                            "(node id -> {class_type, inputs})")
    return check_api(data)


def execution_order(api: dict) -> list[str]:
    order, state = [], {}

    def visit(nid: str) -> None:
        if state.get(nid) == 2:
            return
        if state.get(nid) == 1:
            raise WorkflowError(f"the workflow has a cycle through node {nid}")
        state[nid] = 1
        for value in api[nid]["inputs"].values():
            if isinstance(value, list):
                visit(str(value[0]))
        state[nid] = 2
        order.append(nid)

    for nid in api:
        visit(nid)
    return order


def run_api(api: dict, hooks: dict[str, Callable[..., dict]] | None = None) -> dict[str, tuple]:
    """Execute an API prompt with the standalone node functions; returns outputs per node id.

    ``hooks`` maps a class_type to a function returning extra keyword arguments for it (progress
    callbacks, cancel events); core sinks return their input images.
    """
    specs = known_specs()
    check_api(api, specs)
    results: dict[str, tuple] = {}
    for nid in execution_order(api):
        node = api[nid]
        spec = specs[node["class_type"]]
        values = {k: (results[str(v[0])][v[1]] if isinstance(v, list) else v) for k, v in node["inputs"].items()}
        values = spec.coerce_inputs(values)
        if node["class_type"] in CORE_SINKS:
            results[nid] = (values["images"],)
            continue
        extra = hooks[node["class_type"]](nid) if hooks and node["class_type"] in hooks else {}
        results[nid] = spec.fn(**values, **extra)
    return results


def output_images(api: dict, results: dict[str, tuple]) -> list:
    """Images reaching output nodes (SaveImage/PreviewImage), in node order."""
    return [results[nid][0] for nid, node in api.items() if node["class_type"] in CORE_SINKS]


__all__ = ["WorkflowError", "ui_to_api", "to_api", "check_api", "run_api", "output_images", "parse_json",
           "Output"]
