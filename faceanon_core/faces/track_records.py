"""What a face track is: :class:`FaceTracks` (per frame, per track, keyframes, JSON) and :class:`TrackedFace`.

Apart from the finding (:mod:`.tracks`) because most code only reads tracks: the video loops and the
privacy checks need the result, not the association, gates and border rules that made it. Nothing here
imports the finding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FaceTracks", "TrackArrays", "TrackedFace", "frontality", "keyframe_quality"]


def frontality(landmarks5: np.ndarray) -> float:
    """1.0 when the nose projects midway between the eyes, falling to 0.0 over an eye."""
    lm = np.asarray(landmarks5, dtype=np.float64).reshape(5, 2)
    eye = lm[1] - lm[0]
    d2 = float(eye @ eye)
    if d2 <= 0.0:
        return 0.0
    t = float((lm[2] - lm[0]) @ eye) / d2
    return max(0.0, 1.0 - 2.0 * abs(t - 0.5))


@dataclass
class TrackedFace:
    """One face of one track in one frame.

    Carries ``.box``, ``.score`` and ``.landmarks5`` like ``DetectedFace``, so
    alignment code takes it as is; ``landmarks5`` are the smoothed landmarks,
    ``raw_landmarks5`` the detector's (None for interpolated and held faces).
    ``detection_index`` is the face's index in its frame's detection list.
    Interpolated and held faces have the score of the weaker neighbouring or
    the held detection; they must be processed whatever their score.
    """

    frame_index: int
    track_id: int
    box: tuple[float, float, float, float]
    score: float
    landmarks5: np.ndarray
    interpolated: bool = False
    held: bool = False
    raw_landmarks5: np.ndarray | None = None
    detection_index: int | None = None

    def __post_init__(self) -> None:
        self.frame_index = int(self.frame_index)
        self.track_id = int(self.track_id)
        self.box = tuple(float(v) for v in self.box)  # type: ignore[assignment]
        self.score = float(self.score)
        self.landmarks5 = np.asarray(self.landmarks5, dtype=np.float64).reshape(5, 2)
        if self.raw_landmarks5 is not None:
            self.raw_landmarks5 = np.asarray(self.raw_landmarks5, dtype=np.float64).reshape(5, 2)
        if self.interpolated and self.held:
            raise ValueError("a tracked face is interpolated or held, not both")

    @property
    def detected(self) -> bool:
        """True for a face the detector found in this frame."""
        return not (self.interpolated or self.held)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    @property
    def eye_distance(self) -> float:
        return float(np.hypot(*(self.landmarks5[1] - self.landmarks5[0])))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; the ``box``/``score``/``landmarks`` keys read as a ``DetectedFace``."""
        d: dict[str, Any] = {
            "frame_index": self.frame_index,
            "track_id": self.track_id,
            "box": [round(v, 3) for v in self.box],
            "score": round(self.score, 5),
            "landmarks": _round_points(self.landmarks5),
            "interpolated": self.interpolated,
            "held": self.held,
        }
        if self.raw_landmarks5 is not None:
            d["raw_landmarks"] = _round_points(self.raw_landmarks5)
        if self.detection_index is not None:
            d["detection_index"] = self.detection_index
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrackedFace:
        raw = d.get("raw_landmarks")
        return cls(
            frame_index=d["frame_index"],
            track_id=d["track_id"],
            box=tuple(d["box"]),
            score=d.get("score", 1.0),
            landmarks5=np.asarray(d["landmarks"], dtype=np.float64),
            interpolated=bool(d.get("interpolated", False)),
            held=bool(d.get("held", False)),
            raw_landmarks5=None if raw is None else np.asarray(raw, dtype=np.float64),
            detection_index=d.get("detection_index"),
        )


def _round_points(points: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 3), round(float(y), 3)] for x, y in points]


def keyframe_quality(face: TrackedFace) -> float:
    """Eye distance x score x frontality: how good a source identity the face makes."""
    return face.eye_distance * max(face.score, 0.0) * frontality(face.landmarks5)


