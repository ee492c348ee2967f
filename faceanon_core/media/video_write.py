"""Writing videos: :class:`VideoWriter` / :func:`write_video`, atomic, same frames/timing/rotation/audio, no metadata.

See :mod:`.video` for the decisions.
"""


from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import threading
import weakref
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from . import partials
from .video_read import (
    AVCOL_RANGE_MPEG,
    AVCOL_SPC_BT470BG,
    AVCOL_SPC_BT709,
    AVCOL_SPC_SMPTE170M,
    DEFAULT_CRF,
    DEFAULT_PRESET,
    MUXERS,
    PARTIAL_PREFIX,
    PARTIAL_SUFFIX,
    DecodedFrame,
    OutputExistsError,
    VideoInfo,
    VideoReadError,
    VideoWriteError,
    as_fraction,
    import_av,
    open_input,
    probe_video,
)

logger = logging.getLogger(__name__)

#: Frames waiting for the encoder thread at most (:class:`VideoWriter`): enough to keep it busy while the
#: next frame is processed, few enough that a 4K video holds only a few extra frames.
ENCODER_QUEUE = 4


# --------------------------------------------------------------------------- write


def _same_file(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def remove_stale_partials(folder: str | os.PathLike, *, max_age_s: float = 3600.0) -> list[Path]:
    """Delete our temporary ``.part`` files in ``folder`` not written to for ``max_age_s`` seconds.

    Left behind only when a process was killed outright; a running writer touches its file
    continuously, so the age limit spares it (outside a folder run's lock). The one cleanup of
    :mod:`faceanon_core.media.partials`, for this folder only.
    """
    return partials.remove_stale_partials(folder, recursive=False, max_age_s=max_age_s)


def _pick_codec(ext: str, requested: str | None) -> str:
    av = import_av()
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
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
        copy_audio: bool = True,
        check_frame_count: bool = True,
    ) -> None:
        av = import_av()
        self.info = like if isinstance(like, VideoInfo) else probe_video(like)
        self.path = Path(out_path)
        name = str(self.path)
        ext = self.path.suffix.lower()
        muxer = MUXERS.get(ext)
        if muxer is None:
            raise VideoWriteError(
                f"{name}: unsupported output extension {self.path.suffix!r}; use one of {', '.join(sorted(MUXERS))}"
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
        # Frames go to the encoder thread through a short queue (a few frames: the memory bound stays).
        self._queue: queue.Queue = queue.Queue(maxsize=ENCODER_QUEUE)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stop = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VideoWriteError(f"{name}: cannot create the output folder ({exc})") from exc
        self._tmp = self.path.parent / f"{PARTIAL_PREFIX}{self.path.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
        try:  # claim the name exclusively; the muxer then writes into it
            os.close(os.open(self._tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except OSError as exc:
            raise VideoWriteError(f"{name}: cannot create a file in the output folder ({exc})") from exc
        self._finalizer = weakref.finalize(self, partials.unlink_quiet, str(self._tmp))
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
        bt709 = info.colorspace == AVCOL_SPC_BT709
        self._matrix = "ITU709" if bt709 else "ITU601"
        with contextlib.suppress(Exception):
            cc.color_range = AVCOL_RANGE_MPEG
            if info.colorspace in (AVCOL_SPC_BT709, AVCOL_SPC_BT470BG, AVCOL_SPC_SMPTE170M):
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
            self._src = open_input(Path(info.path))
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
        av = import_av()
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
        self._raise_encoder_error()
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        vf = vf.reformat(format=self._pix_fmt, dst_colorspace=self._matrix, dst_color_range="MPEG")
        vf.pts = pts
        vf.time_base = self._tb
        # The encoder thread encodes and muxes; the caller's array is not referenced any more.
        self._start_encoder()
        self._queue.put((self.frames_written, vf, pts, duration if duration and not self._cfr_only else None))
        self.frames_written += 1

    # -- the encoder thread: FFmpeg encodes with the GIL released, so the next frame is decoded and
    #    processed meanwhile (the caller's work and x264 overlap, as with a separate ffmpeg process).

    def _start_encoder(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._encode_loop, name="faceanon-encoder", daemon=True)
            self._thread.start()

    def _encode_loop(self) -> None:
        av = import_av()
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None or self._stop:
                continue  # after a failure: drain, so the writer never blocks on a full queue
            index, vf, pts, duration = item
            try:
                if duration:
                    # The encoder drops frame durations; put them back on its packets (by pts), so
                    # the last frame keeps its length and a VFR video its duration.
                    self._durations[pts] = duration
                self._mux_video(self._vs.encode(vf))
                self._mux_audio_until(float(pts * self._tb))
            except BaseException as exc:  # raised in the caller's thread at its next write or close
                if isinstance(exc, (av.error.FFmpegError, OSError)):
                    err = VideoWriteError(f"{self.path}: encoding failed at frame {index} ({exc})")
                    err.__cause__ = exc
                    exc = err
                self._error = exc

    def _join_encoder(self) -> None:
        """Wait for every queued frame to be encoded (or dropped after ``_stop``) and end the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _raise_encoder_error(self) -> None:
        if self._error is not None:
            raise self._error

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
            if t is not None and float(ts * (as_fraction(packet.time_base) or 1)) > t:
                self._audio_pending = packet
                return
            self._audio_pending = None
            packet.stream = self._audio_map[packet.stream.index]
            self._out.mux(packet)

    def close(self) -> Path:
        """Flush, check the frame count, and move the file into place. Returns the output path."""
        if self._closed:
            return self.path
        av = import_av()
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
            self._join_encoder()
            self._raise_encoder_error()
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
            partials.set_default_mode(self._tmp)
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
        try:
            partials.publish(self._tmp, self.path, self.overwrite)
        except OutputExistsError:
            raise
        except OSError as exc:
            raise VideoWriteError(f"{self.path}: could not move the finished video into place ({exc})") from exc

    def _close_source(self) -> None:
        if self._src is not None:
            with contextlib.suppress(Exception):
                self._src.close()
            self._src = None

    def abort(self) -> None:
        """Stop, and remove the temporary file; the destination is not touched."""
        self._stop = True  # frames still queued are dropped, not encoded
        self._join_encoder()
        if self._out is not None:
            with contextlib.suppress(Exception):
                self._out.close()
            self._out = None
        self._close_source()
        partials.unlink_quiet(self._tmp)
        self._closed = True
        self._finalizer.detach()

    def __enter__(self) -> VideoWriter:  # noqa: PYI034 (Python 3.10 has no typing.Self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


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
