"""Sample-distribution and data fidelity of samplers on the built-in model (what paired PSNR cannot judge).

    python bench/bench_fidelity.py                       # default sampler set, writes bench/out/fidelity.json
    python bench/bench_fidelity.py --only restart lcm    # just these, merged into the existing JSON
    python bench/bench_fidelity.py --markdown            # print the table of --out
    python bench/bench_fidelity.py --reference self --only euler_ancestral restart lcm --out bench/out/fid_self.json

Paired PSNR against a reference run cannot judge samplers that by design end elsewhere: stochastic ones (churn,
restart, ancestral / SDE, lcm) and CFG++ (another guidance). Two set-level measures instead, per prompt over
--seeds seeds, averaged over the prompts:

- ``mmd``: squared kernel MMD (unbiased, x1000) between the sampler's images and the model's own distribution,
  represented by the exact-ODE reference (Heun, --ref-steps steps) on --seeds *other* seeds (1000, 1001, ...).
  Features: 16x16 area-downsampled RGB; RBF kernel with the median pairwise distance of the reference set (per
  prompt). The row ``reference (other seeds)`` is the reference sampler on the samplers' seeds: the estimator's
  floor. Samplers meant to sample the model's distribution (ODE and SDE solvers, churn, restart) should approach
  it as calls grow; lcm and CFG++ (another guidance) sample other distributions by design, and with CFG an SDE's
  limit is not the ODE's either (guidance is not a score). ``--reference self`` therefore also scores each sampler
  against its own run at --self-calls calls on the other seeds: convergence in distribution, which samplers
  whose noise path changes with the step count (churn, restart, lcm) can show where paired PSNR cannot.
- Data fidelity: the model was trained on the Noto emoji set, so each bench prompt names one training image.
  ``top1`` is the share of images whose nearest training image (L2 on the same features, whole set) is the
  prompt's own; ``psnr`` / ``ssim`` compare each image with it. The shipped CPU-trained model draws rough shapes
  and colours only (issue 2: the GPU training run is still missing), so these sit near their floor for every
  sampler; they are reported, not used to rank.
- ``spread``: RMS difference between the images of one prompt over the seeds (variety; 0 = one image per prompt).

Every sampler gets the same prompts x seeds at each model-call budget (steps = budget / calls per step); CFG++
samplers run at --cfg-pp-cfg (the paper's lambda), the others at --cfg.
"""

from __future__ import annotations

import argparse
import json
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_samplers import PROMPTS, run, steps_for
from builtin_runs import conditions, to_image
from metrics import median_bandwidth, mmd2, paired_scores

from turbosample.models.emoji_data import fetch_package, load_emoji
from turbosample.nodes.builtin_nodes import load_builtin_model
from turbosample.samplers.registry import SAMPLERS, is_cfg_pp

DEFAULT_SAMPLERS = ["euler", "dpmpp_2m", "uni_pc", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde", "euler_churn",
                    "heun_churn", "restart", "lcm", "euler_cfg_pp", "dpmpp_2m_cfg_pp", "euler_ancestral_cfg_pp",
                    "res_multistep_cfg_pp"]
RETRIEVAL_SIZE = 16


def retrieval_features(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, 3 * 16 * 16) area-downsampled pixels."""
    return F.interpolate(images.float(), size=(RETRIEVAL_SIZE, RETRIEVAL_SIZE), mode="area").flatten(1)


def prompt_targets(prompts: list[str], variants: list[list[str]]) -> dict[str, list[int]]:
    """Training images named by each prompt (exact prompt variant); a clear error when one names none."""
    targets = {p: [i for i, names in enumerate(variants) if p in names] for p in prompts}
    missing = [p for p, ids in targets.items() if not ids]
    if missing:
        raise ValueError(f"no training image is named {missing}; pick prompts from the emoji names")
    return targets


def image_features(images: list[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) images in [0, 1] -> retrieval features."""
    return retrieval_features(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) * 2 - 1)


