"""Auto-tune's front ends on the built-in model (small sizes, small budgets): the saved setting reruns what was
measured (the app's workflow gives the tuner's image), report/workflow files from the CLI, the node, the app's
*Find settings* with Stop. Nothing here depends on the current weights' outputs or on timing."""

import json

import numpy as np
import pytest

from turbosample.cli import main
from turbosample.nodes.autotune import report_json, settings_for, tune_problem
from turbosample.nodes.txt2img import Settings, settings_from_api, to_ui_workflow
from turbosample.nodes.workflow import to_api, ui_to_api
from turbosample.tune.space import Candidate

BASE = Settings(prompt="red apple", seed=2, steps=8, width=32, height=32)
CANDIDATES = [Candidate("euler", 12, 0.25, 3, 0.5), Candidate("dpmpp_2m_dualfast", 6),
              Candidate("euler", 8, 0.12, 2, loop="bottleneck"), Candidate("uni_pc", 5, ras_ratio=0.35)]


@pytest.mark.parametrize("candidate", CANDIDATES, ids=lambda c: c.label())
def test_saved_setting_runs_the_measured_image_and_round_trips(candidate):
    from turbosample.nodes.autotune import builtin_image
    from turbosample.nodes.pipeline import generate
    from turbosample.tune.standalone import StandaloneBackend

    settings = settings_for(candidate, BASE)
    assert settings_from_api(ui_to_api(to_ui_workflow(settings))) == settings
    backend = StandaloneBackend(tune_problem(settings))
    tuned = np.round(builtin_image(backend.run(candidate, BASE.seed)) * 255).astype(np.int16)
    app = np.asarray(generate(settings)[0], dtype=np.int16)
    assert np.abs(tuned - app).max() <= 1  # the workflow the app, CLI and ComfyUI run = what the tuner scored
    bare = Candidate(candidate.sampler.removesuffix("_dualfast"), candidate.steps)
    plain = np.round(builtin_image(backend.run(bare, BASE.seed)) * 255)
    assert np.abs(plain - app).max() > 2  # ... and the accelerators really changed it


def test_reference_drops_every_accelerator_and_refuses_other_sigma_sources():
    from turbosample.nodes.autotune import check_tunable, reference_of
    from turbosample.nodes.workflow import WorkflowError

    accelerated = Settings(magcache_threshold=0.2, ras_ratio=0.5, loop_accelerator="bottleneck")
    ref = reference_of(accelerated)
    assert (ref.magcache_threshold, ref.ras_ratio, ref.loop_accelerator) == (0.0, 1.0, "none")
    with pytest.raises(WorkflowError, match="Sigmas from"):
        check_tunable(Settings(sigmas_from="gits"))
    with pytest.raises(WorkflowError, match="denoise"):
        check_tunable(Settings(denoise=0.5))


