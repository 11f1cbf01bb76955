"""Run under ComfyUI's Python (cwd = ComfyUI checkout): our CFG++ / RES-ancestral / gradient-estimation samplers
against ComfyUI's own, all driven by ComfyUI's CFGGuider on a toy model with distinct cond and uncond outputs.

Prints one JSON object {"<model type>/<sampler>/<comparison>": max_abs_difference}, comparisons:
``theirs`` (our function in ComfyUI's KSAMPLER vs ComfyUI's function of that name), ``loop`` (our function in
ComfyUI vs the same function in turbosample's own loop, run.sample + cfg_denoiser). Used by test_comfyui_cfg_pp.py.
"""

import json
import sys
from pathlib import Path

import torch

root = Path(sys.argv[1])
sys.path.insert(0, str(root / "tests"))
from comfy_pack import load_pack  # noqa: E402

load_pack(root)

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True

import comfy.k_diffusion.sampling as kds  # noqa: E402
import comfy.latent_formats  # noqa: E402
import comfy.model_base  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.supported_models_base  # noqa: E402

from turbosample.samplers import model_sampling as ours  # noqa: E402
from turbosample.samplers.denoiser import DiffusionModel  # noqa: E402
from turbosample.samplers.noise import seeded_noise  # noqa: E402
from turbosample.samplers.noise_sources import BrownianNoise  # noqa: E402
from turbosample.samplers.registry import SAMPLERS, SamplerInfo  # noqa: E402
from turbosample.samplers.run import sample  # noqa: E402

NAMES = [n for n in SAMPLERS if n.endswith("_cfg_pp")] + ["res_multistep_ancestral", "gradient_estimation"]
SEED, CFG, STEPS, SHAPE = 11, 1.7, 8, (1, 4, 6, 6)


class Toy(torch.nn.Module):
    """Output depends on the scaled input and the context only (EPS/V timesteps differ between the two code bases:
    ComfyUI interpolates, ours rounds), smooth and different for cond and uncond."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(0.2, 0.8, SHAPE[1]).reshape(1, -1, 1, 1))

    @property
    def dtype(self):
        return self.w.dtype

    def forward(self, x, timestep, context=None, **_):
        c = context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        return torch.tanh(x * self.w + c) * 0.8 + 0.3 * c


class Format(comfy.latent_formats.LatentFormat):
    latent_channels = SHAPE[1]
    scale_factor = 1.0


def comfy_model(model_type, shift: float):
    class Config(comfy.supported_models_base.BASE):
        unet_config = {"disable_unet_model_creation": True}
        unet_extra_config = {}
        latent_format = Format
        sampling_settings = {"shift": shift, "multiplier": 1000}
        supported_inference_dtypes = [torch.float32]
        memory_usage_factor = 1.0

    config = Config({"disable_unet_model_creation": True})
    config.set_inference_dtype(torch.float32, None)
    device = comfy.model_management.get_torch_device()
    model = comfy.model_base.BaseModel(config, model_type=model_type, device=device)
    model.diffusion_model = Toy()
    return comfy.model_patcher.ModelPatcher(model, load_device=device,
                                            offload_device=comfy.model_management.unet_offload_device())


MT = comfy.model_base.ModelType
CASES = {"eps": (MT.EPS, ours.DiscreteSampling("eps"), "karras"),
         "v_prediction": (MT.V_PREDICTION, ours.DiscreteSampling("v_prediction"), "karras"),
         "flow": (MT.FLOW, ours.FlowSampling(3.0), "simple")}
gen = torch.Generator().manual_seed(0)
positive = [[torch.randn(1, 2, 8, generator=gen) + 0.5, {}]]
negative = [[torch.randn(1, 2, 8, generator=gen) - 0.5, {}]]
latent = torch.zeros(SHAPE)
noise = seeded_noise(SEED, SHAPE)
result = {}
for label, (model_type, mine_ms, scheduler) in CASES.items():
    patcher = comfy_model(model_type, 3.0)
    sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), scheduler, STEPS).float()
    guider = comfy.samplers.CFGGuider(patcher)
    guider.set_conds(positive, negative)
    guider.set_cfg(CFG)
    ours_model = DiffusionModel(patcher.model.diffusion_model, mine_ms)

    def run_comfy(fn, noisy, guider=guider, sigmas=sigmas):
        options = {"noise_sampler": BrownianNoise(latent, SEED)} if noisy else {}
        return guider.sample(noise.clone(), latent.clone(), comfy.samplers.KSAMPLER(fn, extra_options=options),
                             sigmas.clone(), disable_pbar=True, seed=SEED)

    for name in NAMES:
        noisy = "ancestral" in name
        mine_in_comfy = run_comfy(SAMPLERS[name].fn, noisy)
        theirs = run_comfy(getattr(kds, f"sample_{name}"), noisy)
        info = SamplerInfo(name, SAMPLERS[name].fn, 1, "", {"noise_sampler": BrownianNoise(latent, SEED)} if noisy
                           else {})
        mine_loop = sample(ours_model, positive, negative, latent, info, sigmas.clone(), SEED, CFG)
        result[f"{label}/{name}/theirs"] = float((mine_in_comfy - theirs).abs().max())
        result[f"{label}/{name}/loop"] = float((mine_in_comfy - mine_loop).abs().max())
        result[f"{label}/{name}/scale"] = float(theirs.abs().max())
print(json.dumps(result))
