"""Schedule preview: sigma against step as a small line chart (Pillow), for the app and an IMAGE node."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import categories
from .spec import NodeInputError, NodeSpec, Output, Param

COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))
MARGIN = (52, 34, 16, 40)  # left, top (room for the title), right, bottom
TITLE = "sigma against step"


def chart_font(size: int = 12):
    """Pillow's default font at a size whose spaces are visible (the size-10 default nearly drops them)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font, fixed size
        return ImageFont.load_default()


def plot_sigmas(curves: dict[str, torch.Tensor], width: int = 480, height: int = 300) -> Image.Image:
    """Line chart of one or more sigma schedules (step on x, sigma on y), with a title, axis labels and a legend."""
    if not curves:
        raise NodeInputError("nothing to plot: no sigma schedule given")
    values = {name: [float(v) for v in torch.as_tensor(s).flatten()] for name, s in curves.items()}
    if any(len(v) < 2 for v in values.values()):
        raise NodeInputError("a schedule needs at least two sigmas to plot")
    top = max(max(v) for v in values.values())
    if not top > 0 or any(x != x for v in values.values() for x in v):
        raise NodeInputError("sigmas must be finite with a positive maximum")
    steps = max(len(v) for v in values.values()) - 1
    left, upper, right, lower = MARGIN
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = chart_font()
    x0, y0, x1, y1 = left, upper, width - right, height - lower
    draw.rectangle((x0, y0, x1, y1), outline=(160, 160, 160))

    def point(i: int, sigma: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * i / steps, y1 - (y1 - y0) * sigma / top

    for k, (name, v) in enumerate(values.items()):
        color = COLORS[k % len(COLORS)]
        pts = [point(i, s) for i, s in enumerate(v)]
        draw.line(pts, fill=color, width=2)
        for px, py in pts:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=color)
        label = name[:44]
        draw.text((x1 - 8, y0 + 8 + 16 * k), label, fill=color, font=font, anchor="ra")
    draw.text(((x0 + x1) // 2, 8), TITLE, fill="black", font=font, anchor="ma")
    draw.text((x0 - 6, y0), f"{top:.3g}", fill="black", font=font, anchor="rm")
    draw.text((x0 - 6, y1), "0", fill="black", font=font, anchor="rm")
    draw.text((x0 - 6, (y0 + y1) // 2), "sigma", fill="black", font=font, anchor="rm")
    draw.text((x0, y1 + 6), "0", fill="black", font=font, anchor="ma")
    draw.text((x1, y1 + 6), f"{steps}", fill="black", font=font, anchor="ma")
    draw.text(((x0 + x1) // 2, y1 + 20), "step", fill="black", font=font, anchor="ma")
    return img


def schedule_image(sigmas: torch.Tensor) -> tuple:
    """SIGMAS -> ComfyUI IMAGE (1, H, W, 3) in [0, 1]."""
    img = plot_sigmas({"sigmas": sigmas})
    return (torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None],)


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("TurboSampleSchedulePlot", "TurboSample Schedule Plot", categories.SCHEDULERS,
             "Draws a SIGMAS schedule (sigma against step) as an IMAGE; connect it to Preview Image.",
             (Param("sigmas", "SIGMAS"),), (Output("IMAGE", "IMAGE"),), schedule_image),
)
