"""README picture of the sampler benchmark: PSNR against model calls, one line per sampler (Pillow).

    python bench/plot_samplers.py bench/out/samplers.json --out docs/samplers.png [--only euler dpmpp_2m ...]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("result")
    ap.add_argument("--out", default="docs/samplers.png")
    ap.add_argument("--only", nargs="+", help="samplers to draw (default: the best ten at 8 calls among the "
                    "Heun-referenced ones)")
    args = ap.parse_args()
    rows = json.loads(Path(args.result).read_text())["rows"]
    by_name: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r.get("reference", "heun") == "self" and not (args.only and r["sampler"] in args.only):
            continue  # scored against its own high-NFE run: not on the Heun-reference scale
        by_name.setdefault(r["sampler"], []).append((r["nfe"], r["psnr"]))
    at8 = {n: max((p for nfe, p in pts if nfe <= 8), default=-1.0) for n, pts in by_name.items()}
    names = args.only or sorted(by_name, key=lambda n: -at8[n])[:len(PALETTE)]
    width, height, left, top, right, bottom = 720, 420, 56, 20, 190, 40
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    pts_all = [pt for n in names for pt in by_name[n]]
    nfe_lo, nfe_hi = min(p[0] for p in pts_all), max(p[0] for p in pts_all)
    db_lo, db_hi = math.floor(min(p[1] for p in pts_all)), math.ceil(max(p[1] for p in pts_all))
    x0, y0, x1, y1 = left, top, width - right, height - bottom

    def xy(nfe: int, db: float) -> tuple[float, float]:
        fx = (math.log2(nfe) - math.log2(nfe_lo)) / max(1e-9, math.log2(nfe_hi) - math.log2(nfe_lo))
        return x0 + fx * (x1 - x0), y1 - (db - db_lo) / max(1e-9, db_hi - db_lo) * (y1 - y0)

    draw.rectangle((x0, y0, x1, y1), outline=(160, 160, 160))
    for db in range(db_lo, db_hi + 1, max(1, (db_hi - db_lo) // 6)):
        y = xy(nfe_lo, db)[1]
        draw.line((x0, y, x1, y), fill=(235, 235, 235))
        draw.text((8, y - 6), f"{db} dB", fill="black")
    for nfe in sorted({p[0] for p in pts_all}):
        x = xy(nfe, db_lo)[0]
        draw.text((x - 6, y1 + 6), f"{nfe:g}", fill="black")
    draw.text(((x0 + x1) // 2 - 80, y1 + 22), "model calls (log scale)", fill="black")
    for k, name in enumerate(names):
        color = PALETTE[k % len(PALETTE)]
        pts = [xy(nfe, db) for nfe, db in sorted(by_name[name])]
        draw.line(pts, fill=color, width=2)
        for px, py in pts:
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=color)
        draw.text((x1 + 12, y0 + 16 * k), name, fill=color)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
