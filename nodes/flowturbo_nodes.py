"""FlowTurbo as a SAMPLER node: H/P/R block schedule plus the velocity refiner distilled for the connected model.

The MODEL input is only used to check that the refiner was trained for it (weights fingerprint); the SAMPLER runs
in TurboSample Sample (stand-alone) or SamplerCustom/SamplerCustomAdvanced (ComfyUI, via ``comfy.samplers.KSAMPLER``).
"""

from __future__ import annotations

from ..samplers.flowturbo import CALLS, DEFAULT_SCHEDULE, parse_schedule, sample_flowturbo
from ..samplers.registry import SamplerInfo
from . import categories
from .spec import NodeInputError, NodeSpec, Output, Param

CATEGORY = categories.SAMPLERS


COMPILE = {"auto": None, "on": True, "off": False}


def flowturbo_info(model: object, refiner: str, schedule: str, compile: str = "auto") -> SamplerInfo:
    """The FlowTurbo SamplerInfo; NodeInputError for a bad schedule or a refiner that does not fit ``model``."""
    from ..models.refiner import load_refiner

    try:
        segments = parse_schedule(schedule)
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None
    loaded = None
    if any(block == "R" for block, _ in segments):
        try:
            loaded = load_refiner(refiner, model)
        except (ValueError, FileNotFoundError, TypeError) as exc:
            raise NodeInputError(f"refiner: {exc}; or use a schedule without R blocks (e.g. H2P*), which needs no "
                                 "refiner") from None
    known = [(b, n) for b, n in segments if n is not None]
    calls = sum(CALLS[b] * n for b, n in known) / max(1, sum(n for _, n in known))
    return SamplerInfo("flowturbo", sample_flowturbo, calls, f"FlowTurbo {schedule}",
                       {"schedule": schedule, "refiner": loaded, "compile_blocks": COMPILE[compile]})


def flowturbo_sampler(**values) -> tuple:
    return (flowturbo_info(**values),)


def comfy_flowturbo_sampler(**values) -> tuple:
    import comfy.samplers

    info = flowturbo_info(**values)
    return (comfy.samplers.KSAMPLER(info.fn, extra_options=dict(info.options)),)


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("TurboSampleFlowTurboSampler", "TurboSample FlowTurbo", CATEGORY,
             "FlowTurbo (arXiv 2409.18128) for flow models: H = Heun steps (2 model calls), P = pseudo-corrector "
             "Heun steps reusing the previous velocity (1 call), R = Heun steps where a small refiner network "
             "predicts the velocity (0 calls). The schedule's step count must match the SIGMAS ('*' = the rest). "
             "R blocks need a refiner trained for this exact model (python -m turbosample.models.train_refiner).",
             (Param("model", "MODEL", tooltip="The model the SIGMAS are for; the refiner is checked against it."),
              Param("refiner", "STRING", "builtin",
                    tooltip="'builtin' (the refiner shipped for the built-in model) or a .safetensors path."),
              Param("schedule", "STRING", DEFAULT_SCHEDULE,
                    tooltip="Blocks in order with step counts, e.g. H2P4R3 (official default) or H1P*."),
              Param("compile", "COMBO", "auto", choices=lambda: list(COMPILE),
                    tooltip="torch.compile the refiner block on its own (auto: on with CUDA, off on the CPU).")),
             (Output("SAMPLER", "SAMPLER"),), flowturbo_sampler, comfy_fn=comfy_flowturbo_sampler),
)
