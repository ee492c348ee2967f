"""redact: blur / pixelate / solid fill change every face and nothing else."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from faceanon_core.faces import MTCNNDetector
from faceanon_core.faces.redact import DEFAULT_STRENGTH, METHODS, redact_crops, redact_image
from helpers.faces import collage


@pytest.fixture(scope="module")
def scene():
    img, _ = collage()
    det = MTCNNDetector()
    return img, det.detect(img)


@pytest.mark.parametrize("method", METHODS)
def test_each_face_changed_and_nothing_else(scene, method):
    img, faces = scene
    res = redact_image(img, method, faces=faces, color=(255, 0, 255))
    assert len(res.faces) == len(faces) == 4
    changed = np.any(res.image != img, axis=2)
    assert not changed[res.mask == 0].any()  # bitwise outside the mask
    for f in faces:
        x0, y0, x1, y1 = (int(round(v)) for v in f.box)
        x0, y0 = max(x0, 0), max(y0, 0)
        region = changed[y0:y1, x0:x1]
        assert region.mean() > 0.5, (method, f.box)  # most of each face is altered
        # The whole inner face (eyes to mouth) is fully covered by the mask.
        for x, y in f.landmarks5.round().astype(int):
            assert res.mask[y, x] == pytest.approx(1.0)
    if method == "solid":
        x, y = faces[0].landmarks5[2].round().astype(int)
        assert res.image[y, x].tolist() == [255, 0, 255]


def test_blur_removes_detail(scene):
    img, faces = scene
    res = redact_image(img, "blur", faces=faces)
    f = faces[0]
    x0, y0, x1, y1 = (int(v) for v in f.box)
    lap_before = np.abs(np.diff(img[y0:y1, x0:x1].astype(float), axis=1)).mean()
    lap_after = np.abs(np.diff(res.image[y0 + 10 : y1 - 10, x0 + 10 : x1 - 10].astype(float), axis=1)).mean()
    assert lap_after < 0.3 * lap_before


def test_strength_scales_effect():
    crops = collage()[0][None, 0:512, 0:512].copy()
    weak = redact_crops(crops, "blur", 0.2)
    strong = redact_crops(crops, "blur", 0.5)
    assert np.abs(np.diff(strong[0], axis=1)).mean() < np.abs(np.diff(weak[0], axis=1)).mean()
    few = redact_crops(crops, "pixelate", 4)
    many = redact_crops(crops, "pixelate", 10)
    assert len(np.unique(few[0].reshape(-1, 3), axis=0)) < len(np.unique(many[0].reshape(-1, 3), axis=0))
    assert set(DEFAULT_STRENGTH) == set(METHODS)


def test_no_faces_and_bad_arguments(caplog):
    img = np.full((64, 64, 3), 50, np.uint8)
    with caplog.at_level(logging.WARNING):
        res = redact_image(img, "blur", faces=[], image_name="empty.png")
    assert np.array_equal(res.image, img) and res.faces == [] and not res.mask.any()
    assert "no face found" in caplog.text
    with pytest.raises(ValueError, match="method"):
        redact_image(img, "smudge", faces=[])
    with pytest.raises(ValueError, match="strength"):
        redact_image(img, "blur", -1, faces=[])
    with pytest.raises(ValueError, match="color"):
        redact_crops(np.zeros((1, 512, 512, 3), np.uint8), "solid", color=(0, 0, 300))
