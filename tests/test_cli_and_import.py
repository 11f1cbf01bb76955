import json
import subprocess
import sys

from PIL import Image

from turbosample.cli import main
from turbosample.nodes.pipeline import workflow_from_png
from turbosample.nodes.txt2img import settings_from_api
from turbosample.nodes.workflow import to_api


def test_importing_the_pack_loads_nothing_heavy():
    code = ("import sys, turbosample, turbosample.nodes.registry, turbosample.nodes.workflow;"
            "heavy = [m for m in ('gradio', 'diffusers', 'xformers', 'transformers', 'comfy') if m in sys.modules];"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_generate_writes_png_with_its_workflow(tmp_path, capsys):
    out = tmp_path / "img.png"
    wf = tmp_path / "wf.json"
    code = main(["generate", "--prompt", "red apple", "--steps", "2", "--width", "32", "--height", "32",
                 "--seed", "7", "--out", str(out), "--save-workflow", str(wf)])
    assert code == 0
    image = Image.open(out)
    assert image.size == (32, 32)
    settings = settings_from_api(to_api(workflow_from_png(out)))
    assert (settings.prompt, settings.steps, settings.seed) == ("red apple", 2, 7)
    assert settings_from_api(to_api(json.loads(wf.read_text()))) == settings
    # rerunning the PNG's workflow reproduces the image exactly
    again = tmp_path / "again.png"
    assert main(["generate", "--workflow", str(out), "--out", str(again)]) == 0
    assert Image.open(again).tobytes() == image.tobytes()


def test_seeds_above_2_53_are_kept_exactly(tmp_path):
    import torch

    from turbosample.samplers.noise import seeded_noise

    assert not torch.equal(seeded_noise(2**53 + 1, (1, 4)), seeded_noise(2**53, (1, 4)))
    out = tmp_path / "big.png"
    assert main(["generate", "--steps", "1", "--width", "32", "--height", "32", "--seed", str(2**64 - 1),
                 "--out", str(out)]) == 0
    assert settings_from_api(to_api(workflow_from_png(out))).seed == 2**64 - 1


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["generate", "--prompt", "x", "--sampler", "nope", "--out", str(tmp_path / "a.png")]) == 2
    assert "--sampler: unknown value 'nope'" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--width", "30", "--out", str(tmp_path / "a.png")]) == 2
    assert "--width must be 16 plus a multiple of 4" in capsys.readouterr().err
    assert main(["generate", "--steps", "0", "--out", str(tmp_path / "a.png")]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["generate", "--workflow", str(bad), "--out", str(tmp_path / "a.png")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()


def test_cli_checks_the_output_name_before_generating(tmp_path, capsys, monkeypatch):
    import turbosample.nodes.pipeline as pipeline

    ran = []
    monkeypatch.setattr(pipeline, "generate", lambda *a, **k: ran.append(1) or [])
    assert main(["generate", "--prompt", "x", "--out", str(tmp_path / "a.jpg")]) == 2
    assert "--out must be a .png file" in capsys.readouterr().err and not ran  # refused before any model call
    monkeypatch.undo()
    code = main(["generate", "--prompt", "x", "--steps", "1", "--width", "32", "--height", "32",
                 "--out", str(tmp_path / "sub" / "picture")])
    assert code == 0 and (tmp_path / "sub" / "picture.png").exists()  # .png added, folder made
