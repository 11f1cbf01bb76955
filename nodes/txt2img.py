"""The text-to-image graph shared by the Gradio app and the CLI, as ComfyUI workflow JSON.

Settings map to widget inputs of the declared nodes; the same graph is exported as UI and API JSON,
executed by :func:`run_api` here and by ComfyUI's ``/prompt`` there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..models.diffusers_folder import FLUX_GUIDANCE, WAN_FRAMES
from .graph_json import GraphNode, api_prompt, ui_workflow
from .model_folders import BUILTIN
from .registry import NODE_BY_ID
from .workflow import CORE_SINKS, WorkflowError, check_api

FOLDER_SETTINGS = ("model", "frames", "guidance")  # settings of model folders only (nodes/folder_graph.py)

# (node key, class_type, UI column, {setting: widget input}); widgets not mapped keep their declared default. The UI
# layout stacks each column's nodes top-down in graph order (nodes/layout.py): inputs, model patches and sigmas,
# sampler, sampling and output.
BASE_GRAPH = (
    ("model", "TurboSampleBuiltinModelLoader", 0, {"flow_shift": "flow_shift"}),
    ("positive", "TurboSampleBuiltinTextEncode", 0, {"prompt": "text"}),
    ("negative", "TurboSampleBuiltinTextEncode", 0, {"negative_prompt": "text"}),
    ("latent", "TurboSampleEmptyLatent", 0, {"width": "width", "height": "height", "batch_size": "batch_size"}),
    ("sampler", "TurboSampleSamplerSelect", 2, {"sampler": "sampler_name"}),
    ("sigmas", "TurboSampleScheduler", 1, {"scheduler": "scheduler", "steps": "steps", "denoise": "denoise"}),
    ("sample", "TurboSampleSample", 3, {"seed": "seed", "cfg": "cfg"}),
    ("decode", "TurboSampleDecode", 3, {}),
    ("save", "SaveImage", 3, {"filename_prefix": "filename_prefix"}),
)
# Node titles where the class name alone does not tell two nodes apart
TITLES = {"positive": "Positive prompt", "negative": "Negative prompt"}
# Model patches chained between the loader and the model's users, in this order, when their setting enables them
MODEL_PATCHES = (
    ("attention", "TurboSampleAttentionBackend", 1, {"attention": "backend"}, {}),
    ("magcache", "TurboSampleMagCache", 1, {"magcache_threshold": "threshold",
                                            "magcache_max_skip_steps": "max_skip_steps"}, {"resample": "nearest"}),
    ("ras", "TurboSampleRAS", 1, {"ras_ratio": "sample_ratio"}, {}),
)
# Loop accelerators replace the sampler node: name -> (class_type, {setting: widget input})
SAMPLER_NODES = {
    "none": ("TurboSampleSamplerSelect", {"sampler": "sampler_name"}),
    "bottleneck": ("TurboSampleBottleneckSampler", {"sampler": "base_sampler", "bottleneck_scales": "scales",
                                                    "bottleneck_noise": "noise",
                                                    "bottleneck_step_budget": "step_budget"}),
    "dualfast": ("TurboSampleDualFastSampler", {"sampler": "base_sampler", "dualfast_coefficient": "coefficient"}),
    "flowturbo": ("TurboSampleFlowTurboSampler", {"flowturbo_schedule": "schedule"}),
    "dc_solver": ("TurboSampleDCSolverSampler", {"cfg": "cfg"}),
    "dpm_solver_v3": ("TurboSampleDPMSolverV3Sampler", {}),
}
LOOP_ACCELERATORS = tuple(SAMPLER_NODES)
# Samplers that learn from the model first: name -> (node key, class_type, UI column, {setting: widget input},
# fixed widget values, sampler input fed by the preparation node's output). They run on every generation (ComfyUI
# caches their output while inputs stay the same); one sample keeps that to ~200 + 20 x steps (DC) or 3 x 32
# (EMS) extra model calls.
SAMPLER_PREP = {
    "dc_solver": ("dc_calibrate", "TurboSampleDCSolverCalibrate", 2, {"seed": "seed", "cfg": "cfg"},
                  {"samples": 1}, "calibration"),
    "dpm_solver_v3": ("ems", "TurboSampleDPMSolverV3EMS", 2, {"seed": "seed", "cfg": "cfg"},
                      {"batch": 1, "grid_points": 32}, "ems"),
}
PREP_EDGES = (("positive", 0, "prep", "positive"), ("negative", 0, "prep", "negative"),
              ("latent", 0, "prep", "latent_image"), ("model", 0, "prep", "model"))
PREP_SIGMAS = ("dc_solver",)  # calibrated for the run's own SIGMAS (steps and schedule come from them)
# How the SIGMAS are made: a schedule shape, or a GITS search on the model (then the shape and denoise are unused)
SIGMAS_NODES = {
    "schedule": ("TurboSampleScheduler", {"scheduler": "scheduler", "steps": "steps", "denoise": "denoise"}),
    "gits": ("TurboSampleGITSScheduler", {"steps": "steps", "cfg": "cfg", "seed": "seed"}),
    "ays_opt": ("TurboSampleAYSOptimizeScheduler", {"steps": "steps", "cfg": "cfg", "seed": "seed"}),
}
GITS_EDGES = (("positive", 0, "sigmas", "positive"), ("negative", 0, "sigmas", "negative"),
              ("latent", 0, "sigmas", "latent_image"))
# (from key, output slot, to key, input name); "model" stands for the end of the model-patch chain
EDGES = (
    ("model", 0, "sigmas", "model"), ("model", 0, "sample", "model"),
    ("positive", 0, "sample", "positive"), ("negative", 0, "sample", "negative"),
    ("sampler", 0, "sample", "sampler"), ("sigmas", 0, "sample", "sigmas"),
    ("latent", 0, "sample", "latent_image"), ("sample", 0, "decode", "samples"), ("decode", 0, "save", "images"),
)


def patch_enabled(key: str, values: dict) -> bool:
    if key == "attention":
        return values["attention"] != "sdpa"  # sdpa is what the model uses unpatched
    return values["magcache_threshold"] > 0 if key == "magcache" else values["ras_ratio"] < 1


def graph(settings: Settings) -> tuple[list[tuple], list[tuple]]:
    """Nodes (key, class_type, UI column, mapping, fixed widget values) and edges of the graph for these settings."""
    values = settings.to_dict()
    if values["sigmas_from"] not in SIGMAS_NODES:
        raise WorkflowError(f"unknown sigmas source {values['sigmas_from']!r}; choose one of {', '.join(SIGMAS_NODES)}")
    if values["loop_accelerator"] not in SAMPLER_NODES:
        raise WorkflowError(f"unknown loop accelerator {values['loop_accelerator']!r}; "
                            f"choose one of {', '.join(LOOP_ACCELERATORS)}")
    # MagCache -> RAS stack on the built-in model, in the app (accel/stacking.py) and in ComfyUI (comfy_block_stack)
    nodes, edges = [], []
    for key, class_type, pos, mapping in BASE_GRAPH:
        if key == "sampler":
            class_type, mapping = SAMPLER_NODES[values["loop_accelerator"]]
        if key == "sigmas":
            class_type, mapping = SIGMAS_NODES[values["sigmas_from"]]
        nodes.append((key, class_type, pos, mapping, {}))
        if key == "model":
            model_end = "model"
            for pkey, ptype, ppos, pmap, fixed in MODEL_PATCHES:
                if patch_enabled(pkey, values):
                    nodes.append((pkey, ptype, ppos, pmap, fixed))
                    edges.append((model_end, 0, pkey, "model"))
                    model_end = pkey
    loop = values["loop_accelerator"]
    extra = (("model", 0, "sampler", "model"),) if loop in ("flowturbo", *SAMPLER_PREP) else ()
    if loop in SAMPLER_PREP:
        pkey, ptype, ppos, pmap, fixed, feeds = SAMPLER_PREP[loop]
        nodes.append((pkey, ptype, ppos, pmap, fixed))
        extra += tuple((src, slot, pkey, name) for src, slot, _prep, name in PREP_EDGES)
        extra += (("sigmas", 0, pkey, "sigmas"),) if loop in PREP_SIGMAS else ()
        extra += ((pkey, 0, "sampler", feeds),)
    extra += GITS_EDGES if values["sigmas_from"] in ("gits", "ays_opt") else ()  # both read prompt and latent
    edges += [((model_end if src == "model" else src), slot, dst, name) for src, slot, dst, name in EDGES + extra]
    return nodes, edges


def _spec(class_type: str):
    return NODE_BY_ID.get(class_type) or CORE_SINKS[class_type]


def _default(class_type: str, name: str):
    return _spec(class_type).param(name).default


@dataclass
class Settings:
    prompt: str = "grinning face"
    negative_prompt: str = ""
    seed: int = _default("TurboSampleSample", "seed")
    steps: int = _default("TurboSampleScheduler", "steps")
    cfg: float = _default("TurboSampleSample", "cfg")
    width: int = _default("TurboSampleEmptyLatent", "width")
    height: int = _default("TurboSampleEmptyLatent", "height")
    batch_size: int = _default("TurboSampleEmptyLatent", "batch_size")
    sampler: str = _default("TurboSampleSamplerSelect", "sampler_name")
    scheduler: str = _default("TurboSampleScheduler", "scheduler")
    denoise: float = _default("TurboSampleScheduler", "denoise")
    flow_shift: float = _default("TurboSampleBuiltinModelLoader", "flow_shift")
    attention: str = "sdpa"
    magcache_threshold: float = 0.0  # 0 = MagCache off
    magcache_max_skip_steps: int = _default("TurboSampleMagCache", "max_skip_steps")  # K
    ras_ratio: float = 1.0  # 1 = RAS off
    loop_accelerator: str = "none"
    dualfast_coefficient: float = _default("TurboSampleDualFastSampler", "coefficient")
    flowturbo_schedule: str = "H2P*R3"  # the steps setting fills the P blocks
    bottleneck_scales: str = _default("TurboSampleBottleneckSampler", "scales")
    bottleneck_noise: str = _default("TurboSampleBottleneckSampler", "noise")
    bottleneck_step_budget: float = _default("TurboSampleBottleneckSampler", "step_budget")
    sigmas_from: str = "schedule"
    filename_prefix: str = "turbosample"
    model: str = BUILTIN  # the built-in model, or a model folder's name (nodes/model_folders.py, folder_graph.py)
    frames: int = WAN_FRAMES  # video models: frames (4k+1)
    guidance: float = FLUX_GUIDANCE  # Flux dev: its guidance embedding

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Settings:
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise WorkflowError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**values)


def graph_nodes(settings: Settings) -> tuple[list[GraphNode], list[tuple]]:
    """The graph as GraphNodes (widget values from the settings) and edges."""
    return as_graph_nodes(*graph(settings), settings.to_dict())


def as_graph_nodes(nodes: list[tuple], edges: list[tuple], values: dict,
                   titles: dict | None = None) -> tuple[list[GraphNode], list[tuple]]:
    """Nodes ``(key, class_type, column, {setting: widget}, fixed widget values)`` as GraphNodes."""
    titles = TITLES if titles is None else titles
    return [GraphNode(key, class_type, column, {**fixed, **{name: values[s] for s, name in mapping.items()}},
                      titles.get(key, "")) for key, class_type, column, mapping, fixed in nodes], edges


def specs() -> dict:
    return {**NODE_BY_ID, **CORE_SINKS}


def to_api_prompt(settings: Settings) -> dict:
    """The API-format prompt of the built-in model's graph; raises WorkflowError if a setting is out of range (a
    model folder's graph: ``nodes/app_graph.py``)."""
    return check_api(api_prompt(*graph_nodes(settings), specs()))


