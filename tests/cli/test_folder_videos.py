"""Folder runs hold videos too: ``faceanon redact DIR -o OUT`` and ``faceanon anonymize DIR -o OUT`` send each
video of the folder through the single-video path (tracks, audio kept, atomic write) and count it in the
summary, the manifest and the exit code; ``--margin`` reaches the pixels of photos and videos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from faceanon_core.cli import main
from faceanon_core.media.images import load_image, save_image
from faceanon_core.media.video import PARTIAL_PREFIX, probe_video
from helpers.faces import astronaut, grace_hopper

av = pytest.importorskip("av")

from helpers.video import audio_bytes, face_changed, frame_at, frames_of, make_face_clip  # noqa: E402

N = 4  # frames per clip: enough for a track, cheap on two cores
MANIFEST = "faceanon-manifest.jsonl"
FACE_BOX = (180, 60, 268, 174)  # the astronaut's face in the full photo (MTCNN box)


def records(out: Path) -> dict[str, dict]:
    recs = {}
    for line in (out / MANIFEST).read_text().splitlines():
        rec = json.loads(line)
        recs[Path(rec["input"]).name] = rec
    return recs


def partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(PARTIAL_PREFIX)]


def photo_face_changed(out: Path, src: np.ndarray, box=FACE_BOX) -> float:
    return face_changed(load_image(out).rgb, src, box)


@pytest.fixture(scope="module")
def clip_src(tmp_path_factory) -> Path:
    return make_face_clip(tmp_path_factory.mktemp("clips") / "walk.mp4", n=N)


@pytest.fixture
def mixed(tmp_path, clip_src) -> Path:
    """A folder with two photos and two videos (one in a sub-folder, for --recursive)."""
    src = tmp_path / "in"
    save_image(src / "astronaut.png", astronaut())
    save_image(src / "grace.jpg", grace_hopper())
    (src / "walk.mp4").write_bytes(clip_src.read_bytes())
    (src / "trip").mkdir()
    (src / "trip" / "walk.mov").write_bytes(clip_src.read_bytes())  # same stream, another container name
    return src


def check_video_redacted(src: Path, out: Path, threshold: float = 0.5) -> None:
    assert probe_video(out).frames == N
    assert audio_bytes(out) == audio_bytes(src)
    for i, (a, b) in enumerate(zip(frames_of(src), frames_of(out), strict=True)):
        assert face_changed(b.rgb, a.rgb, frame_at(i)[1]) > threshold, f"{out} frame {i}: face unchanged"


# ----------------------------------------------------------------------------- redact


def test_a_mixed_folder_is_redacted_whole(mixed, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["redact", str(mixed), "-o", str(out), "-r", "--ext", "png",
                 "--tracks-json", str(tmp_path / "tracks.json")]) == 0
    err = capsys.readouterr().err
    assert "4 written, 0 already done, 0 failed" in err and "skipped" not in err
    # Photos take --ext; a video keeps its own name and container.
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.name != MANIFEST) == [
        "astronaut.png", "grace.png", "trip", "trip/walk.mov", "walk.mp4"]
    assert photo_face_changed(out / "astronaut.png", astronaut()) > 0.5
    check_video_redacted(mixed / "walk.mp4", out / "walk.mp4")
    check_video_redacted(mixed / "trip" / "walk.mov", out / "trip" / "walk.mov")
    recs = records(out)
    assert recs["walk.mp4"]["status"] == "done" and recs["walk.mp4"]["kind"] == "video"
    assert recs["walk.mp4"]["frames"] == N and recs["walk.mp4"]["faces"] == 1  # one face track
    assert recs["walk.mp4"]["params"]["video"] == {"max_gap": 8, "smoothing": True}
    assert "video" not in recs["astronaut.png"]["params"]
    assert partials(out) == []
    for name in ("tracks-walk.json", "tracks-trip_walk.json"):  # one file per video, named after it
        assert len(json.loads((tmp_path / name).read_text())["tracks"]) == 1


def test_rerun_skips_finished_videos_and_redoes_an_interrupted_one(mixed, tmp_path, monkeypatch, capsys):
    """Ctrl-C inside the video: code 130, the photos kept, no video and no .part; the rerun does only the
    video; a third run does nothing."""
    import faceanon_core.faces.video as fv

    real = fv.redact_frames
    calls = []

    def interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr("faceanon_core.cli.video.redact_frames", interrupt)
    out = tmp_path / "out"
    assert main(["redact", str(mixed), "-o", str(out)]) == 130
    assert (out / "astronaut.png").is_file() and (out / "grace.jpg").is_file()
    assert not (out / "walk.mp4").exists() and partials(out) == []
    assert not (out / ".faceanon.lock").exists()
    capsys.readouterr()
    monkeypatch.setattr("faceanon_core.cli.video.redact_frames", real)
    photo_mtime = (out / "astronaut.png").stat().st_mtime_ns
    assert main(["redact", str(mixed), "-o", str(out)]) == 0
    assert "1 written, 2 already done, 0 failed" in capsys.readouterr().err
    check_video_redacted(mixed / "walk.mp4", out / "walk.mp4")
    assert (out / "astronaut.png").stat().st_mtime_ns == photo_mtime
    video_mtime = (out / "walk.mp4").stat().st_mtime_ns
    assert main(["redact", str(mixed), "-o", str(out)]) == 0
    assert "0 written, 3 already done, 0 failed" in capsys.readouterr().err
    assert (out / "walk.mp4").stat().st_mtime_ns == video_mtime


def test_a_broken_video_fails_alone(mixed, tmp_path, clip_src, capsys):
    """A truncated video among good inputs: code 1, it is named and has no output; the others are written."""
    data = clip_src.read_bytes()
    (mixed / "cut.mp4").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert main(["redact", str(mixed), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "3 written, 0 already done, 1 failed" in err
    assert any(ln.startswith("faceanon redact: error: ") and "cut.mp4" in ln for ln in err.splitlines()), err
    assert not (out / "cut.mp4").exists() and partials(out) == []
    check_video_redacted(mixed / "walk.mp4", out / "walk.mp4")
    assert (out / "astronaut.png").is_file() and (out / "grace.jpg").is_file()
    assert records(out)["cut.mp4"]["status"] == "error"


def test_a_video_face_that_cannot_be_handled_fails_its_video_with_nothing_written(mixed, tmp_path, monkeypatch,
                                                                                   capsys):
    """Fail closed: a tracked face the redaction cannot handle in frame 2 fails the whole video (code 1), no
    output and no .part for it; the photos are done."""
    import faceanon_core.faces.video as fv
    from faceanon_core.faces import FaceProcessingError

    real = fv.redact_frames

    def degenerate_in_frame_2(frames, indices, *a, **k):
        if 2 in indices:
            raise FaceProcessingError("walk.mp4 frame 2: 1 tracked face(s) could not be aligned; nothing was written")
        return real(frames, indices, *a, **k)

    monkeypatch.setattr("faceanon_core.cli.video.redact_frames", degenerate_in_frame_2)
    out = tmp_path / "out"
    assert main(["redact", str(mixed), "-o", str(out)]) == 1
    assert "frame 2" in capsys.readouterr().err
    assert not (out / "walk.mp4").exists() and partials(out) == []
    assert (out / "astronaut.png").is_file()


def test_an_existing_output_video_is_never_replaced_without_overwrite(mixed, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "walk.mp4").write_bytes(b"keep me")
    assert main(["redact", str(mixed), "-o", str(out)]) == 1
    assert "walk.mp4: output exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "walk.mp4").read_bytes() == b"keep me" and (out / "astronaut.png").is_file()
    assert main(["redact", str(mixed), "-o", str(out), "--overwrite"]) == 0
    check_video_redacted(mixed / "walk.mp4", out / "walk.mp4")


def test_mixed_files_named_on_the_command_line_are_a_folder_run(mixed, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["redact", str(mixed / "walk.mp4"), str(mixed / "astronaut.png"), "-o", str(out)]) == 0
    check_video_redacted(mixed / "walk.mp4", out / "walk.mp4")
    assert (out / "astronaut.png").is_file() and (out / MANIFEST).is_file()


def test_ray_refuses_a_folder_with_videos_before_any_work(mixed, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["redact", str(mixed), "-o", str(out), "--ray"]) == 2
    err = capsys.readouterr().err
    assert "faceanon redact: error: --ray runs photos" in err and "walk.mp4" in err
    assert not out.exists()


# ----------------------------------------------------------------------------- anonymize


def test_anonymize_a_mixed_folder_with_the_tiny_model(mixed, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    argv = ["anonymize", str(mixed), "-o", str(out), "--models", str(tiny_model_dir), "--no-verify",
            "--size", "64", "--steps", "2", "--scheduler", "ddim"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "3 written, 0 already done, 0 failed" in capsys.readouterr().err
    assert photo_face_changed(out / "astronaut.png", astronaut()) > 0.3
    check_video_redacted(mixed / "walk.mp4", out / "walk.mp4", threshold=0.3)
    rec = records(out)["walk.mp4"]
    assert rec["status"] == "done" and rec["params"]["video"]["identity"] == "per-track"
    assert main(argv) == 0
    assert "all 3 input(s) already done" in capsys.readouterr().err


# ----------------------------------------------------------------------------- --margin


@pytest.mark.parametrize("value", ["-0.1", "2.01", "nan", "inf", "x"])
def test_margin_out_of_range_is_a_usage_error(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["redact", "in.png", "-o", str(tmp_path / "o.png"), "--margin", value])
    assert exc.value.code == 2 and "--margin" in capsys.readouterr().err


def _head_masks(rgb: np.ndarray, margins):
    from faceanon_core.cli import build_parser
    from faceanon_core.cli.options import detector_from_args
    from faceanon_core.faces.redact import head_mask

    faces = detector_from_args(build_parser().parse_args(["redact", "x", "-o", "y"])).detect(rgb)  # the CLI's
    assert len(faces) == 1
    return [head_mask(rgb.shape, faces, m) for m in margins]


def test_margin_reaches_the_pixels_of_a_photo(tmp_path):
    """Solid fill, lossless PNG: every pixel well inside the margin's head region is filled, every pixel outside
    it is untouched; a larger margin fills a ring the smaller one leaves alone. Margin 0 (the box's own
    ellipse) is allowed, as the library allows it."""
    src = tmp_path / "in" / "astronaut.png"
    save_image(src, astronaut())
    rgb = astronaut()
    margins = (0.0, 0.3, 1.0)
    changed = {}
    for m, mask in zip(margins, _head_masks(rgb, margins), strict=True):
        out = tmp_path / f"m{m}.png"
        assert main(["redact", str(src), "-o", str(out), "--method", "solid", "--color", "0,255,0",
                     "--margin", str(m)]) == 0
        diff = np.abs(load_image(out).rgb.astype(int) - rgb.astype(int)).max(axis=2) > 0
        assert not diff[mask == 0].any(), f"margin {m}: pixels outside the region changed"
        inner = mask >= 0.99
        assert diff[inner].mean() > 0.99, f"margin {m}: the region is not filled"
        changed[m] = (diff, inner)
    d0, _ = changed[0.0]
    d1, inner1 = changed[1.0]
    ring = inner1 & (_head_masks(rgb, [0.3])[0] == 0)
    assert ring.sum() > 5000  # the larger region reaches well past the default one
    assert d1[ring].all() and not changed[0.3][0][ring].any()
    assert d0.sum() < changed[0.3][0].sum() < d1.sum()


def test_margin_reaches_the_pixels_of_a_video(tmp_path, clip_src):
    """The same on every frame of a clip (lossy codec: changed means more than codec noise): pixels in the
    ring between margin 0.3's region and margin 1's are filled with margin 1 and left with margin 0.3."""
    outs = {}
    for m in (0.3, 1.0):
        outs[m] = tmp_path / f"m{m}.mp4"
        assert main(["redact", str(clip_src), "-o", str(outs[m]), "--method", "solid", "--color", "0,255,0",
                     "--margin", str(m)]) == 0
    for i, (a, b03, b1) in enumerate(zip(frames_of(clip_src), frames_of(outs[0.3]), frames_of(outs[1.0]),
                                         strict=True)):
        mask03, mask1 = _head_masks(a.rgb, (0.3, 1.0))
        ring = (mask1 >= 0.99) & (mask03 == 0)
        assert ring.sum() > 1000, f"frame {i}"
        green = lambda f: (f.rgb[..., 1].astype(int) - f.rgb[..., [0, 2]].max(axis=-1) > 100)  # noqa: E731
        assert green(b1)[ring].mean() > 0.95, f"frame {i}: margin 1 did not fill its ring"
        assert green(b03)[ring].mean() < 0.05 and not green(a)[ring].any(), f"frame {i}"
