"""Video runs hold a bounded number of frames: a census of live frame arrays, no RSS threshold, no timing.

Every decoded frame, every frame handed to the encoder and every full-size mask a chunk function
returns gets a ``weakref.finalize``; whenever the decoder yields a chunk, the frames still alive are
counted. A pipeline that keeps frames, outputs or masks across chunks (a list that grows, a loop
variable that holds the previous chunk while the next one decodes, a reference cycle) shows up as a
count above the chunk size, on a clip of any length. No ``gc.collect()``: frames kept alive until
the next collection are kept alive, and count.
"""

from __future__ import annotations

import weakref

import pytest

from faceanon_core.cli import main
from faceanon_core.cli import video as cli_video
from faceanon_core.media.video import VideoWriter, probe_video

pytest.importorskip("av")

from helpers.video import FAST, make_face_clip

CHUNK = 3  # small, so a 10-frame clip decodes in 4 chunks (3, 3, 3, 1) per pass


class Census:
    """Live arrays per kind, and the most of each seen alive when a chunk was decoded."""

    def __init__(self) -> None:
        self.alive: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.seen: dict[str, int] = {}
        self.chunks = 0

    def track(self, kind: str, arr) -> None:
        self.alive[kind] = self.alive.get(kind, 0) + 1
        self.seen[kind] = self.seen.get(kind, 0) + 1
        weakref.finalize(arr, self._dead, kind)

    def _dead(self, kind: str) -> None:
        self.alive[kind] -= 1

    def snapshot(self) -> None:
        self.chunks += 1
        for kind, n in self.alive.items():
            self.most[kind] = max(self.most.get(kind, 0), n)


@pytest.fixture
def census(monkeypatch):
    c = Census()
    real_iter = cli_video.iter_frames

    def counted_iter(info, chunk, **kw):
        assert chunk == CHUNK
        for batch in real_iter(info, chunk, **kw):
            for f in batch:
                c.track("decoded", f.rgb)
            c.snapshot()  # this chunk, plus whatever the pipeline still holds of earlier ones
            yield batch

    real_write = VideoWriter.write

    def counted_write(self, frame):
        c.track("encoded", frame.rgb)
        return real_write(self, frame)

    def masks_of(fn):
        def wrapped(*a, **k):
            res = fn(*a, **k)
            for r in res:
                c.track("masks", r.mask)
            return res
        return wrapped

    monkeypatch.setattr(cli_video, "CHUNK", CHUNK)
    monkeypatch.setattr(cli_video, "iter_frames", counted_iter)
    monkeypatch.setattr(VideoWriter, "write", counted_write)
    monkeypatch.setattr(cli_video, "redact_frames", masks_of(cli_video.redact_frames))
    monkeypatch.setattr(cli_video, "process_frames", masks_of(cli_video.process_frames))
    return c


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_face_clip(tmp_path_factory.mktemp("vmem") / "clip.mp4", n=10)


def _check(census: Census, frames: int, passes: int) -> None:
    assert census.seen["decoded"] == passes * frames  # every pass went through the census
    assert census.seen["encoded"] == frames
    assert census.chunks >= passes * -(-frames // CHUNK)
    # When a chunk has just been decoded, nothing of the chunks before it may still be alive.
    assert census.most["decoded"] <= CHUNK, census.most
    assert census.most.get("encoded", 0) <= CHUNK, census.most
    assert census.most.get("masks", 0) <= CHUNK, census.most


def test_redact_holds_one_chunk_of_frames_at_a_time(clip, tmp_path, census):
    out = tmp_path / "r.mp4"
    assert main(["redact", str(clip), "-o", str(out)]) == 0
    assert probe_video(out).frames == 10
    _check(census, 10, passes=2)  # detect, then redact + encode
    assert census.seen["masks"] == 10


@pytest.mark.parametrize("verify", ["--no-verify", "--verify"])
def test_anonymize_holds_one_chunk_of_frames_at_a_time(verify, clip, tmp_path, census, tiny_model_dir, capsys,
                                                       monkeypatch):
    """Also with the identity-leak guard, which compares each output frame with its original."""
    from faceanon_core.privacy import identity
    from helpers.identity import ExactRecognizer

    monkeypatch.setattr(identity, "recognizer_available", lambda: True)
    monkeypatch.setattr(identity, "default_recognizer", ExactRecognizer)
    out = tmp_path / "a.mp4"
    code = main(["anonymize", str(clip), "-o", str(out), "--models", str(tiny_model_dir), verify] + FAST)
    err = capsys.readouterr().err
    assert code == 0, err
    assert ("10 face-frames checked" in err) == (verify == "--verify"), err
    # detect; keyframes (stops at the last keyframe, so up to a full pass); anonymize + encode
    assert census.seen["decoded"] >= 2 * 10 + 1
    assert census.seen["encoded"] == 10
    assert census.most["decoded"] <= CHUNK, census.most
    assert census.most["encoded"] <= CHUNK, census.most
    assert census.most["masks"] <= CHUNK, census.most


def _reachable(root) -> int:
    """Number of distinct objects reachable from ``root`` (an ndarray counts as one object)."""
    import gc

    seen, todo = {id(root)}, [root]
    while todo:
        for ref in gc.get_referents(todo.pop()):
            if id(ref) not in seen and not isinstance(ref, type):
                seen.add(id(ref))
                todo.append(ref)
    return len(seen)


def test_tracks_store_a_fixed_number_of_objects_whatever_the_length():
    """Face tracks are arrays: twice the frames, the same objects (a list of faces would double)."""
    import numpy as np

    from faceanon_core.faces.records import DetectedFace
    from faceanon_core.faces.tracks import track_faces

    def det(t, k):
        cx, cy, e = 200 + 300 * k + 2 * t, 300, 40
        lm = np.array([[cx - e / 2, cy], [cx + e / 2, cy], [cx, cy + 0.45 * e], [cx - 0.35 * e, cy + 0.85 * e],
                       [cx + 0.35 * e, cy + 0.85 * e]])
        return DetectedFace((cx - e, cy - e, cx + e, cy + 1.5 * e), 0.99, lm)

    def tracks(n):
        # two faces, face 1 missed every 5th frame (interpolated), both held at the ends
        return track_faces([[det(t, 0)] + ([det(t, 1)] if t % 5 else []) for t in range(n)])

    short, long = tracks(40), tracks(80)
    assert len(short) == len(long) == 2 and long.num_faces() == 2 * short.num_faces()
    assert long.num_faces(filled_only=True) == 2 * short.num_faces(filled_only=True) > 0
    assert _reachable(long) == _reachable(short)
    # The faces handed out are built on request: changing one changes nothing stored.
    f = long.faces_in_frame(3)[0]
    f.landmarks5[:] = 0.0
    assert long.faces_in_frame(3)[0].landmarks5.any()
