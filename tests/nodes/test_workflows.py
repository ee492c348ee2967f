"""Every shipped workflow, checked without ComfyUI: node types exist, required inputs are connected or
set, links join sockets of the same type, values are in range, and the UI and API files describe the
same graph (see ``helpers.workflows``)."""

from __future__ import annotations

import json

import pytest

from faceanon_core.client.workflows import ui_to_api
from helpers.workflows import (
    FRONTEND_ONLY,
    PUBLIC_API,
    WORKFLOWS,
    WORKFLOWS_API,
    api_breaks,
    check_api,
    check_ui,
    graph_differences,
    input_specs,
    load_core,
    missing_tooltips,
    our_object_info,
    public_api,
    sampler_lists,
)

NAMES = sorted(p.name[:-len("_api.json")] for p in WORKFLOWS_API.glob("*_api.json"))
EXPECTED = {"anonymize_crop", "anonymize_crop_granular", "anonymize_crop_native", "anonymize_group_photo", "face_swap",
            "degree_sweep", "video_frames", "redact_faces"}
#: Node ids and display names: a public API (saved workflows name the ids; users know the names).
DISPLAY_NAMES = {
    "FaceAnon_ModelLoader": "FaceAnon Model Loader",
    "FaceAnon_CLIPImageEncode": "FaceAnon CLIP Image Encode",
    "FaceAnon_CaptureStates": "FaceAnon ReferenceNet Capture",
    "FaceAnon_MixStates": "FaceAnon Mix States (degree)",
    "FaceAnon_DualReferenceSampler": "FaceAnon Dual-Reference KSampler",
    "FaceAnon_ApplyReferences": "FaceAnon Apply References",
    "FaceAnon_Anonymize": "FaceAnon Anonymize",
    "FaceAnon_Swap": "FaceAnon Face Swap",
    "FaceAnon_DetectFaces": "FaceAnon Detect & Align Faces",
    "FaceAnon_PasteFaces": "FaceAnon Paste Faces Back",
    "FaceAnon_RedactFaces": "FaceAnon Redact Faces",
    "FaceAnon_VerifyFaces": "FaceAnon Verify Faces (identity-leak guard)",
    "FaceAnon_TrackFaces": "FaceAnon Track Faces",
}
OUR_NODES = set(DISPLAY_NAMES)


@pytest.fixture(scope="module")
def info():
    core = load_core()
    ours = our_object_info(core)
    assert not set(ours) & set(core)
    return {**core, **ours}


OLD_WORKFLOWS = WORKFLOWS.parent / "tests" / "data" / "workflows-0.1"


def load(name: str, api: bool) -> dict:
    return json.loads(((WORKFLOWS_API / f"{name}_api.json") if api else (WORKFLOWS / f"{name}.json")).read_text())


def graph_nodes(ui: dict) -> list[dict]:
    """The UI file's nodes that are in the API prompt (not the notes)."""
    return [n for n in ui["nodes"] if n["type"] not in FRONTEND_ONLY]


def test_the_promised_workflows_ship_with_ui_file_preview_and_description():
    assert set(NAMES) == EXPECTED
    readme = (WORKFLOWS / "README.md").read_text()
    for name in NAMES:
        assert (WORKFLOWS / f"{name}.json").is_file(), name
        preview = WORKFLOWS / "previews" / f"{name}.png"
        assert preview.is_file() and preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"{name}.json" in readme and f"previews/{name}.png" in readme, name


def test_our_definitions_are_read_from_the_node_code(info):
    assert set(info) >= OUR_NODES
    sampler = info["FaceAnon_DualReferenceSampler"]
    assert sampler["output"] == ["LATENT"]
    assert sampler["input"]["required"]["sampler_name"][0] == "COMBO"  # the V3 form of a combo
    assert "euler" in sampler["input"]["required"]["sampler_name"][1]["options"]
    assert info["FaceAnon_MixStates"]["input"]["required"]["degree"][1]["max"] == 3.0
    assert info["FaceAnon_RedactFaces"]["input"]["optional"]["faces"][0] == "FACEANON_FACES"
    assert info["FaceAnon_RedactFaces"]["input"]["optional"]["detector_min_face"][1]["default"] == 20.0
    import sys

    assert "comfy" not in sys.modules and "folder_paths" not in sys.modules  # the stand-ins are gone


