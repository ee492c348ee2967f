"""Classic redaction: blur, pixelate or fill the whole head around each detected face.

Needs no diffusion weights. The region of a face is :func:`head_ellipse`: the
detection box grown by ``margin`` (more above the box than below it, for the
hair line), an ellipse that is fully redacted inside and feathered only
outward, so no pixel of the head survives at partial weight. The effect is
applied in image space over the region's bounding box; blur sigma and pixel
block size scale with the face (eye distance). Pixels outside the feathered
ellipse stay bitwise identical.

The inner-face region of :mod:`faces.paste` (aligned crop, eroded ellipse) is
the diffusion path's: the model replaces the face inside it. Redaction is not
bound to it.

Every detected face is redacted, however small: unlike the diffusion model, a
blur works at any size, and leaving a face because it is small would leak it.

Strengths have floors (:data:`MIN_BLUR_STRENGTH`, :data:`MAX_PIXELATE_BLOCKS`):
every allowed value defeats dlib's face recognizer on the test pairs
(docs/redaction.md has the measurements); a weaker value raises ValueError.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import cv2
import numpy as np

from .align import TEMPLATE_EYE_DIST, align_faces
from .detect import FaceDetector, default_detector
from .records import CROP_SIZE, DetectedFace, FaceProcessingError, FacesResult

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MARGIN", "DEFAULT_STRENGTH", "HEAD_FEATHER", "MAX_PIXELATE_BLOCKS", "METHODS", "MIN_BLUR_STRENGTH",
    "RedactResult", "check_strength", "head_ellipse", "head_mask", "redact_crops", "redact_image", "redact_region",
]

METHODS = ("blur", "pixelate", "solid")

#: Default strength per method: blur sigma as a fraction of the inter-ocular
#: distance; pixelate: blocks across the face box's width; solid: unused.
DEFAULT_STRENGTH = {"blur": 0.35, "pixelate": 8.0, "solid": 1.0}

#: Floors: the weakest blur (sigma in eye distances) and the most pixelate
#: blocks across the face that are allowed. Measured with dlib's recognizer:
#: at these values every redacted same-person pair is farther than 0.6 from the
#: original (docs/redaction.md).
MIN_BLUR_STRENGTH = 0.2
MAX_PIXELATE_BLOCKS = 10.0
#: The strongest values (a larger sigma only costs time; fewer than 2 blocks is one flat colour).
MAX_BLUR_STRENGTH = 5.0
MIN_PIXELATE_BLOCKS = 2.0

#: Growth of the detection box, as a fraction of its size, on each side (the
#: top gets 1.5x this, the bottom 0.75x: hair line above the box, chin at its
#: bottom edge). 0.3 covers hair line, ears and chin of frontal, three-quarter
#: and tilted faces of the test photos (docs/redaction.md).
DEFAULT_MARGIN = 0.3
_TOP, _BOTTOM = 1.5, 0.75

#: Outward feather of the ellipse, as a fraction of its smaller semi-axis.
HEAD_FEATHER = 0.15

#: Crop-space redaction mask (the identity guard's fallback on aligned crops):
#: opaque over the whole crop ellipse with a narrow feather.
REDACT_ERODE = 0.0
REDACT_FEATHER = 0.01

#: Same fields as :class:`faceanon_core.faces.FacesResult`: redacted image, mask and faces.
RedactResult = FacesResult


def check_strength(method: str, strength: float | None) -> float:
    """The strength to use for ``method`` (None: its default); ValueError outside the allowed range."""
    if method not in METHODS:
        raise ValueError(f"unknown redaction method {method!r}; use one of {', '.join(METHODS)}")
    s = DEFAULT_STRENGTH[method] if strength is None else float(strength)
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"strength for {method} must be a positive number, got {strength!r}")
    if method == "blur" and not MIN_BLUR_STRENGTH <= s <= MAX_BLUR_STRENGTH:
        raise ValueError(f"blur strength must be in {MIN_BLUR_STRENGTH:g}..{MAX_BLUR_STRENGTH:g} (sigma in eye "
                         f"distances; below {MIN_BLUR_STRENGTH:g} faces stay recognizable), got {strength!r}")
    if method == "pixelate" and not MIN_PIXELATE_BLOCKS <= s <= MAX_PIXELATE_BLOCKS:
        raise ValueError(f"pixelate strength must be in {MIN_PIXELATE_BLOCKS:g}..{MAX_PIXELATE_BLOCKS:g} (blocks "
                         f"across the face; more than {MAX_PIXELATE_BLOCKS:g} leave faces recognizable), "
                         f"got {strength!r}")
    return s


def _check_margin(margin: float) -> float:
    m = float(margin)
    if not math.isfinite(m) or not 0.0 <= m <= 2.0:
        raise ValueError(f"margin must be in 0..2 (fraction of the face box added on each side), got {margin!r}")
    return m


def head_ellipse(box: Sequence[float], margin: float = DEFAULT_MARGIN) -> tuple[float, float, float, float]:
    """(cx, cy, a, b): centre and semi-axes of a face's redaction ellipse, image pixels.

    The ellipse inscribed in the box grown by ``margin`` x its width left and
    right, 1.5 x margin x its height above and 0.75 x below. From margin 0.2 on
    it contains the whole detection box; margin 0 is the box's own inscribed
    ellipse (corners of the box left out).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    gx0, gx1 = x0 - margin * w, x1 + margin * w
    gy0, gy1 = y0 - _TOP * margin * h, y1 + _BOTTOM * margin * h
    return (gx0 + gx1) / 2, (gy0 + gy1) / 2, (gx1 - gx0) / 2, (gy1 - gy0) / 2


