"""Classic redaction: blur, pixelate or fill detected faces.

Needs no diffusion weights. It reuses the face pipeline of :mod:`faces`: each
face is aligned to a crop, the effect is applied in crop space (so strength
scales with the face, and blocks follow the face's rotation), and the result is
pasted back with the face mask. Pixels outside the mask stay bitwise identical.

Every detected face is redacted, however small (``min_face_size=0``): unlike
the diffusion model, a blur works at any size, and leaving a face because it
is small would leak it.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import cv2
import numpy as np

from .align import TEMPLATE_EYE_DIST, align_faces, extract_crops
from .detect import FaceDetector, default_detector
from .paste import crop_mask, paste_back
from .records import CROP_SIZE, DetectedFace, FaceProcessingError, FacesResult

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "DEFAULT_STRENGTH", "RedactResult", "redact_crops", "redact_image"]

METHODS = ("blur", "pixelate", "solid")

#: Default strength per method: blur sigma as a fraction of the inter-ocular
#: distance; pixelate: blocks across the face (cheek to cheek); solid: unused.
DEFAULT_STRENGTH = {"blur": 0.35, "pixelate": 8.0, "solid": 1.0}

#: Redaction masks are opaque over the whole face (no erosion) with a narrow
#: feather, so no original pixel of the face survives at partial weight.
REDACT_ERODE = 0.0
REDACT_FEATHER = 0.01


#: Same fields as :class:`faceanon_core.faces.FacesResult`: redacted image, mask and faces.
RedactResult = FacesResult


def _check_method(method: str, strength: float | None) -> float:
    if method not in METHODS:
        raise ValueError(f"unknown redaction method {method!r}; use one of {', '.join(METHODS)}")
    s = DEFAULT_STRENGTH[method] if strength is None else float(strength)
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"strength for {method} must be a positive number, got {strength!r}")
    if method == "pixelate" and s < 1:
        raise ValueError(f"pixelate strength is a block count and must be >= 1, got {strength!r}")
    return s


def redact_crops(
    crops: np.ndarray,
    method: str = "blur",
    strength: float | None = None,
    *,
    color: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Apply the effect to aligned crops (uint8 [N,S,S,3]) -> float32 [N,S,S,3] 0..1."""
    s_val = _check_method(method, strength)
    n, size = crops.shape[0], crops.shape[1]
    eye = TEMPLATE_EYE_DIST * size  # inter-ocular distance in crop pixels
    out = np.empty((n, size, size, 3), dtype=np.float32)
    for i in range(n):
        c = crops[i]
        if method == "blur":
            sigma = s_val * eye
            k = 2 * int(math.ceil(3 * sigma)) + 1
            r = cv2.GaussianBlur(c, (k, k), sigma, borderType=cv2.BORDER_REFLECT)
        elif method == "pixelate":
            # Blocks across the face width (the mask's width, about 2.7 eye distances).
            face_w = 2 * 0.34 * size
            block = max(1, int(round(face_w / s_val)))
            small_n = max(1, int(math.ceil(size / block)))
            small = cv2.resize(c, (small_n, small_n), interpolation=cv2.INTER_AREA)
            r = cv2.resize(small, (small_n * block, small_n * block), interpolation=cv2.INTER_NEAREST)[:size, :size]
        else:
            col = np.asarray(color, dtype=np.int64).reshape(-1)
            if col.size != 3 or (col < 0).any() or (col > 255).any():
                raise ValueError(f"color must be three values in 0..255, got {list(color)!r}")
            r = np.empty_like(c)
            r[:] = col.astype(np.uint8)
        out[i] = r.astype(np.float32) / 255.0
    return out


def redact_image(
    rgb: np.ndarray,
    method: str = "blur",
    strength: float | None = None,
    *,
    color: Sequence[int] = (0, 0, 0),
    detector: FaceDetector | None = None,
    faces: Sequence[DetectedFace] | None = None,
    feather: float = REDACT_FEATHER,
    erode: float = REDACT_ERODE,
    image_name: str = "image",
) -> RedactResult:
    """Blur, pixelate or fill every face of an HxWx3 uint8 image.

    ``strength``: blur sigma as a fraction of the inter-ocular distance
    (default 0.35), or the number of pixel blocks across the face (default 8).
    ``color``: RGB fill for ``solid``. Pass ``faces`` to skip detection.
    No face found: the image is returned unchanged (a copy) with a warning.
    A detected face that cannot be aligned (degenerate landmarks) raises
    :class:`FaceProcessingError`: it would otherwise come back unredacted.
    """
    _check_method(method, strength)
    if faces is None:
        faces = (detector or default_detector()).detect(rgb)
    aligned, skipped = align_faces(list(faces), crop_size=CROP_SIZE, min_face_size=0.0, image_name=image_name)
    if not faces:
        logger.warning("%s: no face found; image returned unchanged", image_name)
    if skipped:
        raise FaceProcessingError(f"{image_name}: {len(skipped)} detected face(s) have degenerate landmarks and "
                                  "cannot be redacted; nothing was written")
    if not aligned:
        return RedactResult(rgb.copy(), np.zeros(rgb.shape[:2], np.float32), [], list(skipped))
    crops = extract_crops(rgb, aligned)
    done = redact_crops(crops, method, strength, color=color)
    mask = crop_mask(CROP_SIZE, erode=erode, feather=feather)
    image, combined = paste_back(rgb, aligned, done, masks=[mask] * len(aligned))
    return RedactResult(image=image, mask=combined, faces=aligned, skipped=list(skipped))
