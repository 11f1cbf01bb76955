"""A tuning result as JSON, as a Markdown table, and as a Pareto plot (speed-up against PSNR, Pillow).

The plot shows every setting measured; "fewer steps" (the reference sampler alone with fewer steps) is drawn as a
line, the bar every accelerated setting has to beat; the settings no other setting beats on both axes are joined
as the Pareto front; the target is a dashed line and the chosen setting is ringed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from PIL import Image, ImageDraw

from .search import Measurement, TuneResult
from .space import Candidate

REPORT_FORMAT = "turbosample-autotune-report"
COLORS = {"fewer steps": (214, 39, 40), "front": (31, 119, 180), "point": (120, 120, 120), "chosen": (44, 160, 44),
          "target": (148, 103, 189), "partial": (190, 190, 190)}


def is_fewer_steps(m: Measurement, reference: Candidate) -> bool:
    c = m.candidate
    return (c.sampler == reference.sampler and not c.magcache and not c.ras and c.loop == "none")


def _num(v: float | None, digits: int = 3) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), digits)


def measurement_dict(m: Measurement, result: TuneResult) -> dict:
    """One measured setting: knobs, accelerators, speed-up, fidelity per seed and means, timing samples."""
    return {"label": m.candidate.label(), "setting": m.candidate.to_dict(),
            "accelerators": list(m.candidate.accelerators), "stage": m.stage,
            "speedup": _num(m.speedup), "psnr_db": _num(m.psnr_db), "ssim": _num(m.mean_of(m.ssim), 4),
            "lpips": _num(m.mean_of(m.lpips), 4), "psnr_per_seed": {str(k): _num(v) for k, v in m.psnr.items()},
            "seeds_measured": len(m.psnr), "complete": result.complete(m),
            "seconds": [round(t, 4) for t in m.seconds],
            "baseline_seconds": [round(t, 4) for t in m.baseline_seconds],
            "verify_seconds": [[round(b, 4), round(t, 4)] for b, t in m.verify_pairs],
            "model_calls_per_run": m.model_calls, "note": m.note, "error": m.error}


def result_dict(result: TuneResult, settings_of: Callable[[Candidate], dict] | None = None,
                extra: dict | None = None) -> dict:
    """The ``--report`` JSON: ``chosen`` (with measured ``speedup`` and ``psnr_db``), everything tried, spending.

    ``settings_of(candidate)`` adds the full app settings of a setting (what ``--save-workflow`` writes).
    """
    ref = result.reference
    chosen = None
    if result.chosen is not None:
        chosen = {**measurement_dict(result.chosen, result), "met_target": result.met}
        if settings_of is not None:
            chosen["settings"] = settings_of(result.chosen.candidate)
    return {"format": REPORT_FORMAT, "version": 1,
            "target": {"speedup": result.target.speedup, "min_psnr_db": result.target.min_psnr},
            "met": result.met, "message": result.message, "stopped": result.stopped, "seeds": list(result.seeds),
            "fidelity_on": result.metric_space,
            "reference": None if ref is None else {
                "label": ref.candidate.label(), "setting": ref.candidate.to_dict(),
                "seconds": [round(t, 4) for t in ref.seconds],
                "median_seconds": round(statistics.median(ref.seconds), 4),
                "model_calls_per_run": ref.model_calls},
            "chosen": chosen, "tried": [measurement_dict(m, result) for m in result.measurements],
            "spent": result.spent, "notes": result.notes,
            "timing": "wall time on this device; a candidate's first run follows a short plain pulse run; "
                      "speed-up = median over its runs of reference time x (recent pulses / pulses beside the "
                      "reference) / run time; verify_seconds: (full run, setting) pairs timed back to back, which "
                      "replace that estimate once present", **(extra or {})}


def table_markdown(result: TuneResult, limit: int | None = None) -> str:
    """The measured settings as a Markdown table, best first (complete ones before cut-short ones)."""
    rows = sorted((m for m in result.measurements if m.seconds),
                  key=lambda m: (not result.complete(m), -(m.psnr_db if math.isfinite(m.psnr_db) else -1e9)))
    lines = ["| | setting | accelerators | speed-up | PSNR dB | SSIM | LPIPS | seeds | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in rows[:limit]:
        mark = "**chosen**" if m is result.chosen else ""
        acc = ", ".join(m.candidate.accelerators) or "-"
        ssim_, lp = m.mean_of(m.ssim), m.mean_of(m.lpips)
        lines.append(f"| {mark} | {m.candidate.sampler} {m.candidate.steps} steps | {acc} | {m.speedup:.2f}x | "
                     f"{m.psnr_db:.2f} | {'-' if ssim_ is None else f'{ssim_:.4f}'} | "
                     f"{'-' if lp is None else f'{lp:.4f}'} | {len(m.psnr)}/{len(result.seeds)} | "
                     f"{m.note or m.error} |")
    failed = [m for m in result.measurements if not m.seconds and m.error]
    for m in failed:
        lines.append(f"| | {m.candidate.label()} | | - | - | - | - | 0/{len(result.seeds)} | {m.error} |")
    return "\n".join(lines)


def summary_markdown(result: TuneResult) -> str:
    """Message, spending and notes: a paragraph each, the notes as a list."""
    sp = result.spent
    paragraphs = [f"**{'Target met' if result.met else 'Target not met'}** ({result.target.describe()}): "
                  f"{result.message}."]
    if sp.get("full_runs") is None:
        paragraphs.append("Stopped before the reference finished.")
    else:
        paragraphs.append(f"Spent {sp['search_seconds']:.1f} s searching (= {sp['full_runs']} full runs; budget "
                          f"{sp['budget']}) plus {sp['seconds'] - sp['search_seconds']:.1f} s "
                          f"for the reference on {len(result.seeds)} seed(s); {sp['runs_measured']} timed runs, "
                          f"{sp['model_calls']} model calls.")
    if result.stopped:
        paragraphs.append("Stopped: the choice is among what was measured until then.")
    if result.notes:
        paragraphs.append("\n".join(f"- {n}" for n in result.notes))
    return "\n\n".join(paragraphs)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both speed-up and PSNR, by rising speed-up."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def pareto_plot(result: TuneResult, width: int = 640, height: int = 420) -> Image.Image:
    """Speed-up (x) against PSNR (y) of every setting measured, the fewer-steps bar, the front and the choice."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = 56, 28, width - 16, height - 62
    ms = [m for m in result.measurements if m.ok and m.seconds and math.isfinite(m.speedup)]
    ref = result.reference.candidate if result.reference is not None else None
    draw.text((left, 8), f"auto-tune: {result.target.describe()}  (speed-up vs PSNR against the full run)",
              fill="black")
    if not ms:
        draw.text((left + 10, top + 20), "nothing measured yet", fill="black")
        return img
    xs = [m.speedup for m in ms] + [1.0] + ([result.target.speedup] if result.target.speedup else [])
    ys = [m.psnr_db for m in ms] + ([result.target.min_psnr] if result.target.min_psnr else [])
    x0, x1 = 0.9, max(xs) * 1.08
    y0, y1 = math.floor(min(ys) - 1), math.ceil(max(ys) + 1)

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (right - left) * (x - x0) / (x1 - x0), bottom - (bottom - top) * (y - y0) / (y1 - y0))

    draw.rectangle((left, top, right, bottom), outline=(160, 160, 160))
    for k in range(5):
        yv = y0 + (y1 - y0) * k / 4
        draw.text((4, at(x0, yv)[1] - 6), f"{yv:.1f}", fill="black")
        xv = x0 + (x1 - x0) * k / 4
        draw.text((at(xv, y0)[0] - 10, bottom + 4), f"{xv:.2f}x", fill="black")
    draw.text(((left + right) // 2 - 40, bottom + 20), "speed-up (x)", fill="black")
    draw.text((4, top - 18), "PSNR dB", fill="black")
    color = COLORS["target"]
    if result.target.speedup:
        x = at(result.target.speedup, y0)[0]
        for y in range(top, bottom, 8):
            draw.line((x, y, x, min(y + 4, bottom)), fill=color)
    else:
        y = at(x0, result.target.min_psnr)[1]
        for x in range(left, right, 8):
            draw.line((x, y, min(x + 4, right), y), fill=color)
    if ref is not None:
        bar = sorted((m for m in ms if is_fewer_steps(m, ref)), key=lambda m: m.speedup)
        if len(bar) > 1:
            draw.line([at(m.speedup, m.psnr_db) for m in bar], fill=COLORS["fewer steps"], width=2)
    done = [m for m in ms if result.complete(m)]
    front = pareto_front([(m.speedup, m.psnr_db) for m in done])
    if len(front) > 1:
        draw.line([at(done[i].speedup, done[i].psnr_db) for i in front], fill=COLORS["front"], width=1)
    for m in ms:
        px, py = at(m.speedup, m.psnr_db)
        fill = COLORS["fewer steps"] if ref is not None and is_fewer_steps(m, ref) else COLORS["point"]
        if result.complete(m):
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=fill)
        else:
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), outline=COLORS["partial"])
    if result.chosen is not None and result.chosen in ms:
        px, py = at(result.chosen.speedup, result.chosen.psnr_db)
        draw.ellipse((px - 8, py - 8, px + 8, py + 8), outline=COLORS["chosen"], width=3)
        label = result.chosen.candidate.label()[:48]
        draw.text((min(px + 10, right - 6 * len(label)), max(py - 20, top + 2)), label, fill=COLORS["chosen"])
    legend = (("fewer steps (bar to beat)", COLORS["fewer steps"]), ("Pareto front", COLORS["front"]),
              ("other settings (hollow: cut short)", COLORS["point"]), ("target", COLORS["target"]),
              ("chosen (ringed)", COLORS["chosen"]))
    x = left
    for text, c in legend:  # one line under the axis label
        draw.text((x, height - 16), text, fill=c)
        x += int(draw.textlength(text)) + 14
    return img


