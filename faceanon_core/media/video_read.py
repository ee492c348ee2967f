"""Video facts and reading: :func:`probe_video` (a :class:`VideoInfo`, or a clear :class:`VideoReadError`) and
:func:`iter_frames`, decoded RGB frames streamed in bounded chunks. See :mod:`.video` for the decisions.
"""


from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .files import check_input_file
from .partials import PARTIAL_PREFIX, PARTIAL_SUFFIX, OutputExistsError  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)


#: File extensions treated as videos (lower case, with the dot).
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})

#: Output extension -> FFmpeg muxer name (the temporary ``.part`` name hides the extension).
MUXERS = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".avi": "avi",
}

#: Temporary output files are named ``PARTIAL_PREFIX + <output name> + "." + <random> + PARTIAL_SUFFIX``
#: (:mod:`.partials`, shared with photos).

DEFAULT_CRF = 18
DEFAULT_PRESET = "medium"

# AVColorSpace values (libavutil/pixfmt.h).
AVCOL_SPC_BT709 = 1
AVCOL_SPC_UNSPECIFIED = 2
AVCOL_SPC_BT470BG = 5
AVCOL_SPC_SMPTE170M = 6
AVCOL_RANGE_MPEG = 1


class VideoReadError(ValueError):
    """A file could not be read as a video (missing, empty, not a video, audio only, truncated, corrupt)."""


class VideoWriteError(ValueError):
    """A video could not be written (bad extension or frames, codec, I/O error, frame count mismatch)."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found out about a video.

    ``frames`` is exact: the container's own count when it has one
    (``frames_declared``), else the number of video packets demuxed.
    ``fps`` is the average frame rate (``None`` if unknown);
    ``variable_frame_rate`` is true when the frame intervals differ by more than
    rounding. ``rotation`` is the clockwise angle (0, 90, 180 or 270 for the
    usual videos) a player turns the stored frames by to show them upright,
    the convention of the old ``rotate`` tag (an iPhone portrait video: 90).
    ``truncated`` is true only for a damaged file probed with
    ``allow_truncated=True``; ``frames`` then counts the complete packets.
    """

    path: str
    width: int
    height: int
    frames: int
    fps: Fraction | None
    time_base: Fraction
    duration: float | None
    rotation: int = 0
    variable_frame_rate: bool = False
    frames_declared: bool = False
    has_audio: bool = False
    audio_streams: int = 0
    video_codec: str = ""
    audio_codecs: tuple[str, ...] = ()
    pix_fmt: str | None = None
    container: str = ""
    video_index: int = 0
    start_pts: int | None = None
    colorspace: int = AVCOL_SPC_UNSPECIFIED
    color_primaries: int = 2
    color_trc: int = 2
    truncated: bool = False

    @property
    def audio_codec(self) -> str | None:
        """Codec of the first audio stream, or ``None`` without audio."""
        return self.audio_codecs[0] if self.audio_codecs else None


@dataclass
class DecodedFrame:
    """One decoded frame: ``rgb`` is HxWx3 ``uint8`` as stored (not rotated).

    ``pts`` and ``duration`` are in ``time_base`` units (``None`` only if the
    file has none), ``time`` in seconds, ``index`` counts from 0 in display
    order.
    Pass the frame (or ``frame.with_rgb(new)``) to :class:`VideoWriter` to keep
    its exact timing.
    """

    index: int
    rgb: np.ndarray = field(repr=False)
    pts: int | None
    time_base: Fraction
    time: float | None
    duration: int | None = None

    def with_rgb(self, rgb: np.ndarray) -> DecodedFrame:
        """The same frame (index, timestamp) with other pixels."""
        return replace(self, rgb=rgb)


# --------------------------------------------------------------------------- helpers


def import_av():
    try:
        import av
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("video support needs PyAV: pip install av") from exc
    return av


def as_fraction(x: Any) -> Fraction | None:
    """Fraction, PyAV AVRational or None -> Fraction, or None when unset/zero."""
    if x is None:
        return None
    try:
        f = Fraction(int(x.numerator), int(x.denominator))
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return None
    return f if f else None


def open_input(p: Path):
    av = import_av()
    try:
        return av.open(str(p), "r", metadata_errors="replace")
    except TypeError:  # PyAV versions without metadata_errors (always byte exact)
        return av.open(str(p), "r")


