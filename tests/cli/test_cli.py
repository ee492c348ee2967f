"""The ``faceanon`` command end to end, on the tiny model."""

import json

import numpy as np
import pytest
from PIL import Image

from faceanon_core.cli import main

FAST = ["--size", "64", "--steps", "2", "--scheduler", "ddim"]


@pytest.fixture
def crops(tmp_path, face_images):
    folder = tmp_path / "crops"
    folder.mkdir()
    Image.fromarray(face_images[0]).save(folder / "a.png")
    rgba = np.dstack([face_images[1], np.full((64, 64), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "b.png")
    return folder


def test_anonymize_aligned_folder(crops, tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    assert main(["anonymize", "--aligned", str(crops), "-o", str(out), "--models", str(tiny_model_dir)] + FAST) == 0
    a, b = Image.open(out / "a.png"), Image.open(out / "b.png")
    assert a.size == (64, 64) and a.mode == "RGB"
    assert b.mode == "RGBA" and np.all(np.asarray(b)[..., 3] == 128)  # alpha kept
    assert not np.array_equal(np.asarray(a), np.asarray(Image.open(crops / "a.png")))


def test_same_seed_same_result_and_existing_output_refused(crops, tmp_path, tiny_model_dir, capsys):
    args = ["anonymize", "--aligned", str(crops / "a.png"), "--models", str(tiny_model_dir)] + FAST
    assert main(args + ["-o", str(tmp_path / "one.png")]) == 0
    assert main(args + ["-o", str(tmp_path / "two.png")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "one.png")),
                                  np.asarray(Image.open(tmp_path / "two.png")))
    before = (tmp_path / "one.png").read_bytes()
    assert main(args + ["-o", str(tmp_path / "one.png"), "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err
    assert (tmp_path / "one.png").read_bytes() == before
    assert main(args + ["-o", str(tmp_path / "one.png"), "--seed", "3", "--overwrite"]) == 0
    assert (tmp_path / "one.png").read_bytes() != before


def test_swap_command(crops, tmp_path, tiny_model_dir):
    out = tmp_path / "swapped"
    code = main(["swap", "--source", str(crops / "a.png"), "--driving", str(crops), "-o", str(out),
                 "--models", str(tiny_model_dir)] + FAST)
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]


def test_missing_weights_say_what_to_do(crops, tmp_path, capsys):
    code = main(["anonymize", "--aligned", str(crops / "a.png"), "-o", str(tmp_path / "x.png"),
                 "--models", str(tmp_path / "nothing")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--download" in err and "Offline" in err and "faceanon redact" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("content", [b"", b"not an image at all"])
def test_unreadable_input_is_a_clear_error(tmp_path, tiny_model_dir, capsys, content):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    code = main(["anonymize", "--aligned", str(bad), "-o", str(tmp_path / "out.png"),
                 "--models", str(tiny_model_dir)] + FAST)
    assert code == 2 and "bad.png" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_non_square_aligned_crop_is_refused(tmp_path, tiny_model_dir, capsys):
    Image.new("RGB", (64, 48)).save(tmp_path / "wide.png")
    code = main(["anonymize", "--aligned", str(tmp_path / "wide.png"), "-o", str(tmp_path / "o.png"),
                 "--models", str(tiny_model_dir)] + FAST)
    assert code == 2 and "must be square" in capsys.readouterr().err


def test_models_check(tiny_model_dir, tmp_path, capsys):
    assert main(["models", "check", str(tiny_model_dir)]) == 0
    assert "the folder is complete" in capsys.readouterr().out
    assert main(["models", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "unet: missing folder" in out and "image_encoder: missing folder" in out


def test_anonymize_photos_with_manifest_and_resume(tmp_path, tiny_model_dir):
    from helpers.faces import astronaut, grace_hopper

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(astronaut()).save(photos / "astronaut.png")
    Image.fromarray(grace_hopper()).save(photos / "grace.jpg", quality=95)
    Image.new("RGB", (80, 60), (20, 120, 200)).save(photos / "sky.png")
    out = tmp_path / "out"
    args = ["anonymize", str(photos), "-o", str(out), "--models", str(tiny_model_dir)] + FAST
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "faceanon-manifest.jsonl").read_text().splitlines()]
    faces = {rec["input"].rsplit("/", 1)[-1]: rec["faces"] for rec in records}
    assert faces == {"astronaut.png": 1, "grace.jpg": 1, "sky.png": 0}
    original, result = astronaut(), np.asarray(Image.open(out / "astronaut.png"))
    assert result.shape == original.shape
    changed = np.any(result != original, axis=-1)
    assert 0.01 < changed.mean() < 0.3  # the face changed, the rest of the photo did not
    np.testing.assert_array_equal(np.asarray(Image.open(out / "sky.png")), np.asarray(Image.open(photos / "sky.png")))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(args) == 0  # resume: nothing redone
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix != ".jsonl"} == \
        {k: v for k, v in stamps.items() if not k.endswith(".jsonl")}


def test_small_faces_never_leak(tmp_path, tiny_model_dir, capsys):
    from helpers.faces import astronaut

    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut()).save(photo)
    # A huge minimum size for the model makes it skip the face: by default it is blurred instead.
    base = ["anonymize", str(photo), "--models", str(tiny_model_dir), "--min-model-face", "10000"] + FAST
    assert main(base + ["-o", str(tmp_path / "out.png")]) == 0
    result = np.asarray(Image.open(tmp_path / "out.png"))
    changed = np.any(result != astronaut(), axis=-1)
    assert 0.01 < changed.mean() < 0.3
    assert main(base + ["-o", str(tmp_path / "fail.png"), "--small-faces", "fail"]) == 1
    assert "too small" in capsys.readouterr().err
    assert not (tmp_path / "fail.png").exists()


def test_the_readme_main_command_works_offline(tmp_path):
    """`faceanon redact "$(python -m faceanon_core.samples grace_hopper)" -o redacted/`."""
    from faceanon_core.samples import sample_path

    photo = sample_path("grace_hopper")
    assert photo.is_file()
    assert main(["redact", str(photo), "-o", str(tmp_path / "redacted")]) == 0
    original = np.asarray(Image.open(photo))
    redacted = np.asarray(Image.open(tmp_path / "redacted" / "grace_hopper.jpg"))
    assert redacted.shape == original.shape
    assert np.abs(redacted.astype(int) - original).mean() > 1
    with pytest.raises(KeyError, match="no sample called"):
        sample_path("nobody")
