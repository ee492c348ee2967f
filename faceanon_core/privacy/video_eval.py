"""Evaluating an anonymized video against its original, per face track: anonymity and stability.

On video the unit is the track (one person). For each track of the *original* video (detect every
frame, :func:`faces.tracks.track_faces`), sampled frames are embedded with the face recognizer twice,
at the same (smoothed) landmarks: the original frame's face and the anonymized frame's face (the
method keeps pose and expression, so the landmarks still fit). Per track:

* anonymity: the identity distance from each anonymized face to the original face of the same frame
  (mean, min) and the *leak frames*, where it is below the recognizer's threshold;
* stability: the mean pairwise identity distance between the anonymized faces of the track, next to
  the same figure for the original faces (the recognizer's own spread over pose and expression for
  one person). With one identity per track it should be close to the original's; per-frame
  anonymization gives a new person every frame, a much larger spread.

Frames are streamed in lockstep from both files (bounded memory); the two videos must have the same
frame count and size.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..faces.tracks import FaceTracks, track_faces
from ..media.video import iter_frames, probe_video, to_upright

logger = logging.getLogger(__name__)

__all__ = ["TrackEval", "VideoEval", "VideoEvalError", "evaluate_video"]


class VideoEvalError(ValueError):
    """The two videos cannot be compared (different frame count or size, unreadable)."""


@dataclass
class TrackEval:
    track_id: int
    frames: int
    sampled: int
    to_original_mean: float
    to_original_min: float
    leak_frames: int
    stability_anonymized: float
    stability_original: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class VideoEval:
    original: str
    anonymized: str
    threshold: float
    tracks: list[TrackEval] = field(default_factory=list)

    @property
    def summary(self) -> dict[str, Any]:
        t = self.tracks
        sampled = sum(x.sampled for x in t)
        return {
            "original": self.original,
            "anonymized": self.anonymized,
            "threshold": self.threshold,
            "tracks": len(t),
            "sampled_face_frames": sampled,
            "leak_frames": sum(x.leak_frames for x in t),
            "leak_rate": (sum(x.leak_frames for x in t) / sampled) if sampled else 0.0,
            "to_original_mean": float(np.mean([x.to_original_mean for x in t])) if t else None,
            "stability_anonymized": float(np.nanmean([x.stability_anonymized for x in t])) if t else None,
            "stability_original": float(np.nanmean([x.stability_original for x in t])) if t else None,
            "per_track": [x.to_dict() for x in t],
        }


def _mean_pairwise(recognizer, emb: np.ndarray) -> float:
    if len(emb) < 2:
        return float("nan")
    i, j = np.triu_indices(len(emb), k=1)
    return float(np.mean(recognizer.distance(emb[i], emb[j])))


def _sampled_frames(tracks: FaceTracks, per_track: int) -> dict[int, set[int]]:
    """Frame indices to embed, per track: up to ``per_track`` evenly spread over its frames."""
    out = {}
    for tid in tracks.track_ids:
        frames = [f.frame_index for f in tracks.track(tid)]
        if len(frames) > per_track:
            picks = np.linspace(0, len(frames) - 1, per_track).round().astype(int)
            frames = [frames[k] for k in sorted(set(picks))]
        out[tid] = set(frames)
    return out


def evaluate_video(
    original: str | os.PathLike,
    anonymized: str | os.PathLike,
    recognizer,
    *,
    detector=None,
    tracks: FaceTracks | None = None,
    threshold: float | None = None,
    frames_per_track: int = 32,
) -> VideoEval:
    """Per track of ``original``: identity distance of the anonymized faces to the original (anonymity)
    and between themselves (stability). ``tracks``: reuse tracks (else detect and track the original)."""
    a, b = probe_video(original), probe_video(anonymized)
    if a.frames != b.frames or (a.width, a.height) != (b.width, b.height):
        raise VideoEvalError(
            f"{anonymized}: {b.frames} frames of {b.width}x{b.height}, but {original} has {a.frames} frames "
            f"of {a.width}x{a.height}; compare a video with its own anonymized version"
        )
    if tracks is None:
        from ..faces import default_detector

        det = detector or default_detector()
        detections, size = [], None
        for chunk in iter_frames(a, 8):
            for f in chunk:
                up = to_upright(f.rgb, a.rotation)
                size = size or up.shape[1::-1]  # upright (width, height): faces followed out through the border
                detections.append(det.detect(up))
        tracks = track_faces(detections, frame_size=size)
    if tracks.num_frames != a.frames:
        raise VideoEvalError(f"the tracks cover {tracks.num_frames} frames, the video has {a.frames}")
    thr = float(threshold if threshold is not None else recognizer.threshold)
    wanted = _sampled_frames(tracks, frames_per_track)
    emb_o: dict[int, list[np.ndarray]] = {t: [] for t in tracks.track_ids}
    emb_a: dict[int, list[np.ndarray]] = {t: [] for t in tracks.track_ids}
    for ca, cb in zip(iter_frames(a, 8), iter_frames(b, 8), strict=True):
        for fa, fb in zip(ca, cb, strict=True):
            faces = [f for f in tracks.faces_in_frame(fa.index) if fa.index in wanted[f.track_id]]
            if not faces:
                continue
            lms = [f.landmarks5 for f in faces]
            eo = recognizer.embed(to_upright(fa.rgb, a.rotation), lms)
            ea = recognizer.embed(to_upright(fb.rgb, b.rotation), lms)
            for f, x, y in zip(faces, eo, ea, strict=True):
                emb_o[f.track_id].append(x)
                emb_a[f.track_id].append(y)
    result = VideoEval(str(original), str(anonymized), thr)
    for tid in tracks.track_ids:
        eo, ea = np.asarray(emb_o[tid]), np.asarray(emb_a[tid])
        if not len(eo):
            continue
        d = recognizer.distance(eo, ea)
        result.tracks.append(TrackEval(
            track_id=tid, frames=len(tracks.track(tid)), sampled=len(eo),
            to_original_mean=float(np.mean(d)), to_original_min=float(np.min(d)),
            leak_frames=int(np.sum(d < thr)),
            stability_anonymized=_mean_pairwise(recognizer, ea), stability_original=_mean_pairwise(recognizer, eo),
        ))
    return result
