"""One SIGMAS control combining a flow shift (constant SD3-style or resolution-dependent Flux-style) with any
schedule shape (``samplers.flow_shift.shifted_schedule``)."""

from __future__ import annotations

from ..samplers.flow_shift import image_tokens, shifted_schedule
from ..samplers.schedulers import SCHEDULERS
from . import categories
from .spec import NodeInputError, NodeSpec, Output, Param

MODES = ("constant", "resolution")


def flow_shift_sigmas(scheduler: str, steps: int, denoise: float, mode: str, shift: float, width: int, height: int,
                      pixels_per_token: int, base_shift: float, max_shift: float) -> tuple:
    """Rectified-flow sigmas: ``scheduler``'s shape with the chosen shift (tokens = (H / p) (W / p))."""
    try:
        if mode == "constant":
            return (shifted_schedule(scheduler, steps, shift=shift, denoise=denoise),)
        tokens = image_tokens(height, width, pixels_per_token)
        if tokens < 1:
            raise ValueError(f"{width}x{height} pixels at {pixels_per_token} pixels per token leave no tokens")
        return (shifted_schedule(scheduler, steps, image_seq_len=tokens, denoise=denoise, base_shift=base_shift,
                                 max_shift=max_shift),)
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("TurboSampleFlowShiftScheduler", "TurboSample Flow-Shift Scheduler", categories.SCHEDULERS,
             "SIGMAS for rectified-flow models (SD3, Flux, Wan, the built-in model): any schedule shape with a "
             "constant SD3-style shift or Flux's resolution-dependent shift.",
             (Param("scheduler", "COMBO", "simple", choices=lambda: list(SCHEDULERS), tooltip="Schedule shape."),
              Param("steps", "INT", 28, 1, 1000, tooltip="Sampling steps."),
              Param("denoise", "FLOAT", 1.0, 0.01, 1.0, 0.01, tooltip="Fraction of the schedule to run."),
              Param("mode", "COMBO", "constant", choices=lambda: list(MODES),
                    tooltip="constant: sigma = s t / (1 + (s - 1) t) (SD3); resolution: Flux's exponential shift "
                            "with mu linear in the image token count."),
              Param("shift", "FLOAT", 3.0, 0.01, 100.0, 0.01, tooltip="Constant shift (SD3 uses 3)."),
              Param("width", "INT", 1024, 16, 16384, 8, tooltip="Image width in pixels (resolution mode)."),
              Param("height", "INT", 1024, 16, 16384, 8, tooltip="Image height in pixels (resolution mode)."),
              Param("pixels_per_token", "INT", 16, 1, 64,
                    tooltip="Image pixels per transformer token side: VAE factor x patch (Flux 8 x 2 = 16; "
                            "built-in model 4)."),
              Param("base_shift", "FLOAT", 0.5, -10.0, 10.0, 0.01, tooltip="mu at 256 tokens (Flux 0.5)."),
              Param("max_shift", "FLOAT", 1.15, -10.0, 10.0, 0.01, tooltip="mu at 4096 tokens (Flux 1.15).")),
             (Output("SIGMAS", "SIGMAS"),), flow_shift_sigmas),
)
