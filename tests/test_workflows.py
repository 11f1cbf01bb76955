import copy
import json
import re
from pathlib import Path

import pytest

from turbosample.nodes.templates import BY_SLUG, TEMPLATES
from turbosample.nodes.txt2img import Settings, settings_from_api, to_api_prompt, to_ui_workflow
from turbosample.nodes.workflow import (
    WorkflowError,
    check_api,
    known_specs,
    parse_json,
    split_widget_values,
    to_api,
    ui_to_api,
)

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
UI_FILES = sorted(WORKFLOWS.glob("*.json"))
API_DIR = WORKFLOWS / "api"
BUILTIN = [t for t in TEMPLATES if t.builtin]
MODELS = [t for t in TEMPLATES if not t.builtin]


def strip_meta(api: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}


def ui_file(t) -> Path:
    return WORKFLOWS / f"{t.title}.json"


def test_every_template_has_a_ui_file_an_api_copy_and_nothing_else_is_shipped():
    assert [p.name for p in UI_FILES] == sorted(f"{t.title}.json" for t in TEMPLATES)
    assert sorted(p.name for p in API_DIR.glob("*.json")) == sorted(f"{t.slug}.json" for t in TEMPLATES)
    assert [t.title for t in TEMPLATES] == sorted(t.title for t in TEMPLATES)  # sorted by name = shown order
    assert TEMPLATES[0].slug == "builtin_txt2img"
    assert sorted(p.name for p in WORKFLOWS.glob("*.jpg")) == sorted(f"{t.title}.jpg" for t in TEMPLATES)
    for t in TEMPLATES:  # the frontend puts names into URLs and shows '-' and '_' as spaces in descriptions
        assert re.fullmatch(r"[0-9]{2} [A-Za-z0-9 .()+-]+", t.title), t.title


def test_shipped_files_are_current():
    for t in TEMPLATES:
        ui, api = t.files()
        assert json.loads(ui_file(t).read_text()) == ui, t.title
        assert json.loads((API_DIR / f"{t.slug}.json").read_text()) == api, t.slug


