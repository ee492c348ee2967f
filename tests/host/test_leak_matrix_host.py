"""The leak matrix on a real ComfyUI (COMFYUI_PATH): every face node and every shipped workflow that takes a
photo, on the scenarios of tests/privacy/test_leak_matrix.py. The outcome is one of: every detected face changed
(mean absolute difference in its box above ``CHANGED``), a photo without faces unchanged, or an error with
nothing saved. Video: Load Video -> Get Video Components -> Track Faces -> Redact Faces, and the shipped
video workflow (Track Faces -> Face Anonymize per track -> Paste Faces Back -> Save Video), on the clips of
the video matrix there (the face in some frames only, a tiny face, a face leaving through the border): every
frame's face box changed by more than ``VIDEO_CHANGED``; a broken model folder saves nothing. One server for
the module, tiny models, 2 steps: about a minute on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.host import workflow as wh
from helpers.leak import (
    CHANGED,
    VIDEO_CHANGED,
    VIDEO_SCENARIOS,
    border_cut,
    box_change,
    detections,
    mixed,
    scenario_clip,
    sky,
    small_astronaut,
)

pytestmark = pytest.mark.host

# LoadImage of a PNG and SaveImage (which truncates 255 * x) may move an untouched pixel by one level.
ROUND_TRIP = 1

PHOTOS = {"no_face": sky, "only_small_face": small_astronaut, "cut_by_border": border_cut, "mixed_sizes": mixed}
VIDEO_CLIPS = ("face_in_some_frames", "only_small_face", "leaving_through_border")  # no face: the test below


@pytest.fixture(scope="module")
def base(base):
    from PIL import Image

    wh.write_model_folder(base)
    wh.write_inputs(base / "input")
    for name, func in PHOTOS.items():
        Image.fromarray(func()).save(base / "input" / f"leak_{name}.png")
    big_sky = np.ascontiguousarray(np.tile(sky(), (3, 2, 1))[:600, :600])
    wh.write_clip(base / "input" / "leak_no_face.mp4", big_sky)
    for name in VIDEO_CLIPS:
        scenario_clip(name, base / "input")  # input/<name>.mp4
    return base


def saved(base: Path, entry: dict, node: str) -> list[np.ndarray]:
    from PIL import Image

    items = entry["outputs"].get(node, {}).get("images", [])
    return [np.asarray(Image.open(base / item.get("type", "output") / item["subfolder"] / item["filename"])
                       .convert("RGB")) for item in items]


def outputs_on_disk(base: Path) -> set[str]:
    return {str(p.relative_to(base / "output")) for p in (base / "output").rglob("*") if p.is_file()}


def check_photo(original: np.ndarray, output: np.ndarray, func) -> None:
    assert output.shape == original.shape
    faces = detections(func)
    if not faces:
        assert np.abs(output.astype(int) - original).max() <= ROUND_TRIP  # no face: the photo comes back unchanged
    for face in faces:
        change = box_change(original, output, face.box)
        assert change > CHANGED, f"{func.__name__}: face at {np.round(face.box)} changed by only {change:.2f}"


def _loader():
    return {"class_type": "FaceAnon_ModelLoader", "inputs": {"model_folder": wh.MODEL_FOLDER}}


def _anonymize(image_link):
    return {"class_type": "FaceAnon_Anonymize", "inputs": {
        "model": ["1", 0], "source_refnet": ["1", 1], "driving_refnet": ["1", 2], "vae": ["1", 3],
        "clip_vision": ["1", 4], "image": image_link, "degree": 1.25, "seed": 0, "steps": 2, "cfg": 4.0,
        "sampler_name": "euler", "scheduler": "normal"}}


def _detect(image_link):
    return {"class_type": "FaceAnon_DetectFaces", "inputs": {"image": image_link, "threshold": 0.95,
                                                             "min_face_size": 10.0, "crop_size": 512,
                                                             "if_no_face": "continue"}}


def node_graph(kind: str, photo: str) -> tuple[dict, str]:
    """A graph around one face node; returns (prompt, id of the SaveImage node of the photo)."""
    load = {"class_type": "LoadImage", "inputs": {"image": photo}}
    if kind == "redact":
        return {"2": load, "3": {"class_type": "FaceAnon_RedactFaces", "inputs": {
            "image": ["2", 0], "method": "blur", "strength": 0.0, "threshold": 0.95}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": f"leak/{kind}"}}}, "9"
    if kind == "detect_redact":
        return {"2": load, "3": _detect(["2", 0]), "4": {"class_type": "FaceAnon_RedactFaces", "inputs": {
            "image": ["2", 0], "method": "blur", "strength": 0.0, "threshold": 0.95, "faces": ["3", 1]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": f"leak/{kind}"}}}, "9"
    # detect -> anonymize -> paste back, with a preview of the crops (an empty batch would break it)
    return {"1": _loader(), "2": load, "3": _detect(["2", 0]), "4": _anonymize(["3", 0]),
            "5": {"class_type": "FaceAnon_PasteFaces", "inputs": {"image": ["2", 0], "crops": ["4", 0],
                                                                  "faces": ["3", 1], "feather": 0.025, "erode": 0.02,
                                                                  "color_match": False}},
            "8": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": f"leak/{kind}"}}}, "9"


NODE_CELLS = [(kind, scen) for kind in ("detect_anonymize_paste", "redact", "detect_redact") for scen in PHOTOS]


@pytest.mark.parametrize("kind,scenario", NODE_CELLS, ids=[f"{k}-{s}" for k, s in NODE_CELLS])
def test_face_nodes(server, base, kind, scenario):
    from helpers.host.server import error_message

    prompt, save = node_graph(kind, f"leak_{scenario}.png")
    entry = server.run(prompt)
    assert error_message(entry) is None, error_message(entry)
    (output,) = saved(base, entry, save)
    check_photo(PHOTOS[scenario](), output, PHOTOS[scenario])


# shipped workflow -> (LoadImage node that takes the photo, SaveImage node of the photo)
WORKFLOWS = {"anonymize_group_photo": ("2", "6"), "redact_faces": ("1", "3"), "face_swap": ("3", "9")}
WORKFLOW_CELLS = [(name, scen) for name in WORKFLOWS for scen in PHOTOS]


def test_every_photo_workflow_is_in_the_matrix():
    """The shipped workflows on aligned crops (anonymize_crop*, degree_sweep) detect nothing, so have no
    face-loop leak path; the video workflow is run on a clip without faces below."""
    crops_only = {"anonymize_crop", "anonymize_crop_granular", "anonymize_crop_native", "degree_sweep"}
    assert set(wh.workflow_names()) == set(WORKFLOWS) | crops_only | {"video_frames"}


@pytest.mark.parametrize("name,scenario", WORKFLOW_CELLS, ids=[f"{n}-{s}" for n, s in WORKFLOW_CELLS])
def test_shipped_workflows(server, base, name, scenario):
    from helpers.host.server import error_message

    load, save = WORKFLOWS[name]
    prompt = wh.tiny_settings(wh.load_json(wh.WORKFLOWS_API / f"{name}_api.json"))
    prompt[load]["inputs"]["image"] = f"leak_{scenario}.png"
    entry = server.run(prompt, timeout=600)
    assert error_message(entry) is None, error_message(entry)
    (output,) = saved(base, entry, save)
    check_photo(PHOTOS[scenario](), output, PHOTOS[scenario])


def test_video_workflow_on_a_clip_without_faces(server, base):
    import torch

    from helpers.host.server import error_message

    prompt = wh.tiny_settings(wh.load_json(wh.WORKFLOWS_API / "video_frames_api.json"))
    node = {n["class_type"]: k for k, n in prompt.items()}
    prompt[node["LoadVideo"]]["inputs"]["file"] = "leak_no_face.mp4"
    prompt["90"] = {"class_type": "FaceAnonTest_SaveTensor", "inputs": {"image": [node["GetVideoComponents"], 0],
                                                                       "name": "no_face_frames"}}
    prompt["91"] = {"class_type": "FaceAnonTest_SaveTensor", "inputs": {"image": [node["FaceAnon_PasteFaces"], 0],
                                                                       "name": "no_face_out"}}
    entry = server.run(prompt, timeout=600)
    assert error_message(entry) is None, error_message(entry)
    frames, out = (torch.load(entry["outputs"][k]["text"][0]) for k in ("90", "91"))
    assert frames.shape[0] == wh.VIDEO_FRAMES and out.shape == frames.shape
    # no face: every frame unchanged, up to Paste Faces Back's 8-bit round trip (half a level)
    gap = float((out - frames).abs().max())
    assert gap <= 0.5 / 255 + 1e-6, gap
    (video,) = entry["outputs"][node["SaveVideo"]]["images"]
    assert wh.count_video_frames(base / "output" / video["subfolder"] / video["filename"])[0] == wh.VIDEO_FRAMES


def test_face_swap_without_a_source_face_fails_and_writes_nothing(server, base):
    from helpers.host.server import error_message

    before = outputs_on_disk(base)
    prompt = wh.tiny_settings(wh.load_json(wh.WORKFLOWS_API / "face_swap_api.json"))
    prompt["2"]["inputs"]["image"] = "leak_no_face.png"
    entry = server.run(prompt)
    assert "no face" in (error_message(entry) or "")
    assert outputs_on_disk(base) == before


def test_a_model_that_fails_writes_nothing(server, base):
    """The model failing to load (the 'broken' folder has a UNet only) stops the graph before any save."""
    from helpers.host.server import error_message

    before = outputs_on_disk(base)
    prompt = wh.tiny_settings(wh.load_json(wh.WORKFLOWS_API / "anonymize_group_photo_api.json"))
    prompt["1"]["inputs"]["model_folder"] = "broken"
    prompt["2"]["inputs"]["image"] = "leak_mixed_sizes.png"
    entry = server.run(prompt)
    assert error_message(entry) is not None
    assert outputs_on_disk(base) == before


def test_a_nan_degree_is_refused_and_writes_nothing(server, base):
    from helpers.host.server import error_message

    before = outputs_on_disk(base)
    prompt, _ = node_graph("detect_anonymize_paste", "leak_mixed_sizes.png")
    prompt["4"]["inputs"]["degree"] = float("nan")
    entry = server.run(prompt)
    message = error_message(entry) or ""
    assert "degree" in message, entry.get("status")
    assert outputs_on_disk(base) == before


def _save_tensor(link, name):
    return {"class_type": "FaceAnonTest_SaveTensor", "inputs": {"image": link, "name": name}}


def video_graph(kind: str, clip: str) -> dict:
    """Track Faces -> Redact Faces, or the shipped video workflow (crops at 64 px, the tiny model's size); the
    frames of Get Video Components saved as node 90, the processed frames as node 91."""
    if kind == "track_redact":
        return {"1": {"class_type": "LoadVideo", "inputs": {"file": clip}},
                "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
                "3": {"class_type": "FaceAnon_TrackFaces", "inputs": {
                    "frames": ["2", 0], "threshold": 0.95, "max_gap": 8, "smoothing": True, "min_face_size": 10.0,
                    "crop_size": 64}},
                "4": {"class_type": "FaceAnon_RedactFaces", "inputs": {
                    "image": ["2", 0], "method": "blur", "strength": 0.0, "threshold": 0.95, "faces": ["3", 1]}},
                "90": _save_tensor(["2", 0], "leak_video_in"), "91": _save_tensor(["4", 0], "leak_video_out")}
    prompt = wh.tiny_settings(wh.load_json(wh.WORKFLOWS_API / "video_frames_api.json"))
    node = {n["class_type"]: k for k, n in prompt.items()}
    prompt[node["LoadVideo"]]["inputs"]["file"] = clip
    prompt[node["FaceAnon_TrackFaces"]]["inputs"]["crop_size"] = 64
    prompt[node["SaveVideo"]]["inputs"]["filename_prefix"] = "leak/video"
    prompt["90"] = _save_tensor([node["GetVideoComponents"], 0], "leak_video_in")
    prompt["91"] = _save_tensor([node["FaceAnon_PasteFaces"], 0], "leak_video_out")
    return prompt


VIDEO_CELLS = [(kind, scen) for kind in ("track_redact", "video_frames") for scen in VIDEO_CLIPS]


@pytest.mark.parametrize("kind,scenario", VIDEO_CELLS, ids=[f"{k}-{s}" for k, s in VIDEO_CELLS])
def test_video_graphs(server, base, kind, scenario):
    """Every frame in which the clip holds the face (those the detector misses included) has it changed."""
    import torch

    from helpers.host.server import error_message

    entry = server.run(video_graph(kind, f"{scenario}.mp4"), timeout=600)
    assert error_message(entry) is None, error_message(entry)
    frames, out = (torch.load(entry["outputs"][k]["text"][0]) for k in ("90", "91"))
    assert out.shape == frames.shape and frames.shape[0] == VIDEO_SCENARIOS[scenario].frames
    for i, (a, b) in enumerate(zip(frames, out, strict=True)):
        original, output = (np.round(x.numpy() * 255).astype(np.uint8) for x in (a, b))
        for box in VIDEO_SCENARIOS[scenario].frame(i)[1]:
            change = box_change(original, output, box)
            assert change > VIDEO_CHANGED, f"frame {i}: face at {np.round(box)} changed by only {change:.2f}"


def test_video_workflow_with_a_broken_model_saves_nothing(server, base):
    from helpers.host.server import error_message

    before = outputs_on_disk(base)
    prompt = video_graph("video_frames", "face_in_some_frames.mp4")
    del prompt["90"], prompt["91"]  # the test's probes: only the workflow's own Save Video
    prompt["1"]["inputs"]["model_folder"] = "broken"
    entry = server.run(prompt)
    assert error_message(entry) is not None
    assert outputs_on_disk(base) == before
