"""``faceanon anonymize clip.mp4 --verify``: the identity-leak guard on every tracked face of every frame.

The recognizer is :class:`ExactRecognizer`: it matches a face only when the pixels between its landmarks
are bitwise those of the original frame, so its verdict needs no tolerance: a face the model changed is
a different person (distance 1), a face handed back unchanged is the same (distance 0). The leak is
injected where it happens, after :func:`process_frames`: chosen frames come back as the original
frame (the model left the face alone). The detector misses frame 4 (its face is interpolated) and
frame 9 (held after the last detection), so the guard is shown to check filled-in faces too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from faceanon_core.cli import main
from faceanon_core.cli import video as cli_video
from faceanon_core.media.video import VideoWriter
from helpers.identity import ExactRecognizer

pytest.importorskip("av")

from helpers.video import FAST, N, face_changed, frame_at, frames_of, leftovers, make_face_clip

INTERPOLATED, HELD = 4, 9  # frames whose detection is dropped


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_face_clip(tmp_path_factory.mktemp("vguard") / "clip.mp4", audio=False)


@pytest.fixture(scope="module")
def originals(clip):
    """The decoded frames of the input: what the guard compares with."""
    return [f.rgb for f in frames_of(clip)]


def _patch_run(mp, written: dict, leak_frames=(), recognizer=None):
    """Detector misses frames 4 and 9; written frames recorded; ``leak_frames`` come back unanonymized."""
    from faceanon_core.privacy import identity

    real_detect_chunk, seen = cli_video._detect_chunk, [0]

    def missing(detector, chunk, rotation):  # per frame, whatever the detector does inside a video
        found = real_detect_chunk(detector, chunk, rotation)
        found = [[] if seen[0] + i in (INTERPOLATED, HELD) else faces for i, faces in enumerate(found)]
        seen[0] += len(chunk)
        return found

    mp.setattr(cli_video, "_detect_chunk", missing)
    real_write = VideoWriter.write

    def record(self, frame):
        written[frame.index] = frame.rgb.copy()
        return real_write(self, frame)

    mp.setattr(VideoWriter, "write", record)
    real_process = cli_video.process_frames

    def leaky(frames, indices, *a, **k):
        res = real_process(frames, indices, *a, **k)
        for r, rgb, t in zip(res, frames, indices, strict=True):
            if t in leak_frames:
                r.image = rgb.copy()  # the model handed the face back unchanged
        return res

    mp.setattr(cli_video, "process_frames", leaky)
    if recognizer is None:
        mp.setattr(identity, "recognizer_available", lambda: False)
    else:
        mp.setattr(identity, "recognizer_available", lambda: True)
        mp.setattr(identity, "default_recognizer", lambda: recognizer)


def _anonymize(clip, out, tiny_model_dir, *extra) -> int:
    return main(["anonymize", str(clip), "-o", str(out), "--models", str(tiny_model_dir), *extra] + FAST)


@pytest.fixture(scope="module")
def baseline(clip, tiny_model_dir, tmp_path_factory):
    """The unguarded run (--no-verify): file bytes and the frames handed to the encoder."""
    out = tmp_path_factory.mktemp("vguard-base") / "base.mp4"
    written: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        _patch_run(mp, written)
        assert _anonymize(clip, out, tiny_model_dir, "--no-verify", "--tracks-json", str(out) + ".json") == 0
    kinds = {f["frame_index"]: f for t in json.loads((out.parent / "base.mp4.json").read_text())["tracks"]
             for f in t["faces"]}
    assert len(kinds) == N and kinds[INTERPOLATED]["interpolated"] and kinds[HELD]["held"]  # the setup holds
    return out.read_bytes(), written


@pytest.mark.parametrize("flag", ["--verify", None])
def test_no_leak_gives_the_unguarded_output_bit_for_bit(flag, clip, baseline, tiny_model_dir, tmp_path,
                                                        monkeypatch, capsys):
    """With --verify, and by default when the recognizer is installed: every face-frame checked."""
    rec, written = ExactRecognizer(), {}
    _patch_run(monkeypatch, written, recognizer=rec)
    out = tmp_path / "g.mp4"
    assert _anonymize(clip, out, tiny_model_dir, *([flag] if flag else [])) == 0
    assert out.read_bytes() == baseline[0]
    err = capsys.readouterr().err
    assert f"{N} face-frames checked, 0 leak(s) found, 0 redacted" in err, err
    assert rec.embedded == 2 * N  # each face-frame: once in the original, once in the output


@pytest.mark.parametrize("leak", [INTERPOLATED, HELD], ids=["interpolated", "held"])  # detected: the redact test
def test_a_leak_fails_the_video_and_publishes_nothing(leak, clip, baseline, tiny_model_dir, tmp_path,
                                                      monkeypatch, capsys):
    _patch_run(monkeypatch, {}, leak_frames={leak}, recognizer=ExactRecognizer())
    out = tmp_path / "g.mp4"
    assert _anonymize(clip, out, tiny_model_dir, "--verify") == 1
    err = capsys.readouterr().err
    assert f"frame {leak} (track" in err and "--verify-fallback redact" in err and "Traceback" not in err, err
    assert not out.exists() and leftovers(tmp_path) == []


def test_redact_fallback_blurs_the_leaking_face_frames_only(clip, originals, baseline, tiny_model_dir, tmp_path,
                                                            monkeypatch, capsys):
    leaks = {0, INTERPOLATED, HELD}
    written: dict = {}
    _patch_run(monkeypatch, written, leak_frames=leaks, recognizer=ExactRecognizer())
    out, tj = tmp_path / "g.mp4", tmp_path / "t.json"
    assert _anonymize(clip, out, tiny_model_dir, "--verify", "--verify-fallback", "redact",
                      "--tracks-json", str(tj)) == 0
    base = baseline[1]
    assert sorted(written) == list(range(N))
    for t in range(N):
        box = frame_at(t)[1]
        if t in leaks:
            assert face_changed(written[t], originals[t], box) > 0.5, f"frame {t}: leaking face not blurred"
            assert face_changed(written[t], base[t], box) > 0.3, f"frame {t}: the anonymized face, not a blur"
        else:
            assert np.array_equal(written[t], base[t]), f"frame {t}: a face that passed was changed"
    err = capsys.readouterr().err
    assert f"{N} face-frames checked, 3 leak(s) found, 3 redacted" in err, err
    data = json.loads(tj.read_text())
    assert data["verify"] == {"recognizer": "exact", "threshold": 0.6, "fallback": "redact", "checked": N,
                              "leaks": 3, "redacted": 3}
    (track,) = data["tracks"]
    assert track["verify"] == {"checked": N, "leaks": 3, "redacted": 3, "min_distance": 0.0}


def test_default_without_the_recognizer_runs_unguarded_with_the_warning(clip, baseline, tiny_model_dir, tmp_path,
                                                                        monkeypatch, caplog, capsys):
    _patch_run(monkeypatch, {}, leak_frames=set())
    out = tmp_path / "g.mp4"
    with caplog.at_level("WARNING"):
        assert _anonymize(clip, out, tiny_model_dir) == 0
    assert "identity verification is off" in caplog.text
    assert "face-frames checked" not in capsys.readouterr().err
    assert out.read_bytes() == baseline[0]


def test_bad_guard_options_are_refused_before_any_work(clip, tiny_model_dir, tmp_path, monkeypatch, capsys):
    _patch_run(monkeypatch, {}, recognizer=ExactRecognizer())
    with pytest.raises(SystemExit) as exc:  # a usage error of the parser: code 2, before anything is read
        _anonymize(clip, tmp_path / "g.mp4", tiny_model_dir, "--verify", "--verify-threshold", "-1")
    assert exc.value.code == 2 and "--verify-threshold" in capsys.readouterr().err
    assert not (tmp_path / "g.mp4").exists()
