"""Identity embeddings (dlib ResNet from our 5 landmarks) on real photos."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.faces import astronaut, collage, grace_hopper, rotate
from helpers.identity import fr_photo, landmarks_of

pytest.importorskip("dlib", reason="needs the 'verify' extra: pip install 'comfyui-faceanon[verify]'")

from faceanon_core.faces import default_detector  # noqa: E402
from faceanon_core.privacy.identity import (  # noqa: E402
    VERIFY_EXTRA_HINT,
    DlibRecognizer,
    FaceRecognizer,
    RecognizerUnavailable,
)


def embed(rec, key_or_img, landmarks=None):
    img = key_or_img
    if isinstance(key_or_img, str):
        img = {"astronaut": astronaut, "grace_hopper": grace_hopper}.get(key_or_img, lambda: fr_photo(key_or_img))()
        landmarks = landmarks_of(key_or_img)
    return rec.embed(img, [landmarks])[0]


def test_interface_and_shapes(rec):
    assert isinstance(rec, FaceRecognizer)
    e = rec.embed(astronaut(), [landmarks_of("astronaut")])
    assert e.shape == (1, 128) and e.dtype == np.float32 and np.isfinite(e).all()
    assert rec.embed(astronaut(), []).shape == (0, 128)
    chip = rec.chips(astronaut(), [landmarks_of("astronaut")])[0]
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8


def test_different_people_are_far_and_the_same_face_transformed_is_close(rec):
    a, g = embed(rec, "astronaut"), embed(rec, "grace_hopper")
    assert rec.distance(a, g) > 0.6
    # The same people inside a collage: rotated, rescaled, cut by a border.
    img, _ = collage()
    faces = default_detector().detect(np.ascontiguousarray(img))
    assert len(faces) == 4
    embs = rec.embed(np.ascontiguousarray(img), [f.landmarks5 for f in faces])
    for e in embs:
        da, dg = float(rec.distance(e, a)), float(rec.distance(e, g))
        assert min(da, dg) < 0.35 and max(da, dg) > 0.6, (da, dg)


def test_chip_is_upright_for_a_rotated_face(rec):
    """dlib's point order (image-right eye first) is respected: a rotated face gives the same chip."""
    turned = rotate(astronaut(), 30)
    lm = default_detector().detect(turned)[0].landmarks5
    assert rec.distance(rec.embed(turned, [lm])[0], embed(rec, "astronaut")) < 0.3
    # Swapping left/right landmarks mirrors the chip: a different, worse embedding.
    flipped = lm[[1, 0, 2, 4, 3]]
    assert rec.distance(rec.embed(turned, [flipped])[0], embed(rec, "astronaut")) > 0.05


def test_same_and_different_people_from_the_face_recognition_photos(rec):
    obamas = [embed(rec, n) for n in ("obama.jpg", "obama2.jpg", "obama3.jpg")]
    biden = embed(rec, "biden.jpg")
    same = [float(rec.distance(x, y)) for i, x in enumerate(obamas) for y in obamas[i + 1:]]
    diff = [float(rec.distance(x, biden)) for x in obamas] + [
        float(rec.distance(x, embed(rec, k))) for x in obamas for k in ("astronaut", "grace_hopper")]
    assert max(same) < 0.5 < 0.6 < min(diff), (same, diff)


def test_missing_weights_name_the_extra(tmp_path):
    with pytest.raises(RecognizerUnavailable, match=r"pip install 'comfyui-faceanon\[verify\]'"):
        DlibRecognizer(model_path=tmp_path / "missing.dat").embed(astronaut(), [landmarks_of("astronaut")])
    assert "[verify]" in VERIFY_EXTRA_HINT


def test_missing_dlib_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "dlib":
            raise ImportError("No module named 'dlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(RecognizerUnavailable, match="comfyui-faceanon"):
        DlibRecognizer().embed(astronaut(), [landmarks_of("astronaut")])
