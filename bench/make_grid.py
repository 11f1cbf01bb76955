"""Picture for the README: default settings, one image per prompt, captioned.

    python bench/make_grid.py --out docs/samples.png
    python bench/make_grid.py --weights FILE --out grid.png    # other weights, drawn outside the app
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from turbosample.nodes.pipeline import generate
from turbosample.nodes.txt2img import Settings

PROMPTS = ["grinning face", "cat face", "red apple", "japan flag", "rocket", "slice of pizza", "sunflower",
           "thumbs up sign", "kitty", "a happy smiling face", "puppy", "big red heart"]


def outside_app(weights: Path, seed: int):
    """prompt -> PIL image drawn from ``weights`` with the app's defaults (``bench_builtin.draw_with_weights``)."""
    from bench_builtin import draw_with_weights

    from turbosample.models.text import encode_prompts

    settings = Settings()

    def draw(prompt: str) -> Image.Image:
        x = draw_with_weights(weights, encode_prompts([prompt]), settings.width, settings.cfg, seed)[0]
        return Image.fromarray(((x.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())
    return draw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs/samples.png")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--weights", default=None, help="draw with these weights outside the app (bench_builtin.py)")
    args = ap.parse_args()
    if args.weights:
        draw = outside_app(Path(args.weights), args.seed)
    else:
        def draw(prompt: str) -> Image.Image:
            return generate(Settings(prompt=prompt, seed=args.seed))[0]
    tiles = [(p, draw(p)) for p in PROMPTS]
    w, h = tiles[0][1].size
    cell_w, cell_h = w * args.scale + 24, h * args.scale + 22
    cols = 6
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (prompt, img) in enumerate(tiles):
        x, y = (k % cols) * cell_w, (k // cols) * cell_h
        sheet.paste(img.resize((w * args.scale, h * args.scale), Image.NEAREST), (x + 12, y + 2))
        draw.text((x + 4, y + h * args.scale + 6), prompt[:22], fill="black")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
