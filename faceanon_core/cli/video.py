"""``faceanon redact`` / ``faceanon anonymize`` on video files (mp4, mov, mkv, webm, avi, m4v).

Streaming, in passes over the file, so memory is bounded by a chunk of frames, never the length
of the video:

1. decode and detect every frame (frames turned upright first, as the detector wants); only the
   detections are kept;
2. link them into face tracks (:func:`faces.tracks.track_faces`: gap filling, holds, smoothing);
3. (anonymize, per-track identity) decode up to the last keyframe and keep each track's keyframe crop;
4. decode again, process every tracked face of every frame (detected, interpolated, held), check each
   against its original frame (``--verify``, the identity-leak guard: :mod:`privacy.video_guard`), encode.

Encoding is :class:`media.video.VideoWriter`: same frame count, timestamps (VFR kept), size and
rotation, audio copied, metadata stripped, written to a temporary file renamed at the end; an
error or Ctrl-C leaves no output, so a rerun simply starts again. Errors are one line naming the
file, exit code 1.

Videos given by name (every input a video) run here; the videos of a folder, or of photos and videos
named together, run in the folder run of ``cli/faces.py`` / ``cli/anonymize.py``, which calls
:func:`redact_video` / :func:`anonymize_video` for each (its manifest makes them resumable).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..faces import FaceDetectorError, FaceProcessingError
from ..faces.tracks import DEFAULT_MAX_GAP, FaceTracks, LandmarkSmoothing, track_faces
from ..faces.video import (
    IDENTITY_MODES,
    TrackAnonymizer,
    keyframe_crop,
    process_frames,
    redact_frames,
)
from ..faces.video_detect import VideoFaceDetector
from ..media.manifest import RECOVERABLE
from ..media.video import (
    VIDEO_EXTENSIONS,
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
)
from .errors import CliError
from .loading import load_pipeline, verification
from .options import detector_from_args, loop_options

logger = logging.getLogger(__name__)

__all__ = ["add_video_options", "anonymize_video", "is_video_run", "only_videos", "redact_video", "run_anonymize_video",
           "run_eval_video", "run_redact_video", "tracks_json_path", "video_tracks"]

#: Frames decoded and processed together (the memory bound: a few 1080p frames).
CHUNK = 8
_ERRORS = (VideoReadError, VideoWriteError, OutputExistsError, FaceProcessingError, FaceDetectorError, ValueError)
#: What fails one video of a run given by name: the same errors a folder run records and goes on after
#: (``media.manifest.RECOVERABLE``: a model's RuntimeError, a full disk), one line naming the video, exit 1.
_VIDEO_FAILED = (*_ERRORS, *RECOVERABLE)


def is_video_run(inputs) -> bool:
    """True when some input is a file with a video extension (the command then works on videos)."""
    return any(Path(p).suffix.lower() in VIDEO_EXTENSIONS and not Path(p).is_dir() for p in inputs)


def only_videos(inputs) -> bool:
    """True when every input is a video file: ``redact``/``anonymize`` then run the video path alone
    (``-o`` may name the output video). Folders, and photos mixed with videos, are folder runs
    (``cli/runs.plan_run``), which send each video through :func:`redact_video` / :func:`anonymize_video`."""
    return bool(inputs) and all(Path(p).suffix.lower() in VIDEO_EXTENSIONS and not Path(p).is_dir() for p in inputs)


def add_video_options(parser: argparse.ArgumentParser, *, anonymize: bool) -> None:
    """The options that only matter for video inputs."""
    g = parser.add_argument_group("video inputs")
    if anonymize:
        g.add_argument("--identity", choices=IDENTITY_MODES, default="per-track",
                       help="per-track (default): one anonymous identity per person, from the track's best "
                            "frame; per-frame: every frame anonymized on its own (identities flicker)")
    g.add_argument("--max-gap", type=int, default=DEFAULT_MAX_GAP, metavar="FRAMES",
                   help=f"frames a face may go undetected and keep its track; those frames are filled by "
                        f"interpolation, and as many are held at a track's ends (default {DEFAULT_MAX_GAP})")
    g.add_argument("--no-smoothing", action="store_true", help="do not smooth landmarks along tracks")
    g.add_argument("--tracks-json", metavar="PATH", default=None, help="also write the face tracks as JSON")


def _fail(cmd: str, msg: str, code: int = 1) -> int:
    """One error line; ``code`` 2 when found before any work (bad input/output), 1 when a video failed."""
    print(f"faceanon {cmd}: error: {msg}", file=sys.stderr)
    return code


def _video_failed(cmd: str, info: VideoInfo, exc: Exception) -> int:
    """A video failed mid-run (nothing of it written: :func:`_write` is atomic): one line naming it, exit 1."""
    msg = str(exc) or type(exc).__name__
    if str(info.path) not in msg:
        msg = f"{info.path}: {msg}" if isinstance(exc, _ERRORS) else f"{info.path}: {type(exc).__name__}: {msg}"
    return _fail(cmd, msg)


def _plan(cmd: str, args) -> list[tuple[VideoInfo, Path]]:
    """(probed input, output file) per video; raises ValueError with a message for the user."""
    inputs = [Path(p) for p in args.inputs]  # every one a video file (only_videos); mixed inputs are folder runs
    out = Path(args.output).expanduser()
    if len(inputs) == 1 and out.suffix.lower() in VIDEO_EXTENSIONS:
        pairs = [(inputs[0], out)]
    elif out.suffix and not out.is_dir():
        if len(inputs) > 1:
            raise ValueError(f"{out}: several videos need an output folder, not a file")
        raise ValueError(f"{out}: the output of a video must be a video file "
                         f"({', '.join(sorted(VIDEO_EXTENSIONS))}) or a folder")
    else:
        pairs = [(p, out / p.name) for p in inputs]
        if len({o for _, o in pairs}) != len(pairs):
            raise ValueError("two input videos have the same name; process them in separate runs")
    plan = []
    for src, dst in pairs:
        info = probe_video(src)  # missing, 0 bytes, audio only, not a video, truncated: VideoReadError
        if dst.exists() and not args.overwrite:
            raise OutputExistsError(f"{dst}: output exists; pass --overwrite to replace it")
        plan.append((info, dst))
    return plan


def _bar(info: VideoInfo, desc: str):
    from tqdm import tqdm

    return tqdm(total=info.frames, unit="frame", desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def video_tracks(info: VideoInfo, detector, *, max_gap: int = DEFAULT_MAX_GAP, smoothing: bool = True) -> FaceTracks:
    """Pass 1: detect on the (upright) frames, keeping only the detections, then track.

    An MTCNN detector runs on the whole frame every third frame and searches the known faces in between
    (faces/video_detect.py: a new face is found at most 2 frames late, which the tracker's hold covers).
    """
    if hasattr(detector, "detect_near"):
        detector = VideoFaceDetector(detector)
    detections = []
    size = None  # upright (width, height): tracks follow faces out through the border
    with _bar(info, "detect") as bar:
        for chunk in iter_frames(info, CHUNK):
            if size is None and chunk:
                size = to_upright(chunk[0].rgb, info.rotation).shape[1::-1]
            detections.extend(_detect_chunk(detector, chunk, info.rotation))
            bar.update(len(chunk))
            del chunk  # released before the next chunk is decoded: one chunk of frames alive
    window = LandmarkSmoothing() if smoothing else None
    return track_faces(detections, max_gap=max_gap, smoothing=window, frame_size=size)


def _keyframe_crops(info: VideoInfo, tracks: FaceTracks, crop_size: int) -> dict:
    """Each track's keyframe crop (decoding stops at the last keyframe)."""
    wanted: dict[int, list] = {}
    for tid in tracks.track_ids:
        key = tracks.keyframe(tid)
        wanted.setdefault(key.frame_index, []).append(key)
    crops = {}
    if not wanted:
        return crops
    last = max(wanted)
    frames = iter_frames(info, CHUNK)
    try:
        for chunk in frames:
            for frame in chunk:
                for key in wanted.get(frame.index, ()):
                    crops[key.track_id] = keyframe_crop(to_upright(frame.rgb, info.rotation), key, crop_size)
            done = chunk[-1].index >= last
            del chunk, frame
            if done:
                break
    finally:
        frames.close()  # closes the file now, not when the generator is collected
    return crops


def _detect_chunk(detector, chunk, rotation: int) -> list:
    """The detections of a chunk of frames (a function, so no frame outlives the call)."""
    return [detector.detect(to_upright(frame.rgb, rotation)) for frame in chunk]


def _encode_chunk(writer: VideoWriter, chunk, process_chunk, rotation: int) -> int:
    """Process one decoded chunk and encode it; the frames and results die with the call."""
    done = process_chunk([to_upright(f.rgb, rotation) for f in chunk], [f.index for f in chunk])
    for frame, rgb in zip(chunk, done, strict=True):
        writer.write(frame.with_rgb(from_upright(rgb, rotation)))
    return len(chunk)


def _write(info: VideoInfo, dst: Path, overwrite: bool, process_chunk, desc: str) -> Path:
    """Last pass: decode, ``process_chunk(upright frames, indices) -> upright frames``, encode."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dst.parent)
    with VideoWriter(dst, info, overwrite=overwrite) as writer, _bar(info, desc) as bar:
        for chunk in iter_frames(info, CHUNK):
            bar.update(_encode_chunk(writer, chunk, process_chunk, info.rotation))
            del chunk  # released before the next chunk is decoded: one chunk of frames alive
    return dst


def _video_guard(recognizer, args):
    """The leak guard of one video (its own counts), or None when ``--verify`` is off."""
    if recognizer is None:
        return None
    from ..privacy.video_guard import VideoGuard

    return VideoGuard(recognizer, threshold=args.verify_threshold, fallback=args.verify_fallback)


def tracks_json_path(args, info: VideoInfo, rel: Path | None = None) -> Path | None:
    """Where ``--tracks-json`` goes for this video: as given for one input video, else with the video's
    name (its path inside the input folder, ``rel``, for a folder run) added to the file's stem."""
    if not args.tracks_json:
        return None
    path = Path(args.tracks_json)
    if rel is not None:
        tag = rel.with_suffix("").as_posix().replace("/", "_")
        return path.with_name(f"{path.stem}-{tag}{path.suffix}")
    if len(args.inputs) > 1:
        return path.with_name(f"{path.stem}-{Path(info.path).stem}{path.suffix}")
    return path


def _facts(info: VideoInfo, tracks: FaceTracks, guard=None) -> dict:
    """What a folder run's manifest records for a video (``faces``: its face tracks)."""
    facts = {"kind": "video", "faces": len(tracks), "frames": info.frames, "face_frames": tracks.num_faces(),
             "filled_face_frames": tracks.num_faces(filled_only=True)}
    if guard is not None:
        facts["identity"] = guard.summary()
    return facts


def _report(cmd: str, info: VideoInfo, dst: Path, tracks: FaceTracks, args, guard=None,
            tracks_json: Path | None = None) -> None:
    filled = tracks.num_faces(filled_only=True)  # counted on the arrays: no face objects for a long video
    print(f"{cmd}: {info.path} -> {dst}: {info.frames} frames, {len(tracks)} face track(s), "
          f"{tracks.num_faces()} face-frames processed ({filled} filled in where the detector missed the face)",
          file=sys.stderr)
    if guard is not None:
        print(f"{cmd}: {info.path}: identity check ({guard.summary()['recognizer']}, threshold "
              f"{guard.threshold:g}): {guard.checked} face-frames checked, {guard.leaks} leak(s) found, "
              f"{guard.redacted} redacted", file=sys.stderr)
    if tracks_json is not None:
        path = tracks_json
        data = tracks.to_dict()
        if guard is not None:
            data["verify"] = guard.summary()
            for t in data["tracks"]:
                t["verify"] = guard.per_track.get(t["track_id"])
        path.write_text(json.dumps(data))


def redact_video(info: VideoInfo, dst: Path, args, detector, *, rel: Path | None = None) -> dict:
    """One video: tracks, every tracked face of every frame redacted (``--margin``), audio kept, written
    atomically to ``dst``. Raises (one of ``_ERRORS``) with nothing written when a face cannot be
    handled. Returns the facts for a folder run's manifest."""
    tracks = video_tracks(info, detector, max_gap=args.max_gap, smoothing=not args.no_smoothing)

    def chunk_fn(frames, indices):
        # Frame by frame, so only one full-size float mask is alive at a time (not a chunk's).
        return [redact_frames([rgb], [t], tracks, args.method, args.strength, color=args.color, margin=args.margin,
                              name=info.path)[0].image for rgb, t in zip(frames, indices, strict=True)]

    _write(info, dst, args.overwrite, chunk_fn, "redact")
    _report("redact", info, dst, tracks, args, tracks_json=tracks_json_path(args, info, rel))
    return _facts(info, tracks)


def anonymize_video(info: VideoInfo, dst: Path, args, tracks: FaceTracks, pipe, recognizer=None, *,
                    rel: Path | None = None) -> dict:
    """One video, its ``tracks`` found already: one anonymous identity per track (``--identity``), every
    tracked face of every frame checked with ``recognizer`` when given (``--verify``), written atomically
    to ``dst``. Returns the facts for a folder run's manifest."""
    from ..faces.records import CROP_SIZE

    opts = loop_options(args)
    keys = _keyframe_crops(info, tracks, CROP_SIZE) if args.identity == "per-track" else None
    anonymizer = TrackAnonymizer(pipe, keys, identity=args.identity, degree=args.degree, seed=args.seed,
                                 guidance_scale=args.guidance, num_inference_steps=args.steps, size=args.size)
    guard = _video_guard(recognizer, args)

    def chunk_fn(frames, indices):
        res = process_frames(frames, indices, tracks, anonymizer, batch_size=opts.batch_size,
                             min_face_size=opts.min_face_size, small_faces=opts.small_faces, name=info.path)
        if guard is None:
            return [r.image for r in res]
        return guard.check_chunk(frames, indices, res, tracks, name=str(info.path))  # against the originals

    _write(info, dst, args.overwrite, chunk_fn, "anonymize")
    _report("anonymize", info, dst, tracks, args, guard, tracks_json=tracks_json_path(args, info, rel))
    return _facts(info, tracks, guard)


def run_redact_video(args) -> int:
    """``faceanon redact clip.mp4 -o out.mp4``: every tracked face of every frame redacted."""
    try:
        plan = _plan("redact", args)
        detector = detector_from_args(args)
    except _ERRORS as exc:
        return _fail("redact", str(exc), 2)
    for info, dst in plan:
        try:
            redact_video(info, dst, args, detector)
        except _VIDEO_FAILED as exc:
            return _video_failed("redact", info, exc)
    return 0


def run_anonymize_video(args) -> int:
    """``faceanon anonymize clip.mp4 -o out.mp4``: one anonymous identity per track (``--identity``).

    ``--verify`` as for photos (:func:`loading.verification`); with the recognizer, every tracked face of every
    frame is checked (:class:`VideoGuard`)."""
    if args.aligned:
        raise CliError("--aligned takes face crops (photos), not videos")
    # The photos' rule (on by default when the recognizer is installed, else a warning); CliError on bad options.
    recognizer = verification(args)
    try:
        plan = _plan("anonymize", args)
        detector = detector_from_args(args)
    except _ERRORS as exc:
        return _fail("anonymize", str(exc), 2)
    all_tracks = []
    for info, _ in plan:
        try:
            all_tracks.append(video_tracks(info, detector, max_gap=args.max_gap, smoothing=not args.no_smoothing))
        except _VIDEO_FAILED as exc:
            return _video_failed("anonymize", info, exc)
    pipe = load_pipeline(args)
    pipe.set_progress_bar_config(disable=True)
    for (info, dst), tracks in zip(plan, all_tracks, strict=True):
        try:
            anonymize_video(info, dst, args, tracks, pipe, recognizer)
        except _VIDEO_FAILED as exc:
            return _video_failed("anonymize", info, exc)
    return 0


def run_eval_video(args) -> int:
    """``faceanon eval original.mp4 anonymized.mp4``: per track, anonymity and stability (privacy/video_eval)."""
    from ..faces import MTCNNDetector
    from ..privacy.identity import RecognizerUnavailable, default_recognizer
    from ..privacy.video_eval import VideoEvalError, evaluate_video

    try:
        for p in (args.originals, args.anonymized):
            if Path(p).suffix.lower() not in VIDEO_EXTENSIONS:
                raise VideoEvalError(f"{p}: compare a video with a video (or photos with photos)")
        if args.threshold is not None and not args.threshold > 0:
            raise VideoEvalError(f"--threshold must be > 0, got {args.threshold}")
        out = Path(args.output) / "eval.json" if args.output else None
        if out is not None and out.exists() and not args.overwrite:
            raise OutputExistsError(f"{out}: exists; pass --overwrite to replace it")
        result = evaluate_video(args.originals, args.anonymized, default_recognizer(),
                                detector=MTCNNDetector(thresholds=(0.6, 0.7, args.detect_threshold)),
                                threshold=args.threshold)
    except (*_ERRORS, VideoEvalError, RecognizerUnavailable) as exc:
        print(f"faceanon eval: error: {exc}", file=sys.stderr)
        return 2
    s = result.summary
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.part")
        tmp.write_text(json.dumps(s, indent=2))
        tmp.replace(out)
    print(json.dumps(s))
    print(f"eval: {s['tracks']} track(s), {s['sampled_face_frames']} face-frames: leak rate {s['leak_rate']:.1%} at "
          f"distance < {s['threshold']:g}; distance to the original {s['to_original_mean'] or 0:.3f}; "
          f"spread within a track {s['stability_anonymized'] or 0:.3f} (original {s['stability_original'] or 0:.3f})",
          file=sys.stderr)
    return 0