def distribution_distance(images: list[np.ndarray], reference: list[torch.Tensor], seeds: int) -> float:
    """Mean over prompts of MMD^2 (x1000) between each prompt's images and its reference features."""
    feats = image_features(images)
    return 1000 * float(np.mean([mmd2(feats[k * seeds:(k + 1) * seeds], ref, median_bandwidth(ref))
                                 for k, ref in enumerate(reference)]))


def fidelity(images: list[np.ndarray], prompts: list[str], seeds: int, data: torch.Tensor, features: torch.Tensor,
             targets: dict[str, list[int]]) -> dict:
    """top1, PSNR / SSIM to the prompt's training image, and spread over seeds (images ordered prompt-major)."""
    nearest = torch.cdist(image_features(images), features).argmin(dim=1).tolist()
    per_image = [p for p in prompts for _ in range(seeds)]
    hits = [n in targets[p] for n, p in zip(nearest, per_image, strict=True)]
    own = data[[targets[p][0] for p in per_image]]  # the data are 64x64: compared at the generated size
    refs = [to_image(r[None]) for r in F.interpolate(own, size=images[0].shape[:2], mode="area")]
    scores = paired_scores(images, refs)
    spreads = [float(np.sqrt(np.mean((a - b) ** 2)))
               for k in range(len(prompts))
               for a, b in combinations(images[k * seeds:(k + 1) * seeds], 2)]
    return {"top1": float(np.mean(hits)), "psnr": scores["psnr"], "ssim": scores["ssim"],
            "spread": float(np.mean(spreads)) if spreads else 0.0}


def set_features(model, info, steps: int, cfg: float, seeds: list[int], args) -> list[torch.Tensor]:
    """Features of ``info``'s images per prompt (one (len(seeds), d) tensor per prompt)."""
    out = run(model, info, steps, conditions(PROMPTS[:args.prompts], seeds), args.size, cfg, args.scheduler)
    feats = image_features(out["images"])
    return [feats[k * len(seeds):(k + 1) * len(seeds)] for k in range(args.prompts)]


