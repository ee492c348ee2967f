"""Alignment: a similarity transform from 5 landmarks to the crop template, and the warp to the crop."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import cv2
import numpy as np

from .records import CROP_SIZE, DEFAULT_MIN_FACE_SIZE, AlignedFace, DetectedFace, check_rgb

logger = logging.getLogger(__name__)

#: 5-point alignment template as fractions of the crop side (x, y): left eye,
#: right eye, nose tip, left and right mouth corners. It is the classic ArcFace
#: 112x112 template, scaled so the inter-ocular distance is 0.25 of the crop
#: width and moved so the eye midpoint sits at (0.50, 0.40). That is the
#: framing of FFHQ/CelebA-HQ-style "whole face" crops (eyes at about 0.40 of
#: the height, mouth at about 0.69, forehead, hair, ears and some background
#: inside the crop). At 512 px: eyes (192.0, 205.2) and (320.0, 204.5), nose
#: (256.4, 278.0), mouth (203.8, 352.9) and (309.8, 352.3).
TEMPLATE_5 = np.array(
    [
        [0.37500, 0.40069],
        [0.62500, 0.39930],
        [0.50081, 0.54286],
        [0.39809, 0.68921],
        [0.60512, 0.68806],
    ],
    dtype=np.float64,
)
TEMPLATE_EYE_DIST = 0.25  # fraction of the crop side


# --------------------------------------------------------------------------- alignment


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection)
    mapping ``src`` points onto ``dst``. Closed form; returns a 2x3 matrix."""
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    n = src.shape[0]
    # x' = a x - b y + tx ; y' = b x + a y + ty
    A = np.zeros((2 * n, 4))
    A[0::2] = np.stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)], axis=1)
    A[1::2] = np.stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)], axis=1)
    sol, *_ = np.linalg.lstsq(A, dst.reshape(-1), rcond=None)
    a, b, tx, ty = sol
    return np.array([[a, -b, tx], [b, a, ty]])


def align_faces(
    faces: Sequence[DetectedFace],
    *,
    frame_index: int = 0,
    crop_size: int = CROP_SIZE,
    min_face_size: float = DEFAULT_MIN_FACE_SIZE,
    image_name: str = "image",
) -> tuple[list[AlignedFace], list[DetectedFace]]:
    """Similarity transforms from each face's 5 landmarks to :data:`TEMPLATE_5`.

    Returns (aligned faces, skipped faces). Faces whose implied inter-ocular
    distance is below ``min_face_size`` image pixels are skipped with a warning.
    """
    template = TEMPLATE_5 * crop_size
    aligned: list[AlignedFace] = []
    skipped: list[DetectedFace] = []
    for i, face in enumerate(faces):
        m = estimate_similarity(face.landmarks5, template)
        scale = math.hypot(m[0, 0], m[1, 0])
        if not np.isfinite(m).all() or scale <= 0:
            logger.warning("%s: face %d has degenerate landmarks; skipped", image_name, i)
            skipped.append(face)
            continue
        size = TEMPLATE_EYE_DIST * crop_size / scale
        if size < min_face_size:
            skipped.append(face)
            continue
        aligned.append(
            AlignedFace(
                frame_index=frame_index,
                landmarks=face.landmarks5,
                affine=m,
                crop_size=crop_size,
                score=face.score,
                box=face.box,
                face_size=size,
                index=i,
            )
        )
    if skipped:
        logger.warning(
            "%s: %d of %d faces skipped (smaller than %.0f px between the eyes, or degenerate)",
            image_name,
            len(skipped),
            len(faces),
            min_face_size,
        )
    return aligned, skipped


