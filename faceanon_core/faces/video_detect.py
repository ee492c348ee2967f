"""Detection on the frames of one video: the whole frame every few frames, the known faces in between.

MTCNN on a whole 720p frame costs most of a video redaction. Between two frames a face moves a fraction
of its size, so :class:`VideoFaceDetector` runs the full detector on every ``every``-th frame only and, on
the frames between, looks for each face of the previous frame in a window around it, at about its size
(:meth:`MTCNNDetector.detect_near`: a few milliseconds per face). The faces it returns are real
detections (box, score, landmarks), so tracks (:func:`faces.tracks.track_faces`) are built from them as
from full detections.

What it can miss, and why nothing is left uncovered (the bound):

* a face that appears on a frame between two full detections is found at the next full detection, at
  most ``every - 1`` frames late; the tracker holds every track's first face ``hold_frames`` frames
  back in time (default 2), so with ``every <= hold_frames + 1`` (default 3) the face is covered from
  the frame it appeared on (at the place it is first found; the head region's margin takes the motion
  of those frames);
* a known face the window search loses (a jump of more than ``window`` face sizes in one frame, a turn)
  is found again by the next full detection; the tracker fills the frames between by interpolation
  (up to its ``max_gap``), or follows a face leaving through the border as it does for full detections.

A face cut by the frame's border (entering or leaving) gets the full detector on every frame while it is
cut (``full_at_border``): the full pass's mirrored border finds it deeper into the border than a window
search does, and the tracker follows it out from there.

Frames must be given in order, each once; one detector per video (:meth:`reset` starts another).
"""

from __future__ import annotations

import numpy as np

from .detect import MTCNNDetector
from .records import DetectedFace

__all__ = ["DEFAULT_EVERY", "VideoFaceDetector"]

#: Full detection on every third frame: a new face is found at most 2 frames late, which the tracker's
#: default 2-frame hold covers (see the module's bound).
DEFAULT_EVERY = 3


class VideoFaceDetector:
    """``detect(rgb)`` for the consecutive frames of one video (see the module's bound).

    ``every``: full detection on frames 0, every, 2 * every, ...; ``every=1`` is :meth:`MTCNNDetector.detect`
    on every frame. ``window`` and ``size_ratio`` go to :meth:`MTCNNDetector.detect_near`;
    ``full_at_border``: full detection on the frame after one with a face cut by the border.
    """

    def __init__(self, detector: MTCNNDetector, every: int = DEFAULT_EVERY, *, window: float = 1.0,
                 size_ratio: float = 1.6, full_at_border: bool = True) -> None:
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"every must be an integer >= 1 (frames per full detection), got {every!r}")
        if not hasattr(detector, "detect_near"):
            raise TypeError(f"{type(detector).__name__} cannot search near known faces; use an MTCNNDetector")
        self.detector = detector
        self.every = int(every)
        self.window = float(window)
        self.size_ratio = float(size_ratio)
        self.full_at_border = bool(full_at_border)
        self.full_detections = 0
        self.reset()

    def reset(self) -> None:
        """Start a new video."""
        self._frame = 0
        self._previous: list[DetectedFace] = []
        self._size = (0, 0)

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        """The faces of the video's next frame."""
        if self._frame % self.every == 0 or (self.full_at_border and any(self._cut(f) for f in self._previous)):
            faces = self.detector.detect(rgb)
            self.full_detections += 1
        elif self._previous:
            faces = self.detector.detect_near(rgb, [f.box for f in self._previous], window=self.window,
                                              size_ratio=self.size_ratio)
        else:
            faces = []
        self._frame += 1
        self._previous = faces
        self._size = rgb.shape[1], rgb.shape[0]
        return faces

    def _cut(self, face: DetectedFace) -> bool:
        """The face's box reaches past the frame's border (a face entering or leaving)."""
        x0, y0, x1, y1 = face.box
        w, h = self._size
        return x0 < 0 or y0 < 0 or x1 > w or y1 > h
