"""A graph of declared nodes written as ComfyUI JSON: the API prompt and the UI workflow (format 0.4) with a layout.

A graph is a list of ``GraphNode`` (key, class, UI column, widget values, title) and edges ``(source key, output
slot, target key, input name)``. Node ids are 1, 2, ... in list order. The UI layout stacks each column's nodes
top-down (``nodes/layout.py``), every node at least as large as the frontend draws it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .layout import Shape, node_size, place_columns
from .spec import NodeSpec

Edge = tuple[str, int, str, str]


@dataclass(frozen=True)
class GraphNode:
    key: str
    class_type: str
    column: int
    values: Mapping[str, Any] = field(default_factory=dict)  # widget values; unset widgets keep their default
    title: str = ""  # shown instead of the node's display name


def node_ids(nodes: Sequence[GraphNode]) -> dict[str, str]:
    return {n.key: str(i + 1) for i, n in enumerate(nodes)}


def api_prompt(nodes: Sequence[GraphNode], edges: Sequence[Edge], specs: Mapping[str, NodeSpec]) -> dict:
    """The API-format prompt (not checked: see ``workflow.check_api`` for graphs of this pack's nodes)."""
    ids = node_ids(nodes)
    api = {}
    for n in nodes:
        spec = specs[n.class_type]
        inputs = {p.name: p.default for p in spec.widgets}
        unknown = set(n.values) - set(inputs)
        if unknown:
            raise KeyError(f"{n.class_type} has no widget(s) {', '.join(sorted(unknown))}")
        inputs.update(n.values)
        api[ids[n.key]] = {"class_type": n.class_type, "inputs": inputs,
                           "_meta": {"title": n.title or spec.display_name}}
    for src, slot, dst, name in edges:
        api[ids[dst]]["inputs"][name] = [ids[src], slot]
    return api


def ui_inputs(spec: NodeSpec, linked_widgets: Sequence[str]) -> list[str]:
    """A UI node's input slots: its sockets, then the widgets fed by a link (the frontend's own order)."""
    return [p.name for p in spec.sockets] + [p.name for p in spec.widgets if p.name in linked_widgets]


def shown(value: Any) -> str:
    """A widget value as the frontend shows it (floats with two decimals)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def ui_shape(spec: NodeSpec, title: str = "", values: Mapping[str, Any] | None = None) -> Shape:
    """What the frontend draws for a node (a seed widget brings its control_after_generate row)."""
    values = {p.name: p.default for p in spec.widgets} | dict(values or {})
    widgets: list[tuple[str, bool]] = []
    texts: list[str] = []
    for p in spec.widgets:
        widgets.append((p.name, p.multiline))
        texts.append("" if isinstance(values[p.name], list) else shown(values[p.name]))
        if p.seed:
            widgets.append(("control_after_generate", False))
            texts.append("increment")
    return Shape(title or spec.display_name, tuple(p.name for p in spec.sockets), tuple(o.name for o in spec.outputs),
                 tuple(widgets), tuple(texts))


def ui_layout(nodes: Sequence[GraphNode], specs: Mapping[str, NodeSpec]) -> dict[str, tuple[list[int], list[int]]]:
    """key -> (pos, size): columns stacked top-down, side by side."""
    columns: list[list] = [[] for _ in range(1 + max(n.column for n in nodes))]
    for n in nodes:
        columns[n.column].append((n.key, node_size(ui_shape(specs[n.class_type], n.title, n.values))))
    return place_columns(columns)


def ui_workflow(nodes: Sequence[GraphNode], edges: Sequence[Edge], specs: Mapping[str, NodeSpec],
                extra: Mapping[str, Any] | None = None) -> dict:
    """The UI-format (0.4) workflow that ComfyUI opens by drag and drop or from its template browser."""
    api = api_prompt(nodes, edges, specs)
    ids = node_ids(nodes)
    by_key = {n.key: n for n in nodes}
    placed = ui_layout(nodes, specs)
    linked_widgets: dict[str, list[str]] = {}
    for _src, _slot, dst, name in edges:
        if specs[by_key[dst].class_type].param(name).is_widget:
            linked_widgets.setdefault(dst, []).append(name)
    links, out_links = [], {}
    for number, (src, slot, dst, name) in enumerate(edges, start=1):
        to_slot = ui_inputs(specs[by_key[dst].class_type], linked_widgets.get(dst, [])).index(name)
        links.append([number, int(ids[src]), slot, int(ids[dst]), to_slot,
                      specs[by_key[src].class_type].outputs[slot].type])
        out_links.setdefault((src, slot), []).append(number)
    link_to = {(lk[3], lk[4]): lk[0] for lk in links}
    ui_nodes = []
    for order, n in enumerate(nodes):
        spec, nid = specs[n.class_type], ids[n.key]
        widgets = []
        for p in spec.widgets:
            value = api[nid]["inputs"][p.name]
            widgets.append(p.default if isinstance(value, list) else value)  # a linked widget keeps a plain value
            if p.seed:
                widgets.append("fixed")
        pos, size = placed[n.key]
        slots = [spec.param(name) for name in ui_inputs(spec, linked_widgets.get(n.key, []))]
        ui_nodes.append({
            "id": int(nid), "type": n.class_type, "pos": pos, "size": size, "flags": {}, "order": order, "mode": 0,
            **({"title": n.title} if n.title else {}),
            "inputs": [{"name": p.name, "type": p.type, "link": link_to.get((int(nid), i)),
                        **({"widget": {"name": p.name}} if p.is_widget else {})} for i, p in enumerate(slots)],
            "outputs": [{"name": o.name, "type": o.type, "links": out_links.get((n.key, j), []), "slot_index": j}
                        for j, o in enumerate(spec.outputs)],
            "properties": {"Node name for S&R": n.class_type}, "widgets_values": widgets,
        })
    return {"last_node_id": len(ui_nodes), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}, **(extra or {})},
            "version": 0.4}