def report_image(result: TuneResult, rows: int = 8) -> Image.Image:
    """The Pareto plot with the message and the best measured settings written under it (the node's IMAGE)."""
    plot = pareto_plot(result)
    ordered = sorted((m for m in result.measurements if m.ok and m.seconds),
                     key=lambda m: (not result.complete(m), -m.psnr_db))
    columns = (12, 380, 460, 540)  # setting, speed-up, PSNR, seeds (the default font is proportional)
    table = [("setting", "speed-up", "PSNR dB", "seeds")]
    for m in ordered[:rows]:
        mark = "* " if m is result.chosen else "   "
        table.append((mark + m.candidate.label()[:56], f"{m.speedup:.2f}x", f"{m.psnr_db:.2f}",
                      f"{len(m.psnr)}/{len(result.seeds)}"))
    sp = result.spent
    footer = [] if sp.get("full_runs") is None else [
        f"spent {sp['search_seconds']:.1f} s = {sp['full_runs']} full runs (budget {sp['budget']})"
        + ("; stopped" if result.stopped else "")]
    lines = 2 + len(table) + 1 + len(footer)
    img = Image.new("RGB", (plot.width, plot.height + 14 * lines + 16), "white")
    img.paste(plot, (0, 0))
    draw = ImageDraw.Draw(img)
    y = plot.height + 8
    draw.text((12, y), result.message[:110], fill="black")
    y += 28
    for row in table:
        for x, cell in zip(columns, row, strict=True):
            draw.text((x, y), cell, fill="black")
        y += 14
    for line in footer:
        draw.text((12, y + 14), line, fill="black")
    return img