def _roi_for_crop(affine: np.ndarray, crop_size: int, shape: tuple[int, int], margin: int = 3):
    """Integer image box (x0, y0, x1, y1) covering the crop's preimage, clipped to the image."""
    inv = cv2.invertAffineTransform(affine)
    s = crop_size - 1
    corners = np.array([[0, 0, 1], [s, 0, 1], [0, s, 1], [s, s, 1]], dtype=np.float64) @ inv.T
    h, w = shape
    x0 = max(int(math.floor(corners[:, 0].min())) - margin, 0)
    y0 = max(int(math.floor(corners[:, 1].min())) - margin, 0)
    x1 = min(int(math.ceil(corners[:, 0].max())) + margin + 1, w)
    y1 = min(int(math.ceil(corners[:, 1].max())) + margin + 1, h)
    return x0, y0, x1, y1


def shift_affine(affine: np.ndarray, x0: float, y0: float) -> np.ndarray:
    """Affine for an ROI starting at (x0, y0) of the original source."""
    m = affine.copy()
    m[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return m


def _resize_map(affine: np.ndarray, f: float) -> np.ndarray:
    """Compose ``affine`` (source -> dst) with a resize of the source by ``f``:
    returns the matrix from resized-source pixels to dst (cv2.resize centre convention)."""
    # resized x_r = (x + 0.5) f - 0.5  =>  x = (x_r + 0.5)/f - 0.5
    m = affine.copy()
    m[:, 2] = affine[:, :2] @ np.array([0.5 / f - 0.5, 0.5 / f - 0.5]) + affine[:, 2]
    m[:, :2] = affine[:, :2] / f
    return m


def warp_face_crop(rgb: np.ndarray, face: AlignedFace) -> np.ndarray:
    """One aligned crop, uint8 SxSx3. Shrinks with INTER_AREA first when the face
    is larger than the crop, so big faces in big photos do not alias."""
    s = face.crop_size
    x0, y0, x1, y1 = _roi_for_crop(face.affine, s, rgb.shape[:2])
    m = shift_affine(face.affine, x0, y0)
    if x1 <= x0 or y1 <= y0:
        # The crop lies entirely outside the image (landmarks far outside): reflect the whole image.
        x0, y0, x1, y1 = 0, 0, rgb.shape[1], rgb.shape[0]
        m = face.affine.copy()
    roi = rgb[y0:y1, x0:x1]
    scale = face.scale
    if scale < 0.8:
        f = scale
        rw, rh = max(1, round(roi.shape[1] * f)), max(1, round(roi.shape[0] * f))
        fx, fy = rw / roi.shape[1], rh / roi.shape[0]
        roi = cv2.resize(roi, (rw, rh), interpolation=cv2.INTER_AREA)
        # Per-axis factors differ by rounding only; use their mean for the similarity.
        m = _resize_map(m, (fx + fy) / 2)
    return cv2.warpAffine(
        roi, m, (s, s), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT
    )


def extract_crops(rgb: np.ndarray, faces: Sequence[AlignedFace]) -> np.ndarray:
    """Aligned crops for ``faces`` as uint8 [N, S, S, 3] (borders reflected)."""
    check_rgb(rgb)
    if not faces:
        return np.zeros((0, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    return np.stack([warp_face_crop(rgb, f) for f in faces])




def resize_crops(crops: np.ndarray, size: int) -> np.ndarray:
    """Square crops, one ``[S, S, C]`` or a batch ``[n, S, S, C]``, to ``size`` x ``size``: the one rule of every
    crop <-> model resize. INTER_AREA shrinking (no aliasing), INTER_CUBIC enlarging (sharper than linear);
    float crops are clipped to 0..1 after, since cubic overshoots and the model refuses values outside."""
    single = crops.ndim == 3
    side = crops.shape[0] if single else crops.shape[1]
    if side == size:
        return crops
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    batch = crops[None] if single else crops
    out = np.stack([cv2.resize(c, (size, size), interpolation=interp) for c in batch])
    if np.issubdtype(out.dtype, np.floating):
        np.clip(out, 0.0, 1.0, out=out)
    return out[0] if single else out
