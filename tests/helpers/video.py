"""Small face clips for the video tests: the astronaut photo panning 4 px per frame (``frame_at``),
written with a 440 Hz tone (``make_face_clip``), and what the tests read back from the outputs."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from faceanon_core.media.video import PARTIAL_PREFIX, iter_frames

av = pytest.importorskip("av")


N, FPS, SR = 10, 25, 16000
W, H = 256, 192
FACE_BOX = (180, 60, 268, 174)  # the astronaut's face in the photo (MTCNN box)
FAST = ["--size", "64", "--steps", "2", "--scheduler", "ddim"]


def frame_at(i: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A 256x192 view of the astronaut photo panning 4 px per frame; the face box in the frame."""
    from helpers.faces import astronaut

    x0, y0 = 100 - 4 * i, 20
    img = astronaut()[y0 : y0 + H, x0 : x0 + W].copy()
    b = FACE_BOX
    return img, (b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0)


def write_clip(path: Path, picture, n: int, *, audio: str | None = "aac", rotation_ccw: float | None = None,
               metadata: dict | None = None, vfr_steps_ms: tuple[int, ...] | None = None, fmt: str | None = None,
               options: dict | None = None) -> Path:
    """The one synthetic clip writer: ``n`` frames ``picture(i)`` (RGB, as stored) encoded with PyAV (H.264, or
    MPEG-4 where libx264 is missing), with a 440 Hz mono tone in ``audio``'s codec (``"aac"``, ``"pcm_s16le"``,
    or None: no audio); ``rotation_ccw`` the display rotation, ``vfr_steps_ms`` irregular frame intervals."""
    h, w = picture(0).shape[:2]
    with av.open(str(path), "w", format=fmt, options=options or {}) as c:
        if metadata:
            c.metadata.update(metadata)
        v = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=FPS)
        v.width, v.height, v.pix_fmt = w, h, ("yuv444p" if w % 2 or h % 2 else "yuv420p")
        if vfr_steps_ms:
            v.codec_context.time_base = Fraction(1, 1000)
        if rotation_ccw is not None:
            v.set_display_rotation(rotation_ccw)
        a = c.add_stream(audio, rate=SR, layout="mono") if audio else None
        pts = 0
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(picture(i), format="rgb24")
            if vfr_steps_ms:
                frame.pts, frame.time_base = pts, Fraction(1, 1000)
                pts += vfr_steps_ms[i % len(vfr_steps_ms)]
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        if a is not None:
            size, total, t = a.codec_context.frame_size or 1024, int(SR * n / FPS), 0
            while t < total:
                s = (0.3 * np.sin(2 * np.pi * 440 * np.arange(t, t + size) / SR)).astype(np.float32)
                if audio == "aac":
                    af = av.AudioFrame.from_ndarray(s[None], format="fltp", layout="mono")
                else:
                    af = av.AudioFrame.from_ndarray((s * 32767).astype(np.int16)[None], format="s16", layout="mono")
                af.sample_rate, af.pts = SR, t
                for p in a.encode(af):
                    c.mux(p)
                t += size
            for p in a.encode(None):
                c.mux(p)
    return path


def make_face_clip(path: Path, *, n: int = N, audio: bool = True, rotate90: bool = False, vfr: bool = False,
                   title: str | None = "secret", frame=None, hide: int | None = None) -> Path:
    """``n`` frames of ``frame(i)`` (RGB, even sides; default the astronaut pan of :func:`frame_at`). ``hide``:
    in that frame of the default pan a grey box hides the face, so the detector misses it there. ``rotate90``:
    stored turned back, shown upright (a phone's portrait clip)."""
    if frame is not None and hide is not None:
        raise ValueError("hide= needs the default frames (their face box is known)")

    def draw(i):
        if frame is not None:
            return frame(i)
        rgb, (x0, y0, x1, y1) = frame_at(i)
        if i == hide:
            rgb[y0 - 10 : y1 + 10, x0 - 10 : x1 + 10] = 128
        return rgb

    def stored(i):
        return np.ascontiguousarray(np.rot90(draw(i), k=1)) if rotate90 else draw(i)

    return write_clip(path, stored, n, audio="aac" if audio else None, rotation_ccw=-90 if rotate90 else None,
                      metadata={"title": title} if title else None, vfr_steps_ms=(30, 50, 40) if vfr else None)


def frames_of(path) -> list:
    return [f for chunk in iter_frames(path, 8) for f in chunk]


def audio_bytes(path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(PARTIAL_PREFIX)]


def face_changed(out_rgb: np.ndarray, src_rgb: np.ndarray, box) -> float:
    """Fraction of the face box's inner half whose pixels changed by more than codec noise."""
    x0, y0, x1, y1 = box
    cx, cy, hw, hh = (x0 + x1) // 2, (y0 + y1) // 2, (x1 - x0) // 4, (y1 - y0) // 4
    d = np.abs(out_rgb.astype(int) - src_rgb.astype(int)).max(axis=2)[cy - hh : cy + hh, cx - hw : cx + hw]
    return float((d > 12).mean())
