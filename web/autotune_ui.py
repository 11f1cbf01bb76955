"""The app's *Find settings* section: auto-tune the current settings (accelerators off = the full run) on the
model, show the report while it runs, and put the chosen setting into the controls.

Stop ends the search after the current run; the choice is then made among what was measured, and applied.
"""

from __future__ import annotations

import inspect
import queue
import threading
from collections.abc import Callable

from ..nodes.spec import NodeInputError
from ..nodes.workflow import WorkflowError

# one cancel event per browser session while it tunes; the Stop button sets it
RUNNING: dict[str, threading.Event] = {}


def tune_target(target_speedup, min_psnr):
    """The Target of the section's controls (min PSNR wins when set above 0)."""
    from ..tune.search import Target

    if min_psnr and float(min_psnr) > 0:
        return Target(min_psnr=float(min_psnr))
    return Target(speedup=float(target_speedup))


def report_markdown(result, final: bool) -> str:
    from ..tune.report import summary_markdown, table_markdown

    head = "" if final else "*Tuning... (Stop ends it and keeps what was measured)*\n\n"
    tail = "\n\nThe chosen setting is now in the controls: **Generate** shows it, **Save workflow** keeps it." \
        if final and result.chosen is not None else ""
    return f"{head}{summary_markdown(result)}\n\n{table_markdown(result, limit=12)}{tail}"


def find_settings(values: list, target_speedup, min_psnr, budget_runs, seeds, session: str,
                  settings_from_values: Callable, values_from_settings: Callable, skip_controls: int):
    """Generator for the *Find settings* button: yields (report markdown, plot, *control values)."""
    import gradio as gr

    from ..nodes.autotune import chosen_settings, run_tune
    from ..tune.report import pareto_plot
    from ..tune.search import Budget

    try:
        settings = settings_from_values(values)
        target = tune_target(target_speedup, min_psnr)
        budget = Budget(runs=float(budget_runs))
    except (NodeInputError, WorkflowError, ValueError) as exc:
        raise gr.Error(str(exc)) from None
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    RUNNING[session] = cancel
    box: dict = {}

    def work() -> None:
        try:
            box["result"] = run_tune(settings, target, budget, int(seeds), cancel=cancel,
                                     progress=lambda _message, so_far: events.put(so_far))
        except BaseException as exc:  # reported to the UI thread
            box["error"] = exc
        finally:
            events.put(None)

    worker = threading.Thread(target=work, daemon=True, name="turbosample-autotune")
    worker.start()
    keep = [gr.skip()] * skip_controls
    try:
        while (so_far := events.get()) is not None:
            yield report_markdown(so_far, final=False), pareto_plot(so_far), *keep
    finally:
        cancel.set()  # the client went away: stop the worker too
        RUNNING.pop(session, None)
    worker.join()
    if "error" in box:
        raise gr.Error(f"auto-tune failed: {box['error']}") from None
    result = box["result"]
    chosen = chosen_settings(result, settings)
    controls = values_from_settings(chosen) if chosen is not None else keep
    yield report_markdown(result, final=True), pareto_plot(result), *controls


def stop_tuning(session: str) -> None:
    """Stop this session's tuning after its current run (what was measured is kept and the choice applied)."""
    event = RUNNING.get(session)
    if event is not None:
        event.set()


def add_find_settings(gr, inputs: list, stop_button, settings_from_values: Callable,
                      values_from_settings: Callable) -> None:
    """The *Find settings* accordion, its button wired to ``find_settings`` and the Stop button to ``stop_tuning``."""
    with gr.Accordion("Find settings (auto-tune)", open=False):
        gr.Markdown("Runs the current settings with every accelerator off (the full run) on a few seeds, then "
                    "searches sampler x steps x MagCache x RAS x Bottleneck on this model and prompt, timing each "
                    "candidate here and scoring it against the full run.")
        with gr.Row():
            speed = gr.Slider(1.1, 10.0, value=2.0, step=0.1, label="Target speed-up (x)", elem_id="tune_speedup")
            psnr = gr.Number(0, minimum=0, maximum=99, label="Or minimum PSNR (dB, 0 = off)", elem_id="tune_psnr")
        with gr.Row():
            budget = gr.Slider(1, 100, value=10, step=1, label="Budget (full runs)", elem_id="tune_budget")
            seeds = gr.Slider(1, 4, value=2, step=1, label="Tuning seeds", elem_id="tune_seeds")
        button = gr.Button("Find settings", elem_id="find_settings")
        report = gr.Markdown(elem_id="tune_report")
        plot = gr.Image(label="Speed-up vs PSNR", type="pil", interactive=False, elem_id="tune_plot", height=320)

    def on_find(*args):
        *values, target_speedup, min_psnr, budget_runs, n_seeds, request = args
        yield from find_settings(list(values), target_speedup, min_psnr, budget_runs, n_seeds,
                                 request.session_hash or "", settings_from_values, values_from_settings,
                                 len(inputs))

    # Gradio passes the request to a parameter annotated gr.Request; *args has none, so spell it out
    slot = inspect.Parameter.POSITIONAL_OR_KEYWORD
    on_find.__signature__ = inspect.Signature(
        [inspect.Parameter(f"value_{i}", slot) for i in range(len(inputs) + 4)]
        + [inspect.Parameter("request", slot, annotation=gr.Request)])
    on_find.__annotations__ = {"request": gr.Request}

    def on_stop(request: gr.Request) -> None:
        stop_tuning(request.session_hash or "")

    on_stop.__annotations__ = {"request": gr.Request}  # resolved here: this module's annotations are strings

    button.click(on_find, [*inputs, speed, psnr, budget, seeds], [report, plot, *inputs], api_name="find_settings",
                 concurrency_limit=1, concurrency_id="sampler")
    stop_button.click(on_stop, None, None, api_name=False, queue=False)
