"""The shipped workflows' expected outputs on a host (``EXPECTED``) and their check (``check_outputs``)."""

from __future__ import annotations

import io
import urllib.parse
import urllib.request

from helpers.host import workflow as wh

W, H = 512, 600  # the sample photo
# per workflow: {output node: (type, count, (width, height))}; the tiny models work at 64 px
EXPECTED = {
    "anonymize_crop": {"4": ("output", 1, (512, 512))},
    "anonymize_crop_granular": {"10": ("output", 1, (64, 64))},
    "anonymize_crop_native": {"11": ("output", 1, (64, 64))},
    "anonymize_group_photo": {"6": ("output", 1, (2 * W, H)), "8": ("output", 1, (2 * W, H)),
                              "9": ("temp", 2, (512, 512))},
    "face_swap": {"9": ("output", 1, (W, H))},
    "degree_sweep": {"12": ("output", 1, (5 * 512, 512))},
    "video_frames": {"8": ("output", 1, None)},
    "redact_faces": {"3": ("output", 1, (2 * W, H)), "5": ("temp", 1, (2 * W, H))},
}


def view(server, item) -> bytes:
    query = urllib.parse.urlencode({k: item.get(k, "") for k in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{server.url}/view?{query}", timeout=30) as response:
        return response.read()


def check_outputs(server, base, entry: dict, expected: dict) -> None:
    """The prompt succeeded and wrote exactly the expected images (type, count, size) / video."""
    from PIL import Image

    from helpers.host.server import error_message

    assert error_message(entry) is None, error_message(entry)
    assert entry["status"]["status_str"] == "success"
    outputs = entry["outputs"]
    assert set(outputs) == set(expected), outputs
    for node, (kind, count, size) in expected.items():
        items = outputs[node]["images"]
        assert len(items) == count and all(i["type"] == kind for i in items), (node, items)
        for item in items:
            data = view(server, item)
            if item["filename"].endswith(".mp4"):
                path = base / "output" / item["subfolder"] / item["filename"]
                assert wh.count_video_frames(path) == (wh.VIDEO_FRAMES, 320, 320)
                from faceanon_core.media.video import probe_video

                assert probe_video(path).fps == wh.VIDEO_FPS  # Create Video takes the clip's own rate
            else:
                assert Image.open(io.BytesIO(data)).size == size, (node, item)