def bench(model, name: str, args, data: torch.Tensor, features: torch.Tensor, targets: dict,
          reference: list[torch.Tensor] | None) -> list[dict]:
    """Rows per budget; ``reference`` None: the sampler's own run at --self-calls calls on other seeds."""
    info = SAMPLERS[name]
    cfg = args.cfg_pp_cfg if is_cfg_pp(name) else args.cfg
    if reference is None:
        reference = set_features(model, info, steps_for(info, args.self_calls), cfg, other_seeds(args), args)
    conds = conditions(PROMPTS[:args.prompts], list(range(args.seeds)))
    rows = []
    for budget in args.nfe:
        out = run(model, info, steps_for(info, budget), conds, args.size, cfg, args.scheduler)
        row = {"sampler": name, "budget": budget, "calls": out["calls"], "cfg": cfg,
               "seconds_per_image": out["seconds"], "mmd": distribution_distance(out["images"], reference, args.seeds),
               **fidelity(out["images"], PROMPTS[:args.prompts], args.seeds, data, features, targets)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def other_seeds(args) -> list[int]:
    return list(range(1000, 1000 + args.seeds))


def reference_runs(model, args, data, features, targets) -> tuple[list[torch.Tensor], dict]:
    """Reference features per prompt (other seeds) and the floor row (reference sampler on the samplers' seeds)."""
    info, prompts, n = SAMPLERS[args.ref_sampler], PROMPTS[:args.prompts], args.seeds
    reference = set_features(model, info, args.ref_steps, args.cfg, other_seeds(args), args)
    same = run(model, info, args.ref_steps, conditions(prompts, list(range(n))), args.size, args.cfg, args.scheduler)
    floor = {"sampler": "reference (other seeds)", "budget": "ref", "calls": same["calls"], "cfg": args.cfg,
             "seconds_per_image": same["seconds"], "mmd": distribution_distance(same["images"], reference, n),
             **fidelity(same["images"], prompts, n, data, features, targets)}
    print(json.dumps(floor), flush=True)
    return reference, floor


def markdown(result: dict) -> str:
    budgets = sorted({r["budget"] for r in result["rows"] if r["budget"] != "ref"})
    floor = result.get("floor")
    lines = [f"MMD^2 x1000 to {result['reference']} (other seeds)"
             + (f"; estimator floor {floor['mmd']:.1f}" if floor else ""), "",
             "| sampler | cfg | " + " | ".join(f"{b} calls: MMD / top1 / PSNR / spread" for b in budgets) + " |",
             "|" + "---|" * (2 + len(budgets))]
    for name in dict.fromkeys(r["sampler"] for r in result["rows"]):
        rows = {r["budget"]: r for r in result["rows"] if r["sampler"] == name}
        cells = [f"{rows[b]['mmd']:.1f} / {rows[b]['top1']:.2f} / {rows[b]['psnr']:.2f} / {rows[b]['spread']:.3f}"
                 if b in rows else "" for b in budgets]
        lines.append(f"| {name} | {next(iter(rows.values()))['cfg']:g} | " + " | ".join(cells) + " |")
    if floor:
        lines.append(f"| {floor['sampler']} ({floor['calls']:g} calls) | {floor['cfg']:g} | "
                     f"{floor['mmd']:.1f} / {floor['top1']:.2f} / {floor['psnr']:.2f} / {floor['spread']:.3f} |"
                     + " |" * (len(budgets) - 1))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", metavar="NAME", help="samplers to run, merged into --out if it exists")
    ap.add_argument("--nfe", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--prompts", type=int, default=8, help="first N bench prompts")
    ap.add_argument("--seeds", type=int, default=8, help="seeds per prompt (0 .. N-1; the reference: 1000 ..)")
    ap.add_argument("--ref-sampler", default="heun")
    ap.add_argument("--ref-steps", type=int, default=64)
    ap.add_argument("--reference", choices=("ode", "self"), default="ode",
                    help="ode: the --ref-sampler's distribution; self: each sampler's own at --self-calls calls")
    ap.add_argument("--self-calls", type=int, default=128)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--cfg-pp-cfg", type=float, default=1.0, help="cfg (the paper's lambda) for CFG++ samplers")
    ap.add_argument("--scheduler", default="simple")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-cache", default=str(Path.home() / ".cache" / "turbosample" / "emoji"))
    ap.add_argument("--out", default="bench/out/fidelity.json")
    ap.add_argument("--markdown", action="store_true", help="print the table of --out and exit")
    args = ap.parse_args()
    out_path = Path(args.out)
    if args.markdown:
        print(markdown(json.loads(out_path.read_text())))
        return
    names = args.only or DEFAULT_SAMPLERS
    unknown = [n for n in names if n not in SAMPLERS]
    if unknown:
        raise ValueError(f"unknown sampler(s) {', '.join(unknown)}; choose from {', '.join(SAMPLERS)}")
    torch.set_num_threads(args.threads)
    data, variants, _ = load_emoji(fetch_package(Path(args.data_cache)))
    targets = prompt_targets(PROMPTS[:args.prompts], variants)
    features = retrieval_features(data)
    (model,) = load_builtin_model(1.0)
    reference, floor = reference_runs(model, args, data, features, targets) if args.reference == "ode" else \
        (None, None)
    rows = [row for name in names for row in bench(model, name, args, data, features, targets, reference)]
    previous = json.loads(out_path.read_text()) if args.only and out_path.is_file() else {}
    result = {"size": args.size, "cfg": args.cfg, "cfg_pp_cfg": args.cfg_pp_cfg, "scheduler": args.scheduler,
              "reference": f"{args.ref_sampler} {args.ref_steps} steps" if args.reference == "ode" else
              f"each sampler's own run at {args.self_calls} calls", "prompts": PROMPTS[:args.prompts],
              "seeds": args.seeds, "feature_size": RETRIEVAL_SIZE, "training_images": int(data.shape[0]),
              "floor": floor, "rows": [r for r in previous.get("rows", []) if r["sampler"] not in names] + rows}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
