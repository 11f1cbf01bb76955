"""The Gradio app, driven through gradio_client against a real local server."""

import json
import math
import re
import threading
import time

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from turbosample.web.app import ORDER, RUN_CONTROLS, build_demo

DEFAULTS = {"prompt": "grinning face", "negative_prompt": "", "seed": "3", "steps": 3, "cfg": 4.0, "width": 32,
            "height": 32, "sampler": "euler", "scheduler": "simple", "flow_shift": 1.0, "batch_size": 1,
            "denoise": 1.0, "filename_prefix": "test", "magcache_threshold": 0.0, "magcache_max_skip_steps": 2,
            "ras_ratio": 1.0, "loop_accelerator": "none", "dualfast_coefficient": 0.0, "attention": "sdpa",
            "flowturbo_schedule": "H2P*R3", "sigmas_from": "schedule", "bottleneck_scales": "1, 0.5, 1",
            "bottleneck_noise": "1, 0.8, 0.6", "bottleneck_step_budget": 0.68, "model": "builtin", "frames": 81,
            "guidance": 3.5}


def values(**overrides):
    merged = {**DEFAULTS, **overrides}
    return [merged[k] for k in ORDER]


@pytest.fixture(scope="module")
def url():
    demo = build_demo()
    _, local_url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    yield local_url
    demo.close()


def test_generate_streams_previews_and_returns_png_with_workflow(url):
    client = Client(url, verbose=False)
    job = client.submit(*values(), api_name="/generate")
    outputs = list(job)
    statuses = [o[2] for o in outputs]
    assert any(s.startswith("step 1/3") for s in statuses)
    assert statuses[-1].startswith("done in")
    png = Image.open(outputs[-1][3])
    assert png.size == (32, 32)
    workflow = json.loads(png.text["workflow"])
    assert any(n["type"] == "TurboSampleSample" for n in workflow["nodes"])


def test_save_and_load_workflow_round_trip(url):
    client = Client(url, verbose=False)
    path = client.predict(*values(prompt="cat face", seed="99", steps=7), api_name="/save_workflow")
    loaded = client.predict(handle_file(path), api_name="/load_workflow")
    assert dict(zip(ORDER, loaded, strict=True))["prompt"] == "cat face"
    assert dict(zip(ORDER, loaded, strict=True))["seed"] == "99"
    api_path = client.predict(*values(), api_name="/save_api")
    assert "class_type" in json.loads(open(api_path).read())["1"]


def test_accelerator_settings_round_trip(url):
    client = Client(url, verbose=False)
    path = client.predict(*values(ras_ratio=0.5, loop_accelerator="dualfast", dualfast_coefficient=0.3),
                          api_name="/save_workflow")
    loaded = dict(zip(ORDER, client.predict(handle_file(path), api_name="/load_workflow"), strict=True))
    assert (loaded["ras_ratio"], loaded["loop_accelerator"], loaded["dualfast_coefficient"]) == (0.5, "dualfast", 0.3)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255 ** 2 / mse)


def test_compare_reports_the_psnr_of_the_two_runs_and_the_ratio_of_its_timings(url):
    """The PSNR in the report is checked against the two images /generate makes for the same settings with the
    accelerator on and off (same seed, deterministic runs; the report rounds to 0.1 dB); the speed-up must be the
    ratio of the two reported times (each rounded to 0.01 s). The times themselves are wall-clock measurements."""
    client = Client(url, verbose=False)
    report = client.predict(*values(ras_ratio=0.5, steps=6), api_name="/compare")
    found = re.search(r"Accelerated ([\d.]+) s vs baseline ([\d.]+) s: \*\*([\d.]+)x\*\* speed-up, "
                      r"PSNR ([\d.]+) dB", report)
    assert found, report
    fast, slow, speedup, reported_psnr = (float(v) for v in found.groups())
    assert fast > 0 and slow > 0
    assert (slow - 0.005) / (fast + 0.005) - 0.005 <= speedup <= (slow + 0.005) / max(fast - 0.005, 1e-9) + 0.005
    images = [np.asarray(Image.open(client.predict(*values(ras_ratio=ratio, steps=6), api_name="/generate")[3]))
              for ratio in (0.5, 1.0)]
    assert abs(psnr(*images) - reported_psnr) <= 0.05 + 1e-9, (psnr(*images), report)
    assert 10 < reported_psnr < 60  # RAS at half the tokens changes the image, but not beyond recognition
    assert "No accelerator" in client.predict(*values(), api_name="/compare")


