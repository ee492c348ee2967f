"""The shipped workflows on a real ComfyUI (COMFYUI_PATH): every API file runs with tiny models and gives the
expected outputs, every UI file loads in ComfyUI's own frontend (headless Chromium) without missing nodes
and converts to the same prompt, and ``faceanon queue`` runs a workflow end to end.

The same tests run on the workflows saved before the V3 nodes (``tests/data/workflows-0.1``, frozen): their
API files run unchanged, and their UI files load and convert to a prompt that keeps every saved value
(inputs the nodes gained since may be added with their defaults) and runs.
"""

from __future__ import annotations

import io
import json
import urllib.parse
import urllib.request

import pytest

from helpers.host import workflow as wh
from helpers.host.outputs import EXPECTED, H, W, check_outputs, view

pytestmark = pytest.mark.host

NAMES = wh.workflow_names()
# the workflows saved before the V3 nodes: frozen, as their files are
EXPECTED_0_1 = {
    "anonymize_crop": {"4": ("output", 1, (512, 512))},
    "anonymize_crop_granular": {"10": ("output", 1, (64, 64))},
    "anonymize_group_photo": {"6": ("output", 1, (2 * W, H)), "8": ("output", 1, (2 * W, H)),
                              "9": ("temp", 2, (512, 512))},
    "face_swap": {"9": ("output", 1, (W, H))},
    "degree_sweep": {"12": ("output", 1, (5 * 512, 512))},
    "video_frames": {"7": ("output", wh.VIDEO_FRAMES, (320, 320)), "9": ("output", 1, None)},
    "redact_faces": {"3": ("output", 1, (2 * W, H)), "5": ("temp", 1, (2 * W, H))},
}
# (folder key, workflow name) over the shipped workflows and the saved 0.1 ones
FOLDERS = {"shipped": (wh.WORKFLOWS, EXPECTED), "0.1": (wh.OLD_WORKFLOWS, EXPECTED_0_1)}
CASES = [(key, name) for key, (folder, _) in FOLDERS.items() for name in wh.workflow_names(folder)]
CASE_IDS = [f"{key}-{name}" for key, name in CASES]


@pytest.fixture(scope="module")
def base(base):
    wh.write_model_folder(base)
    wh.write_inputs(base / "input")
    return base


def test_every_workflow_has_expectations():
    assert sorted(EXPECTED) == NAMES
    # every saved 0.1 workflow in both formats, and nothing else
    assert sorted(EXPECTED_0_1) == wh.workflow_names(wh.OLD_WORKFLOWS)
    assert sorted(p.name for p in wh.OLD_WORKFLOWS.glob("*.json")) == sorted(
        f"{name}{suffix}.json" for name in EXPECTED_0_1 for suffix in ("", "_api"))


PACK = "ComfyUI-FaceAnon"  # the folder name under custom_nodes/ (helpers.host.server.make_base)


def fetch(server, path: str) -> bytes:
    with urllib.request.urlopen(server.url + path, timeout=30) as response:
        return response.read()


def test_the_template_browser_lists_only_the_ui_workflows_each_with_a_thumbnail(server):
    """ComfyUI's own /workflow_templates (what the frontend's template browser lists) and the files it serves."""
    listing = server.get("/workflow_templates")
    assert sorted(listing[PACK]) == NAMES  # no *_api file, nothing else
    for name in NAMES:
        thumbnail = fetch(server, f"/api/workflow_templates/{PACK}/{name}.jpg")  # the frontend's thumbnail URL
        assert thumbnail[:3] == b"\xff\xd8\xff", name
        workflow = json.loads(fetch(server, f"/api/workflow_templates/{PACK}/{name}.json"))
        assert any(n["type"] == "Note" for n in workflow["nodes"]), name


def test_the_frontend_finds_a_help_page_for_every_node(server):
    """The frontend fetches /extensions/<pack>/docs/<node id>.md for a custom node's help (from WEB_DIRECTORY)."""
    ours = sorted(k for k, v in server.get("/object_info").items() if v["python_module"] == f"custom_nodes.{PACK}")
    assert len(ours) == 13
    for node in ours:
        page = fetch(server, f"/extensions/{PACK}/docs/{node}.md").decode()
        assert page.startswith("# ") and f"`{node}`" in page, node


