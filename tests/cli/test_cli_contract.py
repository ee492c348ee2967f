"""The CLI's contract with its users: one exit-code table and one error prefix for every subcommand, every
option value checked by the parser, inputs and outputs checked before any work, and the light install
(`faceanon redact` / `detect` never import torch)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceanon_core.cli import build_parser, main
from faceanon_core.media.images import save_image

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "safetensors")


def _error_line(capsys, command: str) -> str:
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln]
    assert lines, "no error message"
    assert any(ln.startswith(f"faceanon {command}: error: ") for ln in lines), lines
    return "\n".join(lines)


def _parse_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def photo(tmp_path):
    from helpers.faces import astronaut

    p = tmp_path / "in" / "astronaut.png"
    save_image(p, astronaut())
    return p


@pytest.fixture
def crop(tmp_path, face_images):
    p = tmp_path / "in" / "crop.png"
    save_image(p, face_images[0])
    return p


# --------------------------------------------------------------------------- the light install


def _run_blocked(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where importing any heavy package is recorded and fails."""
    prelude = f"""
import sys, importlib.abc
TRIED = []
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            TRIED.append(name)
            raise ModuleNotFoundError(f"blocked: {{name}}", name=name)
        return None
for name in {HEAVY!r}:
    sys.modules.pop(name, None)
sys.meta_path.insert(0, Block())
import atexit
atexit.register(lambda: print("TRIED=" + ",".join(TRIED), file=sys.stderr))
"""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)


def test_redact_and_detect_never_import_torch(tmp_path):
    res = _run_blocked("""
import faceanon_core
from faceanon_core import redact_image, load_image  # the public API, lazily
from faceanon_core.cli import main
from faceanon_core.samples import sample_path
photo = str(sample_path("grace_hopper"))
rc1 = main(["redact", photo, "-o", "redacted/"])
rc2 = main(["detect", photo])
rc3 = main(["redact", photo, "-o", "again.png", "--method", "pixelate"])
print("RC", rc1, rc2, rc3)
""", tmp_path)
    assert "RC 0 0 0" in res.stdout, res.stderr
    assert "TRIED=\n" in res.stderr + "\n" and "TRIED=," not in res.stderr, res.stderr
    assert (tmp_path / "redacted" / "grace_hopper.jpg").is_file() and (tmp_path / "again.png").is_file()


@pytest.mark.parametrize("command", ["anonymize", "swap"])
def test_the_diffusion_commands_say_what_to_install(tmp_path, crop, command):
    """Without the extra (torch & co. not installed): exit 2, the pip command, nothing written."""
    argv = (["anonymize", str(crop)] if command == "anonymize" else ["swap", "--source", str(crop), "--driving",
                                                                      str(crop)]) + ["-o", str(tmp_path / "o.png")]
    res = _run_blocked(f"""
import sys
for name in {HEAVY!r}:
    sys.modules[name] = None  # not installed: find_spec says None, import fails
from faceanon_core.cli import main
sys.exit(main({argv!r}))
""", tmp_path)
    assert res.returncode == 2, res.stderr
    assert f"faceanon {command}: error: " in res.stderr and '"comfyui-faceanon[diffusion]"' in res.stderr
    assert not (tmp_path / "o.png").exists()