def test_cli_tune_writes_report_plot_and_a_workflow_the_cli_runs(tmp_path, capsys):
    report, workflow, plot = tmp_path / "r.json", tmp_path / "wf.json", tmp_path / "p.png"
    rc = main(["tune", "--target-speedup", "1.5", "--budget-runs", "4", "--seeds", "1", "--steps", "6",
               "--width", "32", "--height", "32", "--prompt", "rocket", "--report", str(report),
               "--save-workflow", str(workflow), "--plot", str(plot)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| setting |" in out and "Spent" in out
    data = json.loads(report.read_text())
    chosen = data["chosen"]
    assert isinstance(chosen["speedup"], float) and isinstance(chosen["psnr_db"], float)
    assert chosen["met_target"] == data["met"] and (not data["met"] or chosen["speedup"] >= 1.5)
    assert data["reference_settings"]["prompt"] == "rocket" and data["reference_settings"]["steps"] == 6
    saved = settings_from_api(to_api(json.loads(workflow.read_text())))
    assert saved == Settings.from_dict(chosen["settings"])
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert main(["generate", "--workflow", str(workflow), "--out", str(tmp_path / "img.png")]) == 0


def test_cli_tune_bad_input_is_refused_before_any_work(tmp_path, capsys):
    assert main(["tune", "--target-speedup", "0.5"]) == 2
    assert "> 1" in capsys.readouterr().err
    assert main(["tune", "--target-speedup", "2", "--report", str(tmp_path / "r.txt")]) == 2
    assert ".json" in capsys.readouterr().err
    assert main(["tune", "--min-psnr", "30", "--sigmas-from", "gits"]) == 2
    with pytest.raises(SystemExit):
        main(["tune", "--target-speedup", "2", "--min-psnr", "30"])


def test_report_json_carries_the_app_settings_of_every_choice():
    from turbosample.nodes.autotune import run_tune
    from turbosample.tune.search import Budget, Target

    result = run_tune(Settings(prompt="cat face", steps=6, width=32, height=32), Target(min_psnr=25.0),
                      Budget(runs=3), seeds=1)
    data = report_json(result, Settings(prompt="cat face", steps=6, width=32, height=32))
    assert data["target"] == {"speedup": None, "min_psnr_db": 25.0}
    if data["chosen"] is not None:
        assert Settings.from_dict(data["chosen"]["settings"]).prompt == "cat face"


def test_node_returns_patched_model_sampler_sigmas_and_report_that_sample():
    import torch

    from turbosample.nodes.builtin_nodes import encode_text, load_builtin_model
    from turbosample.nodes.registry import NODE_BY_ID
    from turbosample.nodes.spec import NodeInputError

    node = NODE_BY_ID["TurboSampleAutoTune"]
    (model,) = load_builtin_model(1.0)
    inputs = {"model": model, "positive": encode_text("sunflower")[0], "negative": encode_text("")[0],
              "latent_image": {"samples": torch.zeros(1, 8, 4, 4)}, "sampler_name": "euler",
              "scheduler": "simple", "steps": 6, "cfg": 4.0, "seed": 1, "seeds": 1, "target_speedup": 1.5,
              "min_psnr": 0.0, "budget_runs": 3.0, "report_filename": ""}
    patched, sampler, sigmas, image = node.run(**inputs)
    assert image.ndim == 4 and image.shape[-1] == 3 and sigmas.ndim == 1
    (latent,) = NODE_BY_ID["TurboSampleSample"].run(model=patched, positive=inputs["positive"],
                                                    negative=inputs["negative"], sampler=sampler, sigmas=sigmas,
                                                    latent_image=inputs["latent_image"], seed=1, cfg=4.0)
    assert latent["samples"].shape == (1, 8, 4, 4)  # a 32 px image's latent
    with pytest.raises(NodeInputError, match="one target"):
        node.run(**{**inputs, "min_psnr": 30.0})


def test_app_find_settings_streams_the_report_applies_the_choice_and_stop_keeps_it():
    from turbosample.web.app import ORDER, settings_from_values, values_from_settings
    from turbosample.web.autotune_ui import find_settings, stop_tuning

    values = values_from_settings(Settings(prompt="rocket", steps=6, width=32, height=32, seed=4))
    gen = find_settings(values, 1.5, 0, 50, 1, "test-session", settings_from_values, values_from_settings,
                        len(ORDER))
    first = next(gen)
    assert "Tuning" in first[0]
    stop_tuning("test-session")  # Stop after the reference: the search ends after its current run
    *_, last = gen
    report, _plot, *controls = last
    assert "Stopped" in report
    assert len(controls) == len(ORDER)
    if "The chosen setting is now in the controls" in report:
        chosen = settings_from_values(controls)
        assert chosen.prompt == "rocket" and chosen.seed == 4


def test_more_prompts_give_each_tuning_seed_its_prompt():
    """``--more-prompts``: seed k runs the k-th prompt (the run's own first), every prompt gets at least one seed, and
    the backend's run on a seed is the plain sample of that seed's prompt (not the first prompt's)."""
    from turbosample.nodes.autotune import builtin_image, seed_prompt_plan
    from turbosample.tune.standalone import StandaloneBackend

    assert seed_prompt_plan(BASE, 2) == {2: "red apple", 3: "red apple"}
    assert seed_prompt_plan(BASE, 2, ["rocket", "cat face"]) == {2: "red apple", 3: "rocket", 4: "cat face"}
    assert seed_prompt_plan(BASE, 4, ["rocket"]) == {2: "red apple", 3: "rocket", 4: "red apple", 5: "rocket"}
    mixed = StandaloneBackend(tune_problem(BASE, seed_prompts={3: "rocket"}))
    alone = {p: StandaloneBackend(tune_problem(Settings(**{**BASE.to_dict(), "prompt": p})))
             for p in ("red apple", "rocket")}
    ref = Candidate(BASE.sampler, BASE.steps)
    for seed, prompt in ((2, "red apple"), (3, "rocket")):
        image = builtin_image(mixed.run(ref, seed))
        assert np.array_equal(image, builtin_image(alone[prompt].run(ref, seed)))
        other = "rocket" if prompt == "red apple" else "red apple"
        assert np.abs(image - builtin_image(alone[other].run(ref, seed))).max() > 0.1


def test_cli_tune_on_several_prompts_reports_them(tmp_path, capsys):
    report = tmp_path / "r.json"
    rc = main(["tune", "--target-speedup", "1.5", "--budget-runs", "3", "--seeds", "1", "--steps", "6",
               "--width", "32", "--height", "32", "--prompt", "rocket", "--more-prompts", "cat face",
               "--report", str(report)])
    assert rc == 0
    data = json.loads(report.read_text())
    assert data["seeds"] == [0, 1]  # one seed per prompt even with --seeds 1
    assert "seed 0: 'rocket'; seed 1: 'cat face'" in " ".join(data["notes"])
    assert data["reference_settings"]["prompt"] == "rocket"


def test_node_scores_the_builtin_model_on_decoded_images_and_other_latents_on_themselves(monkeypatch):
    """The built-in model's latents (8 channels) are decoded for PSNR; a latent of another shape is scored as is."""
    import torch

    from turbosample.nodes.autotune_model import is_builtin_latent
    from turbosample.nodes.autotune_nodes import autotune
    from turbosample.nodes.builtin_nodes import encode_text, load_builtin_model
    from turbosample.tune import standalone

    assert is_builtin_latent(torch.zeros(1, 8, 4, 4)) and not is_builtin_latent(torch.zeros(1, 3, 32, 32))
    seen = []

    class Stop(Exception):
        pass

    def capture(problem):
        seen.append(problem)
        raise Stop

    monkeypatch.setattr(standalone, "StandaloneBackend", capture)
    (model,) = load_builtin_model(1.0)
    args = dict(model=model, positive=encode_text("sunflower")[0], negative=encode_text("")[0], sampler_name="euler",
                scheduler="simple", steps=4, cfg=4.0, seed=1, seeds=1, target_speedup=1.5, min_psnr=0.0,
                budget_runs=2.0, report_filename="")
    with pytest.raises(Stop):
        autotune(latent_image={"samples": torch.zeros(1, 8, 4, 4)}, **args)
    image = seen[-1].to_image(torch.zeros(1, 8, 4, 4))
    assert image.shape == (32, 32, 3) and 0 <= image.min() and image.max() <= 1