def test_node_ids_and_display_names_are_the_published_ones(info):
    assert {name: entry["display_name"] for name, entry in info.items() if name in OUR_NODES} == DISPLAY_NAMES
    assert {name for name in info if name.startswith("FaceAnon_")} == OUR_NODES  # every node of the extension


def test_the_nodes_public_api_is_the_saved_one(info):
    """Inputs (names, order, types, choices, defaults, ranges, required or optional) and outputs as saved in
    tests/data/node_public_api.json, from a real ComfyUI's /object_info of the nodes before the V3 move
    (tests/helpers/host/dump_object_info.py --public-api); only new optional inputs may come after them."""
    saved = json.loads(PUBLIC_API.read_text())
    ours = {name: entry for name, entry in info.items() if name in OUR_NODES}
    assert set(saved) == OUR_NODES
    assert api_breaks(public_api(ours, sampler_lists()), saved) == []


def test_the_public_api_check_catches_a_breaking_change(info):
    saved = json.loads(PUBLIC_API.read_text())
    ours = public_api({name: entry for name, entry in info.items() if name in OUR_NODES}, sampler_lists())
    changed = json.loads(json.dumps(ours))
    detect = changed["FaceAnon_DetectFaces"]["inputs"]
    detect[1]["name"] = "confidence"  # a renamed input
    detect[3]["default"] = 256  # another default
    changed["FaceAnon_RedactFaces"]["inputs"].append({"name": "new", "section": "required", "position": 9,
                                                      "type": "INT"})
    del changed["FaceAnon_TrackFaces"]
    problems = api_breaks(changed, saved)
    assert len(problems) == 4 and any("confidence" in p for p in problems), problems
    ours["FaceAnon_RedactFaces"]["inputs"].append({"name": "new", "section": "optional", "position": 2,
                                                   "type": "INT"})
    assert api_breaks(ours, saved) == []  # a new optional input after the saved ones is compatible


def test_every_input_of_every_node_has_a_tooltip(info):
    assert missing_tooltips({name: entry for name, entry in info.items() if name in OUR_NODES}) == []


@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_matches_the_node_definitions(name, info):
    assert check_api(load(name, api=True), info) == []


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_is_consistent_and_typed(name, info):
    assert check_ui(load(name, api=False), info) == []


@pytest.mark.parametrize("name", NAMES)
def test_ui_and_api_files_describe_the_same_graph(name, info):
    ui, api = load(name, api=False), load(name, api=True)
    assert sorted(n["id"] for n in graph_nodes(ui)) == sorted(int(k) for k in api)
    assert {n["id"]: n["type"] for n in graph_nodes(ui)} == {int(k): v["class_type"] for k, v in api.items()}
    links_ui = {(str(origin), oslot, str(target), next(i["name"] for i in ui_node["inputs"] if i.get("link") == lid))
                for lid, origin, oslot, target, tslot, _ in ui["links"]
                for ui_node in ui["nodes"] if ui_node["id"] == target}
    links_api = {(str(v[0]), v[1], node_id, name) for node_id, node in api.items()
                 for name, v in node["inputs"].items() if isinstance(v, list)}
    assert links_ui == links_api
    assert graph_differences(api, ui_to_api(ui, info)) == []


def test_uses_one_model_folder_name_and_fixed_seeds(info):
    for name in NAMES:
        api, ui = load(name, api=True), load(name, api=False)
        folders = {n["inputs"]["model_folder"] for n in api.values() if n["class_type"] == "FaceAnon_ModelLoader"}
        assert folders <= {"face-anon-simple"}, name
        for node in graph_nodes(ui):
            if "control_after_generate" in json.dumps(input_specs(info[node["type"]])):
                assert "fixed" in node["widgets_values"], (name, node["id"])  # same identity on every run