def to_ui_workflow(settings: Settings) -> dict:
    """The UI-format (v0.4) workflow that ComfyUI opens by drag and drop."""
    to_api_prompt(settings)  # checked first
    stored = {k: v for k, v in settings.to_dict().items() if k not in FOLDER_SETTINGS}
    return ui_workflow(*graph_nodes(settings), specs(), {"turbosample": {"settings": stored}})


def sample_inputs(api: dict) -> dict:
    """The inputs of the graph's one TurboSample Sample node."""
    samples = [node for node in api.values() if node.get("class_type") == "TurboSampleSample"]
    if len(samples) != 1:
        raise WorkflowError("this workflow is not the app's text-to-image graph: it needs one TurboSample Sample "
                            f"node, found {len(samples)}")
    return samples[0]["inputs"]


def linked_node(api: dict, ref, what: str, types) -> dict:
    """The node an input links to, which must be one of ``types``."""
    node = api.get(str(ref[0])) if isinstance(ref, list) and ref else None
    if node is None or node.get("class_type") not in types:
        raise WorkflowError(f"this workflow is not the app's text-to-image graph: {what} must come from "
                            f"{' or '.join(types)}")
    return node


def read_inputs(values: dict, node: dict, mapping: dict) -> None:
    values.update({setting: node["inputs"][name] for setting, name in mapping.items()})


