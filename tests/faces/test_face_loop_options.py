"""One function per job: the crop <-> model resize rule, the face-loop options object, and the per-photo steps
that the library loop, the guard and the CLI's Ray stages share."""

from __future__ import annotations

import dataclasses
import inspect

import cv2
import numpy as np
import pytest

from faceanon_core.faces import (
    FaceLoopOptions,
    FaceProcessingError,
    finish_faces,
    prepare_faces,
    process_faces,
    process_faces_batch,
    resize_crops,
)
from faceanon_core.privacy.guard import guarded_process_faces


def test_resize_rule_area_shrinking_cubic_enlarging_floats_clipped():
    rng = np.random.default_rng(0)
    crops = rng.random((2, 96, 96, 3), dtype=np.float32)
    small = resize_crops(crops, 64)
    assert np.array_equal(small[0], cv2.resize(crops[0], (64, 64), interpolation=cv2.INTER_AREA))
    big = resize_crops(crops, 128)
    cubic = cv2.resize(crops[1], (128, 128), interpolation=cv2.INTER_CUBIC)
    assert cubic.max() > 1 or cubic.min() < 0  # cubic overshoots on noise: the model would refuse it
    assert np.array_equal(big[1], np.clip(cubic, 0, 1))
    one = (crops[0] * 255).astype(np.uint8)
    assert resize_crops(one, 96) is one  # the right size: untouched
    assert resize_crops(one, 48).shape == (48, 48, 3) and resize_crops(one, 48).dtype == np.uint8


@pytest.mark.parametrize("func", [process_faces, process_faces_batch, guarded_process_faces])
def test_public_keywords_are_the_options_fields_with_the_same_defaults(func):
    """The keywords stay public API; ``FaceLoopOptions.resolve`` reads them by name, so they must not drift."""
    params = inspect.signature(func).parameters
    for field in dataclasses.fields(FaceLoopOptions):
        assert params[field.name].default == field.default, (func.__name__, field.name)
    assert params["options"].default is None


def test_options_or_keywords_not_both():
    rgb = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(TypeError, match="batch_size"):
        process_faces(rgb, lambda c: c, faces=[], batch_size=2, options=FaceLoopOptions(batch_size=3))
    with pytest.raises(ValueError, match="small_faces must be one of"):
        FaceLoopOptions(small_faces="ignore")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        process_faces(rgb, lambda c: c, faces=[], batch_size=0)


def test_options_give_the_same_bytes_as_keywords():
    from helpers.faces import collage

    rgb = collage()[0]
    opts = FaceLoopOptions(batch_size=2, min_face_size=40.0, feather=0.1)
    by_kw = process_faces(rgb, lambda c: 1.0 - c, batch_size=2, min_face_size=40.0, feather=0.1)
    by_opts = process_faces(rgb, lambda c: 1.0 - c, options=opts)
    assert by_kw.skipped and np.array_equal(by_kw.image, by_opts.image)  # one small face, blurred in both


def test_the_per_photo_steps_are_process_faces():
    """prepare -> crops -> finish (what the Ray stages run) gives process_faces' bytes; "fail" refuses first."""
    from faceanon_core.faces import extract_crops, run_crops
    from helpers.faces import collage

    rgb = collage()[0]
    opts = FaceLoopOptions(min_face_size=40.0)
    aligned, skipped = prepare_faces(rgb, opts, image_name="c")
    done = run_crops(extract_crops(rgb, aligned), lambda c: 1.0 - c, [("c", f.index) for f in aligned], 8)
    staged = finish_faces(rgb, aligned, skipped, done, opts, "c")
    assert np.array_equal(staged.image, process_faces(rgb, lambda c: 1.0 - c, options=opts, image_name="c").image)
    with pytest.raises(FaceProcessingError, match="too small for the model"):
        prepare_faces(rgb, dataclasses.replace(opts, small_faces="fail"))
