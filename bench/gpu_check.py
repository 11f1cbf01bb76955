#!/usr/bin/env python
"""The GPU check in one command: correctness in half precision, ComfyUI-native patches, speed and memory tables.

    python bench/gpu_check.py --device cuda --out gpu.jsonl [--comfyui DIR] [--budget-s 420]
    python bench/gpu_check.py --tiny --device cpu --out /tmp/gpu_tiny.jsonl      # CI: the same script end to end

Sections (``--sections``, default all):

* ``correctness`` (a): every sampler of the registry and every accelerator (MagCache, RAS with its full and int8 K/V
  caches and the CUDA-graph sparse path, MagCache + RAS, RAS on Heun, Bottleneck, the attention backend, FlowTurbo
  with the built-in refiner) on the built-in model and on tiny diffusers SD3 / Flux / Wan, in each of ``--dtypes``
  on ``--device``, against the same run in float32 on the CPU (tolerances in bench/gpu_correctness.py); MagCache,
  DC-Solver and EMS calibration likewise.
* ``comfy`` (a2): MagCache, RAS and their stack on ComfyUI's own Flux / SD3 / Wan classes (tiny random weights) on
  the device in each dtype (bench/gpu_comfy.py; needs ``--comfyui``).
* ``tables`` (b): forward overhead, whole-run speed-ups and peak memory of MagCache, RAS (and its int8 / CUDA-graph
  variants) and the stack on Flux-dev, SD3-medium and Wan2.1-1.3B shapes with random weights (bench/gpu_tables.py;
  tiny shapes with ``--tiny``).

Every result is one JSON line, written and flushed at once, so a run cut off loses nothing; ``--budget-s`` skips
what no longer fits (with a line saying so). The summary at the end counts failed checks; the exit code is 1 when a
correctness or ComfyUI check failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SECTIONS = ("correctness", "comfy", "tables")


class Recorder:
    """JSON lines with a wall-clock budget; compact echo on stdout."""

    def __init__(self, path: str, budget_s: float):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 - kept open for the whole run
        self.start, self.budget_s = time.perf_counter(), budget_s
        self.run_id = datetime.datetime.now().strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        self.failed = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left_s(self) -> float:
        return self.budget_s - self.elapsed()

    def write(self, **row) -> dict:
        row = {"run_id": self.run_id, "t_s": round(self.elapsed(), 2), **row}
        self.file.write(json.dumps(row, default=str) + "\n")
        self.file.flush()
        if row.get("ok") is False:
            self.failed += 1
        short = {k: v for k, v in row.items() if k not in ("run_id", "step_ms", "ms_all", "values")}
        print(json.dumps(short, default=str)[:400], flush=True)
        return row

    def out_of_time(self, what: str, need_s: float = 0.0) -> bool:
        if self.elapsed() + need_s <= self.budget_s:
            return False
        self.write(skipped=True, what=what, reason=f"budget: {self.elapsed():.0f}s used, ~{need_s:.0f}s needed, "
                                                     f"--budget-s {self.budget_s:g}")
        return True

    @staticmethod
    def error_text(exc: BaseException) -> str:
        tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
        return f"{type(exc).__name__}: {str(exc)[:800]} | {tail[-1200:]}"


def environment(args) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "device": args.device,
           "argv": sys.argv[1:]}
    if args.device.startswith("cuda"):
        env.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                   gpu_mem_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    for module in ("diffusers", "xformers"):
        try:
            env[module] = __import__(module).__version__
        except Exception as exc:  # noqa: BLE001
            env[module] = f"not importable: {type(exc).__name__}"
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--out", default="bench/out/gpu_check.jsonl", help="JSON lines, appended")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes and short runs (CPU smoke test, CI)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma list of " + ", ".join(SECTIONS))
    ap.add_argument("--families", default="builtin,sd3,flux,wan", help="model families (tables skip builtin)")
    ap.add_argument("--dtypes", default=None,
                    help="precisions checked in correctness and comfy (default bf16,fp16; bf16 with --tiny on the CPU)")
    ap.add_argument("--only", default="", help="correctness: only cases whose name contains one of these (comma)")
    ap.add_argument("--comfyui", default=None, help="a ComfyUI checkout for the comfy section")
    ap.add_argument("--table-dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--steps", type=int, default=28, help="tables: Euler steps for Flux and SD3")
    ap.add_argument("--steps-wan", type=int, default=20, help="tables: Euler steps for Wan")
    ap.add_argument("--wan-frames", type=int, default=33)
    ap.add_argument("--repeats", type=int, default=5, help="tables: timed forwards per path")
    ap.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget; what does not fit is skipped")
    args = ap.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    args.families = [f for f in args.families.split(",") if f]
    tiny_cpu = args.tiny and (args.device or "cpu") == "cpu"  # float16 matmuls are emulated (slow) on the CPU
    args.dtypes = [d for d in (args.dtypes or ("bf16" if tiny_cpu else "bf16,fp16")).split(",") if d]
    args.only = [o for o in args.only.split(",") if o]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if args.tiny:
        args.steps, args.steps_wan, args.repeats = 6, 6, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    else:
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 references on the device stay float32
    rec = Recorder(args.out, args.budget_s)
    rec.write(section="env", **environment(args))
    import gpu_comfy
    import gpu_correctness
    import gpu_tables

    modules = {"correctness": gpu_correctness, "comfy": gpu_comfy, "tables": gpu_tables}
    for section in args.sections:
        try:
            modules[section].run(args, rec)
        except Exception as exc:  # noqa: BLE001 - one section's crash never loses the others
            rec.write(section=section, ok=False, error=rec.error_text(exc))
    rec.write(section="done", failed_checks=rec.failed, total_s=round(rec.elapsed(), 1))
    return 1 if rec.failed else 0


if __name__ == "__main__":
    sys.exit(main())