def read_model_patches(api: dict, ref, values: dict, end_types: tuple) -> dict:
    """Settings of the model patches from ``ref`` up the chain; returns the node the chain starts from."""
    patches = {ptype: pmap for _k, ptype, _p, pmap, _f in MODEL_PATCHES}
    model = linked_node(api, ref, "the model", (*end_types, *patches))
    while model["class_type"] in patches:
        read_inputs(values, model, patches[model["class_type"]])
        model = linked_node(api, model["inputs"].get("model"), "the model", (*end_types, *patches))
    return model


def read_sampling(api: dict, sample: dict, values: dict) -> None:
    """Seed, cfg, the sampler (or loop accelerator) and the sigmas settings."""
    values.update({"seed": sample["seed"], "cfg": sample["cfg"]})
    sampler_types = {ctype: (name, mapping) for name, (ctype, mapping) in SAMPLER_NODES.items()}
    sampler = linked_node(api, sample.get("sampler"), "the sampler", tuple(sampler_types))
    values["loop_accelerator"], mapping = sampler_types[sampler["class_type"]]
    read_inputs(values, sampler, mapping)
    sigmas_types = {ctype: (name, mapping) for name, (ctype, mapping) in SIGMAS_NODES.items()}
    sigmas_node = linked_node(api, sample.get("sigmas"), "the sigmas", tuple(sigmas_types))
    values["sigmas_from"], mapping = sigmas_types[sigmas_node["class_type"]]
    read_inputs(values, sigmas_node, {k: v for k, v in mapping.items() if k not in ("cfg", "seed")})