def _ellipse_weights(cx, cy, a, b, feather_px, x0, y0, x1, y1) -> np.ndarray:
    """Mask over the window [y0:y1, x0:x1]: 1 inside the ellipse, cosine fall-off over ``feather_px`` outside."""
    ys = (np.arange(y0, y1, dtype=np.float64) + 0.5 - cy)[:, None]
    xs = (np.arange(x0, x1, dtype=np.float64) + 0.5 - cx)[None, :]
    r = np.sqrt((xs / a) ** 2 + (ys / b) ** 2)
    out = (r - 1.0) * min(a, b)  # distance outside the ellipse (px, exact on the axes, below it elsewhere)
    if feather_px <= 0:
        return (out <= 0).astype(np.float32)
    t = np.clip(out / feather_px, 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


def _window(cx, cy, a, b, pad, shape) -> tuple[int, int, int, int]:
    h, w = shape[:2]
    x0 = max(int(math.floor(cx - a - pad)), 0)
    y0 = max(int(math.floor(cy - b - pad)), 0)
    x1 = min(int(math.ceil(cx + a + pad)) + 1, w)
    y1 = min(int(math.ceil(cy + b + pad)) + 1, h)
    return x0, y0, x1, y1


def head_mask(shape: Sequence[int], faces: Sequence, margin: float = DEFAULT_MARGIN,
              feather: float = HEAD_FEATHER) -> np.ndarray:
    """float32 HxW mask of the redaction regions of ``faces`` (objects with ``.box``): their union."""
    margin = _check_margin(margin)
    mask = np.zeros(tuple(shape[:2]), np.float32)
    for f in faces:
        cx, cy, a, b = head_ellipse(f.box, margin)
        fp = feather * min(a, b)
        x0, y0, x1, y1 = _window(cx, cy, a, b, fp, shape)
        if x1 > x0 and y1 > y0:
            np.maximum(mask[y0:y1, x0:x1], _ellipse_weights(cx, cy, a, b, fp, x0, y0, x1, y1),
                       out=mask[y0:y1, x0:x1])
    return mask


def _blur(patch: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; large sigmas on a downscaled copy (same look, a fraction of the cost)."""
    f = max(1, int(sigma // 6))
    h, w = patch.shape[:2]
    if f > 1 and min(h, w) // f >= 4:
        small = cv2.resize(patch, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
        s = sigma / f
        k = 2 * int(math.ceil(3 * s)) + 1
        small = cv2.GaussianBlur(small, (k, k), s, borderType=cv2.BORDER_REFLECT)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    k = 2 * int(math.ceil(3 * sigma)) + 1
    return cv2.GaussianBlur(patch, (k, k), sigma, borderType=cv2.BORDER_REFLECT)


def _pixelate(patch: np.ndarray, block: int, ox: int, oy: int) -> np.ndarray:
    """Blocks of ``block`` px on a grid anchored at (ox, oy) in the patch: each block its mean colour."""
    h, w = patch.shape[:2]
    out = np.empty_like(patch)
    xs = list(range(ox % block - block if ox % block else 0, w, block))
    ys = list(range(oy % block - block if oy % block else 0, h, block))
    for y in ys:
        ya, yb = max(y, 0), min(y + block, h)
        if yb <= ya:
            continue
        for x in xs:
            xa, xb = max(x, 0), min(x + block, w)
            if xb <= xa:
                continue
            out[ya:yb, xa:xb] = patch[ya:yb, xa:xb].reshape(-1, patch.shape[2]).mean(0).round().astype(patch.dtype)
    return out


def _face_scale(face, box) -> float:
    """Eye distance in image px: the aligned face's, at least the box's (a box is about 2.5 eye distances)."""
    x0, y0, x1, y1 = box
    from_box = max(min(x1 - x0, y1 - y0), 1.0) / 2.5
    return max(float(getattr(face, "face_size", 0.0) or 0.0), from_box)


def _check_color(color) -> np.ndarray:
    col = np.asarray(color, dtype=np.int64).reshape(-1)
    if col.size != 3 or (col < 0).any() or (col > 255).any():
        raise ValueError(f"color must be three values in 0..255, got {list(color)!r}")
    return col.astype(np.uint8)


def redact_region(patch: np.ndarray, method: str, size: float, color: np.ndarray | None = None,
                  origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The effect on one uint8 image patch (a face's region window), same shape, uint8.

    ``size``: blur sigma or pixel block side in pixels; ``origin``: the block grid's anchor in the patch.
    """
    if method == "blur":
        return _blur(patch, size)
    if method == "pixelate":
        return _pixelate(patch, max(1, int(round(size))), *origin)
    out = np.empty_like(patch)
    out[:] = color
    return out


def redact_crops(
    crops: np.ndarray,
    method: str = "blur",
    strength: float | None = None,
    *,
    color: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """The effect on aligned crops (uint8 [N,S,S,3]) -> float32 [N,S,S,3] 0..1 (the identity guard's fallback)."""
    s_val = check_strength(method, strength)
    n, size = crops.shape[0], crops.shape[1]
    eye = TEMPLATE_EYE_DIST * size  # inter-ocular distance in crop pixels
    col = _check_color(color) if method == "solid" else None
    out = np.empty((n, size, size, 3), dtype=np.float32)
    for i in range(n):
        c = crops[i]
        if method == "blur":
            r = _blur(c, s_val * eye)
        elif method == "pixelate":
            r = _pixelate(c, max(1, int(round(2 * 0.34 * size / s_val))), 0, 0)
        else:
            r = np.empty_like(c)
            r[:] = col
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
    margin: float = DEFAULT_MARGIN,
    feather: float = HEAD_FEATHER,
    image_name: str = "image",
) -> RedactResult:
    """Blur, pixelate or fill the whole head of every face of an HxWx3 uint8 image.

    ``strength``: blur sigma as a fraction of the inter-ocular distance
    (default 0.35, allowed 0.2..5), or the number of pixel blocks across the
    face box (default 8, allowed 2..10). ``margin``: growth of the face box
    into the head region (:func:`head_ellipse`); ``feather``: outward soft edge
    as a fraction of the ellipse's smaller semi-axis. ``color``: RGB fill for
    ``solid``. Pass ``faces`` to skip detection. No face found: the image is
    returned unchanged (a copy) with a warning. A face with a degenerate box or
    landmarks raises :class:`FaceProcessingError`: it would otherwise come back
    unredacted.
    """
    s_val = check_strength(method, strength)
    margin = _check_margin(margin)
    feather = float(feather)
    if not math.isfinite(feather) or not 0.0 <= feather <= 1.0:
        raise ValueError(f"feather must be in 0..1, got {feather!r}")
    col = _check_color(color) if method == "solid" else None
    if faces is None:
        faces = (detector or default_detector()).detect(rgb)
    faces = list(faces)
    aligned, skipped = align_faces(faces, crop_size=CROP_SIZE, min_face_size=0.0, image_name=image_name)
    if not faces:
        logger.warning("%s: no face found; image returned unchanged", image_name)
    if skipped:
        raise FaceProcessingError(f"{image_name}: {len(skipped)} detected face(s) have degenerate landmarks and "
                                  "cannot be redacted; nothing was written")
    for a in aligned:
        if not np.isfinite(a.box).all() or a.box[2] <= a.box[0] or a.box[3] <= a.box[1]:
            raise FaceProcessingError(f"{image_name}: face box {list(a.box)} is empty or not finite; "
                                      "nothing was written")
    if not aligned:
        return RedactResult(rgb.copy(), np.zeros(rgb.shape[:2], np.float32), [], list(skipped))
    image = rgb.copy()
    combined = np.zeros(rgb.shape[:2], np.float32)
    for a in aligned:
        cx, cy, ea, eb = head_ellipse(a.box, margin)
        fp = feather * min(ea, eb)
        eye = _face_scale(a, a.box)
        sigma = s_val * eye if method == "blur" else 0.0
        x0, y0, x1, y1 = _window(cx, cy, ea, eb, fp, rgb.shape)
        if x1 <= x0 or y1 <= y0:
            continue  # the region lies wholly outside the picture: nothing of the face is in it
        w = _ellipse_weights(cx, cy, ea, eb, fp, x0, y0, x1, y1)
        if method == "blur":
            pad = int(math.ceil(3 * sigma))
            bx0, by0 = max(x0 - pad, 0), max(y0 - pad, 0)
            bx1, by1 = min(x1 + pad, rgb.shape[1]), min(y1 + pad, rgb.shape[0])
            patch = image[by0:by1, bx0:bx1]
            eff = redact_region(patch, method, sigma)
        else:
            bx0, by0, patch = x0, y0, image[y0:y1, x0:x1]
            face_w = max(a.box[2] - a.box[0], 2.5 * eye)  # a box clipped by the frame border: the face's width
            block = max(1, int(round(face_w / s_val)))
            grid = (math.floor(cx - ea) - x0, math.floor(cy - eb) - y0)  # blocks anchored at the region's corner
            eff = redact_region(patch, method, block, col, grid)
        if not (isinstance(eff, np.ndarray) and eff.shape == patch.shape and eff.dtype == np.uint8):
            raise FaceProcessingError(f"{image_name}: the {method} effect returned a wrong result; nothing was written")
        eff = eff[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0]
        src = image[y0:y1, x0:x1]
        wf = w[..., None]
        blended = np.rint(src.astype(np.float32) * (1.0 - wf) + eff.astype(np.float32) * wf).astype(np.uint8)
        image[y0:y1, x0:x1] = np.where(wf > 0, blended, src)
        np.maximum(combined[y0:y1, x0:x1], w, out=combined[y0:y1, x0:x1])
    return RedactResult(image=image, mask=combined, faces=aligned, skipped=list(skipped))
