"""The first nodes: built-in model loader, text encode, empty latent, sampler select, scheduler, sample, decode."""

from __future__ import annotations

import torch

from ..models.builtin import DEFAULT_SIZE, MAX_SIZE
from ..samplers.denoiser import DiffusionModel, model_sampling_of
from ..samplers.model_sampling import FlowSampling
from ..samplers.registry import SAMPLERS, get_sampler
from ..samplers.schedulers import SCHEDULERS, compute_sigmas
from . import categories, comfy_impl
from .spec import NodeInputError, NodeSpec, Output, Param

SIZE_STEP = 16  # one token of the shipped weights (8 px latent cells, patch 2); pixel weights take multiples of 4
MIN_SIZE = 32
SIZE_TIP = "{} in pixels; the built-in model was trained at 64 and 32 (other sizes draw poorly)."


def load_builtin_model(flow_shift: float, device: str = "cpu", dtype: str = "fp32", offload: bool = False) -> tuple:
    """The built-in DiT; ``device`` / ``dtype`` (run options: auto | cuda | mps | cpu, auto | bf16 | fp16 | fp32)
    place a copy of its weights (the shared CPU float32 instance is never cast). ``offload`` is for folder models
    (this 2 M-parameter model always fits) and is ignored."""
    from ..models.builtin import MODEL_ID, cached_model, placed_model
    from ..models.placement import PlacementError, resolve_device, resolve_dtype

    try:
        where = resolve_device(device)
        net = placed_model(where, resolve_dtype(dtype, where))
    except PlacementError as exc:
        raise NodeInputError(str(exc)) from None
    net = net if net is not None else cached_model()
    return (DiffusionModel(net, FlowSampling(shift=flow_shift), name=MODEL_ID, size_factor=net.config.patch_size),)


def encode_text(text: str) -> tuple:
    from ..models.text import encode_prompts

    return ([[encode_prompts([text])[:, None, :], {}]],)


def builtin_space():
    """The built-in weights' latent space; a NodeInputError when their files are missing or disagree."""
    from ..models.builtin import latent_space

    try:
        return latent_space()
    except (OSError, ValueError) as exc:
        raise NodeInputError(f"the built-in model cannot load: {exc}") from None


def check_latent_size(width: int, height: int) -> None:
    space = builtin_space()
    step, low = space.pixel_multiple, max(MIN_SIZE, 2 * space.pixel_multiple)
    for name, v in (("width", width), ("height", height)):
        if v % step or not low <= v <= MAX_SIZE:
            trained = " and ".join(str(t) for t in space.trained_sizes)
            raise NodeInputError(f"{name}={v}: the built-in model takes sizes that are multiples of {step} "
                                 f"from {low} to {MAX_SIZE} pixels (trained at {trained})")


def empty_latent(width: int, height: int, batch_size: int) -> tuple:
    """Zeros in the built-in model's latent space: (B, 8, H/8, W/8) for the shipped weights."""
    check_latent_size(width, height)
    return ({"samples": torch.zeros(builtin_space().latent_shape(batch_size, height, width))},)


def select_sampler(sampler_name: str) -> tuple:
    return (get_sampler(sampler_name),)


def schedule(model, scheduler: str, steps: int, denoise: float) -> tuple:
    return (compute_sigmas(model_sampling_of(model), scheduler, steps, denoise),)


def sample(model, positive, negative, sampler, sigmas, latent_image, seed: int, cfg: float, callback=None,
           cancel=None) -> tuple:
    from ..samplers.run import sample as run_sample

    if not isinstance(model, DiffusionModel):
        raise NodeInputError("TurboSample Sample outside ComfyUI runs the built-in model only")
    samples = run_sample(model, positive, negative, latent_image["samples"], sampler, sigmas, seed, cfg,
                         callback=callback, cancel=cancel)
    return ({**latent_image, "samples": samples.cpu()},)


def latent_to_image(samples: torch.Tensor) -> torch.Tensor:
    """The built-in model's latent (B, C, h, w) -> ComfyUI IMAGE (B, H, W, 3) in [0, 1] (through its autoencoder
    for latent-space weights)."""
    from ..models.builtin import to_pixels

    return ((to_pixels(samples) + 1.0) / 2.0).clamp(0, 1).permute(0, 2, 3, 1)


