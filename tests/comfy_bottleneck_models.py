"""Runs TurboSampleBottleneckSampler inside ComfyUI on tiny random-weight SD1.5- and Flux-shaped models.

Run by ComfyUI's Python from the ComfyUI folder: ``python comfy_bottleneck_models.py <repo root>``.
Each model goes through SamplerCustomAdvanced (CFGGuider + the node's KSAMPLER, RandomNoise, a scheduler's
SIGMAS) once at a good latent size and once at a bad one; prints one JSON line with the results.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(sys.argv[1])
sys.path.insert(0, str(ROOT / "tests"))
from comfy_pack import load_pack  # noqa: E402

load_pack(ROOT)
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.supported_models  # noqa: E402
import torch  # noqa: E402
from comfy_extras.nodes_custom_sampler import SamplerCustomAdvanced  # noqa: E402

from turbosample.nodes.registry import NODE_BY_ID  # noqa: E402
from turbosample.samplers.bottleneck import stage_sigmas  # noqa: E402
from turbosample.samplers.model_sampling import is_flow  # noqa: E402

TINY_UNET = {  # SD1.5's layout (EPS, cross-attention, channel_mult -> 2 downsamples here), a few channels wide
    "context_dim": 32, "model_channels": 32, "use_linear_in_transformer": False, "adm_in_channels": None,
    "use_temporal_attention": False, "use_temporal_resblock": False, "in_channels": 4, "out_channels": 4,
    "num_res_blocks": [1, 1, 1], "channel_mult": [1, 2, 2], "transformer_depth": [1, 1, 0],
    "transformer_depth_output": [1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
    "use_spatial_transformer": True, "legacy": False, "image_size": 32,
}
TINY_FLUX = {  # Flux's layout (patch 2, double + single blocks, guidance), hidden size 32
    "image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16, "vec_in_dim": 8,
    "context_in_dim": 16, "hidden_size": 32, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1,
    "depth_single_blocks": 1, "axes_dim": [4, 6, 6], "theta": 10000, "patch_size": 2, "qkv_bias": True,
}


def patcher(config_cls, unet_config: dict, prediction: str | None = None):
    """A ModelPatcher around ``config_cls``'s model built from ``unet_config`` with small random weights."""
    config = config_cls(dict(unet_config))
    config.set_inference_dtype(torch.float32, None)
    if prediction == "v":
        model = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.V_PREDICTION)
    else:
        model = config.get_model({})
    gen = torch.Generator().manual_seed(0)
    for p in model.diffusion_model.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.02
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def run(model, cond: list, size: tuple[int, int], channels: int, scheduler: str, node_values: dict) -> dict:
    """SamplerCustomAdvanced with the node's SAMPLER: output shape, or the error text."""
    node = NODE_BY_ID["TurboSampleBottleneckSampler"]
    (sampler,) = node.comfy_fn(**{**node.defaults(), **node_values})
    seen = []

    def spy(apply_model, args: dict):
        seen.append([int(args["input"].shape[-2]), float(args["timestep"][0])])
        return apply_model(args["input"], args["timestep"], **args["c"])

    model = model.clone()
    model.set_model_unet_function_wrapper(spy)
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(cond, cond)
    guider.set_cfg(2.0)
    ms = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, scheduler, 7).cpu()

    class Noise:
        seed = 3

        def generate_noise(self, latent):
            return torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(self.seed))

    latent = {"samples": torch.zeros(1, channels, *size)}
    try:
        out, _ = SamplerCustomAdvanced().sample(Noise(), guider, sampler, sigmas, latent)
    except ValueError as exc:
        return {"error": str(exc)}
    samples = out["samples"]
    options = sampler.extra_options
    flow = is_flow(ms)
    noise = options["noise"]
    ends = [*noise[1:], 0.0] if options.get("stop_early", True) else [0.0] * len(noise)  # the sampler's default
    planned = [stage_sigmas(sigmas, w, n, s, flow, end)[:-1].tolist()
               for w, n, s, end in zip(noise, options["steps"], options["shifts"], ends, strict=True)]
    return {"shape": list(samples.shape), "finite": bool(torch.isfinite(samples).all()), "flow": flow,
            "seen": seen, "planned": planned, "sigma_max": float(sigmas[0])}


def main() -> None:
    steps = {"steps": "2, 3, 2"}
    sd15 = patcher(comfy.supported_models.SD15, TINY_UNET)
    sd15_cond = [[torch.randn(1, 5, 32), {}]]
    sd15_v = patcher(comfy.supported_models.SD15, TINY_UNET, prediction="v")
    flux = patcher(comfy.supported_models.Flux, TINY_FLUX)
    flux_cond = [[torch.randn(1, 5, 16), {"pooled_output": torch.randn(1, 8), "guidance": 3.5}]]
    results = {
        "sd15": run(sd15, sd15_cond, (24, 16), 4, "karras", steps),
        "sd15_bad": run(sd15, sd15_cond, (20, 16), 4, "karras", steps),
        "sd15_v": run(sd15_v, sd15_cond, (8, 16), 4, "normal", {**steps, "base_sampler": "dpmpp_2m"}),
        "flux": run(flux, flux_cond, (12, 8), 16, "simple", {**steps, "base_sampler": "dpmpp_2m"}),
        "flux_bad": run(flux, flux_cond, (12, 6), 16, "simple", steps),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
