"""MTCNN's array work between the networks: non-maximum suppression, box regression and squaring, and the
crops R-Net and O-Net see (mirrored past the image border, cut from 2x reductions of the frame).

Plain functions of numpy arrays, used by :class:`faces.detect.MTCNNDetector`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression (MTCNN's +1 pixel box convention). Returns kept indices.

    Up to :data:`_NMS_MATRIX` boxes the overlaps of all pairs are computed at once and the greedy pass
    reads them (the same numbers, so the same result as box by box, in a fraction of the time)."""
    if boxes.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(-scores, kind="stable")

    def overlap(i, rest):
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = w * h
        if method == "min":
            return inter / np.minimum(area[i], area[rest])
        return inter / (area[i] + area[rest] - inter)

    keep = []
    if order.size <= _NMS_MATRIX:
        over = overlap(order[:, None], order[None, :]) > threshold  # [a, b]: a suppresses b (b after a)
        gone = np.zeros(order.size, dtype=bool)
        for a in range(order.size):
            if not gone[a]:
                keep.append(order[a])
                gone |= over[a]
        return np.asarray(keep, dtype=np.int64)
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        order = rest[overlap(i, rest) <= threshold]
    return np.asarray(keep, dtype=np.int64)


#: Largest box count whose pairwise overlaps :func:`nms` computes at once (500^2 booleans; above that
#: the pass over every box costs more than the box-by-box loop over the kept ones).
_NMS_MATRIX = 500


def square(boxes: np.ndarray) -> np.ndarray:
    """Grow boxes to squares around their centres (MTCNN's ``rerec``)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply the networks' box offsets (fractions of the +1 box size)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Indices folded into 0..n-1 by mirroring at the edges (``BORDER_REFLECT_101``, any distance)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * n - 2
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


class Halvings:
    """The image and its successive 2x INTER_AREA reductions, made on demand (crop sources for R-Net/O-Net).

    Resizing a 300 px box to R-Net's 24 px costs as many operations as the box has pixels; cutting it from
    a level where it is 2-4x the target instead costs a few hundred. INTER_AREA of an area reduction is an
    average over the source pixels, so a crop of a level is the same average, up to the box edges rounded
    to the level's pixels (at most half a level pixel: under 1/(4 * size) of the box side).
    """

    def __init__(self, img: np.ndarray) -> None:
        self.levels = [img]

    def level(self, k: int) -> tuple[np.ndarray, int]:
        """(level, its index): the ``k``-th halving, or the smallest there is when the image gets too small.

        Pixel ``j`` of level ``k`` is the mean of pixels ``j * 2**k .. (j + 1) * 2**k - 1`` of the image (an odd
        last row or column is left out of the next level)."""
        while len(self.levels) <= k:
            prev = self.levels[-1]
            h, w = prev.shape[:2]
            if h < 2 or w < 2:
                break
            prev = prev[: h - h % 2, : w - w % 2]
            self.levels.append(cv2.resize(prev, (w // 2, h // 2), interpolation=cv2.INTER_AREA))
        k = min(k, len(self.levels) - 1)
        return self.levels[k], k


def crop_patches(img: np.ndarray | Halvings, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crops of integer boxes, resized to ``size``, normalised and transposed (x-major) as the
    MTCNN weights expect. Returns (batch, valid mask). ``img`` is an image or its :class:`Halvings`.

    The box (x0, y0, x1, y1) covers pixel columns x0-1..x1-1 (the 1-based convention the networks
    were trained with). The part of a box outside the image is the image mirrored at its border
    (as P-Net's padded pyramid levels): a face cut by the border then shows as a whole, symmetric
    face, which R-Net and O-Net recognise where half a face on black they would not. A box must
    overlap the image. A box more than twice ``size`` is cut from the halving of the image where it
    is 2-4x ``size`` (see :class:`Halvings`).
    """
    src = img if isinstance(img, Halvings) else Halvings(img)
    h, w = src.levels[0].shape[:2]
    n = boxes.shape[0]
    out = np.zeros((n, size, size, 3), dtype=np.float32)
    valid = np.zeros(n, dtype=bool)
    for k in range(n):
        bx0, by0, bx1, by1 = (int(v) for v in boxes[k, :4])
        cx0, cy0 = bx0 - 1, by0 - 1
        bw, bh = bx1 - bx0 + 1, by1 - by0 + 1
        if bw < 1 or bh < 1:
            continue
        if min(cx0 + bw, w) <= max(cx0, 0) or min(cy0 + bh, h) <= max(cy0, 0):
            continue
        lvl = int(math.floor(math.log2(min(bw, bh) / (2.0 * size)))) if min(bw, bh) >= 4 * size else 0
        im, lvl = src.level(lvl)
        lh, lw = im.shape[:2]
        if lvl:
            f = float(1 << lvl)
            x0, y0 = int(round(cx0 / f)), int(round(cy0 / f))
            x1, y1 = int(round((cx0 + bw) / f)), int(round((cy0 + bh) / f))
        else:
            x0, y0, x1, y1 = cx0, cy0, cx0 + bw, cy0 + bh
        if x1 <= x0 or y1 <= y0:
            continue
        if x0 >= 0 and y0 >= 0 and x1 <= lw and y1 <= lh:
            patch = im[y0:y1, x0:x1]
        else:
            rows = reflect_index(np.arange(y0, y1), lh)
            cols = reflect_index(np.arange(x0, x1), lw)
            patch = im[rows[:, None], cols[None, :]]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
        valid[k] = True
    out = (out - 127.5) * 0.0078125
    return np.ascontiguousarray(out.transpose(0, 2, 1, 3)), valid