def decode(samples: dict) -> tuple:
    x = samples["samples"]
    channels = builtin_space().channels
    if x.ndim != 4 or x.shape[1] != channels:
        raise NodeInputError(f"TurboSample Decode takes the built-in model's {channels}-channel latents, got shape "
                             f"{tuple(x.shape)}; use VAE Decode for other models")
    if not torch.isfinite(x).all():
        raise NodeInputError("the latent to decode contains NaN or infinite values")
    return (latent_to_image(x),)


SEED = Param("seed", "INT", 0, 0, 2**64 - 1, seed=True, tooltip="Noise seed; the same seed gives the same image.")

NODES: tuple[NodeSpec, ...] = (
    NodeSpec("TurboSampleBuiltinModelLoader", "TurboSample Built-in Model", categories.BUILTIN_MODEL,
             "Loads the built-in emoji DiT (rectified flow, trained by this project, no download).",
             (Param("flow_shift", "FLOAT", 1.0, 0.1, 20.0, 0.05,
                    tooltip="Constant SD3-style timestep shift; > 1 spends more steps at high noise."),),
             (Output("MODEL", "MODEL"),), load_builtin_model, comfy_fn=comfy_impl.load_builtin_model),
    NodeSpec("TurboSampleBuiltinTextEncode", "TurboSample Built-in Text Encode", categories.BUILTIN_MODEL,
             "Encodes a prompt for the built-in model; an empty prompt is the CFG null condition.",
             (Param("text", "STRING", "", multiline=True, tooltip="Prompt, e.g. an emoji name."),),
             (Output("CONDITIONING", "CONDITIONING"),), encode_text),
    NodeSpec("TurboSampleEmptyLatent", "TurboSample Empty Latent", categories.BUILTIN_MODEL,
             "An empty latent for the built-in model (its autoencoder's 8 channels at 1/8 of the image size).",
             (Param("width", "INT", DEFAULT_SIZE, MIN_SIZE, MAX_SIZE, SIZE_STEP, tooltip=SIZE_TIP.format("Width")),
              Param("height", "INT", DEFAULT_SIZE, MIN_SIZE, MAX_SIZE, SIZE_STEP, tooltip=SIZE_TIP.format("Height")),
              Param("batch_size", "INT", 1, 1, 64, tooltip="Images per run.")),
             (Output("LATENT", "LATENT"),), empty_latent),
    NodeSpec("TurboSampleSamplerSelect", "TurboSample Sampler", categories.SAMPLING,
             "Chooses a sampler (SAMPLER for SamplerCustom/SamplerCustomAdvanced).",
             (Param("sampler_name", "COMBO", "euler", choices=lambda: list(SAMPLERS),
                    tooltip="Sampling method; the label shows model calls per step."),),
             (Output("SAMPLER", "SAMPLER"),), select_sampler, comfy_fn=comfy_impl.select_sampler),
    NodeSpec("TurboSampleScheduler", "TurboSample Scheduler", categories.SCHEDULERS,
             "Sigma schedule for a model (SIGMAS).",
             (Param("model", "MODEL"),
              Param("scheduler", "COMBO", "simple", choices=lambda: list(SCHEDULERS), tooltip="Schedule shape."),
              Param("steps", "INT", 28, 1, 1000, tooltip="Sampling steps."),
              Param("denoise", "FLOAT", 1.0, 0.01, 1.0, 0.01, tooltip="Fraction of the schedule to run.")),
             (Output("SIGMAS", "SIGMAS"),), schedule),
    NodeSpec("TurboSampleSample", "TurboSample Sample", categories.SAMPLING,
             "Samples a latent with classifier-free guidance.",
             (Param("model", "MODEL"), Param("positive", "CONDITIONING"), Param("negative", "CONDITIONING"),
              Param("sampler", "SAMPLER"), Param("sigmas", "SIGMAS"), Param("latent_image", "LATENT"), SEED,
              Param("cfg", "FLOAT", 4.0, 0.0, 30.0, 0.1, tooltip="Classifier-free guidance scale (1 = off).")),
             (Output("LATENT", "LATENT"),), sample, comfy_fn=comfy_impl.sample),
    NodeSpec("TurboSampleDecode", "TurboSample Decode", categories.BUILTIN_MODEL,
             "Turns the built-in model's latent into an IMAGE (its autoencoder's decoder).",
             (Param("samples", "LATENT"),), (Output("IMAGE", "IMAGE"),), decode),
)

