"""Make the template thumbnails ``workflows/<title>.jpg``: each built-in template is run here, by this pack's own
pipeline (the same graph ComfyUI runs), and its first image, scaled up without smoothing, is the thumbnail.

The real-model templates (Flux, SD3.5, Wan) cannot run without their weights; their thumbnail is a card that names
the model files the workflow loads. Re-run after the built-in weights change:

    python bench/make_thumbnails.py [--only builtin_txt2img ...] [--size 256]
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

from PIL import Image, ImageDraw

from turbosample.nodes.schedule_plot import chart_font
from turbosample.nodes.templates import TEMPLATES, Template

ROOT = Path(__file__).resolve().parents[1]

FILE_INPUTS = ("unet_name", "ckpt_name", "clip_name", "clip_name1", "clip_name2", "clip_name3", "vae_name")


def builtin_thumbnail(t: Template, size: int) -> Image.Image:
    from turbosample.nodes.pipeline import generate
    from turbosample.nodes.txt2img import SHIPPED

    image = generate(SHIPPED[t.slug])[0]
    return image.convert("RGB").resize((size, size), Image.NEAREST)


def model_files(t: Template) -> list[str]:
    _ui, api = t.files()
    return [node["inputs"][name] for node in api.values() for name in FILE_INPUTS if name in node["inputs"]]


def card_thumbnail(t: Template, size: int) -> Image.Image:
    """A card for a template that needs downloaded weights: its title, then the files it loads."""
    img = Image.new("RGB", (size, size), (32, 36, 44))
    draw = ImageDraw.Draw(img)
    title, small = chart_font(max(12, size // 14)), chart_font(max(9, size // 26))
    y = size // 12
    for line in textwrap.wrap(t.title.split(" ", 1)[1], width=18):
        draw.text((size // 12, y), line, fill=(240, 240, 240), font=title)
        y += size // 11
    y += size // 20
    draw.text((size // 12, y), "loads:", fill=(160, 200, 255), font=small)
    y += size // 16
    for name in model_files(t):
        for line in textwrap.wrap(name, width=40):
            draw.text((size // 12, y), line, fill=(200, 200, 200), font=small)
            y += size // 17
    return img


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="template slugs (default: all)")
    parser.add_argument("--size", type=int, default=256, help="thumbnail side in pixels")
    parser.add_argument("--folder", default=str(ROOT / "workflows"))
    args = parser.parse_args(argv)
    for t in TEMPLATES:
        if args.only and t.slug not in args.only:
            continue
        start = time.perf_counter()
        thumb = builtin_thumbnail(t, args.size) if t.builtin else card_thumbnail(t, args.size)
        path = Path(args.folder) / f"{t.title}.jpg"
        thumb.save(path, quality=90)
        print(f"{path.name}: {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