def test_degree_sweep_and_video_settings():
    sweep = load("degree_sweep", api=True)
    degrees = sorted(n["inputs"]["degree"] for n in sweep.values() if n["class_type"] == "FaceAnon_Anonymize")
    assert degrees == [0.0, 0.5, 1.0, 1.25, 1.5]
    assert len({n["inputs"]["seed"] for n in sweep.values() if n["class_type"] == "FaceAnon_Anonymize"}) == 1
    video = load("video_frames", api=True)
    anonymize = [n for n in video.values() if n["class_type"] == "FaceAnon_Anonymize"]
    assert len(anonymize) == 1  # every frame's faces in one node, one seed
    (track,) = [k for k, n in video.items() if n["class_type"] == "FaceAnon_TrackFaces"]
    # one anonymous identity per person: the faces of Track Faces wired in, identity per-track
    assert anonymize[0]["inputs"]["faces"] == [track, 1] and anonymize[0]["inputs"]["identity"] == "per-track"
    assert anonymize[0]["inputs"]["image"] == [track, 0]
    (paste,) = [n for n in video.values() if n["class_type"] == "FaceAnon_PasteFaces"]
    assert paste["inputs"]["faces"] == [track, 1]
    (create,) = [n for n in video.values() if n["class_type"] == "CreateVideo"]
    components = next(k for k, n in video.items() if n["class_type"] == "GetVideoComponents")
    assert create["inputs"]["fps"] == [components, 2] and create["inputs"]["audio"] == [components, 1]
    redact = load("redact_faces", api=True)
    assert not any(n["class_type"] == "FaceAnon_ModelLoader" for n in redact.values())  # no diffusion weights


@pytest.mark.parametrize("mutation, message", [
    (lambda p: p["3"]["inputs"].__setitem__("degree", 7.0), "outside"),
    (lambda p: p["3"]["inputs"].__setitem__("sampler_name", "no_such_sampler"), "not one of"),
    (lambda p: p["3"]["inputs"].pop("seed"), "neither connected nor set"),
    (lambda p: p["3"]["inputs"].__setitem__("image", ["1", 1]), "expects IMAGE"),
    (lambda p: p["3"].__setitem__("class_type", "FaceAnon_Nope"), "unknown node type"),
    (lambda p: p["3"]["inputs"].__setitem__("steps", 2.5), "integer"),
    (lambda p: p["4"]["inputs"].__setitem__("images", ["9", 0]), "points at no node"),
])
def test_the_checks_catch_broken_workflows(info, mutation, message):
    prompt = load("anonymize_crop", api=True)
    mutation(prompt)
    problems = check_api(prompt, info)
    assert any(message in p for p in problems), problems


def test_the_ui_checks_catch_a_wrong_link_type_and_a_missing_widget_value(info):
    ui = load("anonymize_crop", api=False)
    ui["links"][0][5] = "LATENT"
    anonymize = next(n for n in ui["nodes"] if n["type"] == "FaceAnon_Anonymize")
    anonymize["widgets_values"] = anonymize["widgets_values"][:-1]
    problems = check_ui(ui, info)
    assert any("LATENT" in p for p in problems) and any("widget values" in p for p in problems), problems


def test_a_ui_node_saved_before_an_optional_widget_existed_is_accepted_a_missing_required_one_is_not(info):
    """Face Anonymize gained the optional ``identity`` widget: UI files saved before it (without that widget)
    still load, with its default; a node that lacks a required widget is still refused."""
    ui = json.loads((OLD_WORKFLOWS / "anonymize_crop.json").read_text())  # as the 0.1 nodes saved it
    node = next(n for n in ui["nodes"] if n["type"] == "FaceAnon_Anonymize")
    widgets = [i["widget"]["name"] for i in node["inputs"] if i.get("widget")]
    assert "identity" not in widgets  # saved before the widget existed
    assert check_ui(ui, info) == []
    node["inputs"] = [i for i in node["inputs"] if (i.get("widget") or {}).get("name") != "scheduler"]
    node["widgets_values"] = node["widgets_values"][:-1]
    assert any("widgets" in p and "scheduler" in p for p in check_ui(ui, info)), check_ui(ui, info)


