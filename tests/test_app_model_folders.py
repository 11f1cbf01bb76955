"""The Gradio app on the user's own diffusers pipeline folders, driven through gradio_client (bf16 on the CPU)."""

import json
import os

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

pytest.importorskip("diffusers")

from test_app import DEFAULTS  # noqa: E402

from turbosample.nodes import model_folders  # noqa: E402
from turbosample.nodes.pipeline import settings_from_file  # noqa: E402
from turbosample.web.app import ORDER, build_demo  # noqa: E402

RUN = ["cpu", "bf16", False]  # device, precision, offload


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models


def values(**overrides):
    merged = {**DEFAULTS, "width": 32, "height": 32, "steps": 3, "cfg": 3.0, "flow_shift": 3.0, "frames": 5,
              **overrides}
    return [merged[k] for k in ORDER]


@pytest.fixture(scope="module")
def url(model_root, tmp_path_factory):
    files = tmp_path_factory.mktemp("files")
    saved = {var: os.environ.get(var) for var in ("TURBOSAMPLE_MAGCACHE_DIR", model_folders.ENV)}
    os.environ["TURBOSAMPLE_MAGCACHE_DIR"] = str(files)
    os.environ.pop(model_folders.ENV, None)
    model_folders.configure(model_root)
    demo = build_demo()
    _, local_url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    yield local_url
    demo.close()
    model_folders.configure(None)
    for var, value in saved.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


def generate(client, **overrides):
    return client.predict(*values(**overrides), *RUN, api_name="/generate")


def test_a_model_folder_generates_and_its_workflow_names_the_folder(url):
    client = Client(url, verbose=False)
    preview, gallery, status, png, video = generate(client, model="sd3", prompt="a red fox")
    assert status.startswith("done in") and video is None
    assert Image.open(png).size == (32, 32) and settings_from_file(png).model == "sd3"
    ui = json.loads(open(client.predict(*values(model="sd3", seed=9), api_name="/save_workflow")).read())
    types = {n["type"]: n for n in ui["nodes"]}
    assert types["CheckpointLoaderSimple"]["widgets_values"] == ["sd3.safetensors"]
    assert {"TripleCLIPLoader", "ModelSamplingSD3", "CLIPTextEncode", "VAEDecode", "TurboSampleSample"} <= set(types)
    loaded = dict(zip(ORDER, client.predict(handle_file(client.predict(*values(model="sd3", seed=9),
                                                                       api_name="/save_workflow")),
                                            api_name="/load_workflow"), strict=True))
    assert (loaded["model"], loaded["seed"], loaded["width"]) == ("sd3", "9", 32)  # seeds are exact text
    api = json.loads(open(client.predict(*values(model="flux_dev"), api_name="/save_api")).read())
    assert {"UNETLoader", "DualCLIPLoader", "VAELoader", "FluxGuidance"} <= {n["class_type"] for n in api.values()}


def test_a_wan_folder_makes_a_video_for_the_player(url):
    import imageio_ffmpeg

    client = Client(url, verbose=False)
    *_rest, status, path, video = generate(client, model="wan21", frames=5)
    assert "1 video(s) of 5 frames" in status
    assert video.endswith(".mp4") and path.endswith(".mp4")
    assert imageio_ffmpeg.count_frames_and_secs(video)[0] == 5
    assert settings_from_file(path).frames == 5


def test_the_model_dropdown_offers_the_folders_and_sets_their_defaults(url):
    client = Client(url, verbose=False)
    width, height, steps, cfg, shift, frames, guidance, line = client.predict("wan21", api_name="/model_changed")
    assert (width, height, steps, cfg, shift, frames) == (832, 480, 50, 5.0, 3.0, 81)
    assert "wan21: Wan" in line and "4k+1 frames" in line
    assert client.predict("flux_schnell", api_name="/model_changed")[2] == 4  # timestep-distilled: 4 steps


def test_accelerators_run_on_folders_through_the_app_or_say_why_not(url):
    client = Client(url, verbose=False)
    for model, accelerated in (("flux_dev", {"ras_ratio": 0.5}), ("sd3", {"magcache_threshold": 1.0}),
                               ("sd15", {"loop_accelerator": "bottleneck", "width": 64, "height": 64})):
        size = {k: v for k, v in accelerated.items() if k in ("width", "height")}
        a = np.asarray(Image.open(generate(client, model=model, steps=6, **accelerated)[3]), dtype=float)
        b = np.asarray(Image.open(generate(client, model=model, steps=6, **size)[3]), dtype=float)
        assert a.shape == b.shape and np.abs(a - b).max() > 0, model
    with pytest.raises(Exception, match="MagCache and RAS do not run on DiffusersUNet"):
        generate(client, model="sdxl", ras_ratio=0.5)
    with pytest.raises(Exception, match="multiples of 16 pixels"):
        generate(client, model="sd3", width=40)


def test_a_workflow_whose_folder_is_gone_says_so(url, model_root, tmp_path):
    client = Client(url, verbose=False)
    saved = client.predict(*values(model="sdxl"), api_name="/save_workflow")
    model_folders.configure(tmp_path)  # another models folder, without sdxl
    try:
        with pytest.raises(Exception, match="model folder 'sdxl' was not found: looked in the models folder"):
            client.predict(handle_file(saved), api_name="/load_workflow")
    finally:
        model_folders.configure(model_root)
