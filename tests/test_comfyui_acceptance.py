"""Acceptance test against a real ComfyUI: set COMFYUI_DIR to a checkout (COMFYUI_PYTHON to its interpreter).

Starts ComfyUI on the CPU with this pack in ``custom_nodes``, checks ``/object_info`` lists every node with
its declared inputs, queues each shipped API workflow through ``/prompt`` to success, and runs the built-in
MODEL through ComfyUI's own KSampler; the image must match the standalone pipeline's for the same seed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from turbosample.nodes.templates import TEMPLATES

ROOT = Path(__file__).resolve().parent.parent
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(
    not COMFYUI_DIR or not (Path(COMFYUI_DIR) / "main.py").exists(),
    reason="COMFYUI_DIR is not set to a ComfyUI checkout; the ComfyUI acceptance test needs one")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data: dict | None = None) -> dict:
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{url}: HTTP {exc.code}: {exc.read().decode()[:2000]}") from None


# A test-only node: random CONDITIONING of a text encoder's shape, standing in for T5-XXL / UMT5-XXL (~5 B
# parameters each) when the real-model workflows run on tiny random-weight checkpoints.
TINY_CONDITIONING = """
import torch


class TinyConditioning:
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        size = {"default": 1, "min": 0, "max": 8192}
        return {"required": {"width": ("INT", size), "pooled": ("INT", size), "tokens": ("INT", size),
                             "seed": ("INT", size)}}

    def make(self, width, pooled, tokens, seed):
        g = torch.Generator().manual_seed(seed)
        extra = {"pooled_output": torch.randn(1, pooled, generator=g)} if pooled else {}
        return ([[torch.randn(1, tokens, width, generator=g), extra]],)


