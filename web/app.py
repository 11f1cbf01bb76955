"""Gradio web app on the built-in model or the user's diffusers pipeline folders; its controls come from the node
declarations.

Each Generate click runs the same text-to-image workflow that ComfyUI runs, in a worker thread that
streams previews; Stop cancels it. Settings save/load as ComfyUI workflow JSON (or PNGs / videos with metadata).
The *Model* dropdown offers the built-in model and the folders given with ``--model`` or found under
``--models-dir`` (``$TURBOSAMPLE_MODELS``); device, precision and model CPU offload are run options beside it.
"""

from __future__ import annotations

import inspect
import json
import queue
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from ..nodes.app_graph import run_prompt, to_api_prompt, to_ui_workflow
from ..nodes.media import VIDEO_SUFFIXES
from ..nodes.pipeline import generate, save_png, settings_from_file
from ..nodes.settings_params import HELP, LABELS, setting_params
from ..nodes.spec import NodeInputError, Param
from ..nodes.txt2img import Settings
from ..nodes.workflow import WorkflowError
from ..samplers.registry import SAMPLERS, is_cfg_pp
from .autotune_ui import add_find_settings

# settings shown in the main column; the rest go into the "Settings" accordion
MAIN = ("prompt", "negative_prompt")
ORDER = ("prompt", "negative_prompt", "seed", "steps", "cfg", "width", "height", "sampler", "scheduler", "sigmas_from",
         "flow_shift", "batch_size", "denoise", "filename_prefix", "magcache_threshold", "ras_ratio",
         "loop_accelerator", "dualfast_coefficient", "flowturbo_schedule", "bottleneck_scales", "bottleneck_noise",
         "bottleneck_step_budget", "attention")
ACCELERATORS = ("magcache_threshold", "ras_ratio", "loop_accelerator", "dualfast_coefficient", "flowturbo_schedule",
                "bottleneck_scales", "bottleneck_noise", "bottleneck_step_budget", "attention")


def _with_magcache_k(names: tuple[str, ...]) -> tuple[str, ...]:
    """MagCache's K (the auto-tuner sets it) right after the MagCache threshold."""
    i = names.index("magcache_threshold") + 1
    return names[:i] + ("magcache_max_skip_steps",) + names[i:]


ORDER, ACCELERATORS = _with_magcache_k(ORDER), _with_magcache_k(ACCELERATORS)
# model-folder settings: shown in the Model row, appended to ORDER
MODEL_SETTINGS = ("model", "frames", "guidance")
ORDER = ORDER + MODEL_SETTINGS
# where the model runs: run options after the settings' inputs (not part of a workflow)
RUN_CONTROLS = ("device", "dtype", "offload")
PREVIEW_EVERY = 1
CFG_PP_CFG = 1.0  # CFG++ samplers read cfg as the paper's lambda (0.5-2); 1 is a safe start
CFG_PP_INFO = ("CFG++ sampler: cfg is the paper's guidance lambda (0.5-2, set to 1 for you); the usual 4-8 "
               "over-saturates.")


def cfg_for_sampler(sampler: str, previous: str, cfg: float, default_cfg: float) -> tuple[float, str | None]:
    """(cfg, info) after the sampler changes from ``previous``: a CFG++ sampler turns the untouched default cfg
    into ``CFG_PP_CFG``; leaving CFG++ with cfg still at ``CFG_PP_CFG`` restores the default. Values the user
    set themselves are kept."""
    if is_cfg_pp(sampler) and not is_cfg_pp(previous) and cfg == default_cfg:
        return CFG_PP_CFG, CFG_PP_INFO
    if is_cfg_pp(previous) and not is_cfg_pp(sampler) and cfg == CFG_PP_CFG:
        return default_cfg, HELP.get("cfg")
    return cfg, CFG_PP_INFO if is_cfg_pp(sampler) else HELP.get("cfg")


def make_component(gr, setting: str, p: Param, value, **extra):
    """A Gradio control for one setting, with the declaration's range and tooltip and the app's default."""
    label = LABELS.get(setting, p.title)
    common = {"label": label, "info": HELP.get(setting, p.tooltip) or None, "elem_id": setting, "value": value,
              **extra}
    if p.type == "STRING":
        return gr.Textbox(lines=2 if p.multiline else 1, **common)
    if p.seed:  # text, not a number box: browsers hold numbers as doubles, exact only up to 2**53
        return gr.Textbox(lines=1, max_lines=1, **{**common, "value": str(value)})
    if p.type == "COMBO":
        choices = p.options()
        if setting == "sampler":
            choices = [(f"{n} ({SAMPLERS[n].calls_per_step:g} call/step)", n) for n in choices]
        return gr.Dropdown(choices=choices, **common)
    if p.max is None or p.max - (p.min or 0) > 10_000:
        return gr.Number(minimum=p.min, maximum=p.max, precision=0 if p.type == "INT" else None, **common)
    step = p.step or (1 if p.type == "INT" else 0.01)
    return gr.Slider(minimum=p.min, maximum=p.max, step=step, **common)