def test_magcache_and_ras_stack_in_the_app(url):
    client = Client(url, verbose=False)
    stacked = client.predict(*values(ras_ratio=0.5, magcache_threshold=0.1, steps=6), api_name="/generate")
    assert Image.open(stacked[3]).size == (32, 32)  # MagCache + RAS stack in the app (tests/test_stacking.py)


def test_bad_input_gives_a_clear_error(url, tmp_path):
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="Width must be 16 plus a multiple of 4"):
        client.predict(*values(width=30), api_name="/generate")
    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": [1], "links": []}')
    with pytest.raises(Exception, match="cannot load workflow"):
        client.predict(handle_file(str(bad)), api_name="/load_workflow")


def test_two_users_at_once_get_their_own_results(url):
    results = {}

    def run(seed):
        client = Client(url, verbose=False)
        results[seed] = Image.open(client.predict(*values(seed=str(seed)), api_name="/generate")[3]).tobytes()

    threads = [threading.Thread(target=run, args=(s,)) for s in (11, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(results) == {11, 12}
    assert results[11] != results[12]
    run(11)  # the same seed alone gives the same image: nothing leaked between the two runs
    assert Image.open(Client(url, verbose=False).predict(*values(seed="11"), api_name="/generate")[3]).tobytes() \
        == results[11]


def test_cfg_pp_samplers_get_their_own_guidance_scale_and_leaving_them_restores_the_default():
    from turbosample.web.app import CFG_PP_CFG, cfg_for_sampler

    assert cfg_for_sampler("dpmpp_2m_cfg_pp", "euler", 4.0, 4.0)[0] == CFG_PP_CFG == 1.0
    assert "lambda" in cfg_for_sampler("dpmpp_2m_cfg_pp", "euler", 4.0, 4.0)[1]
    assert cfg_for_sampler("euler", "dpmpp_2m_cfg_pp", 1.0, 4.0)[0] == 4.0  # back to the default
    assert cfg_for_sampler("dpmpp_2m_cfg_pp", "euler", 6.5, 4.0)[0] == 6.5  # the user's own value is kept
    assert cfg_for_sampler("euler", "dpmpp_2m_cfg_pp", 1.5, 4.0)[0] == 1.5
    assert cfg_for_sampler("heun", "euler", 1.0, 4.0)[0] == 1.0  # not a CFG++ change: nothing moves


def test_picking_a_cfg_pp_sampler_in_the_app_sets_cfg_to_one(url):
    client = Client(url, verbose=False)  # one session: the app remembers the previous sampler per session
    picked = client.predict("euler_cfg_pp", 4.0, api_name="/sampler_changed")  # a gr.update: value and info
    assert picked["value"] == 1.0 and "lambda" in picked["info"]
    assert client.predict("euler", 1.0, api_name="/sampler_changed")["value"] == 4.0
    assert client.predict("heun", 1.0, api_name="/sampler_changed")["value"] == 1.0


def test_bottleneck_knobs_reach_the_sampler_round_trip_and_bad_scales_are_named(url):
    client = Client(url, verbose=False)
    knobs = dict(loop_accelerator="bottleneck", bottleneck_scales="1, 0.75, 1", bottleneck_noise="1, 0.7, 0.5",
                 bottleneck_step_budget=0.5, steps=6, width=64, height=64)  # latent 8 -> 6 -> 8
    path = client.predict(*values(**knobs), api_name="/save_workflow")
    saved = json.loads(open(path).read())
    node = next(n for n in saved["nodes"] if n["type"] == "TurboSampleBottleneckSampler")
    assert node["widgets_values"][1:3] == ["1, 0.75, 1", "1, 0.7, 0.5"] and node["widgets_values"][-1] == 0.5
    loaded = dict(zip(ORDER, client.predict(handle_file(path), api_name="/load_workflow"), strict=True))
    assert (loaded["bottleneck_scales"], loaded["bottleneck_noise"]) == ("1, 0.75, 1", "1, 0.7, 0.5")
    assert loaded["bottleneck_step_budget"] == 0.5
    job = client.submit(*values(**knobs), api_name="/generate")
    outputs = list(job)
    assert Image.open(outputs[-1][3]).size == (64, 64)
    # 6 steps x budget 0.5 = 3 model calls, reported on the schedule's own 6 steps: progress ends at 6/6
    steps = [o[2] for o in outputs if o[2].startswith("step ")]
    assert len(steps) == 3 and steps[-1] == "step 6/6"
    with pytest.raises(Exception, match="is not a positive multiple of"):  # 8 x 0.3 is not whole patches
        client.predict(*values(**{**knobs, "bottleneck_scales": "1, 0.3, 1"}), api_name="/generate")


def test_api_inputs_carry_the_settings_names_and_take_keywords(url):
    client = Client(url, verbose=False)
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name in ("/generate", "/save_workflow", "/save_api", "/compare"):
        runs = name in ("/generate", "/compare")  # these also take where the model runs
        expected = list(ORDER) + (list(RUN_CONTROLS) if runs else [])
        assert [p["parameter_name"] for p in endpoints[name]["parameters"]] == expected, name
    path = client.predict(**{**DEFAULTS, "prompt": "rocket", "steps": 5}, api_name="/save_workflow")
    saved = json.loads(open(path).read())["extra"]["turbosample"]["settings"]
    assert (saved["prompt"], saved["steps"]) == ("rocket", 5)


def test_seeds_keep_every_digit_through_the_app(url):
    client = Client(url, verbose=False)
    for seed in (2**53 + 1, 2**64 - 1):
        path = client.predict(*values(seed=str(seed)), api_name="/save_workflow")
        assert json.loads(open(path).read())["extra"]["turbosample"]["settings"]["seed"] == seed
        loaded = dict(zip(ORDER, client.predict(handle_file(path), api_name="/load_workflow"), strict=True))
        assert loaded["seed"] == str(seed)
    with pytest.raises(Exception, match="Seed must be <= 18446744073709551615"):
        client.predict(*values(seed=str(2**64)), api_name="/save_workflow")


def test_progress_reaches_api_clients(url):
    client = Client(url, verbose=False)
    job = client.submit(*values(steps=40, width=64, height=64), api_name="/generate")
    seen = set()
    while not job.done():
        for unit in job.status().progress_data or []:
            seen.add((unit.index, unit.length, unit.desc))
        time.sleep(0.01)
    job.result()
    assert seen and all(length == 40 and desc == "sampling" for _i, length, desc in seen)


def test_loading_a_png_without_metadata_names_the_file_not_the_upload_folder(url, tmp_path):
    client = Client(url, verbose=False)
    plain = tmp_path / "holiday photo.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(Exception) as err:
        client.predict(handle_file(str(plain)), api_name="/load_workflow")
    message = str(err.value)
    assert "holiday photo.png carries no ComfyUI workflow" in message and "gradio" not in message.lower()


def test_a_stock_comfyui_workflow_says_which_nodes_the_app_lacks(url, tmp_path):
    from test_workflows import stock_comfyui_workflow

    client = Client(url, verbose=False)
    path = tmp_path / "default.json"
    path.write_text(json.dumps(stock_comfyui_workflow()))
    with pytest.raises(Exception, match="needs nodes this app does not have: CLIPTextEncode") as err:
        client.predict(handle_file(str(path)), api_name="/load_workflow")
    assert "missing node" not in str(err.value)


def test_stop_says_where_the_run_stopped():
    from turbosample.web.app import stopped_status

    assert stopped_status("step 17/1000") == "stopped at step 17/1000; no image saved"
    assert stopped_status("starting") == "stopped before the first step"
