"""The measures of ``faceanon eval``: head pose from 5 landmarks, PSNR/SSIM outside the faces, summary statistics.

Pure arithmetic on arrays (plus the face masks of :mod:`faceanon_core.faces`); the protocol that applies them is
:mod:`.eval_protocol`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from ..faces import DEFAULT_FEATHER, AlignedFace, paste_back

#: Pixels within this distance of a face region are not "outside" (SSIM windows
#: reach about 5 px, resampling at the mask edge 1-2 px).
OUTSIDE_MARGIN = 7
PSNR_IDENTICAL = 100.0


def head_pose(landmarks: np.ndarray) -> dict[str, float]:
    """Approximate head pose in degrees from 5 landmarks (eyes, nose tip, mouth corners).

    ``roll``: angle of the eye line. ``yaw``/``pitch``: from the nose tip's offset
    from the face's midline and from its frontal height between eyes and mouth,
    read as the rotation of a nose tip standing 0.5 eye distances in front of the
    face plane (a typical adult face). Good for comparing a face with itself
    before and after, not as an absolute pose.
    """
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    le, re, nose, lm_, rm = lm
    eye_mid, mouth_mid = (le + re) / 2, (lm_ + rm) / 2
    ex = re - le
    iod = float(np.hypot(*ex))
    if iod <= 1e-9:
        return {"yaw": float("nan"), "pitch": float("nan"), "roll": float("nan")}
    roll = math.degrees(math.atan2(ex[1], ex[0]))
    x_axis = ex / iod
    y_axis = np.array([-x_axis[1], x_axis[0]])  # image "down" for an upright face
    mid = (eye_mid + mouth_mid) / 2
    lateral = float((nose - mid) @ x_axis) / iod
    span = float((mouth_mid - eye_mid) @ y_axis)
    # Frontal template: nose at 0.495 of the eye-to-mouth height (TEMPLATE_5).
    vertical = (float((nose - eye_mid) @ y_axis) - 0.495 * span) / iod
    depth = 0.5
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, lateral / depth))))
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, vertical / depth))))
    return {"yaw": yaw, "pitch": pitch, "roll": roll}


def face_region(rgb: np.ndarray, faces: Sequence[AlignedFace]) -> np.ndarray:
    """Boolean HxW: the union of the face masks (no erosion), grown by :data:`OUTSIDE_MARGIN`."""
    h, w = rgb.shape[:2]
    if not faces:
        return np.zeros((h, w), bool)
    s = faces[0].crop_size
    ones = np.ones((len(faces), s, s, 3), np.float32)
    _, m = paste_back(rgb, faces, ones, erode=0.0, feather=DEFAULT_FEATHER)
    region = (m > 0).astype(np.uint8)
    k = 2 * OUTSIDE_MARGIN + 1
    return cv2.dilate(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) > 0


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM map of two uint8 RGB images on luma (Wang et al. 2004: Gaussian sigma 1.5, K1 0.01, K2 0.03)."""
    ya = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64)
    yb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    ma, mb = blur(ya), blur(yb)
    saa, sbb, sab = blur(ya * ya) - ma * ma, blur(yb * yb) - mb * mb, blur(ya * yb) - ma * mb
    return ((2 * ma * mb + c1) * (2 * sab + c2)) / ((ma * ma + mb * mb + c1) * (saa + sbb + c2))


def psnr_ssim_outside(original: np.ndarray, output: np.ndarray,
                      region: np.ndarray) -> tuple[float | None, float | None]:
    """PSNR (dB, capped at 100 for identical pixels) and mean SSIM where ``region`` is False.
    (None, None) when nothing is outside."""
    outside = ~region
    n = int(outside.sum())
    if n == 0:
        return None, None
    diff = original[outside].astype(np.float64) - output[outside].astype(np.float64)
    mse = float((diff * diff).mean())
    psnr = PSNR_IDENTICAL if mse == 0 else min(PSNR_IDENTICAL, 10 * math.log10(255.0**2 / mse))
    ssim = float(ssim_map(original, output)[outside].mean())
    return psnr, ssim


def summary_stats(values: Sequence[float]) -> dict[str, float] | None:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if v.size == 0:
        return None
    return {"n": int(v.size), "min": round(float(v.min()), 4), "p10": round(float(np.percentile(v, 10)), 4),
            "median": round(float(np.median(v)), 4), "mean": round(float(v.mean()), 4),
            "p90": round(float(np.percentile(v, 90)), 4), "max": round(float(v.max()), 4)}
