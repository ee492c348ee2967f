"""Track Faces (video) in a real ComfyUI server, with ComfyUI's native video nodes: Load Video -> Get Video
Components -> Track Faces -> Redact Faces -> Create Video -> Save Video. The frame in which a hand hides the face
(so the detector misses it) is redacted too. Needs COMFYUI_PATH (and COMFYUI_PYTHON); skipped without."""

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

pytest_plugins = ["ci_policy"]  # in CI, only GPU skips count as skips
pytestmark = [pytest.mark.host, pytest.mark.skipif(
    not os.environ.get("COMFYUI_PATH"),
    reason="COMFYUI_PATH is not set: the host tests need a ComfyUI checkout (and COMFYUI_PYTHON)",
)]

N, HIDDEN, FPS = 8, 3, 25
FACE_BOX = (180, 60, 268, 174)  # the astronaut's face in the photo


def _write_clip(path: Path) -> list[tuple[int, int]]:
    """8 frames of 256x192 panning over the astronaut photo; in frame 3 a grey box hides the face."""
    import av

    from faces_helpers import astronaut

    centres = []
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=FPS)
        v.width, v.height, v.pix_fmt = 256, 192, "yuv420p"
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
    return centres


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from host_helpers import ComfyServer, make_base

    base = make_base(tmp_path_factory.mktemp("video_base"))
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
    assert info["display_name"] == "Track Faces (video)" and info["category"] == "FaceAnon"


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
