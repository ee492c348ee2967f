"""``faceanon redact`` / ``anonymize`` on video files, end to end on small clips of a real face photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faceanon_core.cli import main
from faceanon_core.media.video import probe_video
from helpers.video import FAST, SR, H, N, W, audio_bytes, face_changed, frame_at, frames_of, leftovers, make_face_clip

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_face_clip(tmp_path_factory.mktemp("vclips") / "clip.mp4")


def test_redact_clip_keeps_frames_rate_audio_and_covers_every_frame(clip, tmp_path, monkeypatch, capsys):
    """The full detection of frame 3 is dropped (frames 1-5 then have none: the detector searches near the
    previous frame's faces only): the tracked, interpolated face is blurred there all the same."""
    from faceanon_core.faces import MTCNNDetector

    real = MTCNNDetector.detect
    calls = []

    def missing_frame_4(self, rgb, *a, **k):
        calls.append(1)
        return [] if len(calls) == 2 else real(self, rgb, *a, **k)

    monkeypatch.setattr(MTCNNDetector, "detect", missing_frame_4)
    out = tmp_path / "clip-redacted.mp4"
    assert main(["redact", str(clip), "-o", str(out), "--tracks-json", str(tmp_path / "t.json")]) == 0
    assert len(calls) == 4  # the whole frame on frames 0, 3, 6, 9 only (faces/video_detect.py), in one pass
    src, got = probe_video(clip), probe_video(out)
    assert (got.frames, got.fps, got.width, got.height) == (src.frames, src.fps, src.width, src.height)
    assert audio_bytes(out) == audio_bytes(clip)
    with av.open(str(out)) as c:
        assert "title" not in c.metadata
    src_frames, out_frames = frames_of(clip), frames_of(out)
    assert [f.pts for f in out_frames] == [f.pts for f in src_frames]
    for i, (a, b) in enumerate(zip(src_frames, out_frames, strict=True)):
        assert face_changed(b.rgb, a.rgb, frame_at(i)[1]) > 0.5, f"frame {i}: face not redacted"
        corner = np.abs(b.rgb[:20, :20].astype(int) - a.rgb[:20, :20].astype(int)).max()
        assert corner < 20  # background untouched (re-encoding noise only)
    assert "1 face track(s)" in capsys.readouterr().err
    assert '"interpolated": true' in (tmp_path / "t.json").read_text()
    assert leftovers(tmp_path) == []


def test_rotated_portrait_clip(tmp_path):
    """Stored sideways with a 90 degree display rotation: detected upright, rotation kept."""
    clip = make_face_clip(tmp_path / "portrait.mp4", audio=False, rotate90=True)
    out = tmp_path / "out.mp4"
    assert main(["redact", str(clip), "-o", str(out), "--method", "solid"]) == 0
    assert probe_video(out).rotation == probe_video(clip).rotation == 90
    src_frames, out_frames = frames_of(clip), frames_of(out)
    assert len(out_frames) == N
    for i, (a, b) in enumerate(zip(src_frames, out_frames, strict=True)):
        up_a, up_b = np.rot90(a.rgb, k=-1), np.rot90(b.rgb, k=-1)  # as shown
        assert face_changed(up_b, up_a, frame_at(i)[1]) > 0.9


def test_vfr_clip_keeps_its_timestamps(tmp_path):
    clip = make_face_clip(tmp_path / "vfr.mkv", audio=False, vfr=True)
    out = tmp_path / "out.mkv"
    assert main(["redact", str(clip), "-o", str(out)]) == 0
    assert [f.time for f in frames_of(out)] == pytest.approx([f.time for f in frames_of(clip)], abs=1e-3)


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as c:
        a = c.add_stream("aac", rate=SR, layout="mono")
        for t in range(0, SR // 4, 1024):
            af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            af.sample_rate, af.pts = SR, t
            for p in a.encode(af):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)
    return path


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "audio-only", "missing"])
def test_bad_video_inputs_are_one_line_errors_and_write_nothing(kind, clip, tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "text":
        bad.write_text("not a video\n")
    elif kind == "truncated":
        data = clip.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "audio-only":
        _audio_only(bad)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.mp4"
    code = main(["redact", str(bad), "-o", str(out)])
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err and "bad.mp4" in err, err
    assert not out.exists() and leftovers(out_dir) == []


def test_output_rules(clip, tmp_path, capsys):
    out = tmp_path / "o.mp4"
    out.write_bytes(b"keep me")
    assert main(["redact", str(clip), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(["redact", str(clip), "-o", str(tmp_path / "o.png")]) == 2
    assert "video file" in capsys.readouterr().err
    photo = tmp_path / "p.png"
    photo.write_bytes(b"x")
    # Photos and videos named together are a folder run (tests/cli/test_folder_videos.py): the broken photo fails
    # (code 1), the video is written.
    assert main(["redact", str(clip), str(photo), "-o", str(tmp_path / "mixed")]) == 1
    assert "p.png" in capsys.readouterr().err and probe_video(tmp_path / "mixed" / "clip.mp4").frames == N
    assert main(["redact", str(clip), "-o", str(tmp_path / "folder")]) == 0  # a folder: same name inside
    assert probe_video(tmp_path / "folder" / "clip.mp4").frames == N


def test_interrupted_run_leaves_nothing_and_a_rerun_works(clip, tmp_path, monkeypatch):
    import faceanon_core.faces.video as fv

    real = fv.redact_frames
    seen = []

    def interrupt(*a, **k):
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr("faceanon_core.cli.video.redact_frames", interrupt)
    out = tmp_path / "o.mp4"
    assert main(["redact", str(clip), "-o", str(out)]) == 130
    assert not out.exists() and leftovers(tmp_path) == []
    monkeypatch.setattr("faceanon_core.cli.video.redact_frames", real)
    assert main(["redact", str(clip), "-o", str(out)]) == 0 and probe_video(out).frames == N


@pytest.mark.parametrize("stage", ["tracking", "writing"])
def test_an_unexpected_error_mid_video_is_one_line_naming_the_video(stage, clip, tmp_path, monkeypatch, capsys):
    """A RuntimeError (a model or library bug, out of memory) fails the video as a folder run would: exit 1, one
    error line naming the video and the error's type, no traceback, nothing written."""

    def broken(*a, **k):
        raise RuntimeError("broken on purpose")

    target = "faceanon_core.cli.video.track_faces" if stage == "tracking" else "faceanon_core.cli.video.redact_frames"
    monkeypatch.setattr(target, broken)
    out = tmp_path / "o.mp4"
    assert main(["redact", str(clip), "-o", str(out)]) == 1  # raises (a traceback) without the run's except
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert err == [f"faceanon redact: error: {clip}: RuntimeError: broken on purpose"]
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("identity", ["per-track", "per-frame"])
def test_anonymize_clip_with_the_tiny_model(clip, tmp_path, tiny_model_dir, identity, capsys):
    out = tmp_path / "anon.mp4"
    code = main(["anonymize", str(clip), "-o", str(out), "--models", str(tiny_model_dir), "--identity", identity,
                 "--no-verify"] + FAST)
    assert code == 0, capsys.readouterr().err
    assert probe_video(out).frames == N and audio_bytes(out) == audio_bytes(clip)
    for i, (a, b) in enumerate(zip(frames_of(clip), frames_of(out), strict=True)):
        assert face_changed(b.rgb, a.rgb, frame_at(i)[1]) > 0.3, f"frame {i}"


# --verify on videos (the identity-leak guard): tests/privacy/test_video_guard.py


def test_eval_video_mode_per_track(clip, tmp_path, rec, capsys):
    """The original against itself leaks every sampled frame; a solid fill leaks none."""
    import json

    from faceanon_core.privacy.video_eval import evaluate_video

    same = evaluate_video(clip, clip, rec).summary
    assert same["tracks"] == 1 and same["sampled_face_frames"] == N
    assert same["leak_frames"] == N and same["to_original_mean"] < 1e-6
    assert same["stability_anonymized"] == pytest.approx(same["stability_original"])
    filled = tmp_path / "filled.mp4"
    assert main(["redact", str(clip), "-o", str(filled), "--method", "solid"]) == 0
    capsys.readouterr()
    assert main(["eval", str(clip), str(filled), "-o", str(tmp_path / "rep")]) == 0
    s = json.loads((tmp_path / "rep" / "eval.json").read_text())
    assert s["leak_frames"] == 0 and s["to_original_mean"] > rec.threshold
    assert main(["eval", str(clip), str(make_face_clip(tmp_path / "short.mp4", n=4))]) == 2
    assert "frames" in capsys.readouterr().err


def make_avi_with_audio(path: Path, n: int = 20) -> Path:
    """mpeg4 frames of the astronaut + AAC in an AVI: the container declares one frame more than it holds."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("mpeg4", rate=10)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        a = c.add_stream("aac", rate=SR)
        for i in range(n):
            for packet in v.encode(av.VideoFrame.from_ndarray(frame_at(i % 10)[0], format="rgb24")):
                c.mux(packet)
        for packet in v.encode():
            c.mux(packet)
        for k in range(0, 2 * SR, 1024):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = SR, k
            for packet in a.encode(fr):
                c.mux(packet)
        for packet in a.encode():
            c.mux(packet)
    return path


def test_an_avi_whose_container_miscounts_its_frames_redacts(tmp_path, capsys):
    """The stream decodes cleanly to its end: accepted, every frame written; a truly cut copy is refused."""
    clip = make_avi_with_audio(tmp_path / "clip.avi")
    with av.open(str(clip)) as c:
        assert c.streams.video[0].frames == 21  # the header's count, one more than the 20 frames
    assert probe_video(clip).frames == 20
    out = tmp_path / "out.mp4"
    assert main(["redact", str(clip), "-o", str(out)]) == 0, capsys.readouterr().err
    assert probe_video(out).frames == 20
    cut = tmp_path / "cut.avi"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    assert main(["redact", str(cut), "-o", str(tmp_path / "cut-out.mp4")]) == 2
    err = capsys.readouterr().err
    assert "faceanon redact: error:" in err and "cut.avi" in err and "truncated" in err
    assert "allow_truncated" not in err and "=True" not in err
    assert not (tmp_path / "cut-out.mp4").exists()
