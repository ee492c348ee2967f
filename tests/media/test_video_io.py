"""Robust streaming video I/O (faceanon_core.media.video), on tiny clips built with PyAV here."""

from __future__ import annotations

import logging
import os
import time
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from faceanon_core.media.video import (
    PARTIAL_PREFIX,
    PARTIAL_SUFFIX,
    VIDEO_EXTENSIONS,
    DecodedFrame,
    OutputExistsError,
    VideoInfo,
    VideoReadError,
    VideoWriteError,
    VideoWriter,
    from_upright,
    iter_frames,
    probe_video,
    remove_stale_partials,
    to_upright,
    write_video,
)
from helpers.video import FPS, SR, write_clip

av = pytest.importorskip("av")

W, H, N = 64, 48, 24
VFR_STEPS_MS = [30, 50, 40, 90]  # irregular frame intervals
LOCATION = "+48.8577+002.2950/"


def _picture(i: int, w: int = W, h: int = H) -> np.ndarray:
    """A blue background with an orange square moving 4 px per frame."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 2] = 90
    img[..., 1] = np.linspace(0, 120, w, dtype=np.uint8)[None, :]
    x = (4 * i) % (w - 16)
    img[10:26, x : x + 16] = (255, 170, 0)
    return img


def make_clip(path: Path, *, n: int = N, w: int = W, h: int = H, audio: str | None = "aac",
              rotation_ccw: float | None = None, metadata: dict | None = None, vfr: bool = False,
              fmt: str | None = None, options: dict | None = None) -> Path:
    """A small clip of :func:`_picture` (and a 440 Hz mono tone): :func:`helpers.video.write_clip`."""
    return write_clip(path, lambda i: _picture(i, w, h), n, audio=audio, rotation_ccw=rotation_ccw,
                      metadata=metadata, vfr_steps_ms=tuple(VFR_STEPS_MS) if vfr else None, fmt=fmt, options=options)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    out = {
        "plain": make_clip(
            d / "plain.mp4",
            metadata={"title": "secret title", "location": LOCATION, "creation_time": "2024-05-06T07:08:09Z"},
        ),
        "rotated": make_clip(d / "rotated.mp4", rotation_ccw=-90, audio=None),  # a phone's portrait: rotate 90
        "vfr": make_clip(d / "vfr.mp4", vfr=True),
        "vfr_mkv": make_clip(d / "vfr.mkv", vfr=True, audio=None),
        "pcm_mov": make_clip(
            d / "pcm.mov",
            audio="pcm_s16le",
            fmt="mov",
            options={"movflags": "use_metadata_tags"},
            metadata={
                "com.apple.quicktime.location.ISO6709": "+48.8577+002.2950+035.000/",
                "title": "secret title",
            },
        ),
        "mkv": make_clip(d / "plain.mkv", n=48),
        "faststart": make_clip(d / "faststart.mp4", n=48, options={"movflags": "faststart"}),
    }
    return out


def _frames(path) -> list[DecodedFrame]:
    return [f for chunk in iter_frames(path, chunk=8) for f in chunk]


def _audio_packets(path) -> list[tuple[float, bytes]]:
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        return [(float(p.pts * p.time_base), bytes(p)) for p in c.demux(s) if p.size]


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(PARTIAL_PREFIX) or p.suffix == PARTIAL_SUFFIX]


# --------------------------------------------------------------------------- probe


def test_extensions():
    assert {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"} == set(VIDEO_EXTENSIONS)


def test_probe_plain(clips):
    info = probe_video(clips["plain"])
    assert (info.width, info.height, info.frames) == (W, H, N)
    assert info.fps == Fraction(FPS) and isinstance(info.fps, Fraction)
    assert info.frames_declared and not info.variable_frame_rate and not info.truncated
    assert info.rotation == 0
    assert info.has_audio and info.audio_codec == "aac"
    assert info.video_codec in ("h264", "mpeg4")
    assert info.duration == pytest.approx(N / FPS, abs=0.05)


def test_probe_rotation(clips):
    info = probe_video(clips["rotated"])
    assert info.rotation == 90
    assert (info.width, info.height) == (W, H)  # the stored size; rotation is display metadata
    assert not info.has_audio


def test_probe_vfr_and_counted_frames(clips):
    info = probe_video(clips["vfr"])
    assert info.variable_frame_rate and info.frames == N
    mkv = probe_video(clips["vfr_mkv"])
    assert not mkv.frames_declared  # Matroska has no frame count: packets were counted
    assert mkv.frames == N and mkv.variable_frame_rate
    assert not probe_video(clips["mkv"]).variable_frame_rate


@pytest.mark.parametrize(
    "kind, words",
    [
        ("empty", ["0 bytes"]),
        ("text", ["not a readable video"]),
        ("audio_only", ["no video stream", "audio only"]),
        ("missing", ["not found"]),
        ("cut_mp4", ["not a readable video"]),  # index (moov) at the end: cut off
        ("cut_faststart", ["truncated"]),  # index at the start points past the end
        ("cut_mkv", ["truncated"]),  # packets stop before the declared duration
    ],
)
def test_probe_errors(clips, tmp_path, kind, words):
    p = tmp_path / f"{kind}.mp4"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("this is not a video\n" * 20)
    elif kind == "audio_only":
        p = tmp_path / "audio.m4a"
        with av.open(str(p), "w", format="mp4") as c:
            a = c.add_stream("aac", rate=SR, layout="mono")
            for i in range(10):
                af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                af.sample_rate, af.pts = SR, i * 1024
                for pk in a.encode(af):
                    c.mux(pk)
            for pk in a.encode(None):
                c.mux(pk)
    elif kind.startswith("cut_"):
        src = {"cut_mp4": clips["plain"], "cut_faststart": clips["faststart"], "cut_mkv": clips["mkv"]}[kind]
        p = tmp_path / f"{kind}{src.suffix}"
        data = src.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoReadError) as err:
        probe_video(p)
    msg = str(err.value)
    assert str(p) in msg
    for w in words:
        assert w in msg
    assert isinstance(err.value, ValueError)


# --------------------------------------------------------------------------- read


def test_iter_frames_chunks_bounded(clips):
    gen = iter_frames(clips["plain"], chunk=4)
    assert iter(gen) is gen  # a lazy generator, not a list of the whole video
    chunks = list(gen)
    assert all(1 <= len(c) <= 4 for c in chunks) and len(chunks) == N // 4
    frames = [f for c in chunks for f in c]
    assert [f.index for f in frames] == list(range(N))
    f0 = frames[0]
    assert f0.rgb.dtype == np.uint8 and f0.rgb.shape == (H, W, 3)
    assert [f.time for f in frames] == pytest.approx([i / FPS for i in range(N)], abs=1e-6)
    assert all(b.pts > a.pts for a, b in pairwise(frames))
    # the decoded pixels are the encoded picture
    assert np.abs(f0.rgb.astype(int) - _picture(0)).mean() < 2.0
    assert [len(c) for c in iter_frames(clips["plain"], chunk=5)] == [5, 5, 5, 5, 4]
    with pytest.raises(ValueError):
        next(iter_frames(clips["plain"], chunk=0))


def test_truncated_fails_closed_and_writer_leaves_nothing(clips, tmp_path):
    """A file cut after probing: the reader raises after the good frames; no output appears."""
    src = tmp_path / "victim.mp4"
    src.write_bytes(clips["faststart"].read_bytes())
    info = probe_video(src)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    got = []
    with pytest.raises(VideoReadError, match="truncated or corrupt"):
        for chunk in iter_frames(info, chunk=4):
            got.extend(chunk)
    assert 0 < len(got) < info.frames
    out = tmp_path / "out.mp4"
    with pytest.raises(VideoReadError):
        write_video(iter_frames(info, chunk=4), out, like=info, copy_audio=False)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_truncated_salvage_is_opt_in_and_exact(clips, tmp_path, caplog):
    src = tmp_path / "cut.mp4"
    data = clips["faststart"].read_bytes()
    src.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        info = probe_video(src, allow_truncated=True)
    assert info.truncated and 0 < info.frames < 48
    assert "truncated" in caplog.text
    frames = [f for c in iter_frames(info, chunk=4, allow_truncated=True) for f in c]
    assert 0 < len(frames) <= info.frames
    # exactly the first frames of the video, bit for bit as decoded from the intact file
    intact = _frames(clips["faststart"])
    for i, f in enumerate(frames):
        assert f.index == i and f.pts == intact[i].pts
        assert np.array_equal(f.rgb, intact[i].rgb)


# --------------------------------------------------------------------------- write


def test_round_trip_keeps_count_rate_size_audio_and_pixels(clips, tmp_path):
    src = clips["plain"]
    out = tmp_path / "anon.mp4"
    assert write_video(iter_frames(src, chunk=4), out, like=src) == out
    a, b = probe_video(src), probe_video(out)
    assert (b.frames, b.fps, b.width, b.height, b.rotation) == (a.frames, a.fps, a.width, a.height, a.rotation)
    assert b.video_codec == ("h264" if "libx264" in av.codecs_available else "mpeg4")
    assert b.pix_fmt == "yuv420p"
    assert _audio_packets(out) == _audio_packets(src)  # copied packet for packet, same bytes and times
    sf, of = _frames(src), _frames(out)
    assert [f.time for f in of] == pytest.approx([f.time for f in sf], abs=1e-6)
    diff = [np.abs(x.rgb.astype(int) - y.rgb.astype(int)).mean() for x, y in zip(sf, of, strict=True)]
    off_by_one = [np.abs(x.rgb.astype(int) - y.rgb.astype(int)).mean() for x, y in zip(sf[1:], of, strict=False)]
    # CRF 18 costs well under 1 grey level on average here (measured about 0.6); a frame
    # shifted by one (the square moves 4 px) costs more than 4: 2.0 separates the two.
    assert max(diff) < 2.0 < min(off_by_one)
    assert _leftovers(tmp_path) == []


def test_rotation_kept(clips, tmp_path):
    out = tmp_path / "rot.mkv"
    write_video(iter_frames(clips["rotated"]), out, like=clips["rotated"])
    info = probe_video(out)
    assert info.rotation == 90 and (info.width, info.height) == (W, H)
    up = to_upright(_picture(0), 90)
    assert up.shape == (W, H, 3)
    assert np.array_equal(from_upright(up, 90), _picture(0))
    assert np.array_equal(up[0, :, :], _picture(0)[::-1, 0, :])  # clockwise: the left column becomes the top row


@pytest.mark.parametrize("src_key, ext", [("vfr", ".mp4"), ("vfr_mkv", ".mkv"), ("vfr_mkv", ".mov")])
def test_vfr_timing_kept(clips, tmp_path, src_key, ext):
    src = clips[src_key]
    out = tmp_path / f"vfr_out{ext}"
    write_video(iter_frames(src), out, like=src)
    sf, of = _frames(src), _frames(out)
    assert len(of) == len(sf) == N
    expected = np.cumsum([0] + [VFR_STEPS_MS[i % 4] for i in range(N - 1)]) / 1000.0
    assert [f.time for f in sf] == pytest.approx(list(expected), abs=1e-6)
    assert [f.time for f in of] == pytest.approx(list(expected), abs=1e-3)
    assert probe_video(out).variable_frame_rate

    def end(f):  # the last frame keeps its length too
        return f.time + float(f.duration * f.time_base)

    assert end(of[-1]) == pytest.approx(end(sf[-1]), abs=1e-3)
    if src_key == "vfr":
        assert _audio_packets(out) == _audio_packets(src)


def test_pcm_audio_copied_and_quicktime_location_dropped(clips, tmp_path):
    src = clips["pcm_mov"]
    with av.open(str(src)) as c:  # the source really carries the tags
        assert "com.apple.quicktime.location.ISO6709" in c.metadata
    out = tmp_path / "anon.mkv"
    write_video(iter_frames(src), out, like=src)
    assert probe_video(out).audio_codec == "pcm_s16le"
    assert _audio_packets(out) == _audio_packets(src)
    raw = out.read_bytes()
    assert b"+48.8577" not in raw and b"secret title" not in raw


@pytest.mark.parametrize("ext", [".mp4", ".mov"])
def test_metadata_stripped(clips, tmp_path, ext):
    src = clips["plain"]
    with av.open(str(src)) as c:
        assert c.metadata.get("location") == "+48.8577+002.2950/"  # precondition
    out = tmp_path / f"anon{ext}"
    write_video(iter_frames(src), out, like=src)
    with av.open(str(out)) as c:
        tags = dict(c.metadata)
        stream_tags = [dict(s.metadata) for s in c.streams]
    # only what the demuxer itself reports about the file type and the muxer
    assert set(tags) <= {"major_brand", "minor_version", "compatible_brands", "encoder"}
    for st in stream_tags:
        assert set(st) <= {"language", "handler_name", "vendor_id"}
    raw = out.read_bytes()
    for secret in (b"+48.8577", b"secret title", b"2024-05-06"):
        assert secret not in raw


def test_plain_arrays_get_constant_rate(clips, tmp_path):
    out = tmp_path / "arrays.mp4"
    write_video((_picture(i) for i in range(N)), out, like=clips["plain"], copy_audio=False)
    info = probe_video(out)
    assert (info.frames, info.fps, info.has_audio) == (N, Fraction(FPS), False)


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_interrupted_write_leaves_nothing(clips, tmp_path, exc_type):
    out = tmp_path / "anon.mp4"

    def frames():
        for i, chunk in enumerate(iter_frames(clips["plain"], chunk=4)):
            if i == 2:
                raise exc_type("stopped mid-video")
            yield chunk

    with pytest.raises(exc_type):
        write_video(frames(), out, like=clips["plain"])
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_context_manager_aborts_and_frame_count_is_checked(clips, tmp_path):
    out = tmp_path / "short.mp4"
    with pytest.raises(VideoWriteError, match="frames were written"), VideoWriter(out, clips["plain"]) as w:
        for f in _frames(clips["plain"])[:-1]:  # one frame missing
            w.write(f)
    assert not out.exists() and _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="boom"), VideoWriter(out, clips["plain"]) as w:
        w.write(_picture(0))
        raise ValueError("boom")
    assert not out.exists() and _leftovers(tmp_path) == []


def test_encoder_thread_failure_surfaces_and_leaves_nothing(clips, tmp_path):
    """Frames are encoded on a thread: a failure there is raised in the caller (at its next write or at
    close) as a VideoWriteError naming the frame, and nothing is written."""
    out = tmp_path / "broken.mp4"
    w = VideoWriter(out, clips["plain"], copy_audio=False)

    def disk_full(packets):
        raise OSError("No space left on device")

    w._mux_video = disk_full
    with pytest.raises(VideoWriteError, match="encoding failed at frame 0 .*No space left"):
        for f in _frames(clips["plain"]):  # more frames than the queue holds: never blocks after the failure
            w.write(f)
        w.close()
    w.abort()
    assert not out.exists() and _leftovers(tmp_path) == []


def test_threaded_encoding_keeps_every_frame_in_order(clips, tmp_path):
    """The encoder thread encodes every frame once, in order: with a deterministic lossless codec (FFV1;
    only the 4:2:0 colour conversion loses) two runs decode to the same pixels, and each decoded frame is
    nearer its own source frame than the frames around it."""
    frames = _frames(clips["mkv"])
    runs = []
    for out in (tmp_path / "a.mkv", tmp_path / "b.mkv"):
        write_video(frames, out, like=clips["mkv"], codec="ffv1", copy_audio=False)
        runs.append([f.rgb for f in _frames(out)])
    assert len(runs[0]) == len(frames)
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))

    def dist(a, b):
        return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())

    for k, got in enumerate(runs[0]):
        own = dist(got, frames[k].rgb)
        for n in (k - 1, k + 1):
            if 0 <= n < len(frames):
                assert own < dist(got, frames[n].rgb), (k, n)


def test_bad_frame_rejected(clips, tmp_path):
    out = tmp_path / "bad.mp4"
    with pytest.raises(VideoWriteError, match="uint8"):
        write_video([np.zeros((H, W, 3), np.float32)], out, like=clips["plain"])
    with pytest.raises(VideoWriteError, match="48x64x3"):
        write_video([np.zeros((W, H, 3), np.uint8)], out, like=clips["plain"])
    assert not out.exists() and _leftovers(tmp_path) == []


def test_overwrite_refused_and_input_protected(clips, tmp_path):
    src = tmp_path / "in.mp4"
    src.write_bytes(clips["plain"].read_bytes())
    out = tmp_path / "out.mp4"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):
        write_video(iter_frames(src), out, like=src)
    assert out.read_bytes() == b"keep me"
    assert isinstance(OutputExistsError("x"), FileExistsError)
    before = src.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(VideoWriteError, match="is the input"):
            write_video(iter_frames(src), src, like=src, overwrite=overwrite)
        with pytest.raises(VideoWriteError, match="is the input"):
            write_video(iter_frames(src), tmp_path / "." / "in.mp4", like=src, overwrite=overwrite)
    assert src.read_bytes() == before
    write_video(iter_frames(src), out, like=src, overwrite=True)
    assert probe_video(out).frames == N
    assert _leftovers(tmp_path) == []


def test_output_choices(clips, tmp_path):
    with pytest.raises(VideoWriteError, match="extension"):
        VideoWriter(tmp_path / "x.gif", clips["plain"])
    # AAC cannot go into WebM unchanged: a clear error before anything is encoded
    with pytest.raises(VideoWriteError, match="audio"):
        VideoWriter(tmp_path / "x.webm", clips["plain"])
    assert _leftovers(tmp_path) == []
    webm = tmp_path / "x.webm"  # a source without audio goes to WebM as VP9, timing kept
    write_video(iter_frames(clips["vfr_mkv"]), webm, like=clips["vfr_mkv"])
    info = probe_video(webm)
    assert (info.frames, info.video_codec, info.variable_frame_rate) == (N, "vp9", True)
    # an odd size is kept exactly (as 4:4:4)
    odd = make_clip(tmp_path / "odd.mkv", w=63, h=47, n=6, audio=None)
    out = tmp_path / "odd_out.mp4"
    write_video(iter_frames(odd), out, like=odd)
    info = probe_video(out)
    assert (info.width, info.height, info.frames) == (63, 47, 6)


def test_remove_stale_partials(tmp_path):
    old = tmp_path / f"{PARTIAL_PREFIX}a.mp4.1234{PARTIAL_SUFFIX}"
    new = tmp_path / f"{PARTIAL_PREFIX}b.mp4.5678{PARTIAL_SUFFIX}"
    other = tmp_path / "c.mp4.part"
    for p in (old, new, other):
        p.write_bytes(b"x")
    t = time.time() - 7200
    os.utime(old, (t, t))
    assert remove_stale_partials(tmp_path, max_age_s=3600) == [old]
    assert not old.exists() and new.exists() and other.exists()


def test_video_info_is_plain_data(clips):
    info = probe_video(clips["plain"])
    assert isinstance(info, VideoInfo)
    assert isinstance(info.time_base, Fraction) and info.time_base > 0
