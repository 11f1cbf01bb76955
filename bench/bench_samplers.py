"""Samplers on the built-in model: paired PSNR/SSIM/LPIPS against a high-NFE reference at a given model-call budget.

    python bench/bench_samplers.py                          # every sampler, writes bench/out/samplers.json
    python bench/bench_samplers.py --only seeds_3 paradigms # just these, merged into the existing JSON

NFE counts the CFG-batched model calls actually made (one call evaluates both CFG branches). References:

- deterministic samplers: Heun with --ref-steps steps at --cfg, 8 prompts ("heun" reference);
- stochastic samplers (Brownian-tree or keyed noise, seeded per prompt), CFG++ samplers and adaptive_sde: the same
  sampler with the same seed at about --self-calls calls, --self-prompts prompts ("self" reference: strong
  convergence to its own SDE solution / its own guidance). A second run at half those calls is scored against it
  too (``self_check``): if that is not clearly closer than the budgets below, the sampler does not converge.
- CFG++ samplers run at --cfg-pp-cfg (their cfg is the paper's lambda, not a CFG scale).

Budgets: steps = round(budget / calls_per_step); adaptive_* sweep the tolerance instead (calls as made); paradigms
runs budget Euler steps and reports its sequential batched rounds and its model evaluations (grid points).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from builtin_runs import conditions, generate
from metrics import score

from turbosample.nodes.builtin_nodes import load_builtin_model
from turbosample.samplers.registry import SAMPLERS, SamplerInfo, is_cfg_pp

PROMPTS = ["grinning face", "cat face", "red apple", "japan flag", "rocket", "slice of pizza", "sunflower",
           "thumbs up sign"]
STOCHASTIC = {"euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "lcm",
              "euler_churn", "heun_churn", "dpm_2_churn", "restart", "sa_solver", "sa_solver_pece", "er_sde",
              "seeds_2", "seeds_3", "dpm_2_ancestral", "res_multistep_ancestral", "euler_ancestral_cfg_pp",
              "dpmpp_2s_ancestral_cfg_pp", "res_multistep_ancestral_cfg_pp", "adaptive_sde"}
ADAPTIVE_RTOL = (0.5, 0.2, 0.1, 0.05, 0.02)
ADAPTIVE_SELF_RTOL = (0.005, 0.01)  # reference, half-cost check


def uses_self_reference(name: str) -> bool:
    """Stochastic and CFG++ samplers are scored against their own high-NFE run (see the module docstring)."""
    return name in STOCHASTIC or is_cfg_pp(name)


def steps_for(info: SamplerInfo, budget: int) -> int:
    """Steps whose calls come closest to ``budget`` (paradigms: Euler steps = sequential-equivalent calls)."""
    if info.name == "paradigms":
        return budget
    cps = int(info.calls_per_step)
    return max(1, (budget + cps - 1) // cps)  # k-call steps end with a 1-call step onto 0: k n - (k - 1) calls


def run(model, info: SamplerInfo, steps: int, conds, size: int, cfg: float, scheduler: str) -> dict:
    """Images, calls per image, batch rows per image and seconds per image of one sampler run."""
    calls, rows = 0, 0

    def counting(forward, x, timestep, context, options):
        nonlocal calls, rows
        calls += 1
        rows += x.shape[0]
        return forward(x, timestep, context, options)

    counted = model.with_wrapper("bench.count_calls", counting)
    images, seconds = generate(counted, info, steps, conds, size, cfg, scheduler)
    return {"images": images, "calls": calls / len(conds), "rows": rows / len(conds), "seconds": seconds}


def with_rtol(info: SamplerInfo, rtol: float) -> SamplerInfo:
    return SamplerInfo(info.name, info.fn, info.calls_per_step, info.description, {**info.options, "rtol": rtol})


def cached_reference(model, info: SamplerInfo, steps: int, conds, args, cfg: float, tag: str) -> list:
    """Reference images, cached under bench/out/refs (the cache key names sampler, steps, cfg, prompts, size)."""
    path = Path(args.out).parent / "refs" / f"{tag}_{steps}_cfg{cfg:g}_{len(conds)}p_{args.size}px.npz"
    if path.is_file():
        return list(np.load(path)["images"])
    out = run(model, info, steps, conds, args.size, cfg, args.scheduler)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=np.stack(out["images"]), calls=out["calls"])
    print(json.dumps({"reference": tag, "steps": steps, "calls": out["calls"], "cfg": cfg}), flush=True)
    return out["images"]


def row(name: str, out: dict, refs: list, **extra) -> dict:
    psnr, ssim, lp = score(out["images"], refs)
    return {"sampler": name, "nfe": round(out["calls"], 2), "psnr": round(psnr, 2), "ssim": round(ssim, 4),
            "lpips": round(lp, 4), "seconds_per_image": round(out["seconds"], 3), **extra}


def bench_one(model, name: str, args, heun_refs: list) -> tuple[list[dict], dict | None]:
    """Rows for every budget of one sampler and, for self-referenced ones, the convergence check."""
    info = SAMPLERS[name]
    cfg = args.cfg_pp_cfg if is_cfg_pp(name) else args.cfg
    self_ref = uses_self_reference(name)
    conds = conditions(PROMPTS[:args.self_prompts if self_ref else args.prompts])
    common = {"cfg": cfg, "reference": "self" if self_ref else "heun", "prompts": len(conds)}
    check = None
    if name.startswith("adaptive_"):
        # only the schedule's ends count, but sigma_min is its last non-zero sigma: take the reference's schedule
        grid = args.ref_steps
        runs = [(with_rtol(info, r), grid, {"rtol": r}) for r in ADAPTIVE_RTOL]
        if self_ref:
            refs = cached_reference(model, with_rtol(info, ADAPTIVE_SELF_RTOL[0]), grid, conds, args, cfg,
                                    f"{name}_rtol{ADAPTIVE_SELF_RTOL[0]}")
            half = run(model, with_rtol(info, ADAPTIVE_SELF_RTOL[1]), grid, conds, args.size, cfg, args.scheduler)
            check = row(name, half, refs, rtol=ADAPTIVE_SELF_RTOL[1], ref_rtol=ADAPTIVE_SELF_RTOL[0])
    else:
        runs = [(info, steps_for(info, b), {"target_nfe": b}) for b in args.nfe]
        if self_ref:
            ref_steps = steps_for(info, args.self_calls)
            refs = cached_reference(model, info, ref_steps, conds, args, cfg, name)
            check = {"steps": steps_for(info, args.self_calls // 2), "ref_steps": ref_steps}
            if args.self_calls // 2 not in args.nfe:  # otherwise the budget row doubles as the check
                half = run(model, info, check["steps"], conds, args.size, cfg, args.scheduler)
                check = row(name, half, refs, **check)
    if not self_ref:
        refs = heun_refs
    rows = []
    for run_info, steps, extra in runs:
        out = run(model, run_info, steps, conds, args.size, cfg, args.scheduler)
        if name == "paradigms":  # one batched call per round; rows / CFG branches = grid points evaluated
            extra = {**extra, "rounds": round(out["calls"], 2), "evals": round(out["rows"] / (1 if cfg == 1 else 2), 2)}
        rows.append(row(name, out, refs, steps=steps, **common, **extra))
        print(json.dumps(rows[-1]), flush=True)
    if check is not None and "psnr" not in check:
        check = {**next(r for r in rows if r["steps"] == check["steps"]), "ref_steps": check["ref_steps"]}
    if check is not None:
        check.update(common)
        print(json.dumps({"self_check": check}), flush=True)
    return rows, check


def cell(r: dict) -> str:
    """One table cell: PSNR / LPIPS, then the calls made when they differ from the budget (and paradigms' rounds)."""
    text = f"{r['psnr']:.2f} / {r['lpips']:.3f}"
    if r["sampler"] == "paradigms":
        return text + f" ({r['rounds']:g} rounds, {r['evals']:g} evals)"
    if r.get("target_nfe") != r["nfe"]:
        return text + f" ({r['nfe']:g})"
    return text


def markdown(result: dict, names: list[str] | None, budgets: list[int]) -> str:
    """The RESULTS.md table of the rows in ``result`` (adaptive ones as rtol: calls, PSNR / LPIPS)."""
    by_name: dict[str, list[dict]] = {}
    for r in result["rows"]:
        by_name.setdefault(r["sampler"], []).append(r)
    lines = ["| sampler | calls/step | reference (prompts) | cfg | " + " | ".join(f"{b} calls" for b in budgets)
             + " | s/image at 8 calls | self check: half-cost run vs reference |",
             "| --- " * (len(budgets) + 6) + "|"]
    for name in names or list(by_name):
        rows = by_name.get(name, [])
        if not rows:
            continue
        first = rows[0]
        ref = f"{first.get('reference', 'heun')} ({first.get('prompts', 8)})"
        check = result.get("self_checks", {}).get(name)
        check_text = ""
        if check:
            against = (f"rtol {check['rtol']:g} vs {check['ref_rtol']:g}" if "rtol" in check
                       else f"{check['steps']} vs {check['ref_steps']} steps")
            check_text = f"{check['psnr']:.2f} dB ({against})"
        if name.startswith("adaptive_"):
            cells = ["; ".join(f"rtol {r['rtol']:g}: {r['nfe']:g} calls, {r['psnr']:.2f} / {r['lpips']:.3f}"
                               for r in sorted(rows, key=lambda r: r["nfe"]))] + [""] * (len(budgets) - 1)
            secs = ""
        else:
            at = {r.get("target_nfe"): r for r in rows}
            cells = [cell(at[b]) if b in at else "" for b in budgets]
            secs = f"{at[8]['seconds_per_image']:.3f}" if 8 in at else ""
        info = SAMPLERS.get(name)
        cps = f"{info.calls_per_step:g}" if info else "?"
        lines.append(f"| {name} | {cps} | {ref} | {first.get('cfg', result.get('cfg', 4.0)):g} | "
                     + " | ".join(cells) + f" | {secs} | {check_text} |")
    return "\n".join(lines)


def merge_parts(out: Path, parts: list[Path]) -> None:
    """Rows and self checks of ``parts`` (runs with --only into other files) replace those samplers' in ``out``."""
    result = json.loads(out.read_text())
    for part in parts:
        new = json.loads(part.read_text())
        names = {r["sampler"] for r in new["rows"]}
        result["rows"] = [r for r in result["rows"] if r["sampler"] not in names] + new["rows"]
        result["self_checks"] = {**{k: v for k, v in result.get("self_checks", {}).items() if k not in names},
                                 **new.get("self_checks", {})}
        result["self_reference"] = new.get("self_reference", result.get("self_reference"))
    out.write_text(json.dumps(result, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nfe", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--only", nargs="+", metavar="NAME", help="samplers to run, merged into --out if it exists")
    ap.add_argument("--prompts", type=int, default=8, help="prompts for Heun-referenced samplers (first N)")
    ap.add_argument("--ref-steps", type=int, default=128)
    ap.add_argument("--self-calls", type=int, default=128, help="calls of a self reference")
    ap.add_argument("--self-prompts", type=int, default=4, help="prompts for self-referenced samplers")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--cfg-pp-cfg", type=float, default=1.0, help="cfg (the paper's lambda) for CFG++ samplers")
    ap.add_argument("--scheduler", default="simple")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/out/samplers.json")
    ap.add_argument("--merge", nargs="+", metavar="PART", help="merge the rows of other result files into --out")
    ap.add_argument("--markdown", action="store_true", help="print the table of --out (for --only) and exit")
    args = ap.parse_args()
    if args.merge:
        merge_parts(Path(args.out), [Path(p) for p in args.merge])
        return
    if args.markdown:
        print(markdown(json.loads(Path(args.out).read_text()), args.only, args.nfe))
        return
    unknown = [n for n in args.only or [] if n not in SAMPLERS]
    if unknown:
        raise ValueError(f"unknown sampler(s) {', '.join(unknown)}; choose from {', '.join(SAMPLERS)}")
    torch.set_num_threads(args.threads)
    out_path = Path(args.out)
    previous = json.loads(out_path.read_text()) if args.only and out_path.is_file() else None
    names = args.only or list(SAMPLERS)
    (model,) = load_builtin_model(1.0)
    heun_refs = []
    if any(not uses_self_reference(n) for n in names):
        heun_refs = cached_reference(model, SAMPLERS["heun"], args.ref_steps, conditions(PROMPTS[:args.prompts]), args,
                                     args.cfg, "heun")
    rows, checks = [], {}
    for name in names:
        new_rows, check = bench_one(model, name, args, heun_refs)
        rows += new_rows
        if check is not None:
            checks[name] = check
    result = previous or {"reference": {"sampler": "heun", "steps": args.ref_steps, "nfe": 2 * args.ref_steps - 1},
                          "size": args.size, "cfg": args.cfg, "scheduler": args.scheduler, "prompts": PROMPTS}
    result["rows"] = [r for r in result.get("rows", []) if r["sampler"] not in names] + rows
    result["self_checks"] = {**{k: v for k, v in result.get("self_checks", {}).items() if k not in names}, **checks}
    result["self_reference"] = {"calls": args.self_calls, "prompts": args.self_prompts,
                                "adaptive_rtol": list(ADAPTIVE_SELF_RTOL), "cfg_pp_cfg": args.cfg_pp_cfg}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