def test_the_workflows_saved_before_v3_are_unchanged():
    """tests/data/workflows-0.1 stands for users' saved files: never regenerated (its README), checked here."""
    import hashlib

    folder = OLD_WORKFLOWS
    sums = dict(line.split()[::-1] for line in (folder / "SHA256SUMS").read_text().splitlines())
    assert sorted(sums) == sorted(p.name for p in folder.glob("*.json"))
    for name, digest in sums.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, (
            f"{name} in {folder} changed: these files are what the earlier nodes saved; restore them "
            "(git checkout) and fix the nodes instead")


# ------------------------------------------------------------------ how the UI files open in the frontend

TITLE_HEIGHT = 30  # LiteGraph.NODE_TITLE_HEIGHT: a node's title bar sits above its pos
# The canvas the files are saved fitted to (tests/helpers/host/workflow.FIT_VIEW, 1280x720 less the menus).
FIT = {"width": 1200, "height": 600}
# The title font is 14 px Arial; its average advance over titles like ours is about 7 px a character.
# A node must be at least that wide plus the title bar's dot and padding (about 40 px), or the frontend
# cuts the title with an ellipsis.
TITLE_CHAR_PX, TITLE_PAD_PX = 7.0, 40


def node_title(node: dict, info: dict) -> str:
    return node.get("title") or info[node["type"]]["display_name"]


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_opens_fitted_to_the_view(name):
    ui = load(name, api=False)
    ds = ui["extra"]["ds"]
    scale, (ox, oy) = ds["scale"], ds["offset"]
    assert 0.3 <= scale <= 1.0, f"{name}: opens at {scale:.0%}"  # never zoomed in, never unreadably small
    for node in ui["nodes"]:
        (x, y), (w, h) = node["pos"], node["size"]
        left, top = (x + ox) * scale, (y - TITLE_HEIGHT + oy) * scale
        right, bottom = (x + w + ox) * scale, (y + h + oy) * scale
        assert left >= 0 and right <= FIT["width"] and top >= 0 and bottom <= FIT["height"], \
            f"{name}: node {node['id']} ({node['type']}) lies outside a {FIT['width']}x{FIT['height']} view"


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_has_a_note_saying_what_to_load_and_what_to_expect(name):
    ui, api = load(name, api=False), load(name, api=True)
    notes = [n for n in ui["nodes"] if n["type"] in FRONTEND_ONLY]
    assert len(notes) == 1, f"{name}: {len(notes)} notes"
    text = notes[0]["widgets_values"][0]
    assert "Load:" in text and "Expect:" in text, name
    for node in api.values():  # every file the graph loads is named, and the model folder
        if node["class_type"] in ("LoadImage", "LoadVideo"):
            assert str(next(iter(v for k, v in node["inputs"].items() if k in ("image", "file")))) in text, name
        if node["class_type"] == "FaceAnon_ModelLoader":
            assert f"models/faceanon/{node['inputs']['model_folder']}/" in text, name


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_titles_are_whole_and_nodes_not_oversized(name, info):
    ui = load(name, api=False)
    for node in graph_nodes(ui):
        title = node_title(node, info)
        need = TITLE_CHAR_PX * len(title) + TITLE_PAD_PX
        assert node["size"][0] >= need, f"{name}: {title!r} is cut ({node['size'][0]:.0f} px < {need:.0f} px)"
        widgets = len([i for i in node.get("inputs", []) if i.get("widget")])
        sockets = max(len(node.get("inputs", [])) - widgets, len(node.get("outputs", [])))
        if node["type"].startswith("FaceAnon_"):  # no empty space: sockets and widgets, about 24 px each
            assert node["size"][1] <= 24 * (sockets + widgets) + 40, f"{name}: {title!r} is {node['size']}"