def _main_video_stream(container):
    av = import_av()
    attached = int(av.stream.Disposition.attached_pic)
    streams = [s for s in container.streams.video if not (int(s.disposition) & attached)]
    if len(streams) > 1:
        logger.warning(
            "%s: has %d video streams; only the first is read and written (the others are dropped)",
            container.name,
            len(streams),
        )
    return streams[0] if streams else None


def _rotation_of(stream, first_frame) -> int:
    """Clockwise display rotation in degrees, 0..359."""
    ccw = None
    if first_frame is not None:
        with contextlib.suppress(Exception):
            ccw = float(first_frame.rotation)
    if not ccw:
        tag = (stream.metadata or {}).get("rotate")  # older FFmpeg exported this tag
        if tag:
            with contextlib.suppress(ValueError):
                return round(float(tag)) % 360
        if ccw is None:
            return 0
    return round(-ccw) % 360


def _parse_hms(text: str | None) -> float | None:
    """Matroska's per-stream ``DURATION`` tag ("00:00:01.920000000") -> seconds."""
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)\s*", text)
    if not m:
        return None
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def _is_vfr(times: list[int]) -> bool:
    """True when sorted timestamps have intervals that differ by more than rounding."""
    ts = sorted(t for t in times if t is not None)
    if len(ts) < 3:
        return False
    d = np.diff(np.asarray(ts, dtype=np.int64))
    d = d[d > 0]
    if d.size < 2:
        return False
    spread = int(d.max() - d.min())
    return spread > max(1.0, 0.02 * float(np.median(d)))


def _first_frame(container, stream, name: str):
    """Decode the first frame (for the rotation, and as a first check that the stream decodes)."""
    av = import_av()
    try:
        for packet in container.demux(stream):
            for frame in stream.decode(packet):
                return frame
    except av.error.DecoderNotFoundError as exc:
        raise VideoReadError(f"{name}: no decoder for the video codec in this PyAV build ({exc})") from exc
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise VideoReadError(f"{name}: video data is corrupt ({exc}); re-export or re-download it") from exc
    return None


# --------------------------------------------------------------------------- probe


def probe_video(path: str | os.PathLike, *, allow_truncated: bool = False) -> VideoInfo:
    """Describe a video, or raise :class:`VideoReadError` naming the file and the problem.

    Reads the container header, decodes the first frame (rotation, a first
    decodability check) and, when the container does not declare a frame
    count (Matroska, WebM), demuxes every video packet (no decoding) to count
    them. A truncated file (the container's index points past the end of the
    file, or the packets stop well before the declared duration) raises,
    unless ``allow_truncated`` (then ``truncated`` is set, ``frames`` counts
    the complete packets and a warning is logged).
    """
    av = import_av()
    p = Path(path)
    name = str(p)
    size = check_input_file(p, VideoReadError, "a video")
    try:
        container = open_input(p)
    except av.error.FFmpegError as exc:
        raise VideoReadError(
            f"{name}: not a readable video (unknown format, corrupt, or truncated before its index) ({exc})"
        ) from exc
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise VideoReadError(f"{name}: cannot open as a video ({exc})") from exc
    with container:
        return _probe_open(container, p, name, size, allow_truncated)


