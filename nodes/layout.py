"""Node sizes as ComfyUI's frontend (LiteGraph, frontend 1.27) renders them, and column layouts built from them.

A node's ``size`` excludes its title bar (``TITLE_HEIGHT`` above ``pos``). The frontend keeps a stored size unless
it is smaller than what the node needs (then the node grows and may cover its neighbours), so workflows store
sizes at least as large as this estimate: one socket row per input or output pair, one row per widget (a
multiline text box takes more), and a width that fits the title and socket labels. The estimate errs on the
large side; the browser acceptance test compares it with the sizes the real frontend computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

TITLE_HEIGHT = 30  # LiteGraph.NODE_TITLE_HEIGHT
SLOT_HEIGHT = 20  # LiteGraph.NODE_SLOT_HEIGHT
WIDGET_HEIGHT = 24  # a widget row (20) and its margin (4)
MULTILINE_HEIGHT = 54  # the smallest multiline text box
PROMPT_HEIGHT = 100  # what shipped workflows give a prompt box, so a sentence shows
WIDGET_PADDING, PLAIN_PADDING = 14, 6  # below the last widget / the last socket row
MIN_WIDGET_WIDTH = 270  # what the frontend gives a new node with widgets (its minimum, 210, cuts labels)
CHAR_WIDTH = 8  # an upper bound for 14 px Arial, the title font (7.8 px for "TurboSample RAS")
WIDGET_CHAR_WIDTH, WIDGET_CHROME = 7, 80  # a widget row's label and value (12 px) and its margins and arrows
TITLE_BUTTONS = 60  # the title text gets the width less two title heights (collapse dot, padding)
VIEW = (1536, 922)  # the canvas a 1600 x 1000 browser window shows (side bar and menu bars excluded)
MARGIN = 16  # kept free around a layout
COLUMN_GAP, ROW_GAP = 40, 30


@dataclass(frozen=True)
class Shape:
    """What the frontend draws for a node: sockets, widget rows (multiline or not) and labels."""

    title: str
    inputs: tuple[str, ...]  # socket inputs (linked widget inputs do not add rows)
    outputs: tuple[str, ...]
    widgets: tuple[tuple[str, bool], ...]  # (name, multiline); a seed's control_after_generate counts as a widget
    values: tuple[str, ...] = ()  # each widget's value as shown (a row fits its label and value)


def text_width(text: str) -> int:
    return CHAR_WIDTH * len(text)


def node_size(shape: Shape, prompt_height: int = PROMPT_HEIGHT) -> tuple[int, int]:
    """(width, height) of the node body: at least what the frontend computes, and wide enough for the whole title
    (the frontend cuts a title to the width less ``TITLE_BUTTONS``)."""
    rows = max(len(shape.inputs), len(shape.outputs)) * SLOT_HEIGHT
    if shape.widgets:
        rows += sum(max(prompt_height, MULTILINE_HEIGHT) if multi else WIDGET_HEIGHT for _n, multi in shape.widgets)
        rows += WIDGET_PADDING
    else:
        rows += PLAIN_PADDING
    longest_in = max((len(s) for s in shape.inputs), default=0)
    longest_out = max((len(s) for s in shape.outputs), default=0)
    rows_text = [len(name) + len(value) for (name, multi), value in zip(shape.widgets, shape.values, strict=False)
                 if not multi]
    width = max(text_width(shape.title) + TITLE_BUTTONS, CHAR_WIDTH * (longest_in + longest_out) + 60,
                MIN_WIDGET_WIDTH if shape.widgets else 0, WIDGET_CHAR_WIDTH * max(rows_text, default=0) + WIDGET_CHROME)
    return round_up(width), rows


def round_up(value: float, to: int = 10) -> int:
    return int(-(-value // to) * to)


def bounds(pos: Sequence[float], size: Sequence[float]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a node, title bar included."""
    return pos[0], pos[1] - TITLE_HEIGHT, pos[0] + size[0], pos[1] + size[1]


def overlaps(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_columns(columns: Sequence[Sequence[tuple[str, tuple[int, int]]]], widths: Sequence[int] | None = None,
                  origin: tuple[int, int] = (MARGIN, MARGIN)) -> dict[str, tuple[list[int], list[int]]]:
    """Stack each column's (key, size) top-down; columns side by side, as wide as their widest node.

    Returns key -> (pos, size), every node of a column stretched to the column's width.
    """
    placed: dict[str, tuple[list[int], list[int]]] = {}
    x = origin[0]
    for c, column in enumerate(columns):
        if not column:
            continue
        width = max(size[0] for _k, size in column) if widths is None else max(widths[c], *(s[0] for _k, s in column))
        y = origin[1] + TITLE_HEIGHT
        for key, (_w, h) in column:
            placed[key] = ([x, y], [width, h])
            y += h + TITLE_HEIGHT + ROW_GAP
        x += width + COLUMN_GAP
    return placed


def layout_problems(nodes: dict[str, tuple[Sequence[float], Sequence[float]]], view: tuple[int, int] = VIEW
                    ) -> list[str]:
    """Overlapping pairs and nodes outside the view (0, 0)-``view``, named by key; [] when the layout is clean."""
    problems = []
    boxes = {k: bounds(pos, size) for k, (pos, size) in nodes.items()}
    keys = list(boxes)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if overlaps(boxes[a], boxes[b]):
                problems.append(f"{a} overlaps {b}")
    for k, (left, top, right, bottom) in boxes.items():
        if left < 0 or top < 0 or right > view[0] or bottom > view[1]:
            problems.append(f"{k} ({left:.0f}, {top:.0f})-({right:.0f}, {bottom:.0f}) leaves the {view[0]} x "
                            f"{view[1]} view")
    return problems