def check_same_nodes(api: dict, ours: dict, sinks: tuple = ("SaveImage",)) -> None:
    """The prompt has exactly the node classes of our graph for the settings read from it (output nodes aside)."""
    mine = sorted(n["class_type"] for n in ours.values() if n["class_type"] not in sinks)
    theirs = sorted(n.get("class_type") for n in api.values() if n.get("class_type") not in (*sinks, None))
    if mine != theirs:
        extra = sorted(set(theirs) - set(mine)) or theirs
        raise WorkflowError("this workflow is not the app's text-to-image graph (other nodes: "
                            f"{', '.join(map(str, extra))})")


def settings_from_api(api: dict) -> Settings:
    """Read the app's settings back from a prompt of the built-in model's graph (any node ids); a model folder's
    ComfyUI export: ``app_graph.settings_from_api``."""
    sample = sample_inputs(api)
    values: dict = {}
    encode = ("TurboSampleBuiltinTextEncode",)
    values["prompt"] = linked_node(api, sample.get("positive"), "positive", encode)["inputs"]["text"]
    values["negative_prompt"] = linked_node(api, sample.get("negative"), "negative", encode)["inputs"]["text"]
    model = read_model_patches(api, sample.get("model"), values, ("TurboSampleBuiltinModelLoader",))
    values["flow_shift"] = model["inputs"]["flow_shift"]
    read_sampling(api, sample, values)
    read_inputs(values, linked_node(api, sample.get("latent_image"), "the latent", ("TurboSampleEmptyLatent",)),
                {"width": "width", "height": "height", "batch_size": "batch_size"})
    saves = [node for node in api.values() if node.get("class_type") == "SaveImage"]
    if saves:
        values["filename_prefix"] = saves[0]["inputs"]["filename_prefix"]
    settings = Settings.from_dict(values)
    check_same_nodes(api, to_api_prompt(settings))
    return settings