NODE_CLASS_MAPPINGS = {"TinyConditioning": TinyConditioning}
"""


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "turbosample-pack").symlink_to(ROOT, target_is_directory=True)
    (base / "custom_nodes" / "tiny_conditioning").mkdir()
    (base / "custom_nodes" / "tiny_conditioning" / "__init__.py").write_text(TINY_CONDITIONING)
    port = free_port()
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    log = open(base / "comfyui.log", "w")
    proc = subprocess.Popen([python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--base-directory", str(base), "--disable-auto-launch"],
                            cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited:\n{(base / 'comfyui.log').read_text()[-4000:]}")
            try:
                http(f"{url}/system_stats")
                break
            except (OSError, AssertionError):
                time.sleep(1)
        else:
            raise AssertionError("ComfyUI did not start in 240 s")
        yield url, base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def run_prompt(url: str, prompt: dict, timeout: float = 300) -> dict:
    reply = http(f"{url}/prompt", {"prompt": prompt, "client_id": "turbosample-test"})
    assert not reply.get("node_errors"), reply
    prompt_id = reply["prompt_id"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        history = http(f"{url}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            entry = history[prompt_id]
            assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
            return entry
        time.sleep(0.5)
    raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s")


def saved_images(base: Path, entry: dict) -> list[Path]:
    paths = []
    for out in entry["outputs"].values():
        for img in out.get("images", []):
            paths.append(base / "output" / img.get("subfolder", "") / img["filename"])
    return paths


@pytest.fixture(scope="module")
def tiny_models(comfy):
    """Random-weight Flux, SD3.5 and Wan 2.1 checkpoints (and VAEs) in the server's models folder."""
    _url, base = comfy
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    out = subprocess.run([python, str(ROOT / "tests" / "comfy_tiny_models.py"), str(ROOT), str(base / "models")],
                         cwd=COMFYUI_DIR, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def combo_options(spec: list) -> list | None:
    """The choices of an /object_info input spec, V1 (``[[...], {}]``) or V3 (``["COMBO", {"options": ...}]``)."""
    if isinstance(spec[0], list):
        return spec[0]
    return spec[1].get("options") if spec[0] == "COMBO" and len(spec) > 1 else None


POOLED = {"DualCLIPLoader": 768, "TripleCLIPLoader": 2048, "CLIPLoader": 0}  # Flux, SD3.5, Wan


@pytest.mark.parametrize("t", [t for t in TEMPLATES if not t.builtin], ids=lambda t: t.slug)
def test_real_model_workflows_run_on_tiny_random_checkpoints(comfy, tiny_models, t):
    """The shipped Flux / SD3.5 / Wan workflows, as shipped (loaders, file names, steps, the pack's MagCache, RAS,
    DualFast and scheduler) but at 64 px (Wan: 5 frames), run to an image in ComfyUI on random-weight checkpoints
    of those architectures; their text encoders give way to random conditioning of the same shape."""
    url, base = comfy
    prompt = json.loads((ROOT / "workflows" / "api" / f"{t.slug}.json").read_text())
    info = http(f"{url}/object_info")
    for node in prompt.values():  # file names, loader types: valid choices where those files are installed
        declared = {**info[node["class_type"]]["input"]["required"], **info[node["class_type"]]["input"].get(
            "optional", {})}
        for name, value in node["inputs"].items():
            options = combo_options(declared[name]) if not isinstance(value, list) else None
            assert options is None or value in options, (node["class_type"], name, value, options)
    for nid, node in list(prompt.items()):
        if node["class_type"] == "CLIPTextEncode":
            loader = prompt[node["inputs"]["clip"][0]]["class_type"]
            prompt[nid] = {"class_type": "TinyConditioning",
                           "inputs": {"width": 4096, "pooled": POOLED[loader], "tokens": 8, "seed": int(nid)}}
    for nid in [k for k, n in prompt.items() if n["class_type"] in POOLED]:
        del prompt[nid]
    for node in prompt.values():
        if node["class_type"] in ("EmptySD3LatentImage", "EmptyHunyuanLatentVideo"):
            node["inputs"].update(width=64, height=64, **({"length": 5} if "length" in node["inputs"] else {}))
    kinds = {n["class_type"] for n in prompt.values()}
    assert kinds & {"TurboSampleMagCache", "TurboSampleDualFastSampler"}
    images = saved_images(base, run_prompt(url, prompt, timeout=900))
    assert images and all(p.exists() and p.stat().st_size > 0 for p in images)


def test_object_info_lists_every_node_with_its_inputs(comfy):
    from turbosample.nodes.registry import NODES

    url, _ = comfy
    info = http(f"{url}/object_info")
    for spec in NODES:
        assert spec.node_id in info, f"{spec.node_id} missing from /object_info"
        declared = info[spec.node_id]["input"]["required"]
        assert list(declared) == [p.name for p in spec.inputs]
        assert info[spec.node_id]["output"] == [o.type for o in spec.outputs]


BUILTIN_TEMPLATES = [t for t in TEMPLATES if t.builtin]


@pytest.mark.parametrize("t", BUILTIN_TEMPLATES, ids=lambda t: t.slug)
def test_shipped_workflows_run(comfy, t):
    url, base = comfy
    entry = run_prompt(url, json.loads((ROOT / "workflows" / "api" / f"{t.slug}.json").read_text()))
    images = saved_images(base, entry)
    assert images and all(p.exists() for p in images)


def test_builtin_model_runs_in_core_ksampler_and_matches_standalone(comfy):
    from turbosample.nodes.pipeline import generate
    from turbosample.nodes.txt2img import Settings

    url, base = comfy
    settings = Settings(prompt="red apple", seed=5, steps=6, cfg=3.0, width=32, height=32)
    prompt = {
        "1": {"class_type": "TurboSampleBuiltinModelLoader", "inputs": {"flow_shift": 1.0}},
        "2": {"class_type": "TurboSampleBuiltinTextEncode", "inputs": {"text": settings.prompt}},
        "3": {"class_type": "TurboSampleBuiltinTextEncode", "inputs": {"text": ""}},
        "4": {"class_type": "TurboSampleEmptyLatent", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 5, "steps": 6, "cfg": 3.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "6": {"class_type": "TurboSampleDecode", "inputs": {"samples": ["5", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "ksampler"}},
    }
    (image_path,) = saved_images(base, run_prompt(url, prompt))
    theirs = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.int16)
    ours = np.asarray(generate(settings)[0], dtype=np.int16)
    assert np.abs(theirs - ours).max() <= 2  # same noise, same Euler steps, two sampling loops


def test_magcache_and_ras_stack_on_the_builtin_model_in_either_order_like_the_app(comfy):
    from turbosample.nodes.pipeline import generate
    from turbosample.nodes.txt2img import Settings, to_api_prompt

    url, base = comfy

    def image(prompt: dict) -> np.ndarray:
        (path,) = saved_images(base, run_prompt(url, prompt))
        return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)

    settings = Settings(prompt="red apple", seed=5, steps=10, width=32, height=32, magcache_threshold=0.3,
                        ras_ratio=0.5, filename_prefix="stack")
    prompt = to_api_prompt(settings)  # loader -> MagCache -> RAS -> sampler
    kinds = {n["class_type"]: k for k, n in prompt.items()}
    mag, ras = kinds["TurboSampleMagCache"], kinds["TurboSampleRAS"]
    mag_then_ras = image(prompt)
    swapped = json.loads(json.dumps(prompt))  # loader -> RAS -> MagCache -> sampler
    swapped[ras]["inputs"]["model"], swapped[mag]["inputs"]["model"] = prompt[mag]["inputs"]["model"], [ras, 0]
    for node in swapped.values():
        if node["inputs"].get("model") == [ras, 0] and node is not swapped[mag]:
            node["inputs"]["model"] = [mag, 0]
    assert np.array_equal(image(swapped), mag_then_ras)  # one wrapper runs both, whatever the order
    ours = np.asarray(generate(settings)[0], dtype=np.int16)
    assert np.abs(mag_then_ras - ours).max() <= 2  # the app's stack (accel/stacking.py) gives the same image
    plain = np.asarray(generate(Settings(prompt="red apple", seed=5, steps=10, width=32, height=32))[0],
                       dtype=np.int16)
    assert np.abs(mag_then_ras - plain).max() > 2  # the stack really skipped and dropped work
    off = json.loads(json.dumps(prompt))
    off[mag]["inputs"]["threshold"], off[ras]["inputs"]["sample_ratio"] = 0.0, 1.0
    assert np.abs(image(off) - plain).max() <= 2  # both off: the plain model


def test_comfy_samplers_accept_the_builtin_model(comfy):
    url, base = comfy
    prompt = json.loads((ROOT / "workflows" / "api" / "builtin_txt2img.json").read_text())
    prompt["5"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}}
    prompt["6"]["inputs"].update(steps=6)
    entry = run_prompt(url, prompt)
    assert saved_images(base, entry)


