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

from .video_read import (
    PARTIAL_PREFIX,
    PARTIAL_SUFFIX,
    VIDEO_EXTENSIONS,
    DecodedFrame,
    OutputExistsError,
    VideoInfo,
    VideoReadError,
    VideoWriteError,
    from_upright,
    iter_frames,
    probe_video,
    to_upright,
)
from .video_write import VideoWriter, remove_stale_partials, write_video

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