def split_values(values: list):
    """(settings values in ORDER, RunOptions) from a handler's inputs (ORDER, then RUN_CONTROLS when given)."""
    from ..nodes.pipeline import RunOptions

    options = RunOptions(*values[len(ORDER):]) if len(values) > len(ORDER) else RunOptions()
    return list(values[:len(ORDER)]), options


def settings_from_values(values: list) -> Settings:
    """Settings from component values in ORDER, checked against the declarations (clear errors)."""
    params = setting_params()
    checked = {}
    for setting, value in zip(ORDER, values[:len(ORDER)], strict=True):
        p = params[setting]
        if p.type == "INT" and isinstance(value, float) and value.is_integer():
            value = int(value)
        checked[setting] = p.coerce(value, where=LABELS.get(setting, p.title))
    settings = Settings.from_dict(checked)
    run_prompt(settings)  # whole-graph check (a model folder's sizes too) before any work starts
    return settings


def values_from_settings(settings: Settings) -> list:
    data = settings.to_dict()
    params = setting_params()
    return [str(data[s]) if params[s].seed else data[s] for s in ORDER]


def with_setting_names(fn, extra: tuple[inspect.Parameter, ...] = (), names: tuple[str, ...] = ORDER):
    """``fn(*values, **extra)`` exposed with one named parameter per setting (``names``: ORDER, or ORDER and the
    RUN_CONTROLS) then ``extra``, so the API names its inputs after them; Gradio may pass the extra ones
    (``progress``) positionally."""
    def split(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        extra_names = [p.name for p in extra][:len(args) - len(names)]
        return args[:len(names)], {**kwargs, **dict(zip(extra_names, args[len(names):], strict=True))}

    if inspect.isgeneratorfunction(fn):
        def wrapper(*args, **kwargs):
            values, named = split(args, kwargs)
            yield from fn(*values, **named)
    else:
        def wrapper(*args, **kwargs):
            values, named = split(args, kwargs)
            return fn(*values, **named)
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    wrapper.__signature__ = inspect.Signature([inspect.Parameter(s, kind) for s in names] + list(extra))
    wrapper.__annotations__ = {p.name: p.annotation for p in extra if p.annotation is not inspect.Parameter.empty}
    wrapper.__name__ = fn.__name__
    return wrapper


def run_generation(values: list, progress=None, cancel: threading.Event | None = None):
    """Generator for the Generate button: yields (preview, gallery, status, last file, video). Setting ``cancel``
    (the Stop button) ends the run with a last status that says where it stopped."""
    import gradio as gr

    from ..samplers.run import Interrupted

    values, options = split_values(values)
    try:
        settings = settings_from_values(values)
    except (NodeInputError, WorkflowError, ValueError) as exc:
        raise gr.Error(str(exc)) from None
    events: queue.Queue = queue.Queue()
    cancel = cancel or threading.Event()
    result: dict = {}
    status = "starting"

    def on_step(i: int, total: int, preview) -> None:
        events.put(("step", i, total, preview))

    def work() -> None:
        try:
            result["images"] = generate(settings, on_step=on_step, cancel=cancel, options=options)
        except BaseException as exc:  # reported to the UI thread
            result["error"] = exc
        finally:
            events.put(("done",))

    start = time.time()
    worker = threading.Thread(target=work, daemon=True, name="turbosample-generate")
    worker.start()
    try:
        while True:
            event = events.get()
            if event[0] == "done":
                break
            _, i, total, preview = event
            if progress is not None:
                progress((i, total), desc="sampling")
            if i % PREVIEW_EVERY == 0 or i == total:
                from ..nodes.pipeline import tensor_to_pil

                status = f"step {i}/{total}"
                yield tensor_to_pil(preview[:1])[0], gr.skip(), status, gr.skip(), gr.skip()
    finally:
        cancel.set()  # stops the worker if the client went away
    worker.join()
    if isinstance(result.get("error"), Interrupted):
        yield gr.skip(), gr.skip(), stopped_status(status), gr.skip(), gr.skip()
        return
    if "error" in result:
        raise gr.Error(f"generation failed: {result['error']}") from None
    yield finished_outputs(settings, result["images"], time.time() - start)


def finished_outputs(settings: Settings, images: list, seconds: float) -> tuple:
    """(preview, gallery, status, last file, video) of a finished run: PNGs, or videos (MP4 in the player; an
    animated WebP / GIF, where no MP4 encoder is installed, in the gallery)."""
    from ..nodes.pipeline import group_frames, is_video, save_outputs

    out_dir = Path(tempfile.mkdtemp(prefix="turbosample-"))
    stem = settings.filename_prefix
    if not is_video(settings):
        paths = [str(save_png(img, out_dir / f"{stem}_{k + 1:03d}.png", settings)) for k, img in enumerate(images)]
        status = f"done in {seconds:.1f} s ({len(paths)} image(s), seed {settings.seed})"
        return images[0], paths, status, paths[0], None
    paths = [str(p) for p in save_outputs(images, settings, out_dir, stem)]
    mp4 = next((p for p in paths if p.endswith(".mp4")), None)
    status = (f"done in {seconds:.1f} s ({len(paths)} video(s) of {settings.frames} frames, seed {settings.seed})"
              + ("" if mp4 else "; no MP4 encoder here (pip install imageio-ffmpeg): saved as animated "
                 f"{Path(paths[0]).suffix[1:].upper()}"))
    gallery = [group[0] for group in group_frames(images, settings)] if mp4 else paths
    return images[0], gallery, status, paths[0], mp4


def stopped_status(current: str) -> str:
    """The status line after Stop: where the run stopped."""
    return f"stopped at {current}; no image saved" if current.startswith("step ") else "stopped before the first step"


def schedule_preview(scheduler: str, steps, flow_shift, denoise):
    """The sigma schedule the current settings will sample, as a chart (None while a value is invalid)."""
    from ..nodes.schedule_plot import plot_sigmas
    from ..samplers.model_sampling import FlowSampling
    from ..samplers.schedulers import compute_sigmas

    try:
        sigmas = compute_sigmas(FlowSampling(shift=float(flow_shift)), scheduler, int(steps), float(denoise))
        return plot_sigmas({f"{scheduler}, {int(steps)} steps, shift {float(flow_shift):g}": sigmas})
    except (ValueError, TypeError, NodeInputError):
        return None


def baseline_of(settings: Settings) -> Settings:
    """The same run with every accelerator off."""
    return replace(settings, magcache_threshold=0.0, ras_ratio=1.0, loop_accelerator="none")


def compare_with_baseline(values: list) -> str:
    """Runs the settings and their unaccelerated baseline (same seed) and reports time ratio and fidelity."""
    import gradio as gr
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio

    values, options = split_values(values)
    try:
        settings = settings_from_values(values)
    except (NodeInputError, WorkflowError, ValueError) as exc:
        raise gr.Error(str(exc)) from None
    baseline = baseline_of(settings)
    if baseline == settings:
        return "No accelerator is on: choose MagCache, RAS, Bottleneck or DualFast first."
    try:
        generate(baseline, options=options)  # warm-up (model and text encoder loads) so neither timing pays for it
        timings, images = {}, {}
        for name, run in (("baseline", baseline), ("accelerated", settings)):
            start = time.perf_counter()
            images[name] = generate(run, options=options)
            timings[name] = time.perf_counter() - start
    except Exception as exc:  # shown to the user; the app keeps running
        raise gr.Error(f"comparison failed: {exc}") from None
    psnr = np.mean([peak_signal_noise_ratio(np.asarray(a), np.asarray(b), data_range=255)
                    for a, b in zip(images["accelerated"], images["baseline"], strict=True)])
    return (f"Accelerated {timings['accelerated']:.2f} s vs baseline {timings['baseline']:.2f} s: "
            f"**{timings['baseline'] / timings['accelerated']:.2f}x** speed-up, PSNR {psnr:.1f} dB against the "
            f"baseline image (same seed, measured now on this machine).")


def write_workflow(values: list, api_format: bool) -> str:
    import gradio as gr

    try:
        settings = settings_from_values(values)
        data = to_api_prompt(settings) if api_format else to_ui_workflow(settings)
    except (NodeInputError, WorkflowError, ValueError) as exc:
        raise gr.Error(str(exc)) from None
    suffix = "_api.json" if api_format else ".json"
    path = Path(tempfile.mkdtemp(prefix="turbosample-wf-")) / f"{settings.filename_prefix}{suffix}"
    path.write_text(json.dumps(data, indent=2))
    return str(path)


def read_workflow(path: str) -> list:
    """Control values from an uploaded workflow JSON (UI or API format), or a PNG or video carrying one."""
    import gradio as gr

    file = Path(path)
    try:
        settings = settings_from_file(file)
    except (WorkflowError, NodeInputError, ValueError, OSError) as exc:
        message = str(exc).replace(str(file), file.name)  # not Gradio's temporary upload folder
        raise gr.Error(f"cannot load workflow {file.name}: {message}") from None
    return values_from_settings(settings)


MODEL_DEFAULTS = ("width", "height", "steps", "cfg", "flow_shift", "frames", "guidance")


def model_defaults(model: str) -> tuple[dict, str]:
    """The settings a model starts from and a line describing it (for the Model dropdown)."""
    from ..models.diffusers_folder import describe
    from ..nodes.folder_graph import folder_of
    from ..nodes.model_folders import BUILTIN

    if model == BUILTIN:
        return ({s: Settings().to_dict()[s] for s in ("width", "height", "steps", "cfg", "flow_shift")},
                "Built-in emoji model (64 px; a DiT on the 8x8 latents of its own small autoencoder).")
    info = folder_of(model)
    return info.defaults(), describe(info)


def model_view(model: str) -> tuple[str, bool, bool]:
    """(the Model row's description, whether the model makes videos, whether it takes Flux's guidance)."""
    from ..nodes.folder_graph import folder_of
    from ..nodes.model_folders import BUILTIN

    try:
        line = model_defaults(model)[1]
        info = None if model == BUILTIN else folder_of(model)
    except WorkflowError as exc:
        return str(exc), False, False
    return line, bool(info and info.video), bool(info and info.guidance_embeds)


def on_model_input(model: str):
    """The user picked a model: its own defaults (size, steps, cfg, shift, frames, guidance) and its line."""
    import gradio as gr

    try:
        defaults, line = model_defaults(model)
    except WorkflowError as exc:
        raise gr.Error(str(exc)) from None
    return (*(defaults.get(s, gr.skip()) for s in MODEL_DEFAULTS), line)


def on_model_change(model: str):
    """After the model changed (picked, or set by a loaded workflow): its line; Frames, Flux guidance and the video
    player shown only where they apply (values stay)."""
    import gradio as gr

    line, video, guidance = model_view(model)
    return line, gr.update(visible=video), gr.update(visible=guidance), gr.update(visible=video)


def run_controls(gr, options):
    """Device, precision and offload dropdowns (initial values: the command line's)."""
    from ..models.placement import DEVICES, DTYPES

    return [gr.Dropdown(choices=list(DEVICES), value=options.device, label="Device", elem_id="device",
                        info="auto: cuda, else mps, else cpu"),
            gr.Dropdown(choices=list(DTYPES), value=options.dtype, label="Precision", elem_id="dtype",
                        info="auto: bf16 on CUDA (fp16 on older cards and MPS), fp32 on the CPU"),
            gr.Checkbox(value=options.offload, label="Model CPU offload", elem_id="offload",
                        info="each model moves to the GPU only while it runs")]


def build_demo(model: str | None = None, options=None):
    """The app; ``model`` is selected first (default: the built-in model), ``options`` set the run controls."""
    import gradio as gr

    from ..nodes.pipeline import RunOptions

    options = options or RunOptions()
    params = setting_params()
    defaults = Settings().to_dict()
    if model:
        defaults.update(model=model, **model_defaults(model)[0])
    with gr.Blocks(title="TurboSample") as demo:
        gr.Markdown("# TurboSample\nText to image on the built-in model or your own diffusers model folders (runs "
                    "offline). Settings save as ComfyUI workflows and load back.")
        components = {}
        with gr.Row():
            with gr.Column(scale=1):
                line, shows_video, shows_guidance = model_view(defaults["model"])
                components["model"] = make_component(gr, "model", params["model"], defaults["model"])
                model_line = gr.Markdown(line, elem_id="model_info")
                with gr.Row():
                    for s, visible in (("frames", shows_video), ("guidance", shows_guidance)):
                        components[s] = make_component(gr, s, params[s], defaults[s], visible=visible)
                with gr.Accordion("Device", open=False):
                    controls = run_controls(gr, options)
                for s in MAIN:
                    components[s] = make_component(gr, s, params[s], defaults[s])
                with gr.Row():
                    run_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_btn = gr.Button("Stop", elem_id="stop")
                with gr.Accordion("Settings", open=True):
                    for s in ORDER:
                        if s not in MAIN and s not in ACCELERATORS and s not in MODEL_SETTINGS:
                            components[s] = make_component(gr, s, params[s], defaults[s])
                with gr.Accordion("Accelerators", open=False):
                    for s in ACCELERATORS:
                        components[s] = make_component(gr, s, params[s], defaults[s])
                    compare_btn = gr.Button("Compare with baseline", elem_id="compare")
                    compare_out = gr.Markdown(elem_id="compare_result")
                with gr.Row():
                    save_ui = gr.DownloadButton("Save workflow", elem_id="save_workflow")
                    save_api = gr.DownloadButton("Save API JSON", elem_id="save_api")
                    load = gr.UploadButton("Load workflow / PNG", file_types=[".json", ".png", *VIDEO_SUFFIXES],
                                           elem_id="load_workflow")
            with gr.Column(scale=1):
                preview = gr.Image(label="Preview", format="png", type="pil", elem_id="preview", interactive=False,
                                   height=288)
                gallery = gr.Gallery(label="Images", format="png", columns=4, elem_id="gallery")
                status = gr.Textbox(label="Status", interactive=False, elem_id="status")
                video = gr.Video(label="Video", elem_id="video", interactive=False, autoplay=True, loop=True,
                                 visible=shows_video)
                last_png = gr.File(label="PNG or video with workflow", elem_id="png_file")
                schedule = gr.Image(label="Schedule (sigma against step)", show_label=False, type="pil",
                                    elem_id="schedule_plot", interactive=False, height=240,
                                    value=schedule_preview(defaults["scheduler"], defaults["steps"],
                                                           defaults["flow_shift"], defaults["denoise"]))
        inputs = [components[s] for s in ORDER]
        run_inputs = inputs + controls  # the settings, then where the model runs
        add_find_settings(gr, inputs, stop_btn, settings_from_values, values_from_settings)  # auto-tune (issue 16)

        running: dict[str, threading.Event] = {}  # browser session -> the Stop flag of its run

        def on_generate(*values, progress=gr.Progress(), request: gr.Request = None):
            cancel = threading.Event()
            session = getattr(request, "session_hash", None)
            running[session] = cancel
            try:
                yield from run_generation(list(values), progress, cancel)
            finally:
                if running.get(session) is cancel:
                    del running[session]

        def on_stop(request: gr.Request):
            """Flags the session's run: it ends after the current step with a 'stopped at step' status (Gradio's
            own cancel would leave every output marked 'Error')."""
            if getattr(request, "session_hash", None) in running:
                running[request.session_hash].set()

        on_stop.__annotations__ = {"request": gr.Request}  # a class, not this module's postponed string

        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        extra = (inspect.Parameter("progress", kind, default=gr.Progress()),
                 inspect.Parameter("request", kind, default=None, annotation=gr.Request))
        run_btn.click(with_setting_names(on_generate, extra, ORDER + RUN_CONTROLS), run_inputs,
                      [preview, gallery, status, last_png, video], api_name="generate", concurrency_limit=1,
                      concurrency_id="sampler")
        stop_btn.click(on_stop, None, None, api_name=False, queue=False)
        save_ui.click(with_setting_names(lambda *v: write_workflow(list(v), False)), inputs, save_ui,
                      api_name="save_workflow")
        save_api.click(with_setting_names(lambda *v: write_workflow(list(v), True)), inputs, save_api,
                       api_name="save_api")
        load.upload(read_workflow, load, inputs, api_name="load_workflow", show_progress="hidden")  # errors: a toast
        components["model"].input(on_model_input, components["model"],
                                  [*(components[s] for s in MODEL_DEFAULTS), model_line], api_name="model_changed",
                                  queue=False)
        components["model"].change(on_model_change, components["model"],
                                   [model_line, components["frames"], components["guidance"], video], api_name=False,
                                   queue=False)
        plot_inputs = [components[s] for s in ("scheduler", "steps", "flow_shift", "denoise")]
        for control in plot_inputs:
            control.change(schedule_preview, plot_inputs, schedule, api_name=False, queue=False)
        compare_btn.click(with_setting_names(lambda *v: compare_with_baseline(list(v)), names=ORDER + RUN_CONTROLS),
                          run_inputs, compare_out, api_name="compare", concurrency_limit=1, concurrency_id="sampler")
        last_sampler = gr.State(defaults["sampler"])

        def on_sampler(sampler, previous, cfg):
            value, info = cfg_for_sampler(sampler, previous, float(cfg), float(defaults["cfg"]))
            return gr.update(value=value, info=info), sampler

        components["sampler"].change(on_sampler, [components["sampler"], last_sampler, components["cfg"]],
                                     [components["cfg"], last_sampler], api_name="sampler_changed", queue=False)
    demo.queue(max_size=16, default_concurrency_limit=1)
    return demo


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False, model: str | None = None, options=None,
           **kwargs):
    return build_demo(model, options).launch(server_name=host, server_port=port, share=share, **kwargs)
