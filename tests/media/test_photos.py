"""photos: input expansion, output paths and the resumable manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from faceanon_core.media.images import load_image, save_image
from faceanon_core.media.manifest import Manifest, run_batch
from faceanon_core.media.plans import InputError, expand_inputs, output_path, plan_outputs


def make_tree(root: Path, n: int = 6) -> list[Path]:
    paths = []
    for i in range(n):
        sub = root / ("a" if i % 2 else "b") / ("deep" if i % 3 == 0 else "")
        p = sub / f"img{i}.png"
        rgb = np.full((8, 8, 3), i * 20, np.uint8)
        save_image(p, rgb)
        paths.append(p)
    (root / "notes.txt").write_text("not an image")
    save_image(root / ".hidden.png", np.zeros((4, 4, 3), np.uint8))
    return paths


def copy_process(src: Path, dst: Path) -> dict:
    img = load_image(src)
    save_image(dst, 255 - img.rgb)
    return {"faces": 0}


def test_expand_inputs(tmp_path):
    paths = make_tree(tmp_path / "in")
    flat = expand_inputs([tmp_path / "in" / "a"])
    assert [i.rel.as_posix() for i in flat] == ["img1.png", "img5.png"]
    rec = expand_inputs([tmp_path / "in"], recursive=True)
    assert len(rec) == 6 and all(not i.rel.name.startswith(".") for i in rec)
    assert {i.path.resolve() for i in rec} == {p.resolve() for p in paths}
    # A file given twice (directly and through its folder) is processed once.
    again = expand_inputs([paths[1], tmp_path / "in" / "a"])
    assert len(again) == 2
    with pytest.raises(InputError, match="nope"):
        expand_inputs([tmp_path / "nope"])
    # The output folder inside the input tree is never read back.
    save_image(tmp_path / "in" / "out" / "x.png", np.zeros((4, 4, 3), np.uint8))
    rec2 = expand_inputs([tmp_path / "in"], recursive=True, exclude=tmp_path / "in" / "out")
    assert len(rec2) == 6


def test_output_paths_and_clashes(tmp_path):
    make_tree(tmp_path / "in")
    items = expand_inputs([tmp_path / "in"], recursive=True)
    plan = plan_outputs(items, tmp_path / "out", "jpg")
    assert all(o.suffix == ".jpg" for _, o in plan)
    assert output_path(items[0], tmp_path / "out") == tmp_path / "out" / items[0].rel
    a = tmp_path / "in" / "a" / "img1.png"
    b = tmp_path / "x" / "img1.png"
    save_image(b, np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="both be written"):
        plan_outputs(expand_inputs([a, b]), tmp_path / "out")
    with pytest.raises(InputError, match="overwrite the input"):
        plan_outputs(expand_inputs([a]), tmp_path / "in" / "a")


class Interrupted(BaseException):
    """Stands in for Ctrl-C / a killed process."""


def test_resume_after_interruption(tmp_path):
    make_tree(tmp_path / "in", n=10)
    plan = plan_outputs(expand_inputs([tmp_path / "in"], recursive=True), tmp_path / "out")
    manifest_path = tmp_path / "out" / "manifest.jsonl"
    calls: list[Path] = []

    def flaky(src, dst):
        if len(calls) == 4:
            raise Interrupted()
        calls.append(src)
        return copy_process(src, dst)

    with pytest.raises(Interrupted):
        run_batch(plan, flaky, manifest=Manifest(manifest_path), params={"method": "x"}, seed=7)
    assert len(calls) == 4
    written = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "out").rglob("*.png")}
    assert len(written) == 4
    # Simulate a crash in the middle of writing a record.
    with open(manifest_path, "a") as fh:
        fh.write('{"input": "/x/half-writ')

    calls2: list[Path] = []
    summary = run_batch(plan, lambda s, d: calls2.append(s) or copy_process(s, d), manifest=Manifest(manifest_path))
    assert summary.skipped == 4 and summary.done == 6 and summary.failed == 0
    assert set(calls2).isdisjoint(calls) and len(calls2) == 6
    for p, (data, mtime) in written.items():  # finished work untouched
        assert p.read_bytes() == data and p.stat().st_mtime_ns == mtime
    records = [json.loads(line) for line in manifest_path.read_text().splitlines()
               if line.startswith("{") and line.endswith("}")]
    assert len(records) == 10 and all(r["status"] == "done" for r in records)
    assert records[0]["params"] == {"method": "x"} and records[0]["seed"] == 7 and records[0]["faces"] == 0
    # A third run does nothing.
    assert run_batch(plan, lambda s, d: pytest.fail("redo"), manifest=Manifest(manifest_path)).skipped == 10


def test_errors_are_recorded_and_retried(tmp_path):
    make_tree(tmp_path / "in", n=3)
    (tmp_path / "in" / "broken.png").write_bytes(b"")
    plan = plan_outputs(expand_inputs([tmp_path / "in"], recursive=True), tmp_path / "out")
    m = Manifest(tmp_path / "m.jsonl")
    s = run_batch(plan, copy_process, manifest=m)
    assert s.done == 3 and s.failed == 1 and "broken.png" in s.errors[0][1]
    assert not (tmp_path / "out" / "broken.png").exists()
    # A deleted output is redone even though the record says done.
    victim = plan[0][1]
    victim.unlink()
    s2 = run_batch(plan, copy_process, manifest=Manifest(tmp_path / "m.jsonl"))
    assert s2.done == 1 and s2.failed == 1 and s2.skipped == 2 and victim.exists()
    # An output that exists without a record is reported, not silently overwritten.
    s3 = run_batch(plan, copy_process, manifest=Manifest(tmp_path / "other.jsonl"))
    assert s3.failed == 4 and "--overwrite" in s3.errors[0][1]


def test_manifest_tolerates_garbage_lines(tmp_path, caplog):
    p = tmp_path / "m.jsonl"
    p.write_text('{"input": "a.png", "status": "done", "output": "x"}\nnot json\n[1,2]\n')
    m = Manifest(p)
    assert list(m.records) == [Manifest.key("a.png")]
    assert not m.is_done("a.png")  # its output does not exist
    m.append({"input": "b.png", "status": "done"})
    assert p.read_text().endswith('"status": "done"}\n')
    with pytest.raises(ValueError):
        m.append({"status": "done"})
