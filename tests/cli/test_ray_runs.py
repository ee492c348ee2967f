"""Folders on Ray Data (``--ray``): the same files as the single-process command, the manifest's promises.

A local Ray cluster on loopback with two CPU workers, started by this module and shut down at its
end; tiny models. A worker is killed on purpose (once, by the engine's test seam) to check that
Ray's retry loses nothing and writes nothing twice.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed")

from faceanon_core.cli import main, ray_runs  # noqa: E402
from faceanon_core.cli.main import build_parser  # noqa: E402

FAST = ["--size", "64", "--steps", "2", "--scheduler", "ddim"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    signal.alarm(900)  # bounded: a hung cluster fails the module instead of stalling CI
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, runtime_env={"env_vars": env})
    try:
        yield
    finally:
        ray.shutdown()
        signal.alarm(0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from helpers.faces import astronaut, collage, grace_hopper

    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(astronaut()).save(folder / "astronaut.png")
    Image.fromarray(grace_hopper()).save(folder / "grace.jpg", quality=95)
    Image.fromarray(collage()[0]).save(folder / "collage.png")
    Image.new("RGB", (80, 60), (20, 120, 200)).save(folder / "sky.png")
    return folder


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.endswith(".jsonl")}


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "faceanon-manifest.jsonl").read_text().splitlines() if line]


def run_with(argv: list[str], **seams) -> int:
    """``faceanon ARGV --ray`` with test seams set on the parsed args (what main() does, plus the seams)."""
    args = build_parser().parse_args(argv + ["--ray"])
    for key, value in seams.items():
        setattr(args, key, value)
    args.batch_runner = ray_runs.batch_runner(args, args.command)
    return args.func(args)


def check_same(single: Path, on_ray: Path, photos: Path):
    a, b = outputs(single), outputs(on_ray)
    assert sorted(a) == sorted(b) == sorted(p.name for p in photos.iterdir())  # no staging file left behind
    for name in a:
        assert a[name] == b[name], f"{name}: the Ray output differs from the single-process one"
    ra, rb = records(single), records(on_ray)
    assert len(rb) == len({r["input"] for r in rb}) == len(a)  # one record per photo: nothing done twice
    keep = ("input", "status", "faces", "params", "seed", "small_faces")
    by_input = {r["input"]: {k: r.get(k) for k in keep} for r in ra}
    assert {r["input"]: {k: r.get(k) for k in keep} for r in rb} == by_input


def test_redact_on_ray_is_bit_identical_and_resumes(photos, tmp_path):
    margin = ["--margin", "0.7"]  # not the default: the workers must use it as the single process does
    assert main(["redact", str(photos), "-o", str(tmp_path / "single"), *margin]) == 0
    assert main(["redact", str(photos), "-o", str(tmp_path / "ray"), "--ray", *margin]) == 0
    check_same(tmp_path / "single", tmp_path / "ray", photos)
    assert {r["faces"] for r in records(tmp_path / "ray") if r["input"].endswith("collage.png")} == {4}
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray").iterdir() if p.suffix != ".jsonl"}
    assert main(["redact", str(photos), "-o", str(tmp_path / "ray"), "--ray", *margin]) == 0  # rerun: all skipped
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray").iterdir() if p.suffix != ".jsonl"} == stamps
    assert len(records(tmp_path / "ray")) == len(stamps)


def test_killed_writer_is_retried_without_losing_or_doubling(photos, tmp_path):
    assert main(["redact", str(photos), "-o", str(tmp_path / "single"), "--method", "pixelate"]) == 0
    marker = tmp_path / "killed"
    crash = {"stage": "write", "name": "grace.jpg", "marker": str(marker)}
    assert run_with(["redact", str(photos), "-o", str(tmp_path / "ray"), "--method", "pixelate"], _crash=crash) == 0
    assert marker.exists()  # the worker did die after writing its staging file
    check_same(tmp_path / "single", tmp_path / "ray", photos)


def test_existing_output_is_refused_not_replaced(photos, tmp_path, capsys):
    out = tmp_path / "ray"
    out.mkdir()
    (out / "sky.png").write_bytes(b"mine")
    assert main(["redact", str(photos), "-o", str(out), "--ray"]) == 1
    assert (out / "sky.png").read_bytes() == b"mine"
    assert "output exists" in capsys.readouterr().err
    from faceanon_core.media.partials import is_partial_name

    assert not any(is_partial_name(p.name) for p in out.iterdir())
    status = {Path(r["input"]).name: r["status"] for r in records(out)}
    assert status == {"sky.png": "error", "astronaut.png": "done", "grace.jpg": "done", "collage.png": "done"}


@pytest.mark.parametrize("verify", [False, True], ids=["no-verify", "verify"])
def test_anonymize_on_ray_is_bit_identical(photos, tmp_path, tiny_model_dir, verify):
    if verify:
        from faceanon_core.privacy.identity import recognizer_available

        if not recognizer_available():
            pytest.skip("the 'verify' extra is not installed")
    base = ["anonymize", str(photos), "--models", str(tiny_model_dir), "--seed", "7"] + FAST
    base += ["--verify" if verify else "--no-verify"]
    assert main(base + ["-o", str(tmp_path / "single")]) == 0
    marker = tmp_path / "killed"
    crash = {"stage": "model", "name": "astronaut.png", "marker": str(marker)}
    assert run_with(base + ["-o", str(tmp_path / "ray")], _crash=crash) == 0
    assert marker.exists()  # a model actor died mid-run; Ray restarted it and retried its photo
    check_same(tmp_path / "single", tmp_path / "ray", photos)
    rec = {Path(r["input"]).name: r for r in records(tmp_path / "ray")}
    assert rec["collage.png"]["faces"] == 4 and rec["sky.png"]["faces"] == 0
    assert ("identity" in rec["astronaut.png"]) == verify
    original = np.asarray(Image.open(photos / "astronaut.png"))
    assert (np.asarray(Image.open(tmp_path / "ray" / "astronaut.png")) != original).any()


def test_ray_auto_without_address_says_what_to_do(photos, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code = main(["redact", str(photos), "-o", str(tmp_path / "o"), "--ray", "auto"])
    err = capsys.readouterr().err
    assert code == 2 and "RAY_ADDRESS" in err and "ray start --head" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_aligned_crops_are_refused_on_ray(photos, tmp_path, tiny_model_dir, capsys):
    code = main(["anonymize", "--aligned", str(photos), "-o", str(tmp_path / "o"), "--models", str(tiny_model_dir),
                 "--ray"] + FAST)
    assert code == 2 and "--aligned" in capsys.readouterr().err