def test_our_schedulers_join_core_ksampler_lists_without_changing_core_names(comfy):
    from turbosample.samplers.schedulers import SCHEDULERS

    url, base = comfy
    required = http(f"{url}/object_info/KSampler")["KSampler"]["input"]["required"]
    schedulers, samplers = required["scheduler"][0], required["sampler_name"][0]
    core = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal"]
    assert schedulers[:len(core)] == core and set(SCHEDULERS) <= set(schedulers)
    assert samplers[:3] == ["euler", "euler_cfg_pp", "euler_ancestral"] and len(set(samplers)) == len(samplers)
    prompt = json.loads((ROOT / "workflows" / "api" / "builtin_txt2img.json").read_text())
    for key in ("5", "6", "7"):
        del prompt[key]
    prompt["10"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 1,
        "steps": 6, "cfg": 3.0, "sampler_name": "euler", "scheduler": "polyexponential", "denoise": 1.0}}
    prompt["8"]["inputs"]["samples"] = ["10", 0]  # core KSampler with a scheduler ComfyUI itself lacks
    assert saved_images(base, run_prompt(url, prompt))
    for name in ("euler_dualfast", "restart", "ghvb", "dpmpp_2m_time_shift", "heun_churn"):
        assert name in samplers
        prompt["10"]["inputs"].update(sampler_name=name, scheduler="simple")  # and samplers it lacks
        assert saved_images(base, run_prompt(url, prompt)), name