# The built-in model's shipped workflows (titles, order and files: nodes/templates.py)
SHIPPED = {
    "builtin_txt2img": Settings(prompt="grinning face", seed=1),
    "builtin_magcache": Settings(prompt="red apple", seed=1, magcache_threshold=0.1, filename_prefix="magcache"),
    "builtin_ras": Settings(prompt="sunflower", seed=1, ras_ratio=0.5, filename_prefix="ras"),
    "builtin_magcache_ras": Settings(prompt="sunflower", seed=1, magcache_threshold=0.2, ras_ratio=0.5,
                                     filename_prefix="magcache_ras"),
    "builtin_bottleneck": Settings(prompt="cat face", seed=1, loop_accelerator="bottleneck",
                                   filename_prefix="bottleneck"),
    "builtin_dualfast": Settings(prompt="rocket", seed=1, steps=8, loop_accelerator="dualfast",
                                 filename_prefix="dualfast"),
    "builtin_flowturbo": Settings(prompt="red apple", seed=1, steps=9, loop_accelerator="flowturbo",
                                  filename_prefix="flowturbo"),
    "builtin_gits_8_steps": Settings(prompt="grinning face", seed=1, steps=8, sampler="euler", sigmas_from="gits",
                                     filename_prefix="gits"),
    "builtin_ays_optimized": Settings(prompt="red apple", seed=1, steps=8, sampler="euler", sigmas_from="ays_opt",
                                      filename_prefix="ays_optimized"),
    "builtin_uni_pc_8_steps": Settings(prompt="japan flag", seed=1, steps=8, sampler="uni_pc",
                                       filename_prefix="uni_pc"),
    "builtin_restart": Settings(prompt="slice of pizza", seed=1, steps=24, sampler="restart",
                                filename_prefix="restart"),
    "builtin_ghvb_momentum": Settings(prompt="thumbs up sign", seed=1, steps=24, sampler="ghvb",
                                      filename_prefix="ghvb"),
    "builtin_time_shift": Settings(prompt="sunflower", seed=1, steps=10, sampler="dpmpp_2m_time_shift",
                                   filename_prefix="time_shift"),
    "builtin_sa_solver": Settings(prompt="cat face", seed=1, steps=16, sampler="sa_solver",
                                  filename_prefix="sa_solver"),
    "builtin_cfg_pp": Settings(prompt="rocket", seed=1, steps=12, cfg=1.0, sampler="dpmpp_2m_cfg_pp",
                               filename_prefix="cfg_pp"),
    "builtin_adaptive_ode": Settings(prompt="japan flag", seed=1, steps=28, sampler="adaptive_ode",
                                     filename_prefix="adaptive_ode"),
    "builtin_paradigms": Settings(prompt="grinning face", seed=1, steps=16, sampler="paradigms",
                                  filename_prefix="paradigms"),
    "builtin_dc_solver": Settings(prompt="red apple", seed=1, steps=6, loop_accelerator="dc_solver",
                                  filename_prefix="dc_solver"),
    "builtin_dpm_solver_v3": Settings(prompt="red apple", seed=1, steps=8, loop_accelerator="dpm_solver_v3",
                                      filename_prefix="dpm_solver_v3"),
}
