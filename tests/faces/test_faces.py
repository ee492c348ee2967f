"""faces: MTCNN detection, alignment to the 512 template, fail-closed processing, paste-back."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest

from faceanon_core.faces import (
    CROP_SIZE,
    TEMPLATE_5,
    AlignedFace,
    DetectedFace,
    FaceDetector,
    FaceProcessingError,
    MTCNNDetector,
    align_faces,
    crop_mask,
    estimate_similarity,
    extract_crops,
    faces_from_boxes,
    faces_from_landmarks,
    paste_back,
    process_faces,
    process_faces_batch,
)
from helpers.faces import astronaut, collage, face_frame_ok, grace_hopper


@pytest.fixture(scope="module")
def det():
    return MTCNNDetector()


@pytest.fixture(scope="module")
def collage_faces(det):
    img, centres = collage()
    return img, centres, det.detect(img)


def identity(x):
    return x


def test_detector_protocol(det):
    assert isinstance(det, FaceDetector)


@pytest.mark.parametrize("photo", [astronaut, grace_hopper])
def test_single_portraits(det, photo):
    img = photo()
    faces = det.detect(img)
    assert len(faces) == 1
    f = faces[0]
    assert f.score > 0.95 and face_frame_ok(f.landmarks5, f.box)
    assert f.landmarks5.shape == (5, 2)


def test_collage_finds_every_face_with_sane_landmarks(collage_faces):
    img, centres, faces = collage_faces
    assert len(faces) == len(centres)
    for (cx, cy), f in zip(centres, faces, strict=True):  # sorted left to right, like the centres
        x0, y0, x1, y1 = f.box
        assert x0 < cx < x1 and y0 < cy < y1, (f.box, cx, cy)
        assert face_frame_ok(f.landmarks5, f.box)


def test_rotated_faces_give_rotated_alignment(collage_faces):
    _, _, faces = collage_faces
    aligned, skipped = align_faces(faces)
    assert not skipped
    angles = [np.degrees(np.arctan2(a.affine[1, 0], a.affine[0, 0])) for a in aligned]
    # The astronaut tile rotated by 25 degrees (counter-clockwise) needs +25 degrees to undo.
    assert angles[0] == pytest.approx(25, abs=6)
    assert angles[2] == pytest.approx(-20, abs=6)


def test_crops_match_template(collage_faces):
    img, _, faces = collage_faces
    aligned, _ = align_faces(faces)
    crops = extract_crops(img, aligned)
    assert crops.shape == (4, CROP_SIZE, CROP_SIZE, 3) and crops.dtype == np.uint8
    for a in aligned:
        pts = a.landmarks @ a.affine[:, :2].T + a.affine[:, 2]
        err = np.linalg.norm(pts - TEMPLATE_5 * CROP_SIZE, axis=1)
        assert err.max() < 0.06 * CROP_SIZE  # landmarks land near the template
    # FFHQ-like framing: eyes at ~0.40 of the height, eye distance 0.25 of the width.
    assert TEMPLATE_5[:2, 1].mean() == pytest.approx(0.40, abs=0.005)
    assert TEMPLATE_5[1, 0] - TEMPLATE_5[0, 0] == pytest.approx(0.25, abs=0.005)
    # The border-cut face warps without error: reflected padding, no black corners.
    assert crops[3].reshape(-1, 3).min(axis=1).mean() > 20


def test_similarity_closed_form():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    ang, s, t = np.radians(30), 2.5, np.array([10.0, -4.0])
    r = s * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    m = estimate_similarity(src, src @ r.T + t)
    assert np.allclose(m[:, :2], r) and np.allclose(m[:, 2], t)


def test_unchanged_crops_paste_back_to_the_photo(collage_faces):
    img, _, faces = collage_faces
    res = process_faces(img, identity, faces=faces)
    assert len(res.faces) == 4 and res.image.dtype == np.uint8
    assert res.mask.shape == img.shape[:2] and res.mask.dtype == np.float32
    assert res.mask.min() >= 0.0 and res.mask.max() == pytest.approx(1.0)
    outside = res.mask == 0
    assert np.array_equal(res.image[outside], img[outside])  # bitwise
    diff = np.abs(res.image.astype(int) - img.astype(int)).max(axis=2)
    assert diff[~outside].mean() < 1.5
    assert np.percentile(diff[res.mask > 0.5], 99) <= 8
    # Each face centre is covered by the mask.
    for f in faces:
        lm = f.landmarks5.mean(0).round().astype(int)
        assert res.mask[lm[1], lm[0]] == pytest.approx(1.0)


def test_changed_crops_change_only_the_masked_faces(collage_faces):
    img, _, faces = collage_faces
    res = process_faces(img, lambda x: 1.0 - x, faces=faces)
    changed = np.any(res.image != img, axis=2)
    assert not changed[res.mask == 0].any()
    for f in faces:
        c = f.landmarks5[2].round().astype(int)  # nose
        assert np.abs(res.image[c[1], c[0]].astype(int) - img[c[1], c[0]]).max() > 30


def test_process_crops_gets_float_batches(det):
    img, _ = collage()
    seen = []

    def spy(x):
        seen.append((x.shape, x.dtype, float(x.min()), float(x.max())))
        return x

    res = process_faces(img, spy, detector=det, batch_size=3)
    assert [s[0] for s in seen] == [(3, 512, 512, 3), (1, 512, 512, 3)]
    assert all(s[1] == np.float32 and s[2] >= 0 and s[3] <= 1 for s in seen)
    assert [f.index for f in res.faces] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda x: x[:-1], "shape"),
        (lambda x: x[:, :256], "shape"),
        (lambda x: np.concatenate([x, x]), "shape"),
        (lambda x: np.where(np.arange(x.shape[0])[:, None, None, None] == 1, np.nan, x), "face 1: .*NaN"),
        (lambda x: x * 255.0, "expected 0..1"),
        (lambda x: 1 / 0, "ZeroDivisionError"),
    ],
)
def test_fail_closed(collage_faces, bad, match):
    img, _, faces = collage_faces
    with pytest.raises(FaceProcessingError, match=match) as info:
        process_faces(img, bad, faces=faces, image_name="party.jpg")
    assert "party.jpg" in str(info.value)


def test_torch_tensor_results_are_accepted(collage_faces):
    torch = pytest.importorskip("torch")
    img, _, faces = collage_faces
    res = process_faces(img, lambda x: torch.from_numpy(x.copy()), faces=faces[:1])
    assert len(res.faces) == 1


def test_no_face_returns_image_unchanged(det, caplog):
    img = np.full((300, 400, 3), 127, np.uint8)
    with caplog.at_level(logging.WARNING):
        res = process_faces(img, lambda x: pytest.fail("must not be called"), detector=det, image_name="wall.png")
    assert np.array_equal(res.image, img) and res.image is not img
    assert res.faces == [] and not res.mask.any()
    assert "wall.png: no face found" in caplog.text


def test_tiny_images(det):
    assert det.detect(np.zeros((1, 1, 3), np.uint8)) == []
    assert det.detect(np.zeros((11, 40, 3), np.uint8)) == []
    with pytest.raises(ValueError, match="uint8"):
        det.detect(np.zeros((20, 20), np.uint8))


def test_small_faces_are_skipped_with_a_warning(caplog):
    img = cv2.resize(astronaut(), (64, 64), interpolation=cv2.INTER_AREA)
    face = DetectedFace(box=(22, 7, 33, 21), score=0.99,
                        landmarks5=[[25, 12], [30, 12], [27.5, 15], [25.5, 17.5], [29.5, 17.5]])
    with caplog.at_level(logging.WARNING):
        res = process_faces(img, identity, faces=[face], min_face_size=10, small_faces="keep")
    assert res.faces == [] and len(res.skipped) == 1
    assert "1 of 1 faces skipped" in caplog.text and "left unchanged" in caplog.text
    assert np.array_equal(res.image, img)  # only when asked for: small_faces="keep"
    blurred = process_faces(img, identity, faces=[face], min_face_size=10)  # default: "redact"
    assert len(blurred.skipped) == 1 and blurred.mask.max() == 1.0
    assert np.abs(blurred.image.astype(int) - img)[blurred.mask > 0.5].mean() > 2
    with pytest.raises(FaceProcessingError, match="too small for the model.*--min-model-face"):
        process_faces(img, identity, faces=[face], min_face_size=10, small_faces="fail")
    with pytest.raises(ValueError, match="small_faces must be one of"):
        process_faces(img, identity, faces=[face], small_faces="ignore")


def test_big_photo_is_detected_on_a_downscaled_copy(det):
    """A 6000x4500 photo: detection runs on a <=2000 px copy, coordinates come back in full size."""
    big = np.full((4500, 6000, 3), 90, np.uint8)
    face = cv2.resize(astronaut(), (2048, 2048), interpolation=cv2.INTER_CUBIC)
    big[1000:3048, 3000:5048] = face
    faces = det.detect(big)
    assert len(faces) == 1
    ref = det.detect(astronaut())[0]
    expected = (ref.landmarks5 + 0.5) * 4 - 0.5 + [3000, 1000]
    assert np.abs(faces[0].landmarks5 - expected).max() < 25
    res = process_faces(big, identity, faces=faces)
    ys, xs = np.nonzero(res.mask.any(axis=1))[0], np.nonzero(res.mask.any(axis=0))[0]
    y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
    assert 2800 < x0 < x1 < 5200 and 900 < y0 < y1 < 3100  # the mask is around the face only
    assert np.array_equal(res.image[:y0], big[:y0]) and np.array_equal(res.image[y1:], big[y1:])
    assert np.array_equal(res.image[:, :x0], big[:, :x0]) and np.array_equal(res.image[:, x1:], big[:, x1:])
    roi, ref_roi, m = res.image[y0:y1, x0:x1], big[y0:y1, x0:x1], res.mask[y0:y1, x0:x1]
    assert np.array_equal(roi[m == 0], ref_roi[m == 0])
    assert np.abs(roi.astype(np.int16) - ref_roi)[m > 0].mean() < 1.5


def test_faces_from_landmarks_and_boxes(det):
    img = astronaut()
    ref = det.detect(img)[0]
    (f,) = faces_from_landmarks([ref.landmarks5.tolist()])
    x0, y0, x1, y1 = f.box
    assert x0 < ref.landmarks5[:, 0].min() and x1 > ref.landmarks5[:, 0].max()
    assert y0 < ref.landmarks5[:, 1].min() and y1 > ref.landmarks5[:, 1].max()
    res = process_faces(img, identity, faces=[f])
    assert len(res.faces) == 1
    (g,) = faces_from_boxes(img, [ref.box], detector=det)
    assert np.abs(g.landmarks5 - ref.landmarks5).max() < 6
    with pytest.raises(ValueError, match="counts"):
        faces_from_landmarks([ref.landmarks5], boxes=[], scores=None)


def test_records_are_json_serialisable(collage_faces):
    img, _, faces = collage_faces
    res = process_faces(img, identity, faces=faces)
    doc = json.loads(json.dumps(res.to_dict()))
    back = [AlignedFace.from_dict(d) for d in doc["faces"]]
    for a, b in zip(res.faces, back, strict=True):
        assert np.allclose(a.affine, b.affine) and np.allclose(a.landmarks, b.landmarks)
        assert a.crop_size == b.crop_size == 512
    d = faces[0].to_dict()
    assert set(d) == {"box", "score", "landmarks"}
    assert DetectedFace.from_dict(json.loads(json.dumps(d))).landmarks5.shape == (5, 2)


def test_paste_back_order_and_inputs(collage_faces):
    img, _, faces = collage_faces
    aligned, _ = align_faces(faces)
    crops = extract_crops(img, aligned)
    with pytest.raises(ValueError, match="crops"):
        paste_back(img, aligned, crops[:2])
    # Two overlapping copies of the same face: the larger one is composited last (on top).
    a = aligned[0]
    small = AlignedFace.from_dict({**a.to_dict(), "face_size": 5.0})
    big = AlignedFace.from_dict({**a.to_dict(), "face_size": 50.0})
    white = np.ones((512, 512, 3), np.float32)
    black = np.zeros((512, 512, 3), np.float32)
    out, _ = paste_back(img, [big, small], np.stack([white, black]))
    c = a.landmarks[2].round().astype(int)
    assert out[c[1], c[0]].min() == 255


def test_mask_is_zero_at_the_crop_border():
    for feather in (0.0, 0.025, 0.06):
        m = crop_mask(512, erode=0.0, feather=feather)
        assert m[0].max() == m[-1].max() == m[:, 0].max() == m[:, -1].max() == 0
        assert m[256, 256] == 1.0
    with pytest.raises(ValueError, match="feather"):
        crop_mask(512, feather=0.5)


def test_batch_of_images(det):
    a, g = astronaut(), grace_hopper()
    calls = []
    res = process_faces_batch([a, g], lambda x: calls.append(len(x)) or x, detector=det, batch_size=8)
    assert calls == [2]  # crops of both images in one batch
    assert [r.faces[0].frame_index for r in res] == [0, 1]


@pytest.fixture(scope="module")
def big_small_faces():
    from helpers.faces import big_photo_with_small_faces

    return big_photo_with_small_faces()


def _matches(found, truth):
    """For each true face, the detections whose centre is within a third of its width."""
    out = []
    for cx, cy, w in truth:
        near = [f for f in found if abs((f.box[0] + f.box[2]) / 2 - cx) < w / 3
                and abs((f.box[1] + f.box[3]) / 2 - cy) < w / 3]
        out.append(near)
    return out


def test_small_faces_in_a_big_photo_are_found_at_full_resolution(det, big_small_faces):
    """8000x6000 with faces 22-30 px wide (one across a tile border) and two large ones: each found once.

    The downscaled copy alone (the old behaviour) cannot see faces under 12 * 8000 / 2000 = 48 px."""
    img, truth = big_small_faces
    found = det.detect(img)
    matches = _matches(found, truth)
    assert [len(m) for m in matches] == [1] * len(truth), [
        (t, [f.box for f in m]) for t, m in zip(truth, matches, strict=True)
    ]
    assert len(found) == len(truth)  # no duplicates from overlapping tiles, no false alarms on the background
    for (_cx, _cy, w), (f,) in zip(truth, matches, strict=True):
        assert 0.7 * w < f.box[2] - f.box[0] < 1.3 * w
        assert face_frame_ok(f.landmarks5, f.box)
    coarse = MTCNNDetector(full_resolution=False).detect(img)
    assert sum(1 for m in _matches(coarse, truth) if not m) >= 4  # what the tiles add


def test_full_resolution_pass_changes_nothing_below_max_side(det, collage_faces):
    img, _, faces = collage_faces
    again = MTCNNDetector(full_resolution=False).detect(img)
    assert [f.box for f in faces] == [f.box for f in again]


def test_min_face_size_limits_and_near_limit_count():
    from faceanon_core.faces import DEFAULT_DETECTOR_MIN_FACE, count_near_limit

    assert DEFAULT_DETECTOR_MIN_FACE == 20.0 == MTCNNDetector().min_face_size
    with pytest.raises(ValueError, match="at least 8 px"):
        MTCNNDetector(min_face_size=5)
    faces = [DetectedFace(box=(0, 0, w, w), score=1.0, landmarks5=np.zeros((5, 2))) for w in (20, 29.9, 30, 100)]
    assert count_near_limit(faces, 20.0) == 2
