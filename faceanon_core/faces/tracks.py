"""How face tracks are found: per-frame detections linked into tracks, gaps filled, ends held, landmarks smoothed.

What a track is (:class:`FaceTracks`, :class:`TrackedFace`) lives in :mod:`.track_records`, for the
code that only reads tracks; this module builds them and re-exports those names, so
``from faceanon_core.faces.tracks import FaceTracks, track_faces`` works as before.

On video the privacy unit is the track, not the detection. A detector misses a
face now and then (motion blur, a turned head, a hand in front of it); a
frame-by-frame anonymizer would show the real face in exactly those frames, and
would give each frame a different anonymous identity. This module links the
detections of each frame into tracks, fills the frames a tracked face was
missed in, and smooths the landmarks along each track (so aligned crops do not
jitter); each track's keyframe (:meth:`FaceTracks.keyframe`) is the face that
makes the best source identity.

Association: per frame, optimal assignment (Hungarian,
``scipy.optimize.linear_sum_assignment``) of the live tracks' constant-velocity
predictions to the detections, on a cost from landmark distance (normalised by
face size) and box IoU; gates make far-apart faces, or faces of very different
size, never match. A track survives up to ``max_gap`` missed frames.

What each frame gets, per track (every :class:`TrackedFace` is to be
anonymized or redacted, whatever its score or flags):

* detected frames: the detection, landmarks smoothed;
* frames between two detections (a gap of at most ``max_gap`` frames):
  linear interpolation of box and landmarks, ``interpolated=True``;
* ``hold_frames`` frames (default 2) before a track's first and after its
  last detection: the first/last face held in place, ``held=True``. Why: the
  face has usually not gone anywhere (it is turning or blurred); a still face
  errs by at most the distance actually travelled. Held longer, a short or
  spurious track leaves a "ghost" patch where no face is, so the default is
  short; gaps inside a track are interpolated up to ``max_gap`` frames.
* faces leaving (or entering) through the frame border (``frame_size`` given,
  tracks with at least :data:`MIN_EVIDENCE` detections, one of them not cut by
  the border: a face seen whole): while the track's
  constant-velocity prediction is cut by the border and at least
  :data:`BORDER_MIN_VISIBLE` of its box is in the picture (and for at most
  ``border_frames`` frames), the face is extrapolated along its motion
  (``held=True``; its box reaches past the border, the region drawn from it
  is clipped to the frame). A detector loses a face when about half
  of it is outside; the rest still identifies the person.

Coordinates are image pixels; landmarks are the 5 points of
:class:`faceanon_core.faces.DetectedFace` (left eye, right eye, nose, mouth
left, mouth right, "left" meaning the image's left).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .align import TEMPLATE_5, TEMPLATE_EYE_DIST
from .track_records import FaceTracks, TrackArrays, TrackedFace, frontality, keyframe_quality

__all__ = [
    "BORDER_MIN_VISIBLE",
    "DEFAULT_BORDER_FRAMES",
    "DEFAULT_HOLD_FRAMES",
    "DEFAULT_MAX_DISTANCE",
    "MIN_EVIDENCE",
    "DEFAULT_MAX_GAP",
    "DEFAULT_MAX_SCALE_CHANGE",
    "FaceTracks",
    "LandmarkSmoothing",
    "TrackedFace",
    "face_size",
    "frontality",
    "keyframe_quality",
    "track_faces",
]

#: Missed frames a track survives (and, by default, frames held at its ends).
#: 8 frames is about 0.3 s at 25-30 fps: longer than the usual detector
#: dropouts (1-5 frames of blur, a head turn, a hand passing), short enough that
#: constant-velocity prediction and linear interpolation stay within a fraction
#: of a face size at walking-speed motion.
DEFAULT_MAX_GAP = 8

#: Gate: mean landmark distance to the prediction, in face sizes (inter-ocular
#: distances). Neighbouring faces are 2.5-4 face sizes apart, so they never
#: match; a face moving 0.8 face sizes per frame is still followed on its second
#: frame, before its velocity is known.
DEFAULT_MAX_DISTANCE = 1.0

#: Gate: largest ratio of face sizes (detection vs prediction) that can match:
#: a small background face passing behind a large one never takes its track.
DEFAULT_MAX_SCALE_CHANGE = 1.5

#: Frames held still at each end of a track: a detector dropout at a track's
#: end is covered, a spurious track leaves no ghost for long.
DEFAULT_HOLD_FRAMES = 2

#: A face at the frame border is followed out while this fraction of its predicted box is in the picture.
BORDER_MIN_VISIBLE = 0.25
#: At most this many frames of extrapolation past a track's end at the border (1 s at 30 fps).
DEFAULT_BORDER_FRAMES = 30
#: Detections a track needs before it is extrapolated through the border (a motion estimate, not one blip).
MIN_EVIDENCE = 3
#: A border-cut track continues a seen-whole face when its first box overlaps one of that face's boxes this
#: much (IoU), within this many frames (see ``_continuations``).
_CONTINUATION_IOU = 0.3
_CONTINUATION_FRAMES = 3

#: Before a track's velocity is known (its first match), the gate is this many
#: times ``max_distance``: a fast face (25 px and 10% scale per frame on a
#: small face) moves more than one face size between its first two frames.
_FIRST_MATCH_GATE = 2.0

# Only the alignment template's spread is used here: it turns the spread of 5
# landmarks into the inter-ocular distance they imply.
_TEMPLATE_5 = TEMPLATE_5
_TEMPLATE_EYE_DIST = TEMPLATE_EYE_DIST
_TEMPLATE_RMS = float(np.sqrt(np.mean(np.sum((_TEMPLATE_5 - _TEMPLATE_5.mean(0)) ** 2, axis=1))))

_VELOCITY_EMA = 0.5  # weight of the newest velocity in a track's estimate

_DETECTED, _INTERPOLATED, _HELD = TrackArrays.DETECTED, TrackArrays.INTERPOLATED, TrackArrays.HELD


def face_size(landmarks5: np.ndarray) -> float:
    """Inter-ocular distance implied by the spread of the 5 landmarks (image px).

    Equal to the eye distance for a face shaped like the template, and robust to
    profile views, where the eyes alone come close together.
    """
    lm = np.asarray(landmarks5, dtype=np.float64).reshape(5, 2)
    rms = math.sqrt(float(np.mean(np.sum((lm - lm.mean(0)) ** 2, axis=1))))
    return rms / _TEMPLATE_RMS * _TEMPLATE_EYE_DIST



@dataclass(frozen=True)
class LandmarkSmoothing:
    """Zero-phase Savitzky-Golay smoothing of landmarks along a track.

    Offline video allows a zero-phase filter, so nothing lags: a polynomial of
    degree ``polyorder`` is fitted over a centred window of ``window`` frames.
    The default (9 frames, degree 2) reproduces constant-velocity and
    constant-acceleration motion exactly at any speed, divides white landmark
    noise by 1.98 (sqrt(231/59)) inside a track (less in the 4 frames at each
    end, where the fit extrapolates), and keeps 96.5% of a 2 Hz head shake at
    30 fps (85% at 3 Hz). Scale ``window`` with the frame rate (about 0.3 s).
    Tracks shorter than the window use the longest odd window that fits, and
    are left as they are when that is not longer than ``polyorder``.
    """

    window: int = 9
    polyorder: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.window, (int, np.integer)) or self.window < 1 or self.window % 2 == 0:
            raise ValueError(
                f"smoothing window must be an odd positive number of frames, got {self.window!r}"
            )
        if not isinstance(self.polyorder, (int, np.integer)) or not 0 <= self.polyorder < self.window:
            raise ValueError(
                f"smoothing polyorder must be an integer in [0, window), "
                f"got {self.polyorder!r} for window {self.window}"
            )

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Smooth ``values`` (frames first, any trailing shape) along the frames."""
        values = np.asarray(values, dtype=np.float64)
        n = values.shape[0]
        w = min(self.window, n if n % 2 else n - 1)
        if w <= self.polyorder:
            return values.copy()
        from scipy.signal import savgol_filter

        flat = values.reshape(n, -1)
        return savgol_filter(flat, w, self.polyorder, axis=0, mode="interp").reshape(values.shape)




