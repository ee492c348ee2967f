"""The leak matrix's scenario photos (no face, a tiny face, a face cut by the border, mixed sizes) and
its measure: the mean change inside a detection box (``box_change``, above ``CHANGED``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from helpers.faces import astronaut, collage, grace_hopper

CHANGED = 4.0


def sky() -> np.ndarray:
    """No face: a smooth gradient."""
    y, x = np.mgrid[0:240, 0:320]
    return np.dstack([x * 255 // 320, y * 255 // 240, np.full_like(x, 180)]).astype(np.uint8)


def small_astronaut(canvas_side: int = 200) -> np.ndarray:
    """Only a tiny face: the astronaut scaled to 100 px (8 px between the eyes, below the model's 10; a
    15x19 px box, which the default detector finds although it looks for 20 px faces and up: an 80 px
    astronaut's 12x17 box is found only with a lower --min-face-size)."""
    canvas = np.full((canvas_side, canvas_side, 3), 200, np.uint8)
    canvas[50:150, 50:150] = cv2.resize(astronaut(), (100, 100), interpolation=cv2.INTER_AREA)
    return canvas


def border_cut() -> np.ndarray:
    """Grace Hopper cut by the left border (her face centre 65 px from it, the box reaches past it)."""
    return np.ascontiguousarray(grace_hopper()[:600, 212:512])


def mixed() -> np.ndarray:
    """Five faces: the 4 of the collage (41-81 px between the eyes, rotated, one cut by its tile) plus a 6 px one."""
    img = collage()[0].copy()
    img[600:680, 300:380] = cv2.resize(astronaut(), (80, 80), interpolation=cv2.INTER_AREA)
    return img


@functools.cache
def detections(func) -> tuple:
    from faceanon_core.faces import default_detector

    return tuple(default_detector().detect(func()))


def box_change(original: np.ndarray, output: np.ndarray, box) -> float:
    h, w = original.shape[:2]
    x0, y0, x1, y1 = box
    x0, y0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    x1, y1 = min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h)
    diff = np.abs(original[y0:y1, x0:x1].astype(np.float64) - output[y0:y1, x0:x1].astype(np.float64))
    return float(diff.mean())


VIDEO_CHANGED = 8.0


def _video():
    """helpers.video: the clip writer, the decoder and the astronaut pan (imported lazily: it needs PyAV)."""
    from helpers import video

    return video


def v_empty(i: int) -> tuple[np.ndarray, list]:
    """No face: the sky gradient, drifting."""
    v = _video()
    return np.ascontiguousarray(sky()[i : i + v.H, 2 * i : 2 * i + v.W]), []


def v_pan(i: int) -> tuple[np.ndarray, list]:
    """The astronaut's face in every frame (test_video_cli's 256x192 pan, 4 px per frame)."""
    img, box = _video().frame_at(i)
    return img, [box]


def v_some_frames(i: int) -> tuple[np.ndarray, list]:
    """The face in frames 4-7 only: it appears between two full detections (frames 3 and 6; found 2 frames
    late, covered by the track's hold back in time) and is gone from frame 8 on (sky)."""
    return v_pan(i) if 4 <= i <= 7 else v_empty(i)


def v_tiny(i: int) -> tuple[np.ndarray, list]:
    """Only a tiny face: the astronaut scaled to 100 px on grey (a 17x22 px box, 8 px between the eyes, below
    the model's 10), drifting 2 px per frame."""
    v = _video()
    side, x, y = 100, 60 + 2 * i, 40
    canvas = np.full((v.H, v.W, 3), 200, np.uint8)
    canvas[y : y + side, x : x + side] = cv2.resize(astronaut(), (side, side), interpolation=cv2.INTER_AREA)
    k = side / astronaut().shape[1]
    b = v.FACE_BOX
    return canvas, [(x + b[0] * k, y + b[1] * k, x + b[2] * k, y + b[3] * k)]


def v_leaving(i: int) -> tuple[np.ndarray, list]:
    """The face leaving through the left border, 14 px per frame: whole in frames 0-2, cut from frame 3 on, a
    quarter of its box in the picture in frame 7, where the detector no longer finds it."""
    v = _video()
    x0, y0, b = 148 + 14 * i, 20, v.FACE_BOX
    return astronaut()[y0 : y0 + v.H, x0 : x0 + v.W].copy(), [(b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0)]


@dataclass(frozen=True)
class VideoScenario:
    frame: object  # frame(i) -> (RGB 256x192, the face boxes in it)
    expect: str  # "changed" or "fail", as for photos
    fault: str | None = None  # "raise", "guard", "interrupt" (Ctrl-C at frame 8: the second chunk, mid-video)
    min_model_face: float | None = None
    frames: int = 10  # clip length (the fewer face-frames, the less model time)


VIDEO_SCENARIOS = {
    "no_face": VideoScenario(v_empty, "changed"),
    "face_in_some_frames": VideoScenario(v_some_frames, "changed"),
    "only_small_face": VideoScenario(v_tiny, "changed"),
    "too_small_for_the_model": VideoScenario(v_pan, "changed", min_model_face=10000.0),
    "leaving_through_border": VideoScenario(v_leaving, "changed", frames=8),
    "model_raises": VideoScenario(v_pan, "fail", fault="raise", frames=4),
    "guard_rejects": VideoScenario(v_pan, "fail", fault="guard", frames=4),
    "interrupted": VideoScenario(v_pan, "fail", fault="interrupt"),
}


@functools.cache
def scenario_clip(name: str, folder: Path) -> tuple[Path, tuple]:
    """The scenario's clip (H.264, no audio), written once, and its decoded frames: what every entry point
    is given (the library and the nodes take decoded frames)."""
    v, scenario = _video(), VIDEO_SCENARIOS[name]
    clip = v.make_face_clip(folder / f"{name}.mp4", n=scenario.frames, audio=False,
                            frame=lambda i: scenario.frame(i)[0])
    return clip, tuple(f.rgb for f in v.frames_of(clip))
