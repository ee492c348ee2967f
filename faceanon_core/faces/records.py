"""Face records shared by every stage: detections, aligned faces, results, and the errors that stop a photo."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

logger = logging.getLogger(__name__)

#: Side of the aligned face crop, in pixels.
CROP_SIZE = 512


#: Faces smaller than this are skipped by :func:`process_faces` (with a
#: warning): the face size is the inter-ocular distance the alignment implies,
#: in image pixels (robust to profile views, where the eyes alone look close).
#: 10 px is a face box of about 25 px; below it a 512 crop would be a >12x
#: upscale of a handful of pixels. Skipped faces are returned so a caller can
#: redact them instead (see :mod:`faceanon_core.redact`).
DEFAULT_MIN_FACE_SIZE = 10.0


class FaceDetectorError(RuntimeError):
    """The face detector could not be loaded or run."""


class FaceProcessingError(RuntimeError):
    """A face crop could not be processed; the image must not be written."""


# --------------------------------------------------------------------------- records


@dataclass
class DetectedFace:
    """One detected face: box (x0, y0, x1, y1), score and 5 landmarks (5x2, image px).

    The box may extend past the image border for faces cut by it.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks5: np.ndarray

    def __post_init__(self) -> None:
        self.box = tuple(float(v) for v in self.box)  # type: ignore[assignment]
        self.score = float(self.score)
        self.landmarks5 = np.asarray(self.landmarks5, dtype=np.float64).reshape(5, 2)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [round(v, 2) for v in self.box],
            "score": round(self.score, 5),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks5],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectedFace:
        return cls(box=tuple(d["box"]), score=d.get("score", 1.0), landmarks5=np.asarray(d["landmarks"]))


@dataclass
class AlignedFace:
    """A face aligned to a crop: what paste-back needs, JSON-serialisable via :meth:`to_dict`.

    ``affine`` is the 2x3 matrix mapping image pixels to crop pixels.
    ``face_size`` is the implied inter-ocular distance in image pixels.
    """

    frame_index: int
    landmarks: np.ndarray
    affine: np.ndarray
    crop_size: int
    score: float
    box: tuple[float, float, float, float]
    face_size: float = 0.0
    index: int = 0

    def __post_init__(self) -> None:
        self.landmarks = np.asarray(self.landmarks, dtype=np.float64).reshape(5, 2)
        self.affine = np.asarray(self.affine, dtype=np.float64).reshape(2, 3)
        self.box = tuple(float(v) for v in self.box)  # type: ignore[assignment]

    @property
    def scale(self) -> float:
        """Crop pixels per image pixel."""
        return float(math.sqrt(abs(np.linalg.det(self.affine[:, :2]))))

    @property
    def inverse_affine(self) -> np.ndarray:
        """2x3 matrix mapping crop pixels back to image pixels."""
        return cv2.invertAffineTransform(self.affine)

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame_index": int(self.frame_index),
            "index": int(self.index),
            "box": [float(v) for v in self.box],
            "score": float(self.score),
            "landmarks": self.landmarks.tolist(),
            "affine": self.affine.tolist(),
            "crop_size": int(self.crop_size),
            "face_size": float(self.face_size),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlignedFace:
        return cls(
            frame_index=int(d.get("frame_index", 0)),
            landmarks=np.asarray(d["landmarks"]),
            affine=np.asarray(d["affine"]),
            crop_size=int(d.get("crop_size", CROP_SIZE)),
            score=float(d.get("score", 1.0)),
            box=tuple(d["box"]),
            face_size=float(d.get("face_size", 0.0)),
            index=int(d.get("index", 0)),
        )


@dataclass
class FacesResult:
    """Output of :func:`process_faces`: the new image, the combined mask (HxW float32
    0..1), the faces that were processed and the detections that were skipped."""

    image: np.ndarray
    mask: np.ndarray
    faces: list[AlignedFace] = field(default_factory=list)
    skipped: list[DetectedFace] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "faces": [f.to_dict() for f in self.faces],
            "skipped": [f.to_dict() for f in self.skipped],
        }




def check_rgb(rgb: np.ndarray, what: str = "image") -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(
            f"{what}: expected an HxWx3 uint8 RGB array, got "
            f"{getattr(rgb, 'shape', None)} {getattr(rgb, 'dtype', type(rgb).__name__)}"
        )
    return rgb