@pytest.mark.parametrize("folder_key,name", CASES, ids=CASE_IDS)
def test_api_workflow_runs_on_comfyui(server, base, folder_key, name):
    folder, expected = FOLDERS[folder_key]
    entry = server.run(wh.tiny_settings(wh.load_json(wh.api_path(folder, name))), timeout=600)
    check_outputs(server, base, entry, expected[name])


def test_group_photo_changes_the_faces_only(server, base):
    import numpy as np
    from PIL import Image

    entry = server.run(wh.tiny_settings(wh.load_json(wh.WORKFLOWS_API / "anonymize_group_photo_api.json")))
    photo = np.asarray(Image.open(io.BytesIO(view(server, entry["outputs"]["6"]["images"][0]))).convert("RGB"))
    mask = np.asarray(Image.open(io.BytesIO(view(server, entry["outputs"]["8"]["images"][0]))).convert("L"))
    original = np.asarray(Image.open(base / "input" / "group.jpg").convert("RGB"))
    changed = np.abs(photo.astype(int) - original.astype(int)).max(axis=2) > 8
    assert changed[mask > 128].mean() > 0.3  # the faces were replaced
    assert changed[mask == 0].mean() < 0.01  # the rest is the original (8-bit round trips aside)
    left, right = mask[:, :W] > 0, mask[:, W:] > 0
    assert left.any() and right.any()  # both faces


def test_native_workflow_gives_the_granular_image(server):
    """Stock KSampler on Apply References' MODEL and conditioning is the method: the shipped native workflow
    gives the pixels of the granular one (Dual-Reference KSampler, same seed, steps, cfg, sampler)."""
    import numpy as np
    from PIL import Image

    images = {}
    for name, node in (("anonymize_crop_native", "11"), ("anonymize_crop_granular", "10")):
        entry = server.run(wh.tiny_settings(wh.load_json(wh.WORKFLOWS_API / f"{name}_api.json")))
        item = entry["outputs"][node]["images"][0]
        images[name] = np.asarray(Image.open(io.BytesIO(view(server, item))).convert("RGB")).astype(int)
    native, granular = images["anonymize_crop_native"], images["anonymize_crop_granular"]
    assert native.std() > 1.0  # an image, not a constant
    difference = int(np.abs(native - granular).max())
    assert difference == 0, f"the native workflow's image differs from the granular one by up to {difference} levels"


def test_our_node_definitions_match_the_servers(server):
    """The main suite reads our nodes through a stand-in of ComfyUI's V3 API (tests/helpers/comfy_io_standin.py): what
    it builds must be exactly what this ComfyUI serves, every field of every node (the model folder list aside: it
    is the server's folders), and the same nodes."""
    from helpers.workflows import our_object_info

    real = server.get("/object_info")
    ours = our_object_info()
    assert sorted(ours) == sorted(name for name in real if name.startswith("FaceAnon_"))
    for name, entry in ours.items():
        served = json.loads(json.dumps(real[name]))
        served["input"]["required"].get("model_folder", [None, {}])[1].get("options", [])[:] = []
        assert set(entry) == set(served), (name, set(entry) ^ set(served))
        for key in served:
            assert entry[key] == served[key], (name, key, entry[key], served[key])


def test_the_servers_node_api_is_the_saved_one(server):
    """What saved workflows depend on (tests/data/node_public_api.json, the nodes before the V3 move) is what the
    real server lists now: no input, output, default, range or choice changed (new optional inputs aside)."""
    from helpers.workflows import PUBLIC_API, api_breaks, public_api

    real = server.get("/object_info")
    required = real["KSampler"]["input"]["required"]
    samplers = {"<KSampler.SAMPLERS>": required["sampler_name"][0], "<KSampler.SCHEDULERS>": required["scheduler"][0]}
    ours = public_api({name: entry for name, entry in real.items() if name.startswith("FaceAnon_")}, samplers)
    assert api_breaks(ours, json.loads(PUBLIC_API.read_text())) == []


@pytest.fixture(scope="module")
def frontend(server):
    if wh.chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install chromium): cannot load the UI workflows in "
                    "ComfyUI's frontend")
    with wh.Frontend(server.url) as fe:
        yield fe


