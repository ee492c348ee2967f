"""The identity-leak guard on video: every tracked face of every frame checked against its original frame.

:class:`VideoGuard` checks each face :func:`faceanon_core.faces.video.process_frames` processed (detected,
interpolated and held alike) with :func:`.guard.check_faces`; a leaking face-frame is fatal
(``fallback="fail"``) or redacted in that frame, never re-sampled (that would break the one identity per
track). Why, and memory: docs/privacy.md, "The guard on video".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..faces.records import FacesResult
from ..faces.track_records import FaceTracks
from .guard import DEFAULT_THRESHOLD, FALLBACKS, IdentityLeakError, check_faces
from .identity import FaceRecognizer

__all__ = ["VideoGuard"]


class VideoGuard:
    """Checks the anonymized frames of a video chunk by chunk; counts per track.

    ``threshold=None`` takes the recognizer's own (dlib: 0.6). ``fallback``: "fail" raises
    :class:`IdentityLeakError` at the first leaking face-frame; "redact" blurs it in that frame.
    Faces too small for the model are not checked (they are handled by ``small_faces``, as on photos).
    """

    def __init__(self, recognizer: FaceRecognizer, *, threshold: float | None = None, fallback: str = "fail",
                 redact_method: str = "blur", redact_strength: float | None = None):
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
        self.recognizer = recognizer
        self.threshold = float(threshold if threshold is not None
                               else getattr(recognizer, "threshold", DEFAULT_THRESHOLD))
        self.fallback = fallback
        self.redact_method = redact_method
        self.redact_strength = redact_strength
        self.checked = 0
        self.leaks = 0
        self.redacted = 0
        self.per_track: dict[int, dict[str, Any]] = {}

    def check_chunk(
        self,
        originals: Sequence[np.ndarray],
        frame_indices: Sequence[int],
        results: Sequence[FacesResult],
        tracks: FaceTracks,
        *,
        name: str = "video",
    ) -> list[np.ndarray]:
        """The chunk's output frames, each face checked against ``originals`` (the frames before anonymization).

        ``results`` are :func:`process_frames`'s, whose ``faces`` are the aligned faces it processed
        (``index``: position in :meth:`FaceTracks.faces_in_frame`). Returns the frames to encode: the
        results' images, with leaking faces redacted under ``fallback="redact"``.
        """
        out = []
        for orig, t, res in zip(originals, frame_indices, results, strict=True):
            if not res.faces:
                out.append(res.image)
                continue
            tids = [f.track_id for f in tracks.faces_in_frame(int(t))]
            faces = [dataclasses.replace(a, frame_index=0) for a in res.faces]  # check_faces: position in the lists
            where = f"{name} frame {t}"
            try:
                frames, checks = check_faces([orig], [res.image], faces, self.recognizer, threshold=self.threshold,
                                             on_leak="report" if self.fallback == "fail" else "redact",
                                             redact_method=self.redact_method, redact_strength=self.redact_strength,
                                             image_names=[where])
            except IdentityLeakError as exc:  # even filled solid the face still matches
                raise IdentityLeakError(f"{exc}; the output was not written") from exc
            for a, c in zip(res.faces, checks, strict=True):
                tid = tids[a.index]
                rec = self.per_track.setdefault(tid, {"checked": 0, "leaks": 0, "redacted": 0, "min_distance": None})
                leaked = c.action != "anonymized"
                first = c.history[0]["distance"]  # before any redaction
                rec["checked"] += 1
                rec["leaks"] += leaked
                rec["redacted"] += c.action == "redacted"
                rec["min_distance"] = first if rec["min_distance"] is None else min(rec["min_distance"], first)
                self.checked += 1
                self.leaks += leaked
                self.redacted += c.action == "redacted"
                if leaked and self.fallback == "fail":
                    raise IdentityLeakError(
                        f"{where} (track {tid}): the anonymized face still matches the original person (distance "
                        f"{first:.3f} < threshold {self.threshold:.2f}); the output was not written. Use a larger "
                        "--degree, another --seed, or --verify-fallback redact to blur such faces")
            out.append(frames[0])
        return out

    def summary(self) -> dict[str, Any]:
        """JSON: the recognizer, threshold, fallback and the counts of the whole video."""
        return {"recognizer": getattr(self.recognizer, "name", type(self.recognizer).__name__),
                "threshold": self.threshold, "fallback": self.fallback, "checked": self.checked,
                "leaks": self.leaks, "redacted": self.redacted}
