"""The app's nodes for a diffusers pipeline folder: load it, encode prompts, make the empty latent, decode.

They run in the app and the CLI only (they are not registered in ComfyUI, whose own loaders read the same models:
``nodes/folder_graph.py`` writes the ComfyUI export with them). Where the model runs (device, precision, model CPU
offload) is a run option handed to the loader by the caller, not a workflow setting.
"""

from __future__ import annotations

from ..models.diffusers_folder import FLUX_GUIDANCE, WAN_FRAMES, ModelFolderError
from .spec import NodeInputError, NodeSpec, Output, Param

CATEGORY = "TurboSample/model folder"
PIPELINE = "TURBOSAMPLE_PIPELINE"  # a loaded pipeline folder: its text encoders and VAE
MAX_SIDE = 8192


def load_folder_model(model_name: str, flow_shift: float, width: int, height: int, device: str = "auto",
                      dtype: str = "auto", offload: bool = False) -> tuple:
    """(MODEL, PIPELINE) of the named folder; Flux dev's resolution-dependent shift uses ``width`` x ``height``."""
    from ..models.diffusers_folder import inspect_folder
    from ..models.diffusers_pipeline import load, model_for
    from ..models.placement import PlacementError, check_offload, resolve_device, resolve_dtype
    from .model_folders import resolve

    try:
        info = inspect_folder(resolve(model_name))
        where = resolve_device(device)
        check_offload(offload, where)
        loaded = load(info, where, resolve_dtype(dtype, where), offload)
    except (ModelFolderError, PlacementError) as exc:
        raise NodeInputError(str(exc)) from None
    return model_for(loaded, flow_shift, width, height), loaded


def encode_folder_prompts(pipeline, text: str, negative_text: str, guidance: float) -> tuple:
    """(positive, negative) CONDITIONING from the folder's own text encoders."""
    from ..models.diffusers_pipeline import encode

    return encode(pipeline, text, negative_text, guidance)


def folder_latent(pipeline, width: int, height: int, frames: int, batch_size: int) -> tuple:
    """An empty latent of the folder model's shape (frames only for video models)."""
    import torch

    from ..models.diffusers_folder import latent_shape

    try:
        shape = latent_shape(pipeline.info, width, height, frames, batch_size)
    except ModelFolderError as exc:
        raise NodeInputError(str(exc)) from None
    return ({"samples": torch.zeros(shape)},)


def decode_folder(pipeline, samples: dict) -> tuple:
    """The folder's VAE: LATENT -> IMAGE (a video's frames one after another)."""
    import torch

    from ..models.diffusers_pipeline import decode

    if not torch.isfinite(samples["samples"]).all():
        raise NodeInputError("the latent to decode contains NaN or infinite values")
    return (decode(pipeline, samples["samples"]),)


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("TurboSampleFolderModel", "TurboSample Model Folder", CATEGORY,
             "Loads a diffusers pipeline folder (SD3/3.5, Flux, SD 1.x/2.x, SDXL, Wan 2.1/2.2) offline: the MODEL "
             "for the pack's sampling and the PIPELINE whose text encoders and VAE the other folder nodes use.",
             (Param("model_name", "STRING", "", tooltip="Folder name under the models folder (or given with --model)."),
              Param("flow_shift", "FLOAT", 3.0, 0.1, 20.0, 0.05,
                    tooltip="Constant timestep shift of flow models (SD3, Flux schnell, Wan); Flux dev's shift "
                            "follows the resolution, as its pipeline's; unused by SD / SDXL."),
              Param("width", "INT", 1024, 16, MAX_SIDE, 4, tooltip="Image width (Flux dev's shift)."),
              Param("height", "INT", 1024, 16, MAX_SIDE, 4, tooltip="Image height (Flux dev's shift).")),
             (Output("MODEL", "MODEL"), Output("PIPELINE", PIPELINE)), load_folder_model),
    NodeSpec("TurboSampleFolderTextEncode", "TurboSample Model Folder Prompts", CATEGORY,
             "Encodes the prompt and the negative prompt with the folder's own text encoders (its pipeline's "
             "encode_prompt).",
             (Param("pipeline", PIPELINE), Param("text", "STRING", "", multiline=True, tooltip="Prompt."),
              Param("negative_text", "STRING", "", multiline=True, tooltip="Negative prompt."),
              Param("guidance", "FLOAT", FLUX_GUIDANCE, 0.0, 100.0, 0.1,
                    tooltip="Flux dev's guidance embedding (its distilled guidance); unused by other models.")),
             (Output("positive", "CONDITIONING"), Output("negative", "CONDITIONING")), encode_folder_prompts),
    NodeSpec("TurboSampleFolderLatent", "TurboSample Model Folder Empty Latent", CATEGORY,
             "An empty latent of the folder model's shape; sizes and frame counts it cannot take are refused.",
             (Param("pipeline", PIPELINE),
              Param("width", "INT", 1024, 16, MAX_SIDE, 4, tooltip="Width in pixels."),
              Param("height", "INT", 1024, 16, MAX_SIDE, 4, tooltip="Height in pixels."),
              Param("frames", "INT", WAN_FRAMES, 1, 1025, 4, tooltip="Video frames (4k+1); unused by image models."),
              Param("batch_size", "INT", 1, 1, 64, tooltip="Images or videos per run.")),
             (Output("LATENT", "LATENT"),), folder_latent),
    NodeSpec("TurboSampleFolderDecode", "TurboSample Model Folder Decode", CATEGORY,
             "Decodes with the folder's own VAE.",
             (Param("pipeline", PIPELINE), Param("samples", "LATENT")), (Output("IMAGE", "IMAGE"),), decode_folder),
)
NODE_BY_ID: dict[str, NodeSpec] = {n.node_id: n for n in NODES}