def check_links(ui: dict, specs: dict) -> None:
    """Links type-check: the link's type equals both the output's and the input's declared type."""
    nodes = {n["id"]: n for n in ui["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, link_type in ui["links"]:
        out_type = specs[nodes[src]["type"]].outputs[src_slot].type
        in_slot = nodes[dst]["inputs"][dst_slot]
        assert in_slot["link"] == link_id
        assert link_type == out_type == specs[nodes[dst]["type"]].param(in_slot["name"]).type


@pytest.mark.parametrize("t", BUILTIN, ids=lambda t: t.slug)
def test_shipped_workflow_matches_node_declarations(t):
    ui = json.loads(ui_file(t).read_text())
    specs = known_specs()
    # node types exist and widget values line up with the declared widget inputs, in order and in range
    api = ui_to_api(ui)
    for node in ui["nodes"]:
        assert node["type"] in specs
    check_links(ui, specs)
    # the API copy is the same graph
    api_copy = json.loads((API_DIR / f"{t.slug}.json").read_text())
    assert strip_meta(check_api(api_copy)) == strip_meta(api)


@pytest.mark.parametrize("t", MODELS, ids=lambda t: t.slug)
def test_real_model_workflows_use_core_loaders_and_this_packs_nodes(t):
    from turbosample.nodes.model_workflows import SPECS

    ui = json.loads(ui_file(t).read_text())
    check_links(ui, SPECS)
    types = {n["type"] for n in ui["nodes"]}
    assert types & {"UNETLoader", "CheckpointLoaderSimple"} and types & {"DualCLIPLoader", "TripleCLIPLoader",
                                                                          "CLIPLoader"}
    assert any(x.startswith("TurboSample") for x in types)
    with pytest.raises(WorkflowError, match="needs nodes this app does not have"):  # the app says so, and stops
        to_api(ui)
    api = json.loads((API_DIR / f"{t.slug}.json").read_text())
    for node in api.values():  # every widget value in range for its declaration
        for p in SPECS[node["class_type"]].widgets:
            if p.type != "COMBO":
                p.coerce(node["inputs"][p.name])


@pytest.mark.parametrize("t", TEMPLATES, ids=lambda t: t.slug)
def test_shipped_layout_has_no_overlap_fits_one_view_and_sizes_cover_the_frontend_estimate(t):
    from turbosample.nodes.graph_json import ui_shape
    from turbosample.nodes.layout import layout_problems, node_size
    from turbosample.nodes.model_workflows import SPECS

    ui = json.loads(ui_file(t).read_text())
    placed = {f"{n['id']} {n.get('title', n['type'])}": (n["pos"], n["size"]) for n in ui["nodes"]}
    assert layout_problems(placed) == []
    for n in ui["nodes"]:
        spec = SPECS[n["type"]]
        values = split_widget_values(spec, n["widgets_values"], n["type"])
        need = node_size(ui_shape(spec, n.get("title", ""), values))
        assert n["size"][0] >= need[0] and n["size"][1] >= need[1], (n["type"], n["size"], need)


def test_layout_problems_are_found():
    from turbosample.nodes.layout import layout_problems

    assert layout_problems({"a": ([10, 40], [100, 100]), "b": ([60, 100], [100, 50])}) == ["a overlaps b"]
    assert layout_problems({"a": ([10, 40], [100, 100]), "b": ([10, 170], [100, 50])}) == []  # titles clear
    assert layout_problems({"a": ([10, 40], [100, 100]), "b": ([10, 160], [100, 50])}) == ["a overlaps b"]
    assert "leaves the 1536 x 922 view" in layout_problems({"a": ([1500, 40], [100, 100])})[0]


def test_positive_and_negative_prompts_have_their_own_titles_and_linked_widgets_keep_plain_values():
    for name in ("builtin_txt2img", "builtin_dc_solver", "builtin_dpm_solver_v3"):
        ui = json.loads(ui_file(BY_SLUG[name]).read_text())
        titles = [n.get("title") for n in ui["nodes"] if n["type"] == "TurboSampleBuiltinTextEncode"]
        assert titles == ["Positive prompt", "Negative prompt"]
        for n in ui["nodes"]:
            assert not any(isinstance(v, list) for v in n["widgets_values"]), (name, n["type"], n["widgets_values"])
        api = json.loads((API_DIR / f"{name}.json").read_text())
        assert sorted(n["_meta"]["title"] for n in api.values() if n["class_type"] == "TurboSampleBuiltinTextEncode") \
            == ["Negative prompt", "Positive prompt"]


def test_settings_round_trip_through_both_formats():
    s = Settings(prompt="cat face", negative_prompt="blurry", seed=123456789012, steps=9, cfg=2.5, width=48,
                 height=32, sampler="euler", scheduler="karras", flow_shift=2.0, batch_size=2, denoise=0.8)
    assert settings_from_api(ui_to_api(to_ui_workflow(s))) == s
    assert settings_from_api(to_api(to_api_prompt(s))) == s
    assert settings_from_api(to_api({"prompt": to_api_prompt(s)})) == s


def broken(mutate):
    ui = to_ui_workflow(Settings())
    mutate(ui)
    return ui


@pytest.mark.parametrize("mutate, message", [
    (lambda ui: ui["nodes"][0].update(type="NoSuchNode"), r"needs nodes this app does not have: NoSuchNode \(node 1\)"),
    (lambda ui: ui["nodes"][5]["widgets_values"].pop(), "input 'denoise' is missing"),
    (lambda ui: ui["nodes"][5]["widgets_values"].append(3), "takes 3"),
    (lambda ui: ui["nodes"][5]["widgets_values"].__setitem__(1, 0), "steps must be >= 1"),
    (lambda ui: ui["nodes"][4]["widgets_values"].__setitem__(0, "nope"), "unknown value 'nope'"),
    (lambda ui: ui["nodes"][3]["widgets_values"].__setitem__(0, 40), "multiple of 16"),
    (lambda ui: ui["links"].pop(0), "missing link"),
    (lambda ui: ui["links"][2].__setitem__(1, 5), "wants CONDITIONING but is linked to a SAMPLER"),
    (lambda ui: ui["nodes"][6]["inputs"][0].update(link=None), "input 'model' is not set"),
])
def test_bad_workflows_name_the_problem(mutate, message):
    with pytest.raises(WorkflowError, match=message):
        ui_to_api(broken(mutate))


def test_bypassed_nodes_are_left_out_and_then_missing():
    ui = broken(lambda ui: ui["nodes"][1].update(mode=4))
    with pytest.raises(WorkflowError, match="links to a missing node"):
        ui_to_api(ui)


def test_malformed_and_foreign_json():
    with pytest.raises(WorkflowError, match="not valid JSON"):
        parse_json("{\"nodes\": [")
    with pytest.raises(WorkflowError, match="JSON object"):
        parse_json("[1, 2]")
    with pytest.raises(WorkflowError, match="neither a ComfyUI UI workflow"):
        to_api({"hello": "world"})
    foreign = {"3": {"class_type": "KSampler", "inputs": {}}}
    with pytest.raises(WorkflowError, match="needs nodes this app does not have: KSampler \\(node 3\\)"):
        to_api(foreign)


def test_a_graph_of_another_shape_is_refused_for_app_settings():
    api = to_api_prompt(Settings())
    extra = copy.deepcopy(api["2"])
    api["99"] = extra
    with pytest.raises(WorkflowError, match="not the app's text-to-image graph"):
        settings_from_api(api)


def stock_comfyui_workflow() -> dict:
    """ComfyUI's default text-to-image graph in UI format (checkpoint, two prompts, KSampler, VAE decode, save)."""
    nodes = [(4, "CheckpointLoaderSimple", [], ["v1-5-pruned-emaonly.safetensors"]),
             (6, "CLIPTextEncode", [("clip", 3)], ["a photo of a cat"]), (7, "CLIPTextEncode", [("clip", 5)], ["bad"]),
             (5, "EmptyLatentImage", [], [512, 512, 1]),
             (3, "KSampler", [("model", 1), ("positive", 4), ("negative", 6), ("latent_image", 2)],
              [156680208700286, "randomize", 20, 8, "euler", "normal", 1]),
             (8, "VAEDecode", [("samples", 7), ("vae", 8)], []), (9, "SaveImage", [("images", 9)], ["ComfyUI"])]
    links = [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"], [4, 6, 0, 3, 1,
             "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"], [6, 7, 0, 3, 2, "CONDITIONING"], [7, 3, 0, 8, 0, "LATENT"],
             [8, 4, 2, 8, 1, "VAE"], [9, 8, 0, 9, 0, "IMAGE"]]
    return {"last_node_id": 9, "last_link_id": 9, "links": links, "version": 0.4, "nodes": [
        {"id": nid, "type": t, "mode": 0, "widgets_values": w,
         "inputs": [{"name": n, "type": "*", "link": lk} for n, lk in ins]} for nid, t, ins, w in nodes]}


def test_a_stock_comfyui_workflow_is_refused_for_the_nodes_it_needs_and_nothing_else():
    with pytest.raises(WorkflowError) as err:
        to_api(stock_comfyui_workflow())
    message = str(err.value)
    assert message.startswith("this workflow needs nodes this app does not have: CLIPTextEncode (node 6, 7), "
                              "CheckpointLoaderSimple (node 4), EmptyLatentImage (node 5), KSampler (node 3), "
                              "VAEDecode (node 8).")
    assert "SaveImage" not in message and "missing" not in message  # the app has SaveImage; node 9's link is fine


def test_thumbnail_script_makes_a_card_naming_the_files_a_real_model_template_loads(tmp_path):
    import sys

    from PIL import Image

    sys.path.insert(0, str(WORKFLOWS.parent / "bench"))
    import make_thumbnails

    assert make_thumbnails.model_files(BY_SLUG["flux_dev_magcache_ras"]) == [
        "flux1-dev.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"]
    assert make_thumbnails.main(["--only", "wan21_t2v_magcache", "--folder", str(tmp_path), "--size", "128"]) == 0
    (written,) = tmp_path.glob("*.jpg")
    assert written.name == f"{BY_SLUG['wan21_t2v_magcache'].title}.jpg" and Image.open(written).size == (128, 128)