def _probe_open(container, p: Path, name: str, size: int, allow_truncated: bool) -> VideoInfo:
    av = import_av()
    stream = _main_video_stream(container)
    audio = list(container.streams.audio)
    if stream is None:
        if audio:
            raise VideoReadError(f"{name}: has no video stream (audio only); nothing to anonymize")
        raise VideoReadError(f"{name}: has no video stream; not a video file")
    cc = stream.codec_context
    if cc is None:
        raise VideoReadError(f"{name}: no decoder for the video codec in this PyAV build")
    tb = as_fraction(stream.time_base) or Fraction(1, 90000)
    width, height = int(cc.width or 0), int(cc.height or 0)
    if width <= 0 or height <= 0:
        raise VideoReadError(f"{name}: the video stream has no picture size; the file is corrupt")
    fps = as_fraction(stream.average_rate) or as_fraction(stream.guessed_rate) or as_fraction(stream.base_rate)
    declared = int(stream.frames or 0)

    stream_duration = None
    if stream.duration:
        stream_duration = float(stream.duration * tb)
    elif (d := _parse_hms((stream.metadata or {}).get("DURATION"))) is not None:
        stream_duration = d
    container_duration = float(container.duration) / 1e6 if container.duration else None

    truncated_why = None
    frames = declared
    times: list[int] = []

    # The container's index (MP4/MOV: every sample; Matroska: cues) must lie inside the file.
    entries = []
    with contextlib.suppress(Exception):
        entries = list(stream.index_entries)
    if entries:
        beyond = [e for e in entries if e.pos >= 0 and e.pos + e.size > size]
        if beyond:
            truncated_why = (
                f"the container's index points to byte {max(e.pos + e.size for e in entries)} "
                f"but the file has {size} bytes"
            )
            if declared and len(entries) == declared:
                frames = declared - len(beyond)
        if declared and len(entries) == declared:
            # Samples an edit list cuts away are in the index but never decoded: don't expect them.
            kept = [e for e in entries if not e.is_discard]
            if kept and truncated_why is None:
                frames = len(kept)
            times = [e.timestamp for e in kept]

    first = _first_frame(container, stream, name)
    if first is None:
        raise VideoReadError(f"{name}: the video stream has no decodable frame; the file is corrupt or truncated")
    rotation = _rotation_of(stream, first)

    if not declared or not times:
        # Count (and time) the packets; no decoding. Cheap next to decoding.
        n, last_end, corrupt = 0, None, False
        try:
            with open_input(p) as counting:
                for packet in counting.demux(counting.streams.video[stream.index]):
                    if packet.size == 0 or packet.pts is None and packet.dts is None:
                        continue
                    if packet.is_corrupt:
                        corrupt = True
                        break
                    n += 1
                    t = packet.pts if packet.pts is not None else packet.dts
                    times.append(t)
                    end = t + (packet.duration or 0)
                    last_end = end if last_end is None else max(last_end, end)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise VideoReadError(
                f"{name}: video data is corrupt or truncated ({exc}); re-export or re-download it"
            ) from exc
        if corrupt:
            truncated_why = truncated_why or f"packet {n + 1} is flagged corrupt"
        if not declared:
            frames = n
        if last_end is not None and truncated_why is None:
            start = stream.start_time or 0
            got = float((last_end - start) * tb)
            want = stream_duration
            slack = 2.0 / float(fps) if fps else 0.1
            if want is None and container_duration is not None:
                # The container's duration may belong to a longer audio track: be lenient.
                want, slack = container_duration, max(slack, 0.5)
            if want is not None and got + slack < want:
                truncated_why = (
                    f"the video stops at {got:.2f} s but the container declares {want:.2f} s"
                )
        if declared and n != declared and truncated_why is None and n > 0:
            # The stream demuxed cleanly to its declared end: its packets, not the header's count, are the
            # frames (an AVI with audio may declare one frame more than it holds).
            logger.debug("%s: %d frames in the stream, the container declares %d", name, n, declared)
            frames = n

    if frames <= 0:
        raise VideoReadError(f"{name}: the video stream has no frames")

    truncated = False
    if truncated_why is not None:
        if not allow_truncated:
            raise VideoReadError(
                f"{name}: the file is truncated or corrupt ({truncated_why}); re-copy or re-download it, or "
                "re-encode it (e.g. with ffmpeg) to keep the frames that decode cleanly"
            )
        truncated = True
        logger.warning(
            "%s: truncated or corrupt (%s); only the frames that decode cleanly are used", name, truncated_why
        )

    duration = stream_duration
    if duration is None:
        duration = container_duration
    if duration is None and fps:
        duration = float(frames / fps)

    return VideoInfo(
        path=name,
        width=width,
        height=height,
        frames=int(frames),
        fps=fps,
        time_base=tb,
        duration=duration,
        rotation=rotation,
        variable_frame_rate=_is_vfr(times),
        frames_declared=bool(declared),
        has_audio=bool(audio),
        audio_streams=len(audio),
        video_codec=cc.name or "",
        audio_codecs=tuple((a.codec_context.name if a.codec_context else "unknown") for a in audio),
        pix_fmt=cc.pix_fmt,
        container=container.format.name,
        video_index=int(stream.index),
        start_pts=stream.start_time,
        colorspace=int(first.colorspace),
        color_primaries=int(getattr(first, "color_primaries", 2)),
        color_trc=int(getattr(first, "color_trc", 2)),
        truncated=truncated,
    )