def test_gits_scheduler_searches_inside_comfyui_and_feeds_the_sampler(comfy):
    url, base = comfy
    prompt = json.loads((ROOT / "workflows" / "api" / "builtin_txt2img.json").read_text())
    prompt["4"]["inputs"].update(width=32, height=32)
    prompt["6"] = {"class_type": "TurboSampleGITSScheduler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 0,
        "cfg": 4.0, "steps": 4, "batch": 1, "coeff": 1.15}}
    assert saved_images(base, run_prompt(url, prompt))


def test_ays_optimize_scheduler_runs_inside_comfyui_and_feeds_the_sampler(comfy):
    url, base = comfy
    prompt = json.loads((ROOT / "workflows" / "api" / "builtin_ays_optimized.json").read_text())
    sigmas = next(k for k, n in prompt.items() if n["class_type"] == "TurboSampleAYSOptimizeScheduler")
    latent = next(k for k, n in prompt.items() if n["class_type"] == "TurboSampleEmptyLatent")
    prompt[latent]["inputs"].update(width=32, height=32)
    prompt[sigmas]["inputs"].update(steps=4, batch=1, mc_points=8)
    assert saved_images(base, run_prompt(url, prompt))


def run_learn_then_sample(comfy, prep: dict, sampler: dict) -> None:
    """The 32 px, 5-step text-to-image graph with ``prep`` (fed the model, prompts and latent) feeding ``sampler``."""
    url, base = comfy
    prompt = json.loads((ROOT / "workflows" / "api" / "builtin_txt2img.json").read_text())
    prompt["4"]["inputs"].update(width=32, height=32)
    prompt["6"]["inputs"].update(steps=5, scheduler="simple")
    prompt["10"] = {"class_type": prep["class_type"], "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], **prep["inputs"]}}
    prompt["5"] = {"class_type": sampler["class_type"], "inputs": {"model": ["1", 0], **sampler["inputs"]}}
    assert saved_images(base, run_prompt(url, prompt))


def test_dc_solver_calibrates_inside_comfyui_and_its_sampler_runs_on_the_file(comfy):
    run_learn_then_sample(
        comfy, {"class_type": "TurboSampleDCSolverCalibrate", "inputs": {
            "sigmas": ["6", 0], "seed": 3, "cfg": 4.0, "samples": 1, "filename": "acceptance_dc.json"}},
        {"class_type": "TurboSampleDCSolverSampler", "inputs": {"calibration": ["10", 0], "cfg": 4.0}})
    written = list(comfy[1].rglob("acceptance_dc.json"))
    assert written and len(json.loads(written[0].read_text())["ratios"]) == 5


def test_dpm_solver_v3_statistics_are_estimated_inside_comfyui_and_its_sampler_runs_on_the_file(comfy):
    from turbosample.samplers.ems import load_ems

    run_learn_then_sample(
        comfy, {"class_type": "TurboSampleDPMSolverV3EMS", "inputs": {
            "seed": 3, "cfg": 4.0, "batch": 1, "grid_points": 8, "reduce": "channel", "filename": "acceptance_ems",
            "smooth": 0.25, "sb_margin": 0.5}},
        {"class_type": "TurboSampleDPMSolverV3Sampler", "inputs": {
            "ems": ["10", 0], "order": 2, "use_corrector": True, "half": False}})
    written = list(comfy[1].rglob("acceptance_ems.safetensors"))
    assert written and load_ems(written[0]).meta["smooth"] == 0.25 and load_ems(written[0]).meta["sb_margin"] == 0.5


@pytest.mark.parametrize("node, inputs", [
    ("TurboSampleTimeShiftSampler", {"base_sampler": "euler_ancestral", "window": 30, "cutoff": 300}),
    ("TurboSampleDualFastSampler", {"base_sampler": "dpmpp_2m_sde", "coefficient": 0.3, "schedule": "constant"}),
    ("TurboSampleDualFastSampler", {"base_sampler": "uni_pc", "coefficient": 0.4}),  # corrector scope in KSAMPLER
    ("TurboSampleChurnSampler", {"method": "heun", "s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0,
                                 "s_noise": 1.003}),
    ("TurboSampleMomentumSampler", {"method": "ghvb", "order": 4, "beta": 0.8}),
    ("TurboSampleBottleneckSampler", {"base_sampler": "euler_ancestral"}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_wrapper_and_gap_sampler_nodes_run_in_comfyui_with_stochastic_bases(comfy, node, inputs):
    from turbosample.nodes.registry import NODE_BY_ID

    url, base = comfy
    prompt = json.loads((ROOT / "workflows" / "api" / "builtin_txt2img.json").read_text())
    prompt["4"]["inputs"].update(width=32, height=32)
    defaults = {p.name: p.default for p in NODE_BY_ID[node].widgets}
    prompt["5"] = {"class_type": node, "inputs": {**defaults, **inputs}}
    prompt["6"]["inputs"].update(steps=6)
    assert saved_images(base, run_prompt(url, prompt))


def test_autotune_node_tunes_inside_comfyui_and_its_outputs_sample(comfy):
    """TurboSample Auto-Tune on the built-in MODEL: candidates run through ComfyUI's sampling; its MODEL, SAMPLER and
    SIGMAS feed core SamplerCustom; the report IMAGE saves; the JSON report holds the measured choice."""
    url, base = comfy
    tune = {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "sampler_name": "euler", "scheduler": "simple", "steps": 6, "cfg": 4.0, "seed": 1, "seeds": 1,
            "target_speedup": 1.5, "min_psnr": 0.0, "budget_runs": 4.0, "report_filename": "acceptance_tune"}
    prompt = {
        "1": {"class_type": "TurboSampleBuiltinModelLoader", "inputs": {"flow_shift": 1.0}},
        "2": {"class_type": "TurboSampleBuiltinTextEncode", "inputs": {"text": "red apple"}},
        "3": {"class_type": "TurboSampleBuiltinTextEncode", "inputs": {"text": ""}},
        "4": {"class_type": "TurboSampleEmptyLatent", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "10": {"class_type": "TurboSampleAutoTune", "inputs": tune},
        "11": {"class_type": "SamplerCustom", "inputs": {
            "model": ["10", 0], "add_noise": True, "noise_seed": 1, "cfg": 4.0, "positive": ["2", 0],
            "negative": ["3", 0], "sampler": ["10", 1], "sigmas": ["10", 2], "latent_image": ["4", 0]}},
        "12": {"class_type": "TurboSampleDecode", "inputs": {"samples": ["11", 0]}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "tuned"}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["10", 3], "filename_prefix": "tune_report"}},
    }
    images = saved_images(base, run_prompt(url, prompt))
    assert len(images) == 2 and all(p.exists() for p in images)
    sizes = sorted(Image.open(p).size for p in images)
    assert sizes[0] == (32, 32) and sizes[1][0] == 640  # the sample, then the report plot with its table
    (report,) = base.rglob("acceptance_tune.json")
    data = json.loads(report.read_text())
    assert data["reference"]["model_calls_per_run"] == 6 and data["tried"]
    assert data["chosen"] is None or isinstance(data["chosen"]["psnr_db"], float)


def test_bad_input_is_reported_by_comfyui(comfy):
    url, _ = comfy
    prompt = json.loads((ROOT / "workflows" / "api" / "builtin_txt2img.json").read_text())
    prompt["4"]["inputs"].update(width=40)
    reply = http(f"{url}/prompt", {"prompt": prompt, "client_id": "turbosample-test"})
    prompt_id = reply["prompt_id"]
    for _ in range(120):
        history = http(f"{url}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            break
        time.sleep(0.5)
    status = history[prompt_id]["status"]
    assert status["status_str"] == "error"
    assert "width must be 32 plus a multiple of 16, got 40" in json.dumps(status["messages"])


FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# After loading a workflow: the prompt the frontend makes of it, and every node as drawn (size kept from the file
# or grown to what the node needs, bounds with the title bar, the title's text width) in the canvas's coordinates.
LOAD_AND_MEASURE = """async (wf) => {
    await window.app.loadGraphData(wf);
    await new Promise(r => setTimeout(r, 500));
    const canvas = window.app.canvas, ctx = canvas.canvas.getContext('2d');
    const nodes = window.app.graph._nodes.map(n => {
        ctx.font = n.titleFontStyle;
        return {id: n.id, title: n.title, size: [...n.size], computed: [...n.computeSize()],
                bounds: [...n.getBounding()], title_width: ctx.measureText(n.title).width};
    });
    const r = canvas.canvas.getBoundingClientRect();
    return {prompt: (await window.app.graphToPrompt()).output, nodes,
            view: {scale: canvas.ds.scale, offset: [...canvas.ds.offset], width: r.width, height: r.height}};
}"""


def frontend_page(p, url: str):
    browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=FLAGS)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(url, wait_until="domcontentloaded")
    # the graph exists before the node definitions arrive: a workflow loaded earlier converts to an empty prompt
    page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph"
                           " && window.LiteGraph.registered_node_types['TurboSampleSample']", timeout=120_000)
    return browser, page


def drawn_layout_problems(ui: dict, drawn: dict) -> list[str]:
    """Nodes the frontend grew past their stored size, titles it cuts, overlaps, nodes outside the canvas."""
    from turbosample.nodes.layout import TITLE_BUTTONS, overlaps

    stored = {n["id"]: n["size"] for n in ui["nodes"]}
    view, problems = drawn["view"], []
    scale, (ox, oy) = view["scale"], view["offset"]
    boxes = {}
    for n in drawn["nodes"]:
        name = f"{n['id']} {n['title']}"
        if n["size"] != stored[n["id"]] or n["computed"][0] > n["size"][0] or n["computed"][1] > n["size"][1]:
            problems.append(f"{name}: stored {stored[n['id']]}, drawn {n['size']}, needs {n['computed']}")
        if n["title_width"] > n["size"][0] - TITLE_BUTTONS:
            problems.append(f"{name}: title cut ({n['title_width']:.0f} px in {n['size'][0]})")
        x, y, w, h = n["bounds"]
        boxes[name] = (x, y, x + w, y + h)
        left, top, right, bottom = (x + ox) * scale, (y + oy) * scale, (x + w + ox) * scale, (y + h + oy) * scale
        if left < 0 or top < 0 or right > view["width"] or bottom > view["height"]:
            problems.append(f"{name}: outside the {view['width']:.0f} x {view['height']:.0f} canvas")
    names = list(boxes)
    problems += [f"{a} overlaps {b}" for i, a in enumerate(names) for b in names[i + 1:]
                 if overlaps(boxes[a], boxes[b])]
    return problems


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed")
def test_comfyui_frontend_opens_every_template_as_our_api_prompt_laid_out_in_one_view(comfy):
    """ComfyUI's own web app (1600 x 1000 window) loads each UI-format file: it converts it to the prompt we ship,
    keeps every node at its stored size (nothing grows over a neighbour), shows whole titles, no node covers
    another and every node lies inside the canvas at the stored zoom and offset."""
    from playwright.sync_api import sync_playwright

    url, _ = comfy
    strip = lambda api: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}  # noqa: E731
    failures = {}
    with sync_playwright() as p:
        browser, page = frontend_page(p, url)
        for t in TEMPLATES:
            ui = json.loads((ROOT / "workflows" / f"{t.title}.json").read_text())
            drawn = page.evaluate(LOAD_AND_MEASURE, ui)
            ours = json.loads((ROOT / "workflows" / "api" / f"{t.slug}.json").read_text())
            problems = drawn_layout_problems(ui, drawn)
            if strip(drawn["prompt"]) != strip(ours):
                problems.append(f"the frontend's prompt differs from the shipped API copy: {strip(drawn['prompt'])} "
                                f"!= {strip(ours)}")
            if problems:
                failures[t.title] = problems
        browser.close()
    assert not failures, failures


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed")
def test_template_browser_lists_our_templates_with_titles_and_thumbnails_and_opens_one(comfy):
    """Workflow -> Browse Templates: our folder's cards carry the file names as titles and every card's .jpg
    thumbnail loads (no 404); clicking the text-to-image card opens its graph."""
    from urllib.parse import unquote

    from playwright.sync_api import sync_playwright

    url, base = comfy
    module = "turbosample-pack"  # the custom_nodes folder name, as the fixture links it
    assert sorted(http(f"{url}/workflow_templates")[module]) == sorted(t.title for t in TEMPLATES)
    thumbnails: dict[str, int] = {}
    with sync_playwright() as p:
        browser, page = frontend_page(p, url)
        prefix = f"/api/workflow_templates/{module}/"
        page.on("response", lambda r: thumbnails.__setitem__(unquote(r.url.split(prefix)[-1]), r.status)
                if prefix in r.url and r.url.endswith(".jpg") else None)
        page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        page.get_by_text(module, exact=True).first.click()
        page.locator(".template-card").first.wait_for(timeout=30_000)
        for _ in range(10):  # the grid shows 12 cards, then more as it scrolls
            page.mouse.move(800, 600)
            page.mouse.wheel(0, 3000)
            page.wait_for_timeout(400)
        page.wait_for_function(f"() => document.querySelectorAll('.template-card').length >= {len(TEMPLATES)}",
                               timeout=30_000)
        cards = page.locator(".template-card")
        for i in range(cards.count()):  # thumbnails load as their card scrolls into view
            cards.nth(i).scroll_into_view_if_needed()
            page.wait_for_timeout(150)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(base / "templates.png"))
        titles = page.locator(".template-card h3").all_inner_texts()
        assert sorted(titles) == sorted(t.title for t in TEMPLATES)
        assert thumbnails == {f"{t.title}.jpg": 200 for t in TEMPLATES}
        first = TEMPLATES[0].title
        page.locator(f"[data-testid='template-workflow-{first}']").click()
        page.wait_for_function("() => window.app.graph._nodes.some(n => n.type === 'TurboSampleSample')",
                               timeout=30_000)
        assert page.evaluate("() => window.app.graph._nodes.length") == len(
            json.loads((ROOT / "workflows" / f"{first}.json").read_text())["nodes"])
        browser.close()


