"""The user's own diffusers pipeline folders (SD3/3.5, Flux dev/schnell, SD 1.x eps and v, SDXL, Wan 2.1 and 2.2),
read offline and run by the pack's loop, through the CLI, in bf16 on the CPU.

The folders are tiny random-weight pipelines written by ``tests/tiny_pipelines.py`` (nothing downloaded). Oracle:
each pipeline's own ``__call__`` with diffusers' Euler scheduler on the same starting noise and sigmas, which our
loop with ``euler`` must reproduce (same text encoders, same VAE, same denoiser).
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")

from tiny_pipelines import FAMILIES  # noqa: E402

from turbosample.cli import main  # noqa: E402
from turbosample.models import diffusers_pipeline  # noqa: E402
from turbosample.models.diffusers_folder import ModelFolderError, inspect_folder, latent_shape  # noqa: E402
from turbosample.models.diffusers_pipeline import decode, encode, load, model_for  # noqa: E402
from turbosample.nodes import model_folders  # noqa: E402
from turbosample.nodes.media import read_video_metadata  # noqa: E402
from turbosample.nodes.pipeline import settings_from_file  # noqa: E402
from turbosample.samplers.noise import noisy_start, seeded_noise  # noqa: E402
from turbosample.samplers.registry import SAMPLERS  # noqa: E402
from turbosample.samplers.run import sample  # noqa: E402

SIZE = 32  # pixels: a 4x4 latent (VAE factor 8)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models


@pytest.fixture()
def models(model_root, tmp_path, monkeypatch):
    """The tiny folders as the models folder; calibration files in a fresh folder."""
    for var in ("TURBOSAMPLE_MAGCACHE_DIR", "TURBOSAMPLE_DC_SOLVER_DIR", "TURBOSAMPLE_EMS_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "files"))
    monkeypatch.setenv(model_folders.ENV, str(model_root))  # the CLI configures from it when run without --models-dir
    model_folders.configure(None)
    yield model_root
    model_folders.configure(None)


def test_folders_are_read_from_their_configs(model_root):
    infos = {name: inspect_folder(model_root / name) for name in FAMILIES}
    assert {n: i.family for n, i in infos.items()} == {
        "sd3": "sd3", "sd35": "sd3", "flux_dev": "flux", "flux_schnell": "flux", "sd15": "sd", "sd2_v": "sd",
        "sdxl": "sdxl", "wan21": "wan", "wan22": "wan", "wan22_ti2v": "wan"}
    assert [infos[n].multiple for n in ("sd3", "flux_dev", "sd15", "sdxl", "wan21")] == [16, 16, 8, 8, 16]
    assert infos["sd35"].dual_attention and not infos["sd3"].dual_attention
    assert infos["flux_dev"].guidance_embeds and infos["flux_dev"].dynamic_shift == (0.5, 1.15, 256, 4096)
    assert not infos["flux_schnell"].guidance_embeds and infos["flux_schnell"].dynamic_shift is None
    assert (infos["sd15"].prediction, infos["sd2_v"].prediction) == ("eps", "v_prediction")
    assert infos["wan22"].two_experts and not infos["wan21"].two_experts and infos["wan21"].temporal_factor == 4
    assert infos["wan22_ti2v"].multiple == 32 and not infos["wan22_ti2v"].two_experts
    assert infos["sd3"].flow_shift == 3.0 and infos["wan21"].flow_shift == 3.0
    assert latent_shape(infos["wan21"], 48, 32, 9, 2) == (2, 4, 3, 4, 6)
    assert latent_shape(infos["flux_dev"], 48, 32, 1, 1) == (1, 4, 4, 6)  # unpacked: Flux packs 2x2 inside


def pipeline_sigmas(info, pipe, steps: int) -> torch.Tensor:
    """The sigmas the pipeline's own Euler scheduler runs (Flux: its linspace with the resolution's mu)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from turbosample.samplers.flow_shift import resolution_mu

    if info.family in ("sd", "sdxl"):
        pipe.scheduler.set_timesteps(steps)
        return pipe.scheduler.sigmas.clone()
    if info.video:  # Wan ships UniPC: run its pipeline on the flow Euler scheduler instead
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=info.flow_shift)
    if info.family == "flux":
        mu = resolution_mu((SIZE // 16) ** 2, *info.dynamic_shift) if info.dynamic_shift else None
        pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    else:
        pipe.scheduler.set_timesteps(steps)
    return pipe.scheduler.sigmas.clone()


@pytest.mark.parametrize("name", list(FAMILIES))
@torch.no_grad()
def test_our_loop_reproduces_the_pipelines_own_euler_run(model_root, name):
    from diffusers import FluxPipeline

    info = inspect_folder(model_root / name)
    loaded = load(info, torch.device("cpu"), torch.float32)
    pipe, own_scheduler = loaded.pipe, loaded.pipe.scheduler
    steps, cfg = 4, 1.0 if info.family == "flux" else 3.0  # Flux: guidance-distilled, no true CFG
    try:
        sigmas = pipeline_sigmas(info, pipe, steps)
        shape = latent_shape(info, SIZE, SIZE, 5, 1)
        model = model_for(loaded, info.flow_shift, SIZE, SIZE)
        positive, negative = encode(loaded, "a red fox", "blurry")
        ours = decode(loaded, sample(model, positive, negative, torch.zeros(shape), SAMPLERS["euler"], sigmas, 7, cfg))
        start = noisy_start(model.model_sampling, sigmas[0], seeded_noise(7, shape))
        if info.family == "flux":
            latents = FluxPipeline._pack_latents(start, *shape)
        elif info.family in ("sd", "sdxl"):
            latents = start / pipe.scheduler.init_noise_sigma
        else:
            latents = start
        call = {"prompt": "a red fox", "negative_prompt": "blurry", "height": SIZE, "width": SIZE,
                "latents": latents, "num_inference_steps": steps, "guidance_scale": cfg, "output_type": "pt"}
        if info.family == "flux":
            call.update(negative_prompt=None, guidance_scale=3.5)
        if info.video:
            call["num_frames"] = 5
        out = pipe(**call)
    finally:
        pipe.scheduler = own_scheduler
    theirs = (out.frames[0] if info.video else out.images).float().permute(0, 2, 3, 1)
    assert ours.shape == theirs.shape == ((5,) if info.video else (1,)) + (SIZE, SIZE, 3)
    assert (ours - theirs).abs().max() < 2e-5
    assert ours.std() > 0.01  # a real image, not a constant


def run_cli(*args) -> int:
    return main(["generate", "--device", "cpu", "--dtype", "bf16", "--steps", "3", "--width", str(SIZE), "--height",
                 str(SIZE), "--prompt", "a red fox", "--seed", "3", *args])


def image(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def loaded_dtype() -> torch.dtype:
    """The compute dtype of the loaded denoiser (modules diffusers keeps in float32, such as Wan's time embedding,
    aside) and of its VAE."""
    from turbosample.samplers.denoiser import network_placement

    (loaded,) = diffusers_pipeline._LOADED.values()
    dtype = network_placement(loaded.network)[1]
    assert loaded.pipe.vae.dtype == dtype
    return dtype


# one sampler of each kind per family: single-step, multistep, two-call, stochastic (Brownian and ancestral), CFG++
KINDS = {"sd3": "euler", "sd35": "dpmpp_2m", "flux_dev": "heun", "flux_schnell": "euler_ancestral", "sd15": "uni_pc",
         "sd2_v": "dpmpp_sde", "sdxl": "euler_cfg_pp", "wan21": "dpmpp_2m", "wan22": "euler",
         "wan22_ti2v": "heun"}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_cli_runs_each_family_in_bf16_and_the_file_carries_its_settings(models, tmp_path, name):
    video = name.startswith("wan")
    out = tmp_path / ("out.mp4" if video else "out.png")
    extra = ["--frames", "5"] if video else []
    cfg = ["--cfg", "1"] if KINDS[name] == "euler_cfg_pp" else []
    assert run_cli("--model", str(models / name), "--sampler", KINDS[name], "--out", str(out), *extra, *cfg) == 0
    assert loaded_dtype() == torch.bfloat16
    settings = settings_from_file(out)
    assert (settings.model, settings.sampler, settings.steps, settings.width) == (name, KINDS[name], 3, SIZE)
    if video:
        import imageio_ffmpeg

        assert imageio_ffmpeg.count_frames_and_secs(str(out))[0] == 5
        meta = read_video_metadata(out)
        assert json.loads(meta["parameters"])["model"] == name
        assert ("workflow" in meta) == (name != "wan22")  # a two-expert Wan 2.2 has no ComfyUI export
    else:
        png = Image.open(out)
        assert png.size == (SIZE, SIZE) and image(out).std() > 1
        assert {"prompt", "workflow", "parameters"} <= set(png.text)


# accelerators: (family, options, None = runs and changes the image, or the refusal's message)
ACCELERATED = [
    ("sd3", ["--magcache-threshold", "1"], None),
    ("sd3", ["--ras-ratio", "0.5"], None),
    ("sd3", ["--loop-accelerator", "flowturbo", "--flowturbo-schedule", "H2P*"], None),
    ("sd35", ["--magcache-threshold", "1", "--ras-ratio", "0.5"], "RAS needs per-block attention access"),
    ("flux_dev", ["--ras-ratio", "0.5"], None),
    ("flux_dev", ["--loop-accelerator", "bottleneck", "--width", "64", "--height", "64"], None),
    ("flux_dev", ["--loop-accelerator", "flowturbo"], "or use a schedule without R blocks"),
    ("flux_schnell", ["--loop-accelerator", "dualfast", "--dualfast-coefficient", "0.5"], None),
    ("flux_schnell", ["--sigmas-from", "gits"], None),
    ("sd15", ["--loop-accelerator", "bottleneck", "--width", "64", "--height", "64"], None),
    ("sd15", ["--loop-accelerator", "dc_solver", "--steps", "3"], None),
    ("sd15", ["--magcache-threshold", "0.5"], "an SD 1.x / 2.x / SDXL UNet has no stack of equal transformer"),
    ("sdxl", ["--ras-ratio", "0.5"], "MagCache and RAS do not run on DiffusersUNet"),
    ("sdxl", ["--loop-accelerator", "dpm_solver_v3"], None),
    ("sd2_v", ["--loop-accelerator", "dualfast", "--dualfast-coefficient", "0.5"], None),
    ("wan21", ["--magcache-threshold", "1"], None),
    ("wan21", ["--ras-ratio", "0.5"], None),
    ("wan21", ["--loop-accelerator", "bottleneck"], "video latents such as Wan's are not supported"),
    ("wan22", ["--magcache-threshold", "1"], "Wan 2.2's two experts"),
    ("wan22_ti2v", ["--ras-ratio", "0.5", "--magcache-threshold", "1"], None),
]


KEPT = ("--width", "--height", "--steps")  # options the unaccelerated run keeps
PLAIN: dict[tuple, list] = {}  # unaccelerated outputs, per family and kept options


def output_frames(path) -> list[np.ndarray]:
    """A PNG's image, or a video's frames."""
    if str(path).endswith(".png"):
        return [image(path)]
    import imageio_ffmpeg

    frames = imageio_ffmpeg.read_frames(str(path))
    meta = next(frames)
    return [np.frombuffer(f, dtype=np.uint8).reshape(*meta["size"][::-1], 3).astype(np.float64) for f in frames]


def plain_run(base: list, kept: list, tmp_path) -> list:
    key = tuple(base + kept)
    if key not in PLAIN:
        out = tmp_path / ("plain.mp4" if "--frames" in base else "plain.png")
        assert run_cli(*base, *kept, "--out", str(out)) == 0
        PLAIN[key] = output_frames(out)
    return PLAIN[key]


@pytest.mark.parametrize("name, options, refusal", ACCELERATED, ids=lambda v: "_".join(v) if isinstance(v, list)
                         else None)
def test_accelerators_run_or_say_why_not(models, tmp_path, capsys, name, options, refusal):
    base = ["--model", name, "--steps", "6", *(["--frames", "5"] if name.startswith("wan") else [])]
    out = tmp_path / ("acc.mp4" if name.startswith("wan") else "acc.png")
    code = run_cli(*base, "--out", str(out), *options)
    if refusal is not None:
        assert code == 2 and refusal in capsys.readouterr().err
        assert not out.exists()
        return
    assert code == 0
    kept = [v for i, o in enumerate(options) if o in KEPT for v in options[i:i + 2]]
    accelerated, plain = output_frames(out), plain_run(base, kept, tmp_path)
    assert len(accelerated) == len(plain) and all(a.shape == b.shape for a, b in zip(accelerated, plain, strict=True))
    assert max(np.abs(a - b).max() for a, b in zip(accelerated, plain, strict=True)) > 0  # the accelerator acted


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "nothing_here", "model folder not found"),
    (lambda root: (root / "empty").mkdir() or root / "empty", "is not a diffusers pipeline folder: it has no "
                                                              "model_index.json"),
    (lambda root: single_model(root), "it holds a single model's config.json: point at the pipeline folder"),
    (lambda root: edited_index(root, "KandinskyPipeline"), "pipeline class 'KandinskyPipeline' is not supported; "
                                                          "supported: StableDiffusion3Pipeline"),
    (lambda root: without(root, "vae"), "component 'vae' (AutoencoderKL) is missing"),
    (lambda root: pickled(root), "has no .safetensors weights"),
    (lambda root: custom_code(root), "only diffusers and transformers components load"),
])
def test_bad_folders_get_one_clear_message(model_root, tmp_path, capsys, make, message):
    folder = make(copy_of(model_root / "sd3", tmp_path))
    assert run_cli("--model", str(folder), "--out", str(tmp_path / "x.png")) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "x.png").exists()


