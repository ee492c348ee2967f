"""Reading and writing videos robustly, streaming, with PyAV.

:func:`probe_video` describes a video (:class:`VideoInfo`) or raises
:class:`VideoReadError` naming the file and the problem: missing, empty (0
bytes), not a video or corrupt, audio only, truncated.

:func:`iter_frames` streams the decoded frames as RGB ``uint8`` HxWx3 arrays in
chunks (lists of at most ``chunk`` :class:`DecodedFrame`), each with its
presentation timestamp; memory stays bounded by the chunk size, never the
length of the video.

:class:`VideoWriter` / :func:`write_video` encode frames to a new file that
keeps what matters of the source and nothing else:

* the same frame count (checked), size and frame rate; each frame's timestamp
  is kept (source time base, source ``pts``), so variable-frame-rate videos
  keep their timing and audio stays in sync;
* the rotation (display matrix) of the source, so phones' portrait videos stay
  upright; the frames themselves are handled as stored (not rotated), see
  :func:`to_upright` / :func:`from_upright` for detectors that want them upright;
* every audio stream copied packet for packet (remuxed, never re-encoded);
* no container metadata: no GPS position (``location``,
  ``com.apple.quicktime.location.ISO6709``), creation time, title, device
  model; no chapters, subtitles, data tracks (timed GPS / telemetry),
  attachments or cover art, and no video stream other than the main one (a
  second camera view would carry faces that were not anonymized).

Writes are atomic: a temporary ``.faceanon-<name>.<random>.part`` file in the
output folder is renamed into place at the end; on any error, and on
``KeyboardInterrupt``, it is removed and the destination is untouched. An
existing output is never replaced unless ``overwrite=True``, and the output
can never be the input. :func:`remove_stale_partials` removes the temporary
files of runs that were killed (``kill -9``, power loss).

Truncated or corrupt input (decision): an anonymizer must fail closed. A
damaged stream decodes to frames with smeared or missing blocks where a face
detector can miss a face that a person still recognises, and an output that
silently lacks the end of the video, or frames of it, goes unnoticed. So by
default a truncated or corrupt video raises :class:`VideoReadError` (from
:func:`probe_video` when the container's index or duration shows it, or from
:func:`iter_frames` when decoding fails, a frame is flagged corrupt or fewer
frames decode than the container declares); a writer fed from it then removes
its temporary file, so no output appears. ``allow_truncated=True`` opts into
salvage: exactly the frames that decode cleanly, up to the first damage, are
returned, with a warning giving both counts.

Codec: H.264 (``libx264``, CRF 18, preset ``medium``, ``yuv420p``) when the
FFmpeg inside PyAV has it, else MPEG-4 Part 2 at high quality; VP9 for
``.webm``. Sizes with an odd width or height cannot be stored as 4:2:0, so they
are written as ``yuv444p`` (same size, with a warning) rather than padded or
cropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "PARTIAL_PREFIX",
    "PARTIAL_SUFFIX",
    "VIDEO_EXTENSIONS",
    "DecodedFrame",
    "OutputExistsError",
    "VideoInfo",
    "VideoReadError",
    "VideoWriteError",
    "VideoWriter",
    "from_upright",
    "iter_frames",
    "probe_video",
    "remove_stale_partials",
    "to_upright",
    "write_video",
]

#: File extensions treated as videos (lower case, with the dot).
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})

#: Output extension -> FFmpeg muxer name (the temporary ``.part`` name hides the extension).
_MUXERS = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".avi": "avi",
}

#: Temporary output files are named ``PARTIAL_PREFIX + <output name> + "." + <random> + PARTIAL_SUFFIX``.
PARTIAL_PREFIX = ".faceanon-"
PARTIAL_SUFFIX = ".part"

_DEFAULT_CRF = 18
_DEFAULT_PRESET = "medium"

# AVColorSpace values (libavutil/pixfmt.h).
_AVCOL_SPC_BT709 = 1
_AVCOL_SPC_UNSPECIFIED = 2
_AVCOL_SPC_BT470BG = 5
_AVCOL_SPC_SMPTE170M = 6
_AVCOL_RANGE_MPEG = 1


class VideoReadError(ValueError):
    """A file could not be read as a video (missing, empty, not a video, audio only, truncated, corrupt)."""


class VideoWriteError(ValueError):
    """A video could not be written (bad extension or frames, codec, I/O error, frame count mismatch)."""


class OutputExistsError(FileExistsError):
    """The output file exists and overwriting was not requested."""


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
    colorspace: int = _AVCOL_SPC_UNSPECIFIED
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


def _av():
    try:
        import av
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("video support needs PyAV: pip install av") from exc
    return av


def _frac(x: Any) -> Fraction | None:
    """Fraction, PyAV AVRational or None -> Fraction, or None when unset/zero."""
    if x is None:
        return None
    try:
        f = Fraction(int(x.numerator), int(x.denominator))
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return None
    return f if f else None


def _open_input(p: Path):
    av = _av()
    try:
        return av.open(str(p), "r", metadata_errors="replace")
    except TypeError:  # PyAV versions without metadata_errors (always byte exact)
        return av.open(str(p), "r")


def _check_file(p: Path) -> int:
    name = str(p)
    if not p.exists():
        raise VideoReadError(f"{name}: file not found; check the path")
    if p.is_dir():
        raise VideoReadError(f"{name}: is a folder, not a video file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise VideoReadError(f"{name}: cannot access the file ({exc})") from exc
    if size == 0:
        raise VideoReadError(f"{name}: file is empty (0 bytes); the copy or download was probably interrupted")
    return size


def _main_video_stream(container):
    av = _av()
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
    av = _av()
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
    av = _av()
    p = Path(path)
    name = str(p)
    size = _check_file(p)
    try:
        container = _open_input(p)
    except av.error.FFmpegError as exc:
        raise VideoReadError(
            f"{name}: not a readable video (unknown format, corrupt, or truncated before its index) ({exc})"
        ) from exc
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise VideoReadError(f"{name}: cannot open as a video ({exc})") from exc
    with container:
        return _probe_open(container, p, name, size, allow_truncated)


def _probe_open(container, p: Path, name: str, size: int, allow_truncated: bool) -> VideoInfo:
    av = _av()
    stream = _main_video_stream(container)
    audio = list(container.streams.audio)
    if stream is None:
        if audio:
            raise VideoReadError(f"{name}: has no video stream (audio only); nothing to anonymize")
        raise VideoReadError(f"{name}: has no video stream; not a video file")
    cc = stream.codec_context
    if cc is None:
        raise VideoReadError(f"{name}: no decoder for the video codec in this PyAV build")
    tb = _frac(stream.time_base) or Fraction(1, 90000)
    width, height = int(cc.width or 0), int(cc.height or 0)
    if width <= 0 or height <= 0:
        raise VideoReadError(f"{name}: the video stream has no picture size; the file is corrupt")
    fps = _frac(stream.average_rate) or _frac(stream.guessed_rate) or _frac(stream.base_rate)
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
            with _open_input(p) as counting:
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

    if frames <= 0:
        raise VideoReadError(f"{name}: the video stream has no frames")

    truncated = False
    if truncated_why is not None:
        if not allow_truncated:
            raise VideoReadError(
                f"{name}: the file is truncated or corrupt ({truncated_why}); re-copy or re-download it "
                "(allow_truncated=True processes only the frames that decode cleanly)"
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
    av = _av()
    p = Path(info.path)
    name = info.path
    try:
        container = _open_input(p)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoReadError(f"{name}: cannot open as a video ({exc})") from exc
    with container:
        stream = container.streams.video[info.video_index]
        with contextlib.suppress(Exception):
            stream.codec_context.thread_type = "AUTO"
        tb = _frac(stream.time_base) or info.time_base
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
                    f"{name}: the video is truncated or corrupt: {damage}; re-copy or re-download it "
                    "(allow_truncated=True processes only the frames that decode cleanly)"
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


# --------------------------------------------------------------------------- write


def _unlink_quiet(path: str | os.PathLike) -> None:
    with contextlib.suppress(FileNotFoundError, PermissionError):
        os.unlink(path)


def _same_file(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def remove_stale_partials(folder: str | os.PathLike, *, max_age_s: float = 3600.0) -> list[Path]:
    """Delete temporary ``.faceanon-*.part`` files not written to for ``max_age_s`` seconds.

    Left behind only when a process was killed outright; a running writer
    touches its file continuously, so the age limit spares it. Returns the
    removed paths.
    """
    removed = []
    now = time.time()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if not (entry.name.startswith(PARTIAL_PREFIX) and entry.name.endswith(PARTIAL_SUFFIX)):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime >= max_age_s:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _pick_codec(ext: str, requested: str | None) -> str:
    av = _av()
    available = av.codecs_available
    if requested:
        return requested
    if ext == ".webm":
        for name in ("libvpx-vp9", "libvpx"):
            if name in available:
                return name
        raise VideoWriteError("no VP9/VP8 encoder in this PyAV build for .webm output; use .mp4 or .mkv")
    return "libx264" if "libx264" in available else "mpeg4"


class VideoWriter:
    """Encode frames to ``out_path`` atomically, shaped like a source video.

    ``like`` is the source's :class:`VideoInfo` or path: it gives the size,
    frame rate, time base, rotation, colour tags and expected frame count, and
    its audio streams are copied unchanged (``copy_audio``). Feed frames with
    :meth:`write` (a :class:`DecodedFrame` keeps its timestamp; a bare HxWx3
    ``uint8`` array gets the next constant-rate timestamp) and finish with
    :meth:`close`; used as a context manager, an exception aborts (no output).

    ``check_frame_count`` (default) makes :meth:`close` fail (and leave no
    output) when the number of frames written differs from the source's.
    """

    def __init__(
        self,
        out_path: str | os.PathLike,
        like: VideoInfo | str | os.PathLike,
        *,
        overwrite: bool = False,
        codec: str | None = None,
        crf: int = _DEFAULT_CRF,
        preset: str = _DEFAULT_PRESET,
        copy_audio: bool = True,
        check_frame_count: bool = True,
    ) -> None:
        av = _av()
        self.info = like if isinstance(like, VideoInfo) else probe_video(like)
        self.path = Path(out_path)
        name = str(self.path)
        ext = self.path.suffix.lower()
        muxer = _MUXERS.get(ext)
        if muxer is None:
            raise VideoWriteError(
                f"{name}: unsupported output extension {self.path.suffix!r}; use one of {', '.join(sorted(_MUXERS))}"
            )
        if _same_file(self.path, Path(self.info.path)):
            raise VideoWriteError(f"{name}: the output is the input video; choose another output path")
        if self.path.is_dir():
            raise VideoWriteError(f"{name}: is a folder; give an output file name")
        if self.path.exists() and not overwrite:
            raise OutputExistsError(f"{name}: output exists; pass --overwrite (overwrite=True) to replace it")
        self.overwrite = overwrite
        self.check_frame_count = check_frame_count
        self.frames_written = 0
        self._closed = False
        self._last_pts: int | None = None
        self._durations: dict[int, int] = {}
        self._warned_pts = False
        self._src = None
        self._out = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VideoWriteError(f"{name}: cannot create the output folder ({exc})") from exc
        self._tmp = self.path.parent / f"{PARTIAL_PREFIX}{self.path.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
        try:  # claim the name exclusively; the muxer then writes into it
            os.close(os.open(self._tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except OSError as exc:
            raise VideoWriteError(f"{name}: cannot create a file in the output folder ({exc})") from exc
        self._finalizer = weakref.finalize(self, _unlink_quiet, str(self._tmp))
        try:
            self._open(av, muxer, ext, codec, crf, preset, copy_audio)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, (VideoWriteError, VideoReadError, KeyboardInterrupt, SystemExit)):
                raise
            raise VideoWriteError(f"{name}: cannot set up the output video ({exc})") from exc

    # -- setup

    def _open(self, av, muxer: str, ext: str, codec: str | None, crf: int, preset: str, copy_audio: bool) -> None:
        info = self.info
        name = str(self.path)
        self._out = out = av.open(str(self._tmp), "w", format=muxer)
        codec_name = _pick_codec(ext, codec)
        odd = info.width % 2 or info.height % 2
        if odd and codec_name in ("libx264", "libvpx-vp9"):
            pix_fmt = "yuv444p"
            logger.warning(
                "%s: %dx%d has an odd side; written as yuv444p (4:2:0 needs even sizes)", name, info.width, info.height
            )
        elif odd:
            raise VideoWriteError(f"{name}: {codec_name} cannot encode the odd size {info.width}x{info.height}")
        else:
            pix_fmt = "yuv420p"

        fps = info.fps or Fraction(25)
        tb = info.time_base
        self._cfr_only = muxer == "avi"
        if self._cfr_only:
            if info.variable_frame_rate:
                logger.warning("%s: AVI stores a constant frame rate; the variable timing is not kept", name)
            tb = 1 / fps
        elif codec_name == "mpeg4" and tb.denominator > 65535:
            tb = Fraction(1, 60000)  # MPEG-4 Part 2 limits the time base denominator
        if tb.numerator > 2**31 - 1 or tb.denominator > 2**31 - 1:
            tb = tb.limit_denominator(2**31 - 1)
        self._tb = tb
        self._fps = fps

        options: dict[str, str] = {}
        if codec_name == "libx264":
            options = {"crf": str(int(crf)), "preset": str(preset)}
        elif codec_name in ("libvpx-vp9", "libvpx"):
            options = {"crf": str(int(crf) + 14), "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}
        elif codec_name == "mpeg4":
            options = {"qmin": "2", "qmax": "4"}
        vs = out.add_stream(codec_name, rate=fps, options=options)
        vs.width, vs.height, vs.pix_fmt = info.width, info.height, pix_fmt
        cc = vs.codec_context
        cc.time_base = tb
        vs.time_base = tb
        with contextlib.suppress(Exception):
            cc.framerate = fps
        if codec_name == "mpeg4":
            cc.bit_rate = max(2_000_000, int(info.width * info.height * float(fps) * 0.4))
        # Colour: convert with the matrix the decoder used, and say so in the stream.
        bt709 = info.colorspace == _AVCOL_SPC_BT709
        self._matrix = "ITU709" if bt709 else "ITU601"
        with contextlib.suppress(Exception):
            cc.color_range = _AVCOL_RANGE_MPEG
            if info.colorspace in (_AVCOL_SPC_BT709, _AVCOL_SPC_BT470BG, _AVCOL_SPC_SMPTE170M):
                cc.colorspace = info.colorspace
            if info.color_primaries not in (0, 2):
                cc.color_primaries = info.color_primaries
            if info.color_trc not in (0, 2):
                cc.color_trc = info.color_trc
        if info.rotation:
            if hasattr(vs, "set_display_rotation"):
                vs.set_display_rotation(-float(info.rotation))  # PyAV's angle is counter-clockwise
            else:  # PyAV < 17.1: old FFmpeg muxers read this tag
                vs.metadata["rotate"] = str(info.rotation)
        self._vs = vs
        self._pix_fmt = pix_fmt

        self._audio_pairs: list = []
        self._audio_iter = None
        self._audio_pending = None
        if copy_audio and info.has_audio:
            self._src = _open_input(Path(info.path))
            pairs = []
            for a in self._src.streams.audio:
                try:
                    o = out.add_stream_from_template(a)
                except ValueError as exc:
                    raise VideoWriteError(
                        f"{name}: the source's audio ({a.codec_context.name if a.codec_context else 'unknown'}) "
                        f"cannot be stored in {self.path.suffix} without re-encoding ({exc}); "
                        "use .mkv (takes any audio) or .mp4/.mov"
                    ) from exc
                lang = (a.metadata or {}).get("language")
                if lang and lang != "und":
                    o.metadata["language"] = lang  # the only stream tag kept
                pairs.append((a, o))
            self._audio_pairs = pairs
            self._audio_map = {a.index: o for a, o in pairs}
            self._audio_iter = iter(self._src.demux(*[a for a, _ in pairs]))
        # No container metadata is set: nothing of the source's (location, dates, device) is written.

    # -- writing

    def write(self, frame: DecodedFrame | np.ndarray) -> None:
        """Encode one frame (a :class:`DecodedFrame` keeps its timestamp)."""
        if self._closed:
            raise VideoWriteError(f"{self.path}: writer is closed")
        av = _av()
        duration = None
        if isinstance(frame, DecodedFrame):
            rgb, pts, duration = frame.rgb, frame.pts, frame.duration
            if frame.time_base != self._tb:
                if pts is not None:
                    pts = round(pts * frame.time_base / self._tb)
                if duration is not None:
                    duration = max(1, round(duration * frame.time_base / self._tb))
        else:
            rgb, pts = frame, None
        info = self.info
        if (
            not isinstance(rgb, np.ndarray)
            or rgb.dtype != np.uint8
            or rgb.shape != (info.height, info.width, 3)
        ):
            raise VideoWriteError(
                f"{self.path}: frame {self.frames_written} must be a {info.height}x{info.width}x3 uint8 array "
                f"(the source's stored size), got {getattr(rgb, 'shape', None)} "
                f"{getattr(rgb, 'dtype', type(rgb).__name__)}"
            )
        if pts is None or self._cfr_only:
            start = 0 if self._cfr_only else int(info.start_pts or 0)
            pts = start + round(self.frames_written / self._fps / self._tb)
        if self._last_pts is not None and pts <= self._last_pts:
            if not self._warned_pts:
                logger.warning(
                    "%s: timestamps not increasing at frame %d; nudged forward", self.path, self.frames_written
                )
                self._warned_pts = True
            pts = self._last_pts + 1
        self._last_pts = pts
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        vf = vf.reformat(format=self._pix_fmt, dst_colorspace=self._matrix, dst_color_range="MPEG")
        vf.pts = pts
        vf.time_base = self._tb
        if duration and not self._cfr_only:
            # The encoder drops frame durations; put them back on its packets (by pts), so
            # the last frame keeps its length and a VFR video its duration.
            self._durations[pts] = duration
        try:
            self._mux_video(self._vs.encode(vf))
            self._mux_audio_until(float(pts * self._tb))
        except (av.error.FFmpegError, OSError) as exc:
            raise VideoWriteError(f"{self.path}: encoding failed at frame {self.frames_written} ({exc})") from exc
        self.frames_written += 1

    def _mux_video(self, packets) -> None:
        for packet in packets:
            if packet.pts is not None and not packet.duration:
                d = self._durations.pop(packet.pts, None)
                if d:
                    packet.duration = d
            self._out.mux(packet)
        if len(self._durations) > 4096:  # never grows with the video: drop anything the encoder skipped
            for k in sorted(self._durations)[:-1024]:
                del self._durations[k]

    def _mux_audio_until(self, t: float | None) -> None:
        """Copy source audio packets up to time ``t`` (all of them when ``t`` is None)."""
        if self._audio_iter is None:
            return
        while True:
            packet = self._audio_pending
            if packet is None:
                packet = next(self._audio_iter, None)
                if packet is None:
                    self._audio_iter = None
                    return
            if packet.size == 0 or packet.dts is None and packet.pts is None:
                self._audio_pending = None
                continue  # demuxer's end-of-stream marker
            ts = packet.dts if packet.dts is not None else packet.pts
            if t is not None and float(ts * (_frac(packet.time_base) or 1)) > t:
                self._audio_pending = packet
                return
            self._audio_pending = None
            packet.stream = self._audio_map[packet.stream.index]
            self._out.mux(packet)

    def close(self) -> Path:
        """Flush, check the frame count, and move the file into place. Returns the output path."""
        if self._closed:
            return self.path
        av = _av()
        name = str(self.path)
        try:
            if self.frames_written == 0:
                raise VideoWriteError(f"{name}: no frames were written")
            expected = self.info.frames if (self.check_frame_count and not self.info.truncated) else None
            if expected is not None and self.frames_written != expected:
                raise VideoWriteError(
                    f"{name}: {self.frames_written} frames were written but the source has {expected}; "
                    "an output with missing or extra frames is not written"
                )
            try:
                self._mux_video(self._vs.encode(None))
                self._mux_audio_until(None)
                self._out.close()
            except (av.error.FFmpegError, OSError) as exc:
                raise VideoWriteError(f"{name}: could not finish the video ({exc})") from exc
            self._out = None
            self._close_source()
            with open(self._tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            self._verify()
            _set_default_mode(self._tmp)
            self._publish()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._finalizer.detach()
        return self.path

    def _verify(self) -> None:
        """Read the finished temporary file back: it must be a video with every frame."""
        try:
            got = probe_video(self._tmp)
        except VideoReadError as exc:
            raise VideoWriteError(f"{self.path}: the written video does not read back ({exc})") from exc
        if got.frames != self.frames_written:
            raise VideoWriteError(
                f"{self.path}: the written video has {got.frames} frames, {self.frames_written} were encoded"
            )

    def _publish(self) -> None:
        tmp, p = str(self._tmp), self.path
        try:
            if self.overwrite:
                os.replace(tmp, p)
                return
            try:
                os.link(tmp, p)  # fails atomically if p exists
            except FileExistsError as exc:
                raise OutputExistsError(f"{p}: output exists; pass --overwrite (overwrite=True) to replace it") from exc
            except OSError:
                # Filesystems without hard links (FAT, some network shares): best effort.
                if p.exists():
                    raise OutputExistsError(
                        f"{p}: output exists; pass --overwrite (overwrite=True) to replace it"
                    ) from None
                os.replace(tmp, p)
                return
            _unlink_quiet(tmp)
        except OutputExistsError:
            raise
        except OSError as exc:
            raise VideoWriteError(f"{p}: could not move the finished video into place ({exc})") from exc

    def _close_source(self) -> None:
        if self._src is not None:
            with contextlib.suppress(Exception):
                self._src.close()
            self._src = None

    def abort(self) -> None:
        """Stop, and remove the temporary file; the destination is not touched."""
        if self._out is not None:
            with contextlib.suppress(Exception):
                self._out.close()
            self._out = None
        self._close_source()
        _unlink_quiet(self._tmp)
        self._closed = True
        self._finalizer.detach()

    def __enter__(self) -> VideoWriter:  # noqa: PYI034 (Python 3.10 has no typing.Self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _set_default_mode(tmp: str | os.PathLike) -> None:
    """Give the output the usual umask-based mode (not the 0600 of a private temporary file)."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o666 & ~umask)


def _flatten(frames: Iterable) -> Iterator[DecodedFrame | np.ndarray]:
    for item in frames:
        if isinstance(item, (list, tuple)):
            yield from item
        else:
            yield item


def write_video(
    frames: Iterable[DecodedFrame | np.ndarray | list],
    out_path: str | os.PathLike,
    like: VideoInfo | str | os.PathLike,
    *,
    overwrite: bool = False,
    **writer_options: Any,
) -> Path:
    """Write ``frames`` to ``out_path`` shaped like the source ``like``; returns the path.

    ``frames`` yields :class:`DecodedFrame` (timestamps kept), HxWx3 ``uint8``
    arrays (constant rate), or lists of them (the chunks of
    :func:`iter_frames`). On any exception, including ``KeyboardInterrupt``
    and a :class:`VideoReadError` from a damaged source, nothing is written.
    ``writer_options`` go to :class:`VideoWriter` (``codec``, ``crf``,
    ``preset``, ``copy_audio``, ``check_frame_count``).
    """
    writer = VideoWriter(out_path, like, overwrite=overwrite, **writer_options)
    try:
        for frame in _flatten(frames):
            writer.write(frame)
    except BaseException:
        writer.abort()
        raise
    return writer.close()