@dataclass
class _Detection:
    frame: int
    index: int
    box: np.ndarray  # (4,)
    score: float
    lm: np.ndarray  # (5, 2)
    size: float


class _Track:
    """A track being built: its detections and a constant-velocity motion model."""

    def __init__(self, track_id: int, det: _Detection):
        self.track_id = track_id
        self.dets = [det]
        self.v_lm = np.zeros((5, 2))
        self.v_box = np.zeros(4)
        self.has_velocity = False

    @property
    def last(self) -> _Detection:
        return self.dets[-1]

    def predict(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        dt = frame - self.last.frame
        return self.last.lm + self.v_lm * dt, self.last.box + self.v_box * dt

    def add(self, det: _Detection) -> None:
        dt = det.frame - self.last.frame
        v_lm = (det.lm - self.last.lm) / dt
        v_box = (det.box - self.last.box) / dt
        if self.has_velocity:
            v_lm = _VELOCITY_EMA * v_lm + (1 - _VELOCITY_EMA) * self.v_lm
            v_box = _VELOCITY_EMA * v_box + (1 - _VELOCITY_EMA) * self.v_box
        self.v_lm, self.v_box, self.has_velocity = v_lm, v_box, True
        self.dets.append(det)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with boxes (n, 4)."""
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0.0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0.0, None)
    inter = iw * ih
    area = max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0.0, None)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _size_of(lm: np.ndarray, box: np.ndarray) -> float:
    """Face size from the landmarks; from the box for degenerate landmarks (never 0)."""
    s = face_size(lm)
    if s > 1e-6:
        return s
    # A box is about 2.5 eye distances wide; 1 px when the box is degenerate too.
    return max(min(box[2] - box[0], box[3] - box[1]) / 2.5, 1.0)


def _read_detections(detections_per_frame: Sequence[Iterable[Any] | None]) -> list[list[_Detection]]:
    if isinstance(detections_per_frame, (str, bytes)) or not hasattr(detections_per_frame, "__iter__"):
        raise TypeError("detections_per_frame must be a sequence with one list of detections per frame")
    frames: list[list[_Detection]] = []
    for t, dets in enumerate(detections_per_frame):
        out: list[_Detection] = []
        for j, d in enumerate(() if dets is None else dets):
            where = f"frame {t}, detection {j}"
            try:
                box, score, lm = d.box, d.score, d.landmarks5
            except AttributeError:
                raise TypeError(
                    f"{where}: expected .box, .score and .landmarks5 (like DetectedFace), got {type(d).__name__}"
                ) from None
            try:
                box = np.asarray(box, dtype=np.float64).reshape(4)
                lm = np.asarray(lm, dtype=np.float64).reshape(5, 2)
                score = float(score)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: box must be 4 numbers, landmarks5 5x2 numbers, score a number") from None
            if not np.isfinite(lm).all():
                raise ValueError(f"{where}: landmarks5 contain NaN or infinity: {lm.tolist()}")
            if not np.isfinite(box).all() or box[2] < box[0] or box[3] < box[1]:
                raise ValueError(
                    f"{where}: box must be finite (x0, y0, x1, y1) with x1 >= x0, y1 >= y0, got {box.tolist()}"
                )
            if not math.isfinite(score):
                raise ValueError(f"{where}: score is {score}")
            out.append(_Detection(t, j, box, score, lm, _size_of(lm, box)))
        frames.append(out)
    return frames


def _check_params(max_gap, max_distance, min_iou, max_scale_change, hold_frames, smoothing) -> None:
    def is_int(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(max_gap) or max_gap < 0:
        raise ValueError(f"max_gap must be an integer >= 0 (missed frames a track survives), got {max_gap!r}")
    if hold_frames is not None and (not is_int(hold_frames) or hold_frames < 0):
        raise ValueError(f"hold_frames must be None (= max_gap) or an integer >= 0, got {hold_frames!r}")
    if not (isinstance(max_distance, (int, float)) and math.isfinite(max_distance) and max_distance > 0):
        raise ValueError(f"max_distance must be a finite number > 0 (in face sizes), got {max_distance!r}")
    if not (isinstance(min_iou, (int, float)) and 0.0 <= min_iou < 1.0):
        raise ValueError(f"min_iou must be in [0, 1), got {min_iou!r}")
    if not (isinstance(max_scale_change, (int, float)) and math.isfinite(max_scale_change) and max_scale_change >= 1.0):
        raise ValueError(f"max_scale_change must be a finite number >= 1, got {max_scale_change!r}")
    if smoothing is not None and not isinstance(smoothing, LandmarkSmoothing):
        raise ValueError(f"smoothing must be a LandmarkSmoothing or None, got {smoothing!r}")


def _associate(
    frames: list[list[_Detection]], max_gap: int, max_distance: float, min_iou: float, max_scale_change: float
) -> list[_Track]:
    from scipy.optimize import linear_sum_assignment

    tracks: list[_Track] = []
    live: list[_Track] = []
    for t, dets in enumerate(frames):
        live = [tr for tr in live if t - tr.last.frame - 1 <= max_gap]
        matched: set[int] = set()
        if live and dets:
            boxes = np.stack([d.box for d in dets])
            lms = np.stack([d.lm for d in dets])
            sizes = np.array([d.size for d in dets])
            cost = np.full((len(live), len(dets)), np.inf)
            for i, tr in enumerate(live):
                p_lm, p_box = tr.predict(t)
                p_size = _size_of(p_lm, p_box)
                dist = np.linalg.norm(lms - p_lm, axis=2).mean(axis=1) / p_size
                iou = _iou(p_box, boxes)
                ratio = np.maximum(sizes / p_size, p_size / sizes)
                gate = max_distance * (1.0 if tr.has_velocity else _FIRST_MATCH_GATE)
                ok = (dist <= gate) & (ratio <= max_scale_change) & (iou >= min_iou)
                cost[i, ok] = dist[ok] + (1.0 - iou[ok])
            # Gated pairs cost more than all allowed pairs together: the assignment
            # makes as many allowed matches as it can, then the cheapest ones.
            big = (_FIRST_MATCH_GATE * max_distance + 2.0) * (min(cost.shape) + 1)
            rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, big))
            for r, c in zip(rows, cols, strict=True):
                if np.isfinite(cost[r, c]):
                    live[r].add(dets[c])
                    matched.add(c)
        for j, det in enumerate(dets):
            if j not in matched:
                tr = _Track(len(tracks), det)
                tracks.append(tr)
                live.append(tr)
    return tracks


def _visible(box: np.ndarray, frame_size: tuple[int, int]) -> tuple[float, bool]:
    """(fraction of the box inside the frame, whether the border cuts it)."""
    w, h = frame_size
    area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
    if area <= 0:
        return 0.0, False
    iw = max(min(box[2], w) - max(box[0], 0.0), 0.0)
    ih = max(min(box[3], h) - max(box[1], 0.0), 0.0)
    frac = iw * ih / area
    return frac, frac < 1.0


def _border_run(box, lm, v_box, v_lm, frame_size, limit) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Extrapolated (box, landmarks) for k = 1.. while the prediction is cut by the border and visible.

    The box is kept whole, past the border: the redaction region is grown from it and clipped to the frame
    when pasted. Clipping the box itself would shrink the margin with it (a quarter-visible face's clipped
    box is a quarter as wide) and leave the head's visible outline at the border uncovered.
    """
    boxes, lms = [], []
    for k in range(1, limit + 1):
        p = box + v_box * k
        frac, cut = _visible(p, frame_size)
        if not cut or frac < BORDER_MIN_VISIBLE:
            break
        boxes.append(p)
        lms.append(lm + v_lm * k)
    return boxes, lms


def _seen_whole(tr: _Track, frame_size: tuple[int, int] | None) -> bool:
    return frame_size is not None and any(not _visible(d.box, frame_size)[1] for d in tr.dets)


def _continuations(tracks: list[_Track], frame_size: tuple[int, int] | None) -> set[int]:
    """Ids of tracks always cut by the border that continue a face seen whole.

    A face half out of the frame is often found as a new box (a mirrored "double face" from the padded
    border pass, or a box shifted by the cut) that does not match the face's own track, which then ends. Such
    a track starts where a seen-whole track is (box overlap >= :data:`_CONTINUATION_IOU` within
    :data:`_CONTINUATION_FRAMES` frames of its first detection) and outlives it: it takes that face over, and
    is followed out through the border like it. A cut detection with no such neighbour (a false one in a
    corner), or a short duplicate that ends while the face's own track goes on (the face's track is followed
    out itself; the duplicate's own motion, often growing into the frame, would paint a ghost), is only held.
    """
    if frame_size is None:
        return set()
    whole = [tr for tr in tracks if _seen_whole(tr, frame_size)]
    found = set()
    for tr in tracks:
        if tr in whole:
            continue
        first = tr.dets[0]
        for other in whole:
            if tr.dets[-1].frame > other.dets[-1].frame and any(
                    abs(d.frame - first.frame) <= _CONTINUATION_FRAMES
                    and _iou(d.box, first.box[None])[0] >= _CONTINUATION_IOU for d in other.dets):
                found.add(tr.track_id)
                break
    return found


def _track_faces_of(
    tr: _Track, num_frames: int, hold: int, smoothing: LandmarkSmoothing | None,
    frame_size: tuple[int, int] | None = None, border_frames: int = DEFAULT_BORDER_FRAMES,
    continues_whole: bool = False,
) -> TrackArrays:
    """Dense faces of one track, as arrays: detections, interpolated gaps, smoothing, held or extrapolated ends."""
    first, last = tr.dets[0].frame, tr.dets[-1].frame
    n = last - first + 1
    lm = np.empty((n, 5, 2))
    box = np.empty((n, 4))
    score = np.empty(n)
    raw = np.zeros((n, 5, 2))
    det_index = np.full(n, -1, np.int64)
    kind = np.full(n, _INTERPOLATED, np.int8)
    for a, b in zip(tr.dets, tr.dets[1:] + [None], strict=True):
        k = a.frame - first
        lm[k], box[k], score[k], raw[k], det_index[k], kind[k] = a.lm, a.box, a.score, a.lm, a.index, _DETECTED
        if b is None:
            continue
        for f in range(a.frame + 1, b.frame):
            w = (f - a.frame) / (b.frame - a.frame)
            lm[f - first] = (1.0 - w) * a.lm + w * b.lm
            box[f - first] = (1.0 - w) * a.box + w * b.box
            score[f - first] = min(a.score, b.score)
    smooth = smoothing.apply(lm) if smoothing is not None else lm.copy()
    pre_box = pre_lm = post_box = post_lm = None
    # Only a face seen whole (some detection not cut by the border) is followed through the border: a
    # detection that is always cut (mirror texture in a corner, a false positive at the edge) is no face
    # crossing the border, and extrapolating it would leave a ghost for up to ``border_frames`` frames.
    seen_whole = _seen_whole(tr, frame_size) or (frame_size is not None and continues_whole)
    if seen_whole and len(tr.dets) >= MIN_EVIDENCE:
        # Leaving: the track's own velocity; entering: the mean velocity over its first detections.
        k = min(MIN_EVIDENCE - 1, len(tr.dets) - 1)
        dt = tr.dets[k].frame - tr.dets[0].frame
        v0_box, v0_lm = (tr.dets[k].box - tr.dets[0].box) / dt, (smooth[tr.dets[k].frame - first] - smooth[0]) / dt
        post_box, post_lm = _border_run(box[-1], smooth[-1], tr.v_box, tr.v_lm, frame_size,
                                        min(border_frames, num_frames - 1 - last))
        pre_box, pre_lm = _border_run(box[0], smooth[0], -v0_box, -v0_lm, frame_size, min(border_frames, first))
    before = len(pre_box) if pre_box else first - max(0, first - hold)  # frames before the first detection
    after = len(post_box) if post_box else min(num_frames, last + hold + 1) - (last + 1)  # and after the last

    def ends(v: np.ndarray, pre=None, post=None) -> np.ndarray:
        head = np.stack(pre[::-1]) if pre else np.repeat(v[:1], before, axis=0)
        tail = np.stack(post) if post else np.repeat(v[-1:], after, axis=0)
        return np.concatenate([head.reshape((-1,) + v.shape[1:]), v, tail.reshape((-1,) + v.shape[1:])])

    return TrackArrays(
        np.arange(first - before, last + 1 + after),
        ends(box, pre_box, post_box),
        ends(score),
        ends(smooth, pre_lm, post_lm),
        np.concatenate([np.zeros((before, 5, 2)), raw, np.zeros((after, 5, 2))]),
        np.concatenate([np.zeros(before, bool), kind == _DETECTED, np.zeros(after, bool)]),
        np.concatenate([np.full(before, -1, np.int64), det_index, np.full(after, -1, np.int64)]),
        np.concatenate([np.full(before, _HELD, np.int8), kind, np.full(after, _HELD, np.int8)]),
    )


def track_faces(
    detections_per_frame: Sequence[Iterable[Any] | None],
    *,
    max_gap: int = DEFAULT_MAX_GAP,
    max_distance: float = DEFAULT_MAX_DISTANCE,
    min_iou: float = 0.0,
    max_scale_change: float = DEFAULT_MAX_SCALE_CHANGE,
    hold_frames: int | None = DEFAULT_HOLD_FRAMES,
    smoothing: LandmarkSmoothing | None = LandmarkSmoothing(),
    frame_size: tuple[int, int] | None = None,
    border_frames: int = DEFAULT_BORDER_FRAMES,
) -> FaceTracks:
    """Link per-frame detections into face tracks.

    ``detections_per_frame[t]`` lists frame t's detections (objects with
    ``.box``, ``.score``, ``.landmarks5`` like ``DetectedFace``; None or [] for
    a frame without faces). A track survives up to ``max_gap`` missed frames,
    which are filled by interpolation. A detection matches a track only when
    its mean landmark distance to the track's constant-velocity prediction is
    at most ``max_distance`` face sizes, the face sizes differ by at most a
    factor ``max_scale_change``, and the box IoU with the prediction is at
    least ``min_iou`` (0: not gated on IoU); before a track's velocity is known
    the distance gate is twice as wide. ``hold_frames`` (default 2; None:
    ``max_gap``) frames before a track's first and after its last detection
    hold its first and last face. ``frame_size`` (width, height): a track of
    at least 3 detections whose predicted box is cut by the border is followed
    (extrapolated; the box may reach past the border) while at least 25% of that box is
    in the picture, for up to ``border_frames`` frames at each end.
    ``smoothing=None`` leaves landmarks as detected. Track ids
    count from 0 in order of first detection. Raises ValueError for invalid
    parameters or detections (NaN landmarks, broken boxes).
    """
    _check_params(max_gap, max_distance, min_iou, max_scale_change, hold_frames, smoothing)
    if frame_size is not None:
        try:
            fw, fh = (int(v) for v in frame_size)
        except (TypeError, ValueError):
            raise ValueError(f"frame_size must be (width, height), got {frame_size!r}") from None
        if fw <= 0 or fh <= 0:
            raise ValueError(f"frame_size must be positive (width, height), got {frame_size!r}")
        frame_size = (fw, fh)
    if isinstance(border_frames, bool) or not isinstance(border_frames, (int, np.integer)) or border_frames < 0:
        raise ValueError(f"border_frames must be an integer >= 0, got {border_frames!r}")
    hold = max_gap if hold_frames is None else int(hold_frames)
    frames = _read_detections(detections_per_frame)
    tracks = _associate(frames, int(max_gap), float(max_distance), float(min_iou), float(max_scale_change))
    params = {
        "max_gap": int(max_gap),
        "max_distance": float(max_distance),
        "min_iou": float(min_iou),
        "max_scale_change": float(max_scale_change),
        "hold_frames": hold,
        "frame_size": None if frame_size is None else list(frame_size),
        "border_frames": int(border_frames),
        "smoothing": None
        if smoothing is None
        else {"method": "savitzky-golay", "window": int(smoothing.window), "polyorder": int(smoothing.polyorder)},
    }
    continuing = _continuations(tracks, frame_size)
    return FaceTracks.of_arrays(
        len(frames), {
            tr.track_id: _track_faces_of(tr, len(frames), hold, smoothing, frame_size, int(border_frames),
                                         tr.track_id in continuing)
            for tr in tracks
        }, params
    )