def copy_of(folder, tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(folder, root / "model")
    return root


def single_model(root):
    (root / "t").mkdir()
    (root / "t" / "config.json").write_text("{}")
    return root / "t"


def edited_index(root, class_name):
    index = json.loads((root / "model" / "model_index.json").read_text())
    (root / "model" / "model_index.json").write_text(json.dumps({**index, "_class_name": class_name}))
    return root / "model"


def without(root, component):
    import shutil

    shutil.rmtree(root / "model" / component)
    return root / "model"


def pickled(root):
    for f in (root / "model" / "transformer").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    return root / "model"


def custom_code(root):
    index = json.loads((root / "model" / "model_index.json").read_text())
    index["vae"] = ["my_package", "MyVAE"]
    (root / "model" / "model_index.json").write_text(json.dumps(index))
    return root / "model"


@pytest.mark.parametrize("name, options, message", [
    ("sd3", ["--width", "40"], "takes widths and heights that are multiples of 16 pixels (VAE factor 8 x patch 2); "
                               "got width 40: use 32 or 48"),
    ("sd3", ["--width", "272"], "takes at most 256 pixels per side"),
    ("wan21", ["--frames", "6"], "--frames must be 1 plus a multiple of 4, got 6"),
    ("sd15", ["--width", "36"], "multiples of 8 pixels (VAE factor 8); got width 36: use 32 or 40"),
    ("sd3", ["--offload"], "--offload keeps models in CPU memory and moves each to the GPU while it runs"),
    ("sd3", ["--out", "video.mp4"], "--out must be a .png file"),
    ("wan21", ["--out", "frames.png"], "this model makes videos: --out must end in .mp4, .webp, .gif"),
])
def test_sizes_frames_and_options_the_model_cannot_take(models, tmp_path, capsys, name, options, message):
    diffusers_pipeline.unload()
    out = ["--out", str(tmp_path / ("x.mp4" if name.startswith("wan") else "x.png"))]
    assert run_cli("--model", name, *out, *options) == 2
    assert message in capsys.readouterr().err
    assert not diffusers_pipeline._LOADED  # refused before anything loads


def test_out_of_memory_is_reported_as_the_gpu_issue_does(models, tmp_path, capsys, monkeypatch):
    from turbosample.models.diffusers_networks import DiffusersUNet

    def no_memory(*_args, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    with monkeypatch.context() as patch:
        patch.setattr(DiffusersUNet, "forward", no_memory)
        assert run_cli("--model", "sd15", "--out", str(tmp_path / "x.png")) == 2
    err = capsys.readouterr().err
    assert "out of memory on cpu sampling a (1, 4, 4, 4) latent" in err and "--offload" in err
    (loaded,) = diffusers_pipeline._LOADED.values()
    monkeypatch.setattr(type(loaded.pipe.vae), "decode", no_memory)
    assert run_cli("--model", "sd15", "--out", str(tmp_path / "x.png")) == 2
    assert "out of memory on cpu decoding with the VAE of sd15" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_videos_fall_back_to_animated_webp_and_gif_without_an_encoder(models, tmp_path, monkeypatch):
    from turbosample.nodes import media

    monkeypatch.setattr(media, "mp4_encoder", lambda: None)
    assert run_cli("--model", "wan21", "--frames", "5", "--out", str(tmp_path / "clip")) == 0
    webp = Image.open(tmp_path / "clip.webp")
    assert webp.n_frames == 5 and webp.size == (SIZE, SIZE)
    assert settings_from_file(tmp_path / "clip.webp").model == "wan21"  # from the ComfyUI-style EXIF workflow
    assert run_cli("--model", "wan21", "--frames", "5", "--out", str(tmp_path / "clip.gif")) == 0
    assert Image.open(tmp_path / "clip.gif").n_frames == 5
    assert settings_from_file(tmp_path / "clip.gif").frames == 5
    assert run_cli("--model", "wan21", "--frames", "5", "--out", str(tmp_path / "clip.mp4")) == 2


def test_model_cpu_offload_runs_the_same_image(model_root):
    """Offload's code path on the CPU (accelerate hooks move each model to the execution device, which is the CPU
    here); the user-facing option refuses the CPU, this checks the path itself gives the same image."""
    info = inspect_folder(model_root / "sd3")
    images = []
    for offload in (False, True):
        loaded = load(info, torch.device("cpu"), torch.float32, offload)
        model = model_for(loaded, 3.0, SIZE, SIZE)
        positive, negative = encode(loaded, "a red fox", "")
        sigmas = torch.tensor([1.0, 0.6, 0.3, 0.0])
        latent = sample(model, positive, negative, torch.zeros(1, 4, 4, 4), SAMPLERS["euler"], sigmas, 0, 3.0)
        images.append(decode(loaded, latent))
        assert hasattr(loaded.pipe.transformer, "_hf_hook") == offload
    assert torch.allclose(images[0], images[1], atol=1e-6)


def test_folder_names_never_leave_the_models_folder(models):
    for name in ("../sd3", "/etc", "sd3/vae", "..", ""):
        with pytest.raises(ModelFolderError, match="not a folder name"):
            model_folders.resolve(name)
    with pytest.raises(ModelFolderError, match="model folder 'gone' was not found: looked in the models folder"):
        model_folders.resolve("gone")
    assert model_folders.available() == sorted(FAMILIES)


EXPORTS = {
    "sd3": {"CheckpointLoaderSimple", "TripleCLIPLoader", "ModelSamplingSD3", "EmptySD3LatentImage", "SaveImage"},
    "sd35": {"CheckpointLoaderSimple", "TripleCLIPLoader", "ModelSamplingSD3", "EmptySD3LatentImage"},
    "flux_dev": {"UNETLoader", "DualCLIPLoader", "VAELoader", "ModelSamplingFlux", "FluxGuidance",
                 "EmptySD3LatentImage"},
    "flux_schnell": {"UNETLoader", "DualCLIPLoader", "VAELoader", "ModelSamplingFlux"},
    "sd15": {"CheckpointLoaderSimple", "ModelSamplingDiscrete", "EmptyLatentImage"},
    "sd2_v": {"CheckpointLoaderSimple", "ModelSamplingDiscrete", "EmptyLatentImage"},
    "sdxl": {"CheckpointLoaderSimple", "ModelSamplingDiscrete", "EmptyLatentImage"},
    "wan21": {"UNETLoader", "CLIPLoader", "VAELoader", "ModelSamplingSD3", "EmptyHunyuanLatentVideo",
              "SaveAnimatedWEBP"},
    "wan22_ti2v": {"UNETLoader", "CLIPLoader", "VAELoader", "ModelSamplingSD3", "Wan22ImageToVideoLatent",
                   "SaveAnimatedWEBP"},
}


@pytest.mark.parametrize("name", list(EXPORTS))
def test_the_comfyui_export_uses_core_loaders_and_reads_back(models, name):
    from turbosample.nodes.app_graph import settings_from_api, to_api_prompt, to_ui_workflow
    from turbosample.nodes.folder_graph import folder_of
    from turbosample.nodes.txt2img import Settings
    from turbosample.nodes.workflow import to_api, ui_to_api

    info = folder_of(name)
    unet = info.family in ("sd", "sdxl")
    accelerators = {"loop_accelerator": "dualfast"} if unet else {"magcache_threshold": 0.2, "ras_ratio": 0.5}
    video = {"frames": 9} if info.video else {}  # image models have no frame count in their graph
    settings = Settings(**{**info.defaults(), "width": 96, "height": 64, "flow_shift": 2.0, **video},
                        model=name, prompt="a red fox", negative_prompt="blurry", seed=4, **accelerators)
    api = to_api_prompt(settings)
    classes = {node["class_type"] for node in api.values()}
    assert EXPORTS[name] <= classes and "TurboSampleSample" in classes
    assert not {c for c in classes if c.startswith("TurboSampleFolder")}  # the app's own nodes stay in the app
    if not unet:  # MagCache is calibrated on the model first (in ComfyUI: its cache keeps the file)
        assert {"TurboSampleMagCacheCalibrateModel", "TurboSampleMagCache", "TurboSampleRAS"} <= classes
    loader = next(n for n in api.values() if n["class_type"] in ("CheckpointLoaderSimple", "UNETLoader"))
    assert f"{name}.safetensors" in loader["inputs"].values()  # the model file is named after the folder
    if name == "flux_schnell":  # a constant shift s is ModelSamplingFlux with mu = ln s
        flux = next(n for n in api.values() if n["class_type"] == "ModelSamplingFlux")["inputs"]
        assert flux["max_shift"] == flux["base_shift"] == pytest.approx(np.log(2.0))
    constant_shift = info.prediction == "flow" and info.dynamic_shift is None  # else the shift is not a setting
    expected = settings if constant_shift else Settings(**{**settings.to_dict(), "flow_shift": info.flow_shift})
    assert settings_from_api(to_api(api)) == expected
    assert settings_from_api(ui_to_api(to_ui_workflow(settings))) == expected


def test_a_two_expert_wan_has_no_comfyui_export_but_its_videos_carry_their_settings(models):
    from turbosample.nodes.app_graph import to_api_prompt
    from turbosample.nodes.pipeline import metadata
    from turbosample.nodes.txt2img import Settings
    from turbosample.nodes.workflow import WorkflowError

    settings = Settings(model="wan22", width=32, height=32, frames=5)
    with pytest.raises(WorkflowError, match="two-expert Wan 2.2 folder .* its ComfyUI export is not supported"):
        to_api_prompt(settings)
    assert set(metadata(settings)) == {"parameters"}


def test_tune_runs_on_a_model_folder_and_saves_a_workflow_that_names_it(models, tmp_path):
    """``turbosample tune --model``: the reference and candidates run on the folder's model, images from its VAE;
    the tuner calibrates MagCache on it (no shipped calibration fits a folder)."""
    report, workflow = tmp_path / "tune.json", tmp_path / "tuned.json"
    code = main(["tune", "--model", "flux_schnell", "--target-speedup", "1.5", "--steps", "6", "--width", str(SIZE),
                 "--height", str(SIZE), "--prompt", "a red fox", "--budget-runs", "4", "--seeds", "1", "--report",
                 str(report), "--save-workflow", str(workflow), "--device", "cpu", "--dtype", "fp32"])
    assert code == 0
    data = json.loads(report.read_text())
    assert data["chosen"]["speedup"] > 0 and "psnr_db" in data["chosen"]
    assert settings_from_file(str(workflow)).model == "flux_schnell"