# --------------------------------------------------------------------------- read


def iter_frames(
    source: str | os.PathLike | VideoInfo,
    chunk: int = 8,
    *,
    allow_truncated: bool = False,
) -> Iterator[list[DecodedFrame]]:
    """Decode a video as lists of at most ``chunk`` :class:`DecodedFrame`, in display order.

    Only one chunk (plus the decoder's few reference frames) is in memory at a
    time. Frames are RGB ``uint8`` HxWx3 as stored (apply ``info.rotation``
    with :func:`to_upright` when a detector needs them upright). Raises
    :class:`VideoReadError` when the video is truncated or corrupt (after
    yielding the frames before the damage; a writer fed from this then leaves
    no output), unless ``allow_truncated``.
    """
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    info = source if isinstance(source, VideoInfo) else probe_video(source, allow_truncated=allow_truncated)
    allow = allow_truncated or info.truncated
    av = import_av()
    p = Path(info.path)
    name = info.path
    try:
        container = open_input(p)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoReadError(f"{name}: cannot open as a video ({exc})") from exc
    with container:
        stream = container.streams.video[info.video_index]
        with contextlib.suppress(Exception):
            stream.codec_context.thread_type = "AUTO"
        tb = as_fraction(stream.time_base) or info.time_base
        index = 0
        batch: list[DecodedFrame] = []
        damage = None
        resized = False
        try:
            for packet in container.demux(stream):
                for frame in stream.decode(packet):
                    if frame.is_corrupt:
                        damage = f"frame {index} is flagged corrupt"
                        break
                    if (frame.width, frame.height) != (info.width, info.height) and not resized:
                        resized = True
                        logger.warning(
                            "%s: frame size changes to %dx%d at frame %d; scaled back to %dx%d",
                            name, frame.width, frame.height, index, info.width, info.height,
                        )
                    rgb = frame.to_ndarray(format="rgb24", width=info.width, height=info.height)
                    pts = frame.pts
                    if pts is None and info.fps:
                        pts = round(index / info.fps / tb)
                    batch.append(
                        DecodedFrame(
                            index=index,
                            rgb=rgb,
                            pts=pts,
                            time_base=tb,
                            time=float(pts * tb) if pts is not None else None,
                            duration=int(frame.duration) if frame.duration else None,
                        )
                    )
                    index += 1
                    if len(batch) >= chunk:
                        yield batch
                        batch = []
                if damage:
                    break
        except av.error.DecoderNotFoundError as exc:
            raise VideoReadError(f"{name}: no decoder for the video codec in this PyAV build ({exc})") from exc
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            damage = f"decoding failed after {index} frames ({exc})"
        if damage is None and index < info.frames:
            damage = f"only {index} of the {info.frames} frames the container declares could be decoded"
        if damage is not None:
            if not allow:
                if batch:
                    yield batch  # the frames before the damage, then the error
                    batch = []
                raise VideoReadError(
                    f"{name}: the video is truncated or corrupt: {damage}; re-copy or re-download it, or "
                    "re-encode it (e.g. with ffmpeg) to keep the frames that decode cleanly"
                )
            logger.warning("%s: %s; using the %d frames before the damage", name, damage, index)
        if index > info.frames and not info.truncated:
            logger.warning("%s: decoded %d frames, the probe counted %d", name, index, info.frames)
        if batch:
            yield batch


def to_upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a stored frame the way a player shows it (``rotation`` clockwise, a multiple of 90)."""
    k = _quarter_turns(rotation)
    return np.ascontiguousarray(np.rot90(rgb, k=-k, axes=(0, 1))) if k else rgb


def from_upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Undo :func:`to_upright`: back to the stored orientation for :class:`VideoWriter`."""
    k = _quarter_turns(rotation)
    return np.ascontiguousarray(np.rot90(rgb, k=k, axes=(0, 1))) if k else rgb


def _quarter_turns(rotation: int) -> int:
    r = int(rotation) % 360
    if r % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation}")
    return r // 90