def test_a_missing_model_folder_is_answered_before_torch_is_imported(tmp_path, crop):
    code = f"""
import sys
from faceanon_core.cli import main
rc = main(["anonymize", {str(crop)!r}, "-o", "o.png", "--models", "no-such-folder"])
print("RC", rc, "torch" in sys.modules, "diffusers" in sys.modules)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert "RC 2 False False" in res.stdout, res.stdout + res.stderr
    assert "no model weights in no-such-folder" in res.stderr and "--download" in res.stderr


# --------------------------------------------------------------------------- option values, in the parser

BAD_MODEL_OPTIONS = [
    ("--batch-size", "0"), ("--size", "0"), ("--size", "100"), ("--size", "4096"), ("--steps", "0"),
    ("--steps", "1.5"), ("--guidance", "nan"), ("--guidance", "inf"), ("--guidance", "-1"), ("--seed", "-1"),
    ("--degree", "nan"), ("--degree", "-5"), ("--degree", "-inf"),
]


@pytest.mark.parametrize("command", ["anonymize", "swap"])
@pytest.mark.parametrize("option,value", BAD_MODEL_OPTIONS)
def test_bad_option_values_never_reach_the_model(command, option, value, crop, tmp_path, capsys, monkeypatch):
    import faceanon_core.cli.loading as loading

    monkeypatch.setattr(loading, "load_pipeline", lambda args: pytest.fail("the model was reached"))
    inputs = [str(crop)] if command == "anonymize" else ["--source", str(crop), "--driving", str(crop)]
    err = _parse_error(capsys, [command, *inputs, "-o", str(tmp_path / "o.png"), option, value])
    assert err.strip().splitlines()[-1].startswith(f"faceanon {command}: error: argument {option}")
    assert "Traceback" not in err


@pytest.mark.parametrize("value,ok", [("0", True), ("1", True), ("1.25", True), ("3", True), ("-0.01", False),
                                      ("nan", False), ("x", False)])
def test_the_degree_range(value, ok, tmp_path):
    """d >= 0 (d = 0 keeps the identity, d > 1 extrapolates away from it); nothing else."""
    parser = build_parser()
    argv = ["anonymize", "x.png", "-o", str(tmp_path / "o.png"), "--degree", value]
    if ok:
        assert parser.parse_args(argv).degree == float(value)
    else:
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


def test_size_must_be_a_multiple_of_8(tmp_path):
    parser = build_parser()
    assert parser.parse_args(["anonymize", "x", "-o", "o", "--size", "264"]).size == 264
    with pytest.raises(SystemExit):
        parser.parse_args(["anonymize", "x", "-o", "o", "--size", "260"])


@pytest.mark.parametrize("argv", [
    ["eval", "a", "b", "--threshold", "nan"], ["eval", "a", "b", "--worst", "-1"],
    ["eval", "a", "b", "--detect-threshold", "1.5"], ["redact", "a", "-o", "o", "--ext", "gif"],
    ["redact", "a", "-o", "o", "--threshold", "0"], ["detect", "a", "--min-face-size", "nan"],
])
def test_other_bad_values_are_usage_errors(argv, capsys):
    err = _parse_error(capsys, argv)
    assert err.strip().splitlines()[-1].startswith(f"faceanon {argv[0]}: error: argument ")


# --------------------------------------------------------------------------- one exit-code table


def _argv(command: str, src: str, out: str, models: str) -> list[str]:
    return {
        "redact": ["redact", src, "-o", out],
        "anonymize": ["anonymize", src, "-o", out, "--models", models],
        "swap": ["swap", "--source", src, "--driving", src, "-o", out, "--models", models],
        "detect": ["detect", src],
        "eval": ["eval", src, src, "-o", str(Path(out).parent / "report")],
    }[command]


COMMANDS = ["redact", "anonymize", "swap", "detect", "eval"]


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_input_is_2(command, tmp_path, tiny_model_dir, capsys):
    argv = _argv(command, str(tmp_path / "missing.png"), str(tmp_path / "o.png"), str(tiny_model_dir))
    assert main(argv) == 2
    assert "missing.png" in _error_line(capsys, command)
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("content", [b"", b"not a photo at all, just words"])
def test_unreadable_input_is_2(command, content, tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    argv = _argv(command, str(bad), str(tmp_path / "o.png"), str(tiny_model_dir))
    assert main(argv) == 2
    assert "bad.png" in _error_line(capsys, command)
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("command", ["redact", "anonymize", "swap", "eval"])
def test_existing_output_is_2_and_untouched(command, crop, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "o.png"
    save_image(out, np.zeros((8, 8, 3), np.uint8))
    report = tmp_path / "report" / "eval.json"
    report.parent.mkdir()
    report.write_text("{}")
    before = out.read_bytes()
    assert main(_argv(command, str(crop), str(out), str(tiny_model_dir))) == 2
    assert "exists" in _error_line(capsys, command)
    assert out.read_bytes() == before and report.read_text() == "{}"


@pytest.mark.parametrize("command", ["redact", "anonymize"])
def test_video_errors_use_the_same_table(command, tmp_path, tiny_model_dir, capsys):
    """A missing or unreadable video, or an existing output: 2 before any work, like photos."""
    models = ["--models", str(tiny_model_dir)] if command == "anonymize" else []
    assert main([command, str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "o.mp4"), *models]) == 2
    assert "missing.mp4" in _error_line(capsys, command)
    (tmp_path / "junk.mp4").write_bytes(b"no video here" * 10)
    assert main([command, str(tmp_path / "junk.mp4"), "-o", str(tmp_path / "o.mp4"), *models]) == 2
    assert "junk.mp4" in _error_line(capsys, command)


def test_every_help_lists_the_exit_codes_and_every_option_has_help():
    parser = build_parser()
    assert "exit codes" in parser.format_help() and "130" in parser.format_help()
    assert parser.description.startswith("Anonymize or redact the faces")
    missing = []

    def walk(p: argparse.ArgumentParser, name: str):
        assert p.epilog and "exit codes" in p.epilog, f"{name}: no exit-code table in its --help"
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(sub, f"{name} {sub_name}")
            elif action.help is None and not isinstance(action, argparse._HelpAction):
                missing.append(f"{name}: {action.option_strings or action.dest}")

    walk(parser, "faceanon")
    assert not missing, missing


def test_version(capsys):
    from faceanon_core import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"faceanon {__version__}"


def test_models_alone_prints_its_help(capsys):
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert "download" in err and "check" in err and "models_command" not in err


def test_one_name_for_the_output_format(tmp_path):
    parser = build_parser()
    for command in (["anonymize", "x"], ["swap", "--source", "s", "--driving", "d"], ["redact", "x"]):
        for flag in ("--ext", "--suffix"):
            assert parser.parse_args([*command, "-o", "o", flag, "PNG"]).ext == ".png"


# --------------------------------------------------------------------------- outputs, checked before any work


def test_a_photo_is_never_written_as_a_video(photo, tmp_path, capsys):
    assert main(["redact", str(photo), "-o", str(tmp_path / "out.mp4")]) == 2
    assert "video name" in _error_line(capsys, "redact")
    assert not (tmp_path / "out.mp4").exists()


def test_an_unwritable_output_format_names_the_fix(photo, tmp_path, capsys):
    assert main(["redact", str(photo), "-o", str(tmp_path / "out.gif")]) == 2
    err = _error_line(capsys, "redact")
    assert "name the output e.g. out.png" in err and "png png" not in err


def test_an_output_under_a_file_is_refused_before_work(photo, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["redact", str(photo), "-o", str(tmp_path / "afile" / "out.png")]) == 2
    assert "is a file, not a folder" in _error_line(capsys, "redact")


def test_the_output_may_not_be_the_input(photo, capsys):
    assert main(["redact", str(photo), "-o", str(photo), "--overwrite"]) == 2
    assert "replace the input" in _error_line(capsys, "redact")


def test_a_single_output_file_is_locked(photo, tmp_path, capsys):
    """Two runs writing the same file: the second is refused before it does any work."""
    import socket

    out = tmp_path / "out.png"
    lock = tmp_path / f".faceanon-{out.name}.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": "redact",
                                "started": "now"}))
    assert main(["redact", str(photo), "-o", str(out)]) == 2
    assert "in use by another faceanon run" in _error_line(capsys, "redact")
    assert not out.exists()
    lock.unlink()
    assert main(["redact", str(photo), "-o", str(out)]) == 0
    assert not lock.exists()


def test_a_killed_single_file_run_leaves_no_part_after_the_rerun(photo, tmp_path):
    out = tmp_path / "out.png"
    ours = tmp_path / f".faceanon-{out.name}.k1ll3d.part"
    ours.write_bytes(b"x" * 48)
    other = tmp_path / ".faceanon-someone-else.png.abc.part"  # another output's: not ours to remove
    other.write_bytes(b"y")
    assert main(["redact", str(photo), "-o", str(out)]) == 0
    assert out.is_file() and not ours.exists() and other.exists()


def test_detect_on_a_video_says_what_to_do(tmp_path, capsys):
    (tmp_path / "clip.mp4").write_bytes(b"x")
    assert main(["detect", str(tmp_path / "clip.mp4")]) == 2
    err = _error_line(capsys, "detect")
    assert "is a video" in err and "faceanon redact" in err and "--tracks-json" in err


# --------------------------------------------------------------------------- folders handled whole


@pytest.mark.parametrize("command", ["redact", "anonymize"])
def test_a_folder_with_an_unreadable_video_does_the_rest_and_exits_1(command, photo, tmp_path, tiny_model_dir,
                                                                      capsys):
    """Videos of a folder are inputs like its photos (tests/cli/test_folder_videos.py): one that cannot be read
    fails by name, with nothing written for it, and the run ends with code 1, never 0."""
    (photo.parent / "clip.mp4").write_bytes(b"x")
    models = (["--models", str(tiny_model_dir), "--size", "64", "--steps", "2", "--no-verify"]
              if command == "anonymize" else [])
    assert main([command, str(photo.parent), "-o", str(tmp_path / "out"), *models]) == 1
    err = _error_line(capsys, command)
    assert "clip.mp4" in err and "1 failed" in err
    assert (tmp_path / "out" / "astronaut.png").is_file() and not (tmp_path / "out" / "clip.mp4").exists()


@pytest.mark.parametrize("argv", [["anonymize", "--aligned"], ["swap", "--source", "SRC", "--driving"]])
def test_commands_on_face_crops_refuse_a_folder_with_a_video(argv, crop, tmp_path, tiny_model_dir, capsys):
    (crop.parent / "clip.mp4").write_bytes(b"x")
    argv = [str(crop) if a == "SRC" else a for a in argv]
    assert main([*argv, str(crop.parent), "-o", str(tmp_path / "out"), "--models", str(tiny_model_dir)]) == 2
    err = _error_line(capsys, argv[0])
    assert "clip.mp4" in err and "takes photos" in err
    assert not (tmp_path / "out").exists()


def test_sub_folders_are_named_as_skipped(photo, tmp_path, capsys):
    save_image(photo.parent / "deeper" / "x.png", np.zeros((8, 8, 3), np.uint8))
    assert main(["redact", str(photo.parent), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "1 sub-folder(s) skipped (add --recursive to include them)" in err and "deeper" in err
    assert main(["redact", str(photo.parent), "-o", str(tmp_path / "out2"), "-r"]) == 0
    assert (tmp_path / "out2" / "deeper" / "x.png").is_file()
    assert "sub-folder" not in capsys.readouterr().err


def test_a_photo_without_faces_keeps_its_pixels_and_loses_its_metadata(tmp_path):
    """What docs/cli.md promises: written again from its pixels (not a byte copy); lossless formats give
    the same pixels, and metadata (EXIF) is dropped unless --keep-metadata."""
    src = tmp_path / "sky.png"
    rgb = np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8)
    exif = Image.Exif()
    exif[0x010F] = "Maker"
    Image.fromarray(rgb).save(src, exif=exif)
    assert main(["redact", str(src), "-o", str(tmp_path / "out.png")]) == 0
    with Image.open(tmp_path / "out.png") as im:
        np.testing.assert_array_equal(np.asarray(im), rgb)
        assert 0x010F not in im.getexif()


def test_anonymize_shows_the_sampling_steps_of_a_photo(photo, tmp_path, tiny_model_dir, capsys):
    """Minutes per photo on a CPU: the sampling steps have a bar of their own (not with -q)."""
    base = ["anonymize", str(photo), "--models", str(tiny_model_dir), "--size", "64", "--steps", "3",
            "--scheduler", "ddim", "--no-verify"]
    assert main([*base, "-o", str(tmp_path / "o.png")]) == 0
    err = capsys.readouterr().err
    # tqdm draws the bar when it opens (0/3); later redraws depend on its refresh interval, so not "3/3".
    assert "sampling:" in err and "0/3" in err
    assert main(["-q", *base, "-o", str(tmp_path / "q.png")]) == 0
    assert "sampling" not in capsys.readouterr().err