class TrackArrays:
    """One track stored compactly: per face-frame a row of small arrays (about 220 bytes), no objects.

    A long video has tens of thousands of face-frames; as :class:`TrackedFace` objects (a dataclass,
    two small arrays, a tuple each) they took about 6 KB apiece, as rows here they take 1/25 of that.
    :meth:`face` builds the :class:`TrackedFace` of a row, with the same values, when asked.
    """

    __slots__ = ("boxes", "detection_index", "frames", "has_raw", "kind", "landmarks", "raw", "scores")

    #: ``kind`` of a row: found by the detector, interpolated across a gap, or held (or extrapolated) at an end.
    DETECTED, INTERPOLATED, HELD = 0, 1, 2

    def __init__(self, frames, boxes, scores, landmarks, raw, has_raw, detection_index, kind):
        self.frames = np.asarray(frames, dtype=np.int64)
        self.boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(scores, dtype=np.float64)
        self.landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
        self.raw = np.asarray(raw, dtype=np.float64).reshape(-1, 5, 2)
        self.has_raw = np.asarray(has_raw, dtype=bool)
        self.detection_index = np.asarray(detection_index, dtype=np.int64)
        self.kind = np.asarray(kind, dtype=np.int8)

    @classmethod
    def of_faces(cls, faces: Sequence[TrackedFace]) -> TrackArrays:
        m = len(faces)
        raw = np.zeros((m, 5, 2))
        for i, f in enumerate(faces):
            if f.raw_landmarks5 is not None:
                raw[i] = f.raw_landmarks5
        return cls(
            [f.frame_index for f in faces],
            np.array([f.box for f in faces], dtype=np.float64).reshape(m, 4),
            [f.score for f in faces],
            np.array([f.landmarks5 for f in faces], dtype=np.float64).reshape(m, 5, 2),
            raw,
            [f.raw_landmarks5 is not None for f in faces],
            [-1 if f.detection_index is None else f.detection_index for f in faces],
            [cls.HELD if f.held else cls.INTERPOLATED if f.interpolated else cls.DETECTED for f in faces],
        )

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def face(self, i: int, track_id: int) -> TrackedFace:
        k = int(self.kind[i])
        d = int(self.detection_index[i])
        return TrackedFace(
            int(self.frames[i]), track_id, tuple(self.boxes[i].tolist()), float(self.scores[i]),
            self.landmarks[i].copy(), interpolated=k == self.INTERPOLATED, held=k == self.HELD,
            raw_landmarks5=self.raw[i].copy() if self.has_raw[i] else None,
            detection_index=None if d < 0 else d,
        )


