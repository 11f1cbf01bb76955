"""Built-in model benchmark: wall time of the default text-to-image run and prompt fidelity for the model card.

    python bench/bench_builtin.py --threads 2 --out bench/out/builtin.json

Speed: median wall time of the default settings (64x64, 28 steps, CFG) over several runs on this CPU.
Fidelity: for emoji names drawn with a fixed seed, each generated image is ranked against all training
images by pixel MSE (at 32x32); top-k = how often the named emoji is among the k nearest. Paraphrased
prompts check free-form text. Chance level for top-1 is 1 / number of images.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from turbosample.models.emoji_data import fetch_package, load_emoji
from turbosample.models.train_data import TEMPLATE_SETS, apply_template, is_skin_tone_variant
from turbosample.nodes.pipeline import generate
from turbosample.nodes.txt2img import Settings

PARAPHRASES = {"kitty": "cat face", "a red apple": "red apple", "pizza": "slice of pizza",
               "happy smiling face": "smiling face with smiling eyes", "flag of japan": "japan flag",
               "a rocket ship": "rocket", "sad face": "disappointed face", "puppy": "dog face",
               "big red heart": "heavy black heart", "sunflower": "sunflower"}
# a second set in phrasings unlike the training templates ("{}", "a {}", "{} emoji", "an image of {}")
PARAPHRASES_MORE = {"crying": "crying face", "froggy": "frog face", "a robot head": "robot face",
                    "thumbs-up": "thumbs up sign", "sliced watermelon": "watermelon", "yellow banana": "banana",
                    "little ghost": "ghost", "snowman in winter": "snowman", "full moon": "full moon symbol",
                    "piggy face": "pig face"}


def time_outside_app(weights: Path, runs: int) -> dict:
    """Median wall time of ``draw_with_weights`` at the app's defaults: prompt encoding, sampling, decoding."""
    from turbosample.models.text import encode_prompts

    settings = Settings()

    def run(seed: int) -> None:
        draw_with_weights(weights, encode_prompts([settings.prompt]), settings.width, settings.cfg, seed,
                          settings.steps, settings.flow_shift)

    run(0)  # warm-up: loads the text encoder
    times = []
    for i in range(runs):
        start = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - start)
    return {"weights": str(weights), "outside_app": True, "runs": runs, "median_s": statistics.median(times),
            "min_s": min(times), "max_s": max(times)}


def time_default(runs: int) -> dict:
    settings = Settings()
    generate(settings)  # warm-up: loads the model and the text encoder
    times = []
    for i in range(runs):
        start = time.perf_counter()
        generate(Settings(seed=i))
        times.append(time.perf_counter() - start)
    return {"settings": settings.to_dict(), "runs": runs, "median_s": statistics.median(times),
            "min_s": min(times), "max_s": max(times)}


