"""A user's diffusers pipeline folder, inspected from its configs alone (no weights): which pipeline and family,
what sizes and frame counts it takes, the run's defaults. Loading and running it: ``models/diffusers_pipeline.py``.

The folder is untrusted input. Only ``model_index.json`` pipelines of the classes in ``SUPPORTED`` are accepted;
every component must come from ``diffusers`` or ``transformers`` (no custom code) and hold ``.safetensors`` weights
(a pickled ``.bin`` is refused, never read). Problems raise ``ModelFolderError`` naming the problem and what would
work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux", "StableDiffusionPipeline": "sd",
             "StableDiffusionXLPipeline": "sdxl", "WanPipeline": "wan"}
FAMILY_NAMES = {"sd3": "SD3", "flux": "Flux", "sd": "Stable Diffusion", "sdxl": "SDXL", "wan": "Wan"}
LIBRARIES = ("diffusers", "transformers")
UNUSED = ("safety_checker", "feature_extractor", "image_encoder")  # optional parts this app never runs: not loaded
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# the pipelines' own call defaults (steps, cfg), and Flux's guidance embedding
CALL_DEFAULTS = {"sd3": (28, 7.0), "flux": (28, 1.0), "sd": (50, 7.5), "sdxl": (50, 5.0), "wan": (50, 5.0)}
FLUX_GUIDANCE = 3.5
WAN_FRAMES = 81


class ModelFolderError(ValueError):
    """A model folder that cannot be used; the message names the problem and what would work."""


@dataclass(frozen=True)
class FolderInfo:
    """What the app needs to know about a pipeline folder before (and without) loading its weights."""

    path: Path
    pipeline: str                   # pipeline class name from model_index.json
    family: str                     # sd3 | flux | sd | sdxl | wan
    prediction: str                 # flow | eps | v_prediction
    vae_factor: int                 # pixels per latent pixel
    patch: int                      # latent pixels per token side (UNet: 1)
    latent_channels: int
    default_size: tuple[int, int]   # (width, height) in pixels
    flow_shift: float = 1.0         # constant shift of the scheduler (flow models)
    dynamic_shift: tuple[float, float, int, int] | None = None  # Flux: base/max shift at base/max image tokens
    guidance_embeds: bool = False   # Flux dev: guidance is an input of the transformer
    dual_attention: bool = False    # SD3.5 MMDiT-X blocks
    max_side: int | None = None     # SD3: largest side its position-embedding table covers, in pixels
    temporal_factor: int | None = None  # Wan: frames per latent frame
    boundary_ratio: float | None = None  # Wan 2.2 A14B: where transformer_2 takes over (two experts)
    betas: tuple[float, float] = (0.00085, 0.012)  # EPS/V: scaled-linear beta range
    variant: str | None = None      # "fp16" when the weights are only in *.fp16.safetensors files
    components: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def multiple(self) -> int:
        """Width and height must be multiples of this many pixels."""
        return self.vae_factor * self.patch

    @property
    def video(self) -> bool:
        return self.family == "wan"

    @property
    def two_experts(self) -> bool:
        return self.boundary_ratio is not None

    @property
    def label(self) -> str:
        """A short description, e.g. 'Flux (guidance-distilled)'."""
        extra = {"flux": "guidance-distilled" if self.guidance_embeds else "timestep-distilled",
                 "sd3": "dual attention" if self.dual_attention else "",
                 "sd": "v-prediction" if self.prediction == "v_prediction" else "",
                 "wan": "two experts" if self.two_experts else ""}.get(self.family, "")
        return FAMILY_NAMES[self.family] + (f" ({extra})" if extra else "")

    def defaults(self) -> dict:
        """Settings a run of this model starts from (the pipeline's own call defaults)."""
        steps, cfg = CALL_DEFAULTS[self.family]
        if self.family == "flux" and not self.guidance_embeds:
            steps = 4
        width, height = self.default_size
        out = {"width": width, "height": height, "steps": steps, "cfg": cfg, "flow_shift": self.flow_shift}
        if self.family == "flux":
            out["guidance"] = FLUX_GUIDANCE
        if self.video:
            out["frames"] = WAN_FRAMES
        return out


def read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{what}: cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{what}: {path} is not a JSON object")
    return data


def check_weights(folder: Path, component: str, class_name: str) -> str | None:
    """The component's weight files are safetensors; returns 'fp16' when only the fp16 variant is there."""
    files = [p.name for p in folder.iterdir() if p.is_file()]
    safetensors = [f for f in files if f.endswith(".safetensors")]
    if not safetensors:
        pickled = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
        found = f" (found {', '.join(sorted(pickled))}: pickle files, which TurboSample never loads)" if pickled else ""
        raise ModelFolderError(f"component {component!r} ({class_name}) has no .safetensors weights in {folder}"
                               f"{found}; save the pipeline with save_pretrained(..., safe_serialization=True)")
    plain = [f for f in safetensors if ".fp16." not in f]
    return None if plain else "fp16"


def inspect_folder(path: str | Path) -> FolderInfo:
    """Read a pipeline folder's configs (no weights); ModelFolderError names what is wrong and what would work."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelFolderError(f"model folder not found: {path}")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        hint = (" (it holds a single model's config.json: point at the pipeline folder above it instead)"
                if (path / "config.json").is_file() else "")
        raise ModelFolderError(f"{path} is not a diffusers pipeline folder: it has no model_index.json{hint}. Use a "
                               f"folder written by pipeline.save_pretrained() (model_index.json, scheduler/, vae/, "
                               f"text_encoder/, transformer/ or unet/ ...) of one of: {', '.join(SUPPORTED)}")
    index = read_json(index_file, "model_index.json")
    pipeline = index.get("_class_name")
    if pipeline not in SUPPORTED:
        raise ModelFolderError(f"{path.name}: pipeline class {pipeline!r} is not supported; supported: "
                               f"{', '.join(SUPPORTED)} (text-to-image and Wan text-to-video)")
    family = SUPPORTED[pipeline]
    components, variants = [], set()
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2:
            continue
        library, class_name = entry
        if library is None or name in UNUSED:
            continue
        if library not in LIBRARIES:
            raise ModelFolderError(f"{path.name}: component {name!r} comes from {library!r}; only diffusers and "
                                   "transformers components load (custom code is never run)")
        folder = path / name
        if not folder.is_dir():
            raise ModelFolderError(f"{path.name}: component {name!r} ({class_name}) is missing: {folder} does not "
                                   "exist; the folder must be a complete save_pretrained() pipeline")
        if "Tokenizer" not in class_name and "Scheduler" not in class_name:
            variants.add(check_weights(folder, name, class_name))
        components.append(name)
    denoiser = "unet" if family in ("sd", "sdxl") else "transformer"
    for needed in (denoiser, "vae", "scheduler"):
        if needed not in components:
            raise ModelFolderError(f"{path.name}: component {needed!r} is missing from model_index.json or set to "
                                   f"null; a {pipeline} folder needs {denoiser}, vae, scheduler and its text encoders")
    config = read_json(path / denoiser / "config.json", f"{path.name}/{denoiser}")
    vae = read_json(path / "vae" / "config.json", f"{path.name}/vae")
    scheduler_dir = path / "scheduler"
    scheduler_file = next(iter(sorted(scheduler_dir.glob("*.json"))), None)
    if scheduler_file is None:
        raise ModelFolderError(f"{path.name}: component 'scheduler' has no scheduler_config.json")
    scheduler = read_json(scheduler_file, f"{path.name}/scheduler")
    variant = "fp16" if variants == {"fp16"} else None
    builder = {"sd3": sd3_info, "flux": flux_info, "sd": unet_info, "sdxl": unet_info, "wan": wan_info}[family]
    return builder(path, pipeline, family, index, config, vae, scheduler, tuple(components), variant)


def vae_factor_of(vae: dict) -> int:
    return 2 ** (len(vae.get("block_out_channels", (0, 0, 0, 0))) - 1)


def sd3_info(path, pipeline, family, index, config, vae, scheduler, components, variant) -> FolderInfo:
    factor, patch = vae_factor_of(vae), int(config.get("patch_size", 2))
    max_pos = config.get("pos_embed_max_size")
    side = int(config.get("sample_size", 128)) * factor
    return FolderInfo(path, pipeline, family, "flow", factor, patch, int(config["in_channels"]), (side, side),
                      flow_shift=float(scheduler.get("shift", 3.0)),
                      dual_attention=bool(config.get("dual_attention_layers")),
                      max_side=int(max_pos) * patch * factor if max_pos else None, variant=variant,
                      components=components)


def flux_info(path, pipeline, family, index, config, vae, scheduler, components, variant) -> FolderInfo:
    factor = vae_factor_of(vae)
    dynamic = None
    if scheduler.get("use_dynamic_shifting"):
        dynamic = (float(scheduler.get("base_shift", 0.5)), float(scheduler.get("max_shift", 1.15)),
                   int(scheduler.get("base_image_seq_len", 256)), int(scheduler.get("max_image_seq_len", 4096)))
    side = 128 * factor  # FluxPipeline.default_sample_size
    return FolderInfo(path, pipeline, family, "flow", factor, 2, int(config["in_channels"]) // 4, (side, side),
                      flow_shift=float(scheduler.get("shift", 1.0)), dynamic_shift=dynamic,
                      guidance_embeds=bool(config.get("guidance_embeds")), variant=variant, components=components)


def unet_info(path, pipeline, family, index, config, vae, scheduler, components, variant) -> FolderInfo:
    prediction = {"epsilon": "eps", "v_prediction": "v_prediction"}.get(scheduler.get("prediction_type", "epsilon"))
    if prediction is None:
        raise ModelFolderError(f"{path.name}: prediction type {scheduler.get('prediction_type')!r} is not supported; "
                               "Stable Diffusion folders must predict 'epsilon' or 'v_prediction'")
    if scheduler.get("beta_schedule", "scaled_linear") != "scaled_linear":
        raise ModelFolderError(f"{path.name}: beta schedule {scheduler.get('beta_schedule')!r} is not supported; "
                               "Stable Diffusion folders with the 'scaled_linear' schedule run here")
    if scheduler.get("rescale_betas_zero_snr"):
        raise ModelFolderError(f"{path.name}: zero-terminal-SNR schedules (rescale_betas_zero_snr) are not supported")
    if int(config.get("in_channels", 4)) != int(vae.get("latent_channels", 4)):
        raise ModelFolderError(f"{path.name}: the UNet takes {config.get('in_channels')} channels but the VAE makes "
                               f"{vae.get('latent_channels')} (an inpainting or image-conditioned UNet); text-to-image "
                               "UNets run here")
    factor = vae_factor_of(vae)
    side = int(config.get("sample_size", 64)) * factor
    return FolderInfo(path, pipeline, family, prediction, factor, 1, int(config["in_channels"]), (side, side),
                      betas=(float(scheduler.get("beta_start", 0.00085)), float(scheduler.get("beta_end", 0.012))),
                      variant=variant, components=components)


def wan_info(path, pipeline, family, index, config, vae, scheduler, components, variant) -> FolderInfo:
    channels = int(config["in_channels"])
    if channels != int(vae.get("z_dim", channels)):
        raise ModelFolderError(f"{path.name}: the transformer takes {channels} channels but the VAE makes "
                               f"{vae.get('z_dim')} (an image-to-video Wan); text-to-video Wan 2.1 / 2.2 runs here")
    boundary = index.get("boundary_ratio")
    if boundary is not None and "transformer_2" not in components:
        raise ModelFolderError(f"{path.name}: boundary_ratio is set (Wan 2.2 two experts) but component "
                               "'transformer_2' is missing")
    shift = scheduler.get("flow_shift", scheduler.get("shift", 1.0))
    patch = config.get("patch_size", (1, 2, 2))
    return FolderInfo(path, pipeline, family, "flow", int(vae.get("scale_factor_spatial") or 8), int(patch[1]),
                      channels, (832, 480), flow_shift=float(shift or 1.0),
                      temporal_factor=int(vae.get("scale_factor_temporal") or 4),
                      boundary_ratio=None if boundary is None else float(boundary), variant=variant,
                      components=components)


# --- sizes ---------------------------------------------------------------------------------------------------

def check_size(info: FolderInfo, width: int, height: int) -> None:
    """ModelFolderError unless the model takes ``width`` x ``height`` pixels (naming the nearest sizes it takes)."""
    m = info.multiple
    why = (f"VAE factor {info.vae_factor} x patch {info.patch}" if info.patch > 1 else f"VAE factor {info.vae_factor}")
    for name, v in (("width", width), ("height", height)):
        if v % m or v < m:
            lower, upper = max(m, v // m * m), (v // m + 1) * m
            near = f"{lower} or {upper}" if lower != upper and v > m else f"{upper}"
            raise ModelFolderError(f"{info.label} ({info.name}) takes widths and heights that are multiples of {m} "
                                   f"pixels ({why}); got {name} {v}: use {near}")
        if info.max_side and v > info.max_side:
            raise ModelFolderError(f"{info.label} ({info.name}) takes at most {info.max_side} pixels per side (its "
                                   f"position-embedding table); got {name} {v}")


def check_frames(info: FolderInfo, frames: int) -> None:
    k = info.temporal_factor or 4
    if frames < 1 or (frames - 1) % k:
        lower = max(1, (frames - 1) // k * k + 1)
        raise ModelFolderError(f"{info.label} ({info.name}) makes {k}k+1 frames (1, {k + 1}, {2 * k + 1}, ...); got "
                               f"{frames}: use {lower} or {lower + k}")


def latent_shape(info: FolderInfo, width: int, height: int, frames: int, batch: int) -> tuple[int, ...]:
    """The empty latent's shape; ModelFolderError for a size or frame count the model cannot take."""
    check_size(info, width, height)
    rows, cols = height // info.vae_factor, width // info.vae_factor
    if info.video:
        check_frames(info, frames)
        return batch, info.latent_channels, (frames - 1) // info.temporal_factor + 1, rows, cols
    return batch, info.latent_channels, rows, cols


def describe(info: FolderInfo) -> str:
    """One line for logs and the app: name, family, sizes."""
    rule = f"sides in multiples of {info.multiple} px"
    if info.video:
        rule += f", {info.temporal_factor}k+1 frames"
    return f"{info.name}: {info.label}, {info.pipeline}, {rule}"

