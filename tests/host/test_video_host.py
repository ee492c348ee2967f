"""Track Faces (video) in a real ComfyUI server, with ComfyUI's native video nodes: Load Video -> Get Video
Components -> Track Faces -> Redact Faces -> Create Video -> Save Video, and the shipped video workflow (Track
Faces -> Face Anonymize with per-track identity -> Paste Faces Back) with the tiny models. The frame in which a
box hides the face (so the detector misses it) is redacted and anonymized too. Needs COMFYUI_PATH (and
COMFYUI_PYTHON); skipped without."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

HOST_DIR = Path(__file__).resolve().parent
for path in (HOST_DIR, HOST_DIR.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import workflow_host as wh  # noqa: E402

pytest_plugins = ["ci_policy"]  # in CI, only GPU skips count as skips
pytestmark = [pytest.mark.host, pytest.mark.skipif(
    not os.environ.get("COMFYUI_PATH"),
    reason="COMFYUI_PATH is not set: the host tests need a ComfyUI checkout (and COMFYUI_PYTHON)",
)]

N, HIDDEN, FPS, RATE = 8, 3, 25, 16000
FACE_BOX = (180, 60, 268, 174)  # the astronaut's face in the photo


def _write_clip(path: Path) -> list[tuple[int, int]]:
    """8 frames of 256x192 panning over the astronaut photo; in frame 3 a grey box hides the face. A mono
    AAC tone as audio. Returns the face centre per frame."""
    import av
    import numpy as np
    from faces_helpers import astronaut

    centres = []
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=FPS)
        v.width, v.height, v.pix_fmt = 256, 192, "yuv420p"
        a = c.add_stream("aac", rate=RATE, layout="mono")
        for i in range(N):
            x0, y0 = 100 - 4 * i, 20
            img = astronaut()[y0 : y0 + 192, x0 : x0 + 256].copy()
            b = [FACE_BOX[0] - x0, FACE_BOX[1] - y0, FACE_BOX[2] - x0, FACE_BOX[3] - y0]
            if i == HIDDEN:
                img[b[1] - 10 : b[3] + 10, b[0] - 10 : b[2] + 10] = 128
            centres.append(((b[0] + b[2]) // 2, (b[1] + b[3]) // 2))
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        tone = np.sin(np.arange(RATE * N // FPS, dtype=np.float32) * 2 * np.pi * 440 / RATE) * 0.2
        for start in range(0, tone.size, 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = RATE, start
            for p in a.encode(frame):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)
    return centres


def face_box(i: int) -> tuple[int, int, int, int]:
    """The face's box (x0, y0, x1, y1) in frame ``i`` of the clip."""
    x0, y0 = 100 - 4 * i, 20
    return FACE_BOX[0] - x0, FACE_BOX[1] - y0, FACE_BOX[2] - x0, FACE_BOX[3] - y0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from host_helpers import ComfyServer, make_base

    base = make_base(tmp_path_factory.mktemp("video_base"))
    wh.write_model_folder(base)
    (base / "input").mkdir(exist_ok=True)
    centres = _write_clip(base / "input" / "faces.mp4")
    srv = ComfyServer(base, name="video")
    yield srv, base, centres
    srv.stop()


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
    from host_helpers import error_message

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

    from host_helpers import error_message
    from test_leak_matrix import CHANGED

    from faceanon_core.media.video import probe_video

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
        x0, y0, x1, y1 = face_box(i)
        change = float((out[i, y0:y1, x0:x1] - frames[i, y0:y1, x0:x1]).abs().mean()) * 255
        assert change > CHANGED, f"frame {i}: the face changed by only {change:.2f} levels"
    assert torch.equal(out[:, :5, :5], frames[:, :5, :5])  # outside the faces untouched
    (video,) = entry["outputs"][node["SaveVideo"]]["images"]
    info = probe_video(base / "output" / video["subfolder"] / video["filename"])
    source = probe_video(base / "input" / "faces.mp4")
    assert (info.frames, info.width, info.height) == (N, 256, 192)
    assert info.fps == source.fps == Fraction(FPS)
    assert info.has_audio and source.has_audio  # Get Video Components' audio, through Create Video
