"""faceanon_core.cli.faces: the `redact` and `detect` subcommands through a tiny argparse harness."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from faceanon_core.cli import faces as cli_faces
from faceanon_core.media.images import load_image, save_image
from helpers.faces import astronaut, collage, grace_hopper


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faceanon")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_faces.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture()
def photos(tmp_path):
    src = tmp_path / "in"
    save_image(src / "astronaut.png", astronaut())
    exif = Image.Exif()
    exif[0x010F] = "Maker"
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0)}
    (src / "sub").mkdir()
    Image.fromarray(grace_hopper()).save(src / "sub" / "grace.jpg", exif=exif.tobytes(), quality=95)
    save_image(src / "group.png", collage()[0].copy())
    return src


def test_redact_folder_and_resume(photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(["redact", str(photos), "-o", str(out), "-r", "--method", "pixelate"]) == 0
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == ["astronaut.png", "faceanon-manifest.jsonl", "group.png", "sub/grace.jpg"]
    records = [json.loads(line) for line in (out / "faceanon-manifest.jsonl").read_text().splitlines()]
    assert {r["faces"] for r in records} == {1, 4} and all(r["status"] == "done" for r in records)
    assert records[0]["params"]["method"] == "pixelate"
    red = load_image(out / "astronaut.png").rgb
    assert not np.array_equal(red, astronaut())
    with Image.open(out / "sub" / "grace.jpg") as im:
        assert not im.getexif()  # metadata stripped by default
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    capsys.readouterr()
    assert run(["redact", str(photos), "-o", str(out), "-r", "--method", "pixelate"]) == 0
    assert "0 written, 3 already done" in capsys.readouterr().err
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


def test_redact_refuses_to_overwrite_without_flag(photos, tmp_path, capsys):
    out = tmp_path / "out"
    target = out / "astronaut.png"
    save_image(target, np.zeros((4, 4, 3), np.uint8))
    before = target.read_bytes()
    assert run(["redact", str(photos / "astronaut.png"), "-o", str(out)]) == 2  # before any work
    err = capsys.readouterr().err
    assert "--overwrite" in err and "astronaut.png" in err
    assert target.read_bytes() == before
    assert run(["redact", str(photos / "astronaut.png"), "-o", str(out), "--overwrite", "--ext", "png"]) == 0
    assert load_image(target).rgb.shape == (512, 512, 3)


def test_redact_keep_metadata_drops_gps(photos, tmp_path):
    out = tmp_path / "out"
    assert run(["redact", str(photos / "sub" / "grace.jpg"), "-o", str(out), "--keep-metadata",
                "--method", "solid", "--color", "#00ff00"]) == 0
    with Image.open(out / "grace.jpg") as im:
        e = im.getexif()
        assert e.get(0x010F) == "Maker" and 0x8825 not in e


def test_redact_bad_inputs(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.jpg").write_bytes(b"")
    (tmp_path / "in" / "junk.png").write_bytes(b"garbage" * 20)
    save_image(tmp_path / "in" / "ok.png", astronaut())
    out = tmp_path / "out"
    assert run(["redact", str(tmp_path / "in"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "1 written" in err and "2 failed" in err and "empty.jpg" in err and "junk.png" in err
    assert sorted(p.name for p in out.iterdir()) == ["faceanon-manifest.jsonl", "ok.png"]  # nothing half-written
    assert run(["redact", str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert "missing: no such file" in capsys.readouterr().err
    assert run(["redact", str(tmp_path / "in"), "-o", str(out / "ok.png")]) == 2
    with pytest.raises(SystemExit):
        run(["redact", str(tmp_path / "in"), "-o", str(out), "--strength", "-1"])
    with pytest.raises(SystemExit):
        run(["redact", str(tmp_path / "in"), "-o", str(out), "--method", "smudge"])


def test_detect_json_and_table(tmp_path, capsys):
    p = tmp_path / "group.png"
    save_image(p, collage()[0].copy())
    assert run(["detect", str(p), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["width"] == 1300 and doc["height"] == 700 and len(doc["faces"]) == 4
    f = doc["faces"][0]
    assert len(f["box"]) == 4 and len(f["landmarks"]) == 5 and 0.95 <= f["score"] <= 1
    assert run(["detect", str(p)]) == 0
    out = capsys.readouterr().out
    assert "4 face(s)" in out and len(out.strip().splitlines()) == 6
    (tmp_path / "bad.jpg").write_bytes(b"")
    assert run(["detect", str(tmp_path / "bad.jpg")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("faceanon detect: error:") and "bad.jpg" in err and len(err.splitlines()) == 1