def nearest_distances(images: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """(generated, training images) pixel distances at 32x32."""
    ref = F.interpolate(images, size=(32, 32), mode="area").flatten(1)
    gen = F.interpolate(generated, size=(32, 32), mode="area").flatten(1)
    return torch.cdist(gen, ref)


def rank_of_targets(images: torch.Tensor, generated: torch.Tensor, targets: list[int]) -> list[int]:
    dists = nearest_distances(images, generated)
    return [int((dists[i] < dists[i, t]).sum()) for i, t in enumerate(targets)]


def family(variants: list[str]) -> str:
    """An emoji's base name: skin-tone variants ("waving hand, medium skin tone") share their base's."""
    return variants[0].split(", ")[0]


def miss_kinds(images, generated, targets: list[int], prompts: list[list[str]], k: int = 10) -> dict:
    """Where the nearest training image of each miss lies: a skin-tone sibling of the target, or else one of the
    target's k nearest training images in pixels (a look-alike), or elsewhere. ``other_misses`` lists the
    (target, nearest) pairs that are not siblings."""
    nearest = nearest_distances(images, generated).argmin(1).tolist()
    misses = [(t, n) for n, t in zip(nearest, targets, strict=True) if n != t]
    others = [[t, n] for t, n in misses if family(prompts[n]) != family(prompts[t])]
    look_alike = 0
    if others:
        dists = nearest_distances(images, images[[t for t, _ in others]])
        look_alike = sum(int((d < d[n]).sum()) - 1 < k for d, (_, n) in zip(dists, others, strict=True))
    return {"misses": len(misses), "nearest_is_skin_tone_sibling": len(misses) - len(others),
            f"other_misses_pixel_neighbour_k{k}": look_alike, "other_misses": others}


def by_skin_tone(ranks: list[int], targets: list[int], prompts: list[list[str]]) -> dict:
    """Top-1 / top-10 split between names that are skin-tone variants and the rest (None where a group is empty)."""
    return split_by_flag(ranks, [is_skin_tone_variant(prompts[t][0]) for t in targets])


def top_rates(ranks: list[int]) -> dict:
    """Share of rank 0 (top-1) and of ranks under 10 (top-10); None for no ranks."""
    if not ranks:
        return {"top1": None, "top10": None}
    return {"top1": sum(r == 0 for r in ranks) / len(ranks), "top10": sum(r < 10 for r in ranks) / len(ranks)}


def split_by_flag(ranks: list[int], tone: list[bool]) -> dict:
    """Top-1 / top-10 of the ranks whose flag is set ("tone_*") and of the rest ("plain_*"); None for an empty group."""
    out = {}
    for group, want in (("tone", True), ("plain", False)):
        r = [rank for rank, flag in zip(ranks, tone, strict=True) if flag == want]
        out[f"n_{group}"] = len(r)
        out.update({f"{group}_{k}": v for k, v in top_rates(r).items()})
    return out


@torch.no_grad()
def draw_with_weights(weights: Path, emb: torch.Tensor, size: int, cfg: float, seed: int, steps: int = 28,
                      shift: float = 1.0) -> torch.Tensor:
    """One image per prompt-embedding row (B, 3, size, size) in [-1, 1] from a weights file, outside the app, with
    the app's defaults otherwise (Euler, simple schedule, seed + k for row k, the empty prompt as negative);
    latent-space weights are sampled in their latent space and decoded by their autoencoder (beside them)."""
    from turbosample.models.builtin import latent_space, load_model, to_pixels
    from turbosample.samplers.denoiser import DiffusionModel
    from turbosample.samplers.model_sampling import FlowSampling
    from turbosample.samplers.registry import SAMPLERS
    from turbosample.samplers.run import sample
    from turbosample.samplers.schedulers import compute_sigmas

    space, net = latent_space(weights), load_model(weights)
    model = DiffusionModel(net, FlowSampling(shift=shift))
    sigmas = compute_sigmas(model.model_sampling, "simple", steps)
    null = [[torch.zeros(1, 1, emb.shape[1]), {}]]
    out = torch.cat([sample(model, [[e[None, None].float(), {}]], null, torch.zeros(space.latent_shape(1, size, size)),
                            SAMPLERS["euler"], sigmas, seed + k, cfg) for k, e in enumerate(emb)])
    return to_pixels(out, weights)


WEIGHTS_OUTSIDE_APP: Path | None = None  # --weights: draw from this file with draw_with_weights, not the app


def generate_batch(prompts: list[str], cfg: float, steps: int, size: int, seed: int, shift: float = 1.0
                   ) -> torch.Tensor:
    if WEIGHTS_OUTSIDE_APP is not None:
        from turbosample.models.text import encode_prompts

        drawn = draw_with_weights(WEIGHTS_OUTSIDE_APP, encode_prompts(prompts), size, cfg, seed, steps, shift)
        return ((drawn + 1) * 127.5).round().div(127.5).sub(1)  # the app's 8-bit images
    out = []
    for k, prompt in enumerate(prompts):
        img = generate(Settings(prompt=prompt, cfg=cfg, steps=steps, width=size, height=size, seed=seed + k,
                                flow_shift=shift))[0]
        out.append(torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 127.5 - 1)
    return torch.stack(out)


Encoder = Callable[[list[str]], torch.Tensor]


def ensembled_encoder(encode: Encoder, templates: tuple[str, ...] = TEMPLATE_SETS["phrases"]) -> Encoder:
    """``encode`` with each non-empty prompt's embedding averaged over the training phrasings, renormalised."""
    def encode_ensembled(prompts: list[str]) -> torch.Tensor:
        out = encode(prompts)
        for i, prompt in enumerate(prompts):
            if prompt.strip():
                out[i] = F.normalize(encode([apply_template(t, prompt) for t in templates]).float().mean(0), dim=-1)
        return out
    return encode_ensembled


def paraphrase_targets(table: dict[str, str], prompts: list[list[str]]) -> list[tuple[str, int]]:
    """(paraphrase, index of the first image named like its target) for the targets the data has."""
    first = {variants[0]: i for i, variants in reversed(list(enumerate(prompts)))}
    return [(p, first[t]) for p, t in table.items() if t in first]


def per_image_max(prompt_sims: torch.Tensor, owner: torch.Tensor, n_images: int) -> torch.Tensor:
    """Each training image's best similarity over its prompt variants (``owner``: the image of each variant)."""
    return torch.full((n_images,), -2.0).scatter_reduce(0, owner, prompt_sims, "amax")


def text_neighbour_ranks(pack: Path, prompts: list[list[str]]) -> list[dict]:
    """For each paraphrase: the target's rank among training images ordered by their nearest prompt in MiniLM
    space (0 = the encoder alone would pick the named emoji). Separates text-encoder limits from drawing ones."""
    from turbosample.models.text import encode_prompts
    from turbosample.models.train_data import load_pack

    data = load_pack(pack)
    owner = torch.repeat_interleave(torch.arange(len(data.counts)), data.counts)
    pairs = [pair for table in (PARAPHRASES, PARAPHRASES_MORE) for pair in paraphrase_targets(table, prompts)]
    sims = encode_prompts([p for p, _ in pairs]).float() @ data.embeddings.float().T
    rows = []
    for (phrase, target), sim in zip(pairs, sims, strict=True):
        best = per_image_max(sim, owner, len(data.counts))
        rows.append({"paraphrase": phrase, "target": prompts[target][0],
                     "nearest_prompt_image": prompts[int(best.argmax())][0],
                     "target_rank": int((best > best[target]).sum())})
    return rows


def pair_ranks(images, prompts, pairs: list[tuple[str, int]], setting: tuple, named: bool = False) -> list[int]:
    """Rank of each (paraphrase, target) pair's emoji drawn from the paraphrase, or from its own name if ``named``;
    ``setting`` is (cfg, steps, size, seed, shift)."""
    texts = [prompts[t][0] if named else p for p, t in pairs]
    return rank_of_targets(images, generate_batch(texts, *setting), [t for _, t in pairs])


def paraphrase_misses(phrases: list[str], ranks: list[int], name_ranks: list[int]) -> dict:
    """Each paraphrase's rank beside its emoji's rank when asked by its own name (same noise), and the paraphrase
    misses (not in the top 10) split into those the model also misses by name and those only the phrasing loses."""
    rows = [{"paraphrase": p, "rank": r, "rank_by_name": nr} for p, r, nr in zip(phrases, ranks, name_ranks,
                                                                                 strict=True)]
    misses = [row for row in rows if row["rank"] >= 10]
    return {"paraphrases": rows, "paraphrase_misses": len(misses),
            "paraphrase_misses_also_by_name": sum(row["rank_by_name"] >= 10 for row in misses)}


def text_neighbour_misses(pack: Path, rows: list[dict], k: int = 10) -> None:
    """Add to each fidelity row how many of its other (not skin-tone sibling) misses drew an image whose prompts are
    among the k nearest to the target's in MiniLM space (the prompt could not tell them apart)."""
    from turbosample.models.train_data import load_pack

    data = load_pack(pack)
    emb = data.embeddings.float()
    owner = torch.repeat_interleave(torch.arange(len(data.counts)), data.counts)
    for row in rows:
        near = 0
        for target, drawn in row["other_misses"]:
            start, count = int(data.starts[target]), int(data.counts[target])
            sim = (emb[start:start + count] @ emb.T).amax(0)
            best = per_image_max(sim, owner, len(data.counts))
            best[target] = 2.0  # the target itself is not a neighbour
            near += int((best > best[drawn]).sum()) <= k
        row[f"other_misses_text_neighbour_k{k}"] = near


def fidelity(images, prompts, n: int, cfgs: list[float], steps: int, sizes: list[int], seed: int,
             shifts: tuple[float, ...] = (1.0,), by_name: bool = False) -> list[dict]:
    rng = random.Random(seed)
    picks = rng.sample(range(len(prompts)), n)
    names = [prompts[i][0] for i in picks]
    para, more = paraphrase_targets(PARAPHRASES, prompts), paraphrase_targets(PARAPHRASES_MORE, prompts)
    rows = []
    for size in sizes:
        for cfg, shift in [(c, s) for s in shifts for c in cfgs]:
            start = time.perf_counter()
            drawn = generate_batch(names, cfg, steps, size, seed, shift)
            ranks = rank_of_targets(images, drawn, picks)
            setting = (cfg, steps, size, seed, shift)
            para_ranks = pair_ranks(images, prompts, para, setting)
            more_ranks = pair_ranks(images, prompts, more, setting)
            extra = {}
            if by_name:  # the paraphrases' emoji asked by their own names, with the paraphrases' noise
                extra = paraphrase_misses([p for p, _ in para + more], para_ranks + more_ranks,
                                          pair_ranks(images, prompts, para, setting, named=True)
                                          + pair_ranks(images, prompts, more, setting, named=True))
            rows.append({"size": size, "cfg": cfg, "shift": shift, "steps": steps, "seed": seed, "n": n,
                         **top_rates(ranks),
                         **miss_kinds(images, drawn, picks, prompts), **by_skin_tone(ranks, picks, prompts),
                         "median_rank": statistics.median(ranks),
                         "paraphrase_top10": sum(r < 10 for r in para_ranks) / len(para),
                         "paraphrase_median_rank": statistics.median(para_ranks), "n_paraphrase": len(para),
                         "paraphrase2_top10": sum(r < 10 for r in more_ranks) / len(more), "n_paraphrase2": len(more),
                         **extra, "seconds": round(time.perf_counter() - start, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


POOLED = {"top1": "n", "top10": "n", "paraphrase_top10": "n_paraphrase", "paraphrase2_top10": "n_paraphrase2",
          "tone_top1": "n_tone", "tone_top10": "n_tone", "plain_top1": "n_plain", "plain_top10": "n_plain"}


def pool_seeds(rows: list[dict]) -> list[dict]:
    """Pool fidelity rows of several seeds (each its own draw of names) per setting: rates weighted by their counts."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["size"], row["cfg"], row["shift"], row["steps"]), []).append(row)
    pooled = []
    for (size, cfg, shift, steps), group in groups.items():
        totals = {count: sum(r[count] for r in group) for count in set(POOLED.values())}
        rates = {rate: sum((r[rate] or 0.0) * r[count] for r in group) / totals[count] if totals[count] else None
                 for rate, count in POOLED.items()}
        misses = {key: sum(r[key] for r in group) for key in ("paraphrase_misses", "paraphrase_misses_also_by_name")
                  if all(key in r for r in group)}
        pooled.append({"size": size, "cfg": cfg, "shift": shift, "steps": steps,
                       "seeds": [r["seed"] for r in group], **totals, **rates, **misses})
    return pooled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5, help="timed default runs (0: fidelity only)")
    ap.add_argument("--n", type=int, default=100,
                    help="emoji names to generate per setting (0: time the default run only)")
    ap.add_argument("--cfg", type=float, nargs="+", default=[1.0, 2.0, 4.0, 6.0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 32])
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--shifts", type=float, nargs="+", default=[1.0])
    ap.add_argument("--seed", type=int, nargs="+", default=[0],
                    help="one draw of names and noise per seed; several seeds also print the pooled figures")
    ap.add_argument("--data-cache", default=str(Path.home() / ".cache" / "turbosample" / "emoji"))
    ap.add_argument("--text-neighbours", metavar="PACK", default=None,
                    help="also rank each paraphrase's emoji by text similarity alone, and count the non-sibling "
                         "misses that drew one of the target's 10 nearest emoji in prompt space, using the prompt "
                         "embeddings of a training pack (models/train.py --write-data-pack)")
    ap.add_argument("--by-name", action="store_true",
                    help="also draw each paraphrase's emoji by its own name (same noise) and report which paraphrase "
                         "misses the model also makes by name")
    ap.add_argument("--prompt-ensemble", action="store_true",
                    help="encode every prompt as the mean of its four training phrasings (an inference-side test)")
    ap.add_argument("--weights", default=None, metavar="FILE",
                    help="draw (and time) these weights outside the app with the app's defaults, e.g. latent-space "
                         "weights (models/train.py --autoencoder), which the app does not run")
    ap.add_argument("--out", default="bench/out/builtin.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global WEIGHTS_OUTSIDE_APP
    WEIGHTS_OUTSIDE_APP = Path(args.weights) if args.weights else None
    if args.prompt_ensemble:
        from turbosample.models import text
        text.encode_prompts = ensembled_encoder(text.encode_prompts)
    images, prompts, _ = load_emoji(fetch_package(Path(args.data_cache)))
    result = {"threads": args.threads}
    if args.runs > 0:
        result["timing"] = time_outside_app(WEIGHTS_OUTSIDE_APP, args.runs) if args.weights else time_default(args.runs)
        print(json.dumps(result["timing"]), flush=True)
    if args.n > 0:
        result["fidelity"] = [row for seed in args.seed for row in
                              fidelity(images, prompts, args.n, args.cfg, args.steps, args.sizes, seed,
                                       tuple(args.shifts), args.by_name)]
        if args.text_neighbours:
            text_neighbour_misses(Path(args.text_neighbours), result["fidelity"])
            for row in result["fidelity"]:
                print(json.dumps({key: row[key] for key in ("seed", "misses", "nearest_is_skin_tone_sibling",
                                                             "other_misses_pixel_neighbour_k10",
                                                             "other_misses_text_neighbour_k10")}), flush=True)
        if len(args.seed) > 1:
            result["pooled"] = pool_seeds(result["fidelity"])
            for row in result["pooled"]:
                print(json.dumps({"pooled": row}), flush=True)
    if args.text_neighbours:
        result["text_neighbours"] = text_neighbour_ranks(Path(args.text_neighbours), prompts)
        for row in result["text_neighbours"]:
            print(json.dumps(row), flush=True)
    result["chance_top1"] = 1 / len(prompts)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
