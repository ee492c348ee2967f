"""Photos of the same and of different people for the identity tests, from the
``face-recognition`` sdist's ``tests/test_images`` (obama*.jpg, biden.jpg).

Nothing is downloaded at test time. The photos are found through
``$FACEANON_FR_PHOTOS`` (the sdist ``face_recognition-1.3.0.tar.gz`` or a folder
holding the images) or at ``.ci/cache/face_recognition-1.3.0.tar.gz``, which CI
fills with the package registry's ordinary client:

    python -m pip download --no-deps --no-binary :all: --dest .ci/cache face-recognition==1.3.0

Tests that need them skip with that command as the reason when they are absent.
"""

from __future__ import annotations

import functools
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

SDIST = "face_recognition-1.3.0.tar.gz"
FETCH = "python -m pip download --no-deps --no-binary :all: --dest .ci/cache face-recognition==1.3.0"
_ROOT = Path(__file__).resolve().parents[2]


def _source() -> Path | None:
    env = os.environ.get("FACEANON_FR_PHOTOS")
    for cand in ([Path(env)] if env else []) + [_ROOT / ".ci" / "cache" / SDIST]:
        if cand.exists():
            return cand
    return None


@functools.cache
def fr_photo(name: str) -> np.ndarray:
    """``name`` (e.g. "obama2.jpg") as uint8 RGB, or skip the test with how to get it."""
    from PIL import Image

    src = _source()
    if src is None:
        pytest.skip(f"face-recognition test photos not found; fetch them with `{FETCH}` "
                    "or set FACEANON_FR_PHOTOS")
    if src.is_dir():
        hits = list(src.rglob(name))
        if not hits:
            pytest.skip(f"{name} not in {src}")
        data = hits[0].read_bytes()
    else:
        with tarfile.open(src) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(f"tests/test_images/{name}")), None)
            if member is None:
                pytest.skip(f"{name} not in {src}")
            data = tar.extractfile(member).read()
    with Image.open(io.BytesIO(data)) as im:
        rgb = np.asarray(im.convert("RGB"))
    # Large phone photos: halve them so the tests stay fast (faces stay well over 100 px).
    while max(rgb.shape[:2]) > 1200:
        import cv2

        rgb = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
    rgb.setflags(write=False)
    return rgb


@functools.cache
def landmarks_of(key: str):
    """5 landmarks of the largest face of a named photo ("astronaut", "grace_hopper" or an fr photo)."""
    from faceanon_core.faces import default_detector
    from helpers.faces import astronaut, grace_hopper

    img = {"astronaut": astronaut, "grace_hopper": grace_hopper}.get(key, lambda: fr_photo(key))()
    faces = default_detector().detect(img)
    assert faces, f"no face found in {key}"
    return max(faces, key=lambda f: f.area).landmarks5


class ExactRecognizer:
    """Distance 0 between two faces whose landmark box holds the same pixels, 1 otherwise."""

    name = "exact"
    threshold = 0.6

    def __init__(self):
        self.embedded = 0

    def embed(self, rgb, landmarks):
        out = np.empty(len(landmarks), object)
        for i, lm in enumerate(landmarks):
            (x0, y0), (x1, y1) = np.floor(np.min(lm, 0)).astype(int), np.ceil(np.max(lm, 0)).astype(int)
            out[i] = np.array(rgb[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1])
        self.embedded += len(landmarks)
        return out

    def distance(self, a, b):
        same = [x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b, strict=True)]
        return np.array([0.0 if s else 1.0 for s in same])