def test_schedules_and_samplers_match_comfyui_implementations():
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    out = subprocess.run([python, str(ROOT / "tests" / "comfy_oracle.py"), str(ROOT)], cwd=COMFYUI_DIR,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    diffs = json.loads(out.stdout.strip().splitlines()[-1])
    bad = {k: v for k, v in diffs.items() if not v <= 1e-5}
    assert not bad, bad


FILE_INPUTS = {"ckpt_name", "unet_name", "clip_name", "clip_name1", "clip_name2", "clip_name3", "vae_name"}


def test_model_folder_exports_match_comfyuis_node_definitions(comfy, model_root):
    """The ComfyUI export of each model folder family uses nodes ComfyUI has, with the inputs it declares (names,
    required ones present, choices among its options; file names are the user's own files, not checked)."""
    from turbosample.nodes import model_folders
    from turbosample.nodes.app_graph import to_api_prompt
    from turbosample.nodes.folder_graph import folder_of
    from turbosample.nodes.txt2img import Settings

    url, _base = comfy
    object_info = http(f"{url}/object_info")
    model_folders.configure(model_root)
    try:
        for name in ("sd3", "sd35", "flux_dev", "flux_schnell", "sd15", "sd2_v", "sdxl", "wan21", "wan22_ti2v"):
            info = folder_of(name)
            unet = info.family in ("sd", "sdxl")
            accelerators = {"loop_accelerator": "bottleneck"} if unet else {"magcache_threshold": 0.2, "ras_ratio": 0.5}
            settings = Settings(**{**info.defaults(), "width": 64, "height": 64, "frames": 9}, model=name,
                                **accelerators)
            for nid, node in to_api_prompt(settings).items():
                where = f"{name}: node {nid} ({node['class_type']})"
                assert node["class_type"] in object_info, where
                declared = object_info[node["class_type"]]["input"]
                required, optional = declared.get("required", {}), declared.get("optional", {})
                assert set(required) <= set(node["inputs"]) <= set(required) | set(optional), where
                for key, value in node["inputs"].items():
                    kind = {**required, **optional}[key][0]
                    if isinstance(kind, list) and key not in FILE_INPUTS and not isinstance(value, list):
                        assert value in kind, f"{where}: {key}={value!r} not among {kind}"
    finally:
        model_folders.configure(None)
