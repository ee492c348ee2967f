"""Folder runs you can trust: one run per output folder, parameters recorded and compared, files left
out named, stale temporary files cleaned, bad output folders refused in words, inputs checked before
the model loads, ``-o`` naming a file for one photo."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from faceanon_core.cli import main
from faceanon_core.media.images import load_image, save_image
from faceanon_core.media.manifest import LOCK_NAME
from helpers.faces import astronaut, collage, grace_hopper

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = "faceanon-manifest.jsonl"


def last_records(out: Path) -> dict[str, dict]:
    recs = {}
    for line in (out / MANIFEST).read_text().splitlines():
        rec = json.loads(line)
        recs[rec["input"]] = rec
    return recs


@pytest.fixture()
def two_photos(tmp_path):
    src = tmp_path / "in"
    save_image(src / "astronaut.png", astronaut())
    save_image(src / "grace.jpg", grace_hopper())
    return src


def cli(*argv) -> list[str]:
    return [sys.executable, "-m", "faceanon_core.cli", *map(str, argv)]


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + str(ROOT / "tests") + os.pathsep + e.get("PYTHONPATH", "")
    return e


# ----------------------------------------------------------------------------- the lock


def test_two_real_processes_on_one_folder(tmp_path):
    """A second run while the first works refuses in words; one with --wait queues behind it; the
    manifest ends with every photo done and every output readable (before: both redid everything and
    the manifest marked all photos as failed)."""
    src = tmp_path / "in"
    base = collage()[0]
    for k in range(10):
        save_image(src / f"p{k:02d}.png", np.ascontiguousarray(np.roll(base, 37 * k, axis=1)))
    out = tmp_path / "out"
    first = subprocess.Popen(cli("redact", src, "-o", out), env=env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / LOCK_NAME).exists():
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    second = subprocess.run(cli("redact", src, "-o", out), env=env(), capture_output=True, text=True, timeout=120)
    waiting = subprocess.Popen(cli("redact", src, "-o", out, "--wait"), env=env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    first_err = first.communicate(timeout=300)[1]
    waited_err = waiting.communicate(timeout=300)[1]
    assert first.returncode == 0, first_err
    assert "10 written" in first_err
    if "already done" not in second.stderr:  # the first run was still working when the second started
        assert second.returncode == 2
        assert "is in use by another faceanon run" in second.stderr and f"pid {first.pid}" in second.stderr
        assert "--wait" in second.stderr
    assert waiting.returncode == 0, waited_err
    assert "0 written, 10 already done" in waited_err
    recs = last_records(out)
    assert len(recs) == 10 and all(r["status"] == "done" for r in recs.values())
    for r in recs.values():
        assert load_image(r["output"]).rgb.shape == base.shape
    assert not (out / LOCK_NAME).exists()


def test_stale_lock_of_a_dead_process_is_taken_over(two_photos, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}))
    assert main(["redact", str(two_photos), "-o", str(out)]) == 0
    assert "2 written" in capsys.readouterr().err
    assert not (out / LOCK_NAME).exists()


def test_live_lock_on_another_host_is_respected(two_photos, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "now"}))
    assert main(["redact", str(two_photos), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "in use by another faceanon run (pid 1 on elsewhere" in err and f"delete {out / LOCK_NAME}" in err
    assert not (out / "astronaut.png").exists()


# ----------------------------------------------------------------------------- parameters


def test_rerun_with_other_parameters_refuses_then_redoes_with_overwrite(two_photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["redact", str(two_photos), "-o", str(out), "--method", "blur"]) == 0
    blurred = load_image(out / "astronaut.png").rgb
    capsys.readouterr()
    assert main(["redact", str(two_photos), "-o", str(out), "--method", "pixelate", "--min-face-size", "30"]) == 2
    err = capsys.readouterr().err
    assert "2 photo(s) in" in err and "were made with other parameters" in err
    assert 'method: "blur" then, "pixelate" now' in err and "min_face_size: 20.0 then, 30.0 now" in err
    assert "--overwrite" in err
    assert np.array_equal(load_image(out / "astronaut.png").rgb, blurred)  # nothing touched
    assert main(["redact", str(two_photos), "-o", str(out), "--method", "pixelate", "--min-face-size", "30",
                 "--overwrite"]) == 0
    assert "2 written" in capsys.readouterr().err
    assert not np.array_equal(load_image(out / "astronaut.png").rgb, blurred)
    recs = last_records(out)
    assert {r["params"]["method"] for r in recs.values() if r["status"] == "done"} == {"pixelate"}
    # Same parameters again: already done.
    assert main(["redact", str(two_photos), "-o", str(out), "--method", "pixelate", "--min-face-size", "30"]) == 0
    assert "0 written, 2 already done" in capsys.readouterr().err


# ----------------------------------------------------------------------------- what a folder run cannot do


def test_files_a_folder_run_cannot_handle_are_named(two_photos, tmp_path, capsys):
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 255)]
    frames[0].save(two_photos / "anim.gif", save_all=True, append_images=frames[1:])
    (two_photos / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic")
    out = tmp_path / "out"  # (a video in the folder fails the run: tests/cli/test_cli_contract.py)
    assert main(["redact", str(two_photos), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "2 written" in err
    assert "2 file(s) skipped, not a photo format this command reads" in err
    assert "anim.gif" in err and "phone.heic" in err
    recs = last_records(out)
    skipped = {Path(k).name: r for k, r in recs.items() if r["status"] == "skipped"}
    assert set(skipped) == {"anim.gif", "phone.heic"}
    # A rerun does not add the same records again.
    n = len((out / MANIFEST).read_text().splitlines())
    assert main(["redact", str(two_photos), "-o", str(out)]) == 0
    assert len((out / MANIFEST).read_text().splitlines()) == n


def test_animated_gif_given_as_a_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    frames = [Image.fromarray(astronaut()), Image.fromarray(grace_hopper()[:512, :512])]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    photo = tmp_path / "a.png"
    save_image(photo, astronaut())
    from faceanon_core.cli import faces as cli_faces

    calls = []
    monkeypatch.setattr(cli_faces, "redact_image", lambda *a, **k: calls.append(a) or 1 / 0)
    out = tmp_path / "out"
    assert main(["redact", str(photo), str(gif), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot write .gif outputs" in err and "--ext png" in err
    assert calls == [] and not (out / "a.png").exists()
    assert main(["redact", str(gif), "-o", str(tmp_path / "one.gif")]) == 2
    assert "cannot write .gif outputs" in capsys.readouterr().err and calls == []


def test_stale_part_files_of_ours_are_removed(two_photos, tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    ours = [out / ".faceanon-astronaut.png.k2j4h5g6.part", out / "sub" / ".faceanon-clip.mp4.0a1b2c3d.part",
            out / ".grace.jpg.ab_cd123.part",  # the naming before this one
            out / ".faceanon-grace.staged.jpg"]  # a Ray worker's file whose driver stopped before the commit
    theirs = [out / ".notes.part", out / "draft.part", out / "sub" / "keep.txt", out / "photo.staged.png",
              out / ".faceanon-notes.txt"]
    for p in ours + theirs:
        p.write_bytes(b"half")
    assert main(["redact", str(two_photos), "-o", str(out)]) == 0
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in theirs)
    assert not [p for p in out.rglob("*.part") if p not in theirs]


def test_save_image_temporary_name_is_the_shared_one(tmp_path, monkeypatch):
    from faceanon_core.media import images

    seen = []
    real = images.os.replace

    def spy(a, b):
        seen.append(Path(a).name)
        return real(a, b)

    monkeypatch.setattr(images.os, "replace", spy)
    save_image(tmp_path / "x.png", astronaut(), overwrite=True)
    assert len(seen) == 1 and images.is_partial_name(seen[0]) and seen[0].startswith(".faceanon-x.png.")


def test_output_folder_equal_to_input_folder_is_refused_in_words(two_photos, capsys):
    assert main(["redact", str(two_photos), "-o", str(two_photos)]) == 2
    err = capsys.readouterr().err
    assert "is both an input folder and the output folder" in err and "no photos found" not in err


def test_read_only_output_folder_is_said_in_words(two_photos, tmp_path, capsys, monkeypatch):
    from faceanon_core.media import manifest

    def refuse(path, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(manifest.os, "open", refuse)
    assert main(["redact", str(two_photos), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "the output folder is on a read-only file system" in err and "choose a folder you can write to" in err
    assert "Errno" not in err


# ----------------------------------------------------------------------------- -o names a file


def test_o_names_the_output_file_for_one_photo(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    save_image(photo, astronaut())
    target = tmp_path / "out.png"
    assert main(["redact", str(photo), "-o", str(target)]) == 0
    assert target.is_file() and not np.array_equal(load_image(target).rgb, astronaut())
    assert not (tmp_path / MANIFEST).exists()
    other = tmp_path / "b.png"
    save_image(other, grace_hopper())
    assert main(["redact", str(photo), str(other), "-o", str(tmp_path / "two.png")]) == 2
    assert "2 inputs need an output folder" in capsys.readouterr().err
    folder = tmp_path / "folder"
    assert main(["redact", str(photo), str(other), "-o", str(folder)]) == 0
    assert (folder / "photo.png").is_file() and (folder / "b.png").is_file()


# ----------------------------------------------------------------------------- the smallest face


def test_faces_near_min_face_size_are_counted_in_manifest_and_log(tmp_path, capsys):
    src = tmp_path / "in"
    canvas = np.full((400, 400, 3), 128, np.uint8)
    small = cv2.resize(astronaut(), None, fx=25 / 88, fy=25 / 88, interpolation=cv2.INTER_AREA)
    canvas[20:20 + small.shape[0], 20:20 + small.shape[1]] = small
    save_image(src / "small.png", canvas)
    save_image(src / "big.png", astronaut())
    out = tmp_path / "out"
    assert main(["redact", str(src), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "1 face(s) were less than 1.5x --min-face-size (20 px) wide" in err
    recs = {Path(k).name: r for k, r in last_records(out).items()}
    assert recs["small.png"]["faces"] == 1 and recs["small.png"]["faces_near_min_size"] == 1
    assert recs["big.png"]["faces_near_min_size"] == 0
    assert main(["detect", str(src / "small.png"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["min_face_size"] == 20.0 and doc["faces_near_min_size"] == 1


def test_min_face_size_below_the_detector_limit_is_refused(two_photos, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["redact", str(two_photos), "-o", str(tmp_path / "out"), "--min-face-size", "5"])
    assert "at least 8 px" in capsys.readouterr().err


# ----------------------------------------------------------------------------- anonymize checks first


FAST = ["--size", "64", "--steps", "2", "--scheduler", "ddim", "--no-verify"]


@pytest.fixture()
def no_model(monkeypatch):
    from faceanon_core.cli import anonymize

    calls = []

    def load(args):
        calls.append(args)
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(anonymize, "load_pipeline", load)
    return calls


def test_anonymize_checks_every_input_before_loading_the_model(two_photos, tmp_path, tiny_model_dir, capsys,
                                                                no_model):
    broken = two_photos / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    out = tmp_path / "out"
    rc = main(["anonymize", str(broken), str(empty), "-o", str(out), "--models", str(tiny_model_dir)] + FAST)
    err = capsys.readouterr().err
    assert rc == 2 and no_model == []
    assert "broken.png" in err and "empty.jpg: file is empty" in err and "model was not loaded" in err
    # One bad photo among good ones, with --stop-on-error: also refused before the model.
    rc = main(["anonymize", str(two_photos), "-o", str(out), "--stop-on-error", "--models", str(tiny_model_dir)]
              + FAST)
    assert rc == 2 and no_model == [] and "broken.png" in capsys.readouterr().err
    # An output that exists (no --overwrite) is found before the model too.
    photo = two_photos / "astronaut.png"
    target = tmp_path / "exists.png"
    save_image(target, astronaut())
    rc = main(["anonymize", str(photo), "-o", str(target), "--models", str(tiny_model_dir)] + FAST)
    assert rc == 2 and no_model == [] and "output exists" in capsys.readouterr().err
    # The same checks on a good folder let the model load (and here, fail on purpose).
    broken.unlink()
    with pytest.raises(AssertionError, match="the model was loaded"):
        main(["anonymize", str(two_photos), "-o", str(out), "--models", str(tiny_model_dir)] + FAST)
    assert len(no_model) == 1


def test_anonymize_records_its_parameters_and_refuses_changed_ones(two_photos, tmp_path, tiny_model_dir, capsys):
    (two_photos / "grace.jpg").unlink()
    save_image(two_photos / "b.png", collage()[0].copy())
    out = tmp_path / "out"
    base = ["anonymize", str(two_photos), "-o", str(out), "--models", str(tiny_model_dir)] + FAST
    assert main(base) == 0
    recs = [r for r in last_records(out).values() if r["status"] == "done"]
    assert len(recs) == 2
    p = recs[0]["params"]
    assert p["seed"] == 0 and p["steps"] == 2 and p["degree"] == 1.25 and p["min_face_size"] == 20.0
    assert p["model"]["folder"] == str(Path(tiny_model_dir).resolve()) and len(p["model"]["digest"]) == 16
    capsys.readouterr()
    assert main(base + ["--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "seed: 0 then, 3 now" in err and "--overwrite" in err