def saved_values_lost(saved: dict, produced: dict) -> list[str]:
    """What of a saved API prompt the frontend's prompt does not keep: a node, its type, an input or its value
    (link or widget). Inputs only in the produced prompt are new ones, filled with their defaults."""
    a, b = wh.normalize_prompt(saved), wh.normalize_prompt(produced)
    problems = [f"node {n} ({a[n]['class_type']}) is gone" for n in sorted(set(a) - set(b), key=int)]
    problems += [f"node {n} ({b[n]['class_type']}) was added" for n in sorted(set(b) - set(a), key=int)]
    for n in sorted(set(a) & set(b), key=int):
        if a[n]["class_type"] != b[n]["class_type"]:
            problems.append(f"node {n}: type {a[n]['class_type']} became {b[n]['class_type']}")
        for key, value in a[n]["inputs"].items():
            if key not in b[n]["inputs"]:
                problems.append(f"node {n} ({a[n]['class_type']}): input {key!r} is gone")
            elif b[n]["inputs"][key] != value:
                problems.append(f"node {n} ({a[n]['class_type']}): {key} = {value!r} became {b[n]['inputs'][key]!r}")
    return problems


@pytest.mark.parametrize("folder_key,name", CASES, ids=CASE_IDS)
def test_ui_workflow_loads_in_comfyuis_frontend(frontend, server, base, folder_key, name):
    folder, expected = FOLDERS[folder_key]
    ui = wh.load_json(folder / f"{name}.json")
    result = frontend.load_ui(ui)
    assert result["missing"] == [], f"missing node types in the frontend: {result['missing']}"
    assert result["count"] == len(ui["nodes"])
    api = wh.load_json(wh.api_path(folder, name))
    if folder_key == "shipped":  # the shipped pair is the frontend's own output: the same prompt (optional
        info = server.get("/object_info")  # widgets newer than a file load with their defaults)
        assert wh.normalize_prompt(wh.without_defaults(result["prompt"], info)) == \
            wh.normalize_prompt(wh.without_defaults(api, info))
        return
    # a saved workflow: every saved value survives the conversion (positional widget values included),
    # and the prompt the frontend makes of it runs
    assert saved_values_lost(api, result["prompt"]) == []
    entry = server.run(wh.tiny_settings(result["prompt"]), timeout=600)
    check_outputs(server, base, entry, expected[name])


def test_faceanon_queue_runs_a_workflow_on_comfyui(server, tmp_path, capsys, caplog):
    from PIL import Image

    from faceanon_core.cli import main

    face = tmp_path / "mine.png"
    Image.open(wh.WORKFLOWS.parent / "faceanon_core" / "data" / "samples" / "grace_hopper.jpg").convert(
        "RGB").resize((256, 256)).save(face)
    out = tmp_path / "out"
    code = main(["queue", str(wh.WORKFLOWS_API / "anonymize_crop_api.json"), "--server", server.url, "--out", str(out),
                 "--image", f"queue_face.png={face}", "--set", "2.image=queue_face.png", "--set", "3.steps=2",
                 "--set", "4.filename_prefix=queued/anon", "--no-progress", "--timeout", "300"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert [p.relative_to(out).as_posix() for p in files] == ["queued/anon_00001_.png"]
    assert Image.open(files[0]).size == (256, 256)
    assert captured.out.strip() == str(files[0])
    # a UI-format file is converted with the server's own node definitions and runs too
    code = main(["queue", str(wh.WORKFLOWS / "redact_faces.json"), "--server", server.url, "--out",
                 str(tmp_path / "ui"), "--no-progress", "--include-temp"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "UI-format" in caplog.text
    assert len([p for p in (tmp_path / "ui").rglob("*.png")]) == 2
    # the server's own validation message comes through
    code = main(["queue", str(wh.WORKFLOWS_API / "anonymize_crop_api.json"), "--server", server.url, "--out",
                 str(tmp_path / "bad"), "--set", "3.sampler_name=no_such_sampler", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2 and "no_such_sampler" in captured.err and "3.sampler_name" in captured.err, captured.err
    assert not (tmp_path / "bad").exists()
    # what only the server can see (a required connection missing) comes back in its words, exit 2
    broken = json.loads((wh.api_path(wh.WORKFLOWS, "anonymize_crop")).read_text())
    linked = next(name for name, value in broken["3"]["inputs"].items() if isinstance(value, list))
    del broken["3"]["inputs"][linked]
    (tmp_path / "broken_api.json").write_text(json.dumps(broken))
    code = main(["queue", str(tmp_path / "broken_api.json"), "--server", server.url, "--out",
                 str(tmp_path / "bad"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2 and linked in captured.err and "node 3" in captured.err, captured.err
    assert not (tmp_path / "bad").exists()