class FaceTracks:
    """Tracked faces of a video: per frame, per track, and each track's keyframe.

    Stored as arrays (:class:`TrackArrays` per track, and per frame the rows that fall in it), so a
    long video costs a few hundred bytes per face-frame; :meth:`faces_in_frame` and :meth:`track`
    build fresh :class:`TrackedFace` objects each call (changing them changes nothing stored).
    """

    def __init__(self, num_frames: int, tracks: dict[int, list[TrackedFace]], params: dict[str, Any] | None = None):
        stored = {}
        for tid, faces in tracks.items():
            faces = sorted(faces, key=lambda f: f.frame_index)
            for f in faces:
                if f.track_id != int(tid):
                    raise ValueError(f"face of frame {f.frame_index} says track {f.track_id}, filed under {tid}")
            stored[int(tid)] = TrackArrays.of_faces(faces)
        self._setup(num_frames, stored, params)

    @classmethod
    def of_arrays(cls, num_frames: int, tracks: dict[int, TrackArrays], params: dict[str, Any] | None) -> FaceTracks:
        """From tracks already stored as arrays (what :func:`.tracks.track_faces` builds): no objects per face."""
        self = cls.__new__(cls)
        self._setup(num_frames, tracks, params)
        return self

    def _setup(self, num_frames: int, tracks: dict[int, TrackArrays], params: dict[str, Any] | None) -> None:
        self.num_frames = int(num_frames)
        self.params = dict(params or {})
        self._tracks = dict(sorted(tracks.items()))
        for tid, tr in self._tracks.items():
            if not len(tr):
                raise ValueError(f"track {tid} has no faces")
            if not (tr.kind == TrackArrays.DETECTED).any():
                raise ValueError(f"track {tid} has no detected face")
            bad = (tr.frames < 0) | (tr.frames >= self.num_frames)
            if bad.any():
                raise ValueError(f"track {tid}: frame {int(tr.frames[bad][0])} outside 0..{self.num_frames - 1}")
        # Per frame, its (track, row) pairs in track order: a CSR index, 12 bytes per face-frame.
        tids = list(self._tracks)
        if tids:
            frames = np.concatenate([tr.frames for tr in self._tracks.values()])
            which = np.concatenate([np.full(len(tr), k, np.int32) for k, tr in enumerate(self._tracks.values())])
            rows = np.concatenate([np.arange(len(tr), dtype=np.int32) for tr in self._tracks.values()])
            order = np.lexsort((rows, which, frames))  # by frame, then track, then row (stable)
        else:
            frames = which = rows = order = np.zeros(0, np.int64)
        self._tid_of = np.asarray(tids, dtype=np.int64)
        self._by_frame_track = which[order]
        self._by_frame_row = rows[order]
        self._frame_start = np.searchsorted(frames[order], np.arange(self.num_frames + 1))

    @property
    def track_ids(self) -> list[int]:
        return list(self._tracks)

    def __len__(self) -> int:
        return len(self._tracks)

    def num_faces(self, *, filled_only: bool = False) -> int:
        """Face-frames over all tracks (``filled_only``: the interpolated and held ones), no objects built."""
        if filled_only:
            return int(sum(int((tr.kind != TrackArrays.DETECTED).sum()) for tr in self._tracks.values()))
        return int(sum(len(tr) for tr in self._tracks.values()))

    def faces_in_frame(self, frame_index: int) -> list[TrackedFace]:
        """All faces to process in a frame (detected, interpolated, held), by track id."""
        if not 0 <= frame_index < self.num_frames:
            raise IndexError(f"frame {frame_index} outside 0..{self.num_frames - 1}")
        a, b = int(self._frame_start[frame_index]), int(self._frame_start[frame_index + 1])
        out = []
        for k, row in zip(self._by_frame_track[a:b].tolist(), self._by_frame_row[a:b].tolist(), strict=True):
            tid = int(self._tid_of[k])
            out.append(self._tracks[tid].face(row, tid))
        return out

    def track(self, track_id: int) -> list[TrackedFace]:
        """The faces of one track, by frame."""
        try:
            tr = self._tracks[track_id]
        except KeyError:
            raise KeyError(f"no track {track_id!r}; tracks are {self.track_ids}") from None
        return [tr.face(i, track_id) for i in range(len(tr))]

    def keyframe(self, track_id: int) -> TrackedFace:
        """The track's best detected face for the source identity (:func:`keyframe_quality`).

        Interpolated and held faces are never chosen; ties go to the earliest frame.
        """
        return max((f for f in self.track(track_id) if f.detected), key=keyframe_quality)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: frame count, parameters, and per track its keyframe and faces."""
        return {
            "num_frames": self.num_frames,
            "params": dict(self.params),
            "tracks": [
                {
                    "track_id": tid,
                    "keyframe": self.keyframe(tid).frame_index,
                    "faces": [f.to_dict() for f in self.track(tid)],
                }
                for tid in self._tracks
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FaceTracks:
        tracks = {int(t["track_id"]): [TrackedFace.from_dict(f) for f in t["faces"]] for t in d["tracks"]}
        return cls(int(d["num_frames"]), tracks, d.get("params"))

