"""Track Faces (video) in a real ComfyUI server, with ComfyUI's native video nodes: Load Video -> Get Video
Components -> Track Faces -> Redact Faces -> Create Video -> Save Video, and the shipped video workflow (Track
Faces -> Face Anonymize with per-track identity -> Paste Faces Back) with the tiny models. The frame in which a
box hides the face (so the detector misses it) is redacted and anonymized too. Needs COMFYUI_PATH (and
COMFYUI_PYTHON); skipped without."""

from __future__ import annotations

import pytest
import torch

from helpers.host import workflow as wh
from helpers.video import FPS, frame_at, make_face_clip

pytestmark = pytest.mark.host

N, HIDDEN = 8, 3  # frames of the clip; the one in which a grey box hides the face


@pytest.fixture(scope="module")
def base(base):
    wh.write_model_folder(base)
    (base / "input").mkdir(exist_ok=True)
    make_face_clip(base / "input" / "faces.mp4", n=N, hide=HIDDEN, title=None)
    return base


@pytest.fixture(scope="module")
def served(server, base):
    """The server, its base directory and the face's centre in each frame of the clip."""
    boxes = [frame_at(i)[1] for i in range(N)]
    return server, base, [((x0 + x1) // 2, (y0 + y1) // 2) for x0, y0, x1, y1 in boxes]


def _graph():
    return {
        "1": {"class_type": "LoadVideo", "inputs": {"file": "faces.mp4"}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "FaceAnon_TrackFaces", "inputs": {
            "frames": ["2", 0], "threshold": 0.95, "max_gap": 8, "smoothing": True, "min_face_size": 10.0,
            "crop_size": 128}},
        "4": {"class_type": "FaceAnon_RedactFaces", "inputs": {
            "image": ["2", 0], "method": "solid", "strength": 0.0, "threshold": 0.95, "faces": ["3", 1]}},
        "5": {"class_type": "CreateVideo", "inputs": {"images": ["4", 0], "fps": ["2", 2]}},
        "6": {"class_type": "SaveVideo", "inputs": {"video": ["5", 0], "filename_prefix": "video/redacted",
                                                    "format": "auto", "codec": "auto"}},
        "7": {"class_type": "FaceAnonTest_SaveTensor", "inputs": {"image": ["4", 0], "name": "redacted"}},
        "8": {"class_type": "FaceAnonTest_SaveTensor", "inputs": {"image": ["2", 0], "name": "frames"}},
        "9": {"class_type": "FaceAnonTest_SaveTensor", "inputs": {"image": ["3", 2], "name": "keyframes"}},
        "10": {"class_type": "FaceAnonTest_SaveTensor", "inputs": {"image": ["3", 0], "name": "crops"}},
    }


def test_track_faces_node_is_listed(served):
    srv, _, _ = served
    info = srv.get("/object_info")["FaceAnon_TrackFaces"]
    assert info["output"] == ["IMAGE", "FACEANON_FACES", "IMAGE"]
    assert info["output_name"] == ["crops", "faces", "keyframes"]
    assert info["display_name"] == "FaceAnon Track Faces" and info["category"] == "FaceAnon/video"


def test_native_video_nodes_track_and_redact_every_frame(served):
    from helpers.host.server import error_message

    srv, base, centres = served
    entry = srv.run(_graph())
    assert error_message(entry) is None, error_message(entry)
    load = {k: torch.load(entry["outputs"][k]["text"][0]) for k in ("7", "8", "9", "10")}
    frames, redacted, keys, crops = load["8"], load["7"], load["9"], load["10"]
    assert frames.shape == redacted.shape == (N, 192, 256, 3)
    assert crops.shape == keys.shape == (N, 128, 128, 3)  # one tracked face per frame, the hidden one too
    assert all(torch.equal(keys[i], keys[0]) for i in range(N))  # one keyframe for the one track
    for i, (cx, cy) in enumerate(centres):
        assert float(redacted[i, cy, cx].max()) < 0.02, f"frame {i}: face not redacted"  # solid black
    assert torch.equal(redacted[:, :5, :5], frames[:, :5, :5])  # outside the face untouched
    videos = list((base / "output" / "video").glob("redacted*"))
    assert videos, "Save Video wrote nothing"
    from faceanon_core.media.video import probe_video

    assert probe_video(videos[0]).frames == N


def _save_tensor(link, name):
    return {"class_type": "FaceAnonTest_SaveTensor", "inputs": {"image": link, "name": name}}


def test_shipped_video_workflow_anonymizes_every_tracked_face_in_every_frame(served):
    """workflows/video_frames_api.json on the clip, tiny models: the video keeps frame count, fps and audio;
    the face is changed in every frame, the one the detector missed (filled in by the track) included."""
    from fractions import Fraction

    from faceanon_core.media.video import probe_video
    from helpers.host.server import error_message
    from helpers.leak import CHANGED

    srv, base, _ = served
    prompt = wh.tiny_settings(wh.load_json(wh.WORKFLOWS_API / "video_frames_api.json"))
    node = {n["class_type"]: k for k, n in prompt.items()}
    prompt[node["LoadVideo"]]["inputs"]["file"] = "faces.mp4"
    assert prompt[node["FaceAnon_Anonymize"]]["inputs"]["identity"] == "per-track"
    assert prompt[node["FaceAnon_Anonymize"]]["inputs"]["faces"] == [node["FaceAnon_TrackFaces"], 1]
    prompt[node["SaveVideo"]]["inputs"]["filename_prefix"] = "video/anonymized"
    prompt["90"] = _save_tensor([node["GetVideoComponents"], 0], "wf_frames")
    prompt["91"] = _save_tensor([node["FaceAnon_PasteFaces"], 0], "wf_anonymized")
    prompt["92"] = _save_tensor([node["FaceAnon_TrackFaces"], 0], "wf_crops")
    entry = srv.run(prompt, timeout=600)
    assert error_message(entry) is None, error_message(entry)
    frames, out, crops = (torch.load(entry["outputs"][k]["text"][0]) for k in ("90", "91", "92"))
    assert frames.shape == out.shape == (N, 192, 256, 3) and crops.shape[0] == N  # one tracked face per frame
    for i in range(N):
        x0, y0, x1, y1 = frame_at(i)[1]
        change = float((out[i, y0:y1, x0:x1] - frames[i, y0:y1, x0:x1]).abs().mean()) * 255
        assert change > CHANGED, f"frame {i}: the face changed by only {change:.2f} levels"
    assert torch.equal(out[:, :5, :5], frames[:, :5, :5])  # outside the faces untouched
    (video,) = entry["outputs"][node["SaveVideo"]]["images"]
    info = probe_video(base / "output" / video["subfolder"] / video["filename"])
    source = probe_video(base / "input" / "faces.mp4")
    assert (info.frames, info.width, info.height) == (N, 256, 192)
    assert info.fps == source.fps == Fraction(FPS)
    assert info.has_audio and source.has_audio  # Get Video Components' audio, through Create Video
