"""``faceanon redact`` and ``faceanon detect``: the CLI commands that need no diffusion weights.

``register(subparsers)`` adds both to the ``faceanon`` argparse parser; each
sets ``func`` to a function taking the parsed args and returning an exit code
(0 all good, 1 some images failed or bad input). Errors are one line on
stderr; outputs are written atomically, so none is ever half-written.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from ..faces import FaceDetectorError
from ..faces.detect import count_near_limit
from ..faces.redact import DEFAULT_MARGIN, DEFAULT_STRENGTH, METHODS, check_strength, redact_image
from ..media.images import ImageReadError, load_image, save_image
from ..media.manifest import run_batch
from ..media.plans import is_video
from .errors import EXIT_FAILED, EXIT_USAGE, CliError
from .options import add_detector_args, add_format_option, add_run_options, detector_from_args, float_at_least
from .runs import (
    folder_run,
    params_of,
    plan_run,
    precheck_inputs,
    refuse_unusable,
    refuse_videos_on_ray,
    report_near_limit,
    report_not_handled,
    video_params_of,
)
from .video import add_video_options, only_videos, redact_video, run_redact_video

logger = logging.getLogger(__name__)

__all__ = ["register", "cmd_redact", "cmd_detect", "redact_photo"]

MANIFEST_NAME = "faceanon-manifest.jsonl"


def _color(text: str) -> tuple[int, int, int]:
    """'#RRGGBB' or 'R,G,B' -> (r, g, b)."""
    t = text.strip()
    try:
        if t.startswith("#") and len(t) == 7:
            return tuple(int(t[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        parts = [int(v) for v in t.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or not all(0 <= v <= 255 for v in parts):
        raise argparse.ArgumentTypeError(f"invalid colour {text!r}: use R,G,B (0-255) or #RRGGBB")
    return tuple(parts)  # type: ignore[return-value]


def _margin(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(v) and 0.0 <= v <= 2.0):
        raise argparse.ArgumentTypeError(f"must be a finite number from 0 to 2 (the fraction of the face box added "
                                         f"around it), got {text}")
    return v


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``redact`` and ``detect`` subcommands."""
    p = subparsers.add_parser(
        "redact",
        help="blur, pixelate or fill the faces of photos and videos (no diffusion model needed)",
        description="Blur, pixelate or fill every detected face (the whole head) of photos, videos and folders of "
                    "them. Writes new files; never touches the inputs.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="photos, videos and/or folders of them (a folder's videos are redacted too)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file for one photo or video (e.g. out.png, out.mp4), else output folder "
                        "(created if needed)")
    p.add_argument("--method", choices=METHODS, default="blur", help="redaction style (default blur)")
    p.add_argument("--strength", type=float_at_least(0.0, strict=True), default=None,
                   help=f"blur: sigma as a fraction of the eye distance (default {DEFAULT_STRENGTH['blur']}); "
                        f"pixelate: blocks across the face (default {DEFAULT_STRENGTH['pixelate']:.0f})")
    p.add_argument("--margin", type=_margin, default=DEFAULT_MARGIN, metavar="M",
                   help=f"how far the redacted head region reaches beyond the face box, as a fraction of the box "
                        f"on each side (more above, for the hair), 0-2 (default {DEFAULT_MARGIN:g}; 0: the box's "
                        "own ellipse)")
    p.add_argument("--color", type=_color, default=(0, 0, 0), help="fill colour for --method solid: R,G,B or #RRGGBB")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--manifest", metavar="PATH", default=None,
                   help=f"resumable JSON-lines log (default OUT/{MANIFEST_NAME}); finished photos and videos are "
                        "skipped on rerun")
    p.add_argument("--keep-metadata", action="store_true",
                   help="keep EXIF (camera, date) in outputs; GPS, maker notes and thumbnails are always removed")
    p.add_argument("-r", "--recursive", action="store_true", help="look for photos in subfolders too")
    add_format_option(p)
    p.add_argument("--stop-on-error", action="store_true", help="stop at the first photo or video that fails")
    add_detector_args(p)
    add_run_options(p)
    add_video_options(p, anonymize=False)
    p.set_defaults(func=cmd_redact)

    d = subparsers.add_parser("detect", help="list the faces found in a photo",
                              description="Detect faces and print boxes, 5 landmarks and scores.")
    d.add_argument("photo", metavar="PHOTO", help="one photo (png, jpg, webp, tiff, bmp)")
    d.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_detector_args(d)
    d.set_defaults(func=cmd_detect)


def _fail(cmd: str, msg: str, code: int = EXIT_USAGE) -> int:
    print(f"faceanon {cmd}: error: {msg}", file=sys.stderr)
    return code


def redact_photo(img, faces, dst: Path, args, near: int, *, name: str, overwrite: bool) -> dict[str, Any]:
    """Redact one photo's detected faces (``--method/--strength/--color/--margin``) and write it; returns its
    manifest record. The single process writes ``dst``, a Ray worker its staging file: the same bytes."""
    res = redact_image(img.rgb, args.method, args.strength, color=args.color, faces=faces, margin=args.margin,
                       image_name=name)
    save_image(dst, res.image, img.alpha, overwrite=overwrite, strip_metadata=not args.keep_metadata,
               icc_profile=img.icc_profile, exif=img.exif)
    return {"faces": len(res.faces), "faces_near_min_size": near}


def cmd_redact(args: argparse.Namespace) -> int:
    try:  # a strength that would leave faces recognizable: refused before anything is read or written
        check_strength(args.method, args.strength)
    except ValueError as exc:
        return _fail("redact", str(exc))
    if only_videos(args.inputs):  # videos given by name: tracks, see cli/video.py
        return run_redact_video(args)
    try:
        run = plan_run(args.inputs, args.output, args.ext, recursive=args.recursive, format_flag="--ext",
                       overwrite=args.overwrite, command="redact", videos=True)
        refuse_videos_on_ray(run, args, "redact")
        detector = detector_from_args(args)
    except CliError as exc:
        return _fail("redact", str(exc), exc.code)
    except (FaceDetectorError, ValueError) as exc:
        return _fail("redact", str(exc))
    out_dir = run.folder
    manifest_path = args.manifest or (out_dir / MANIFEST_NAME if out_dir is not None else None)
    params = {
        "command": "redact",
        "method": args.method,
        "strength": args.strength if args.strength is not None else DEFAULT_STRENGTH[args.method],
        "color": list(args.color) if args.method == "solid" else None,
        "margin": args.margin,
        "min_face_size": args.min_face_size,
        "threshold": args.threshold,
        "keep_metadata": args.keep_metadata,
    }
    video_params = video_params_of(params, args)
    params_for = params_of(params, video_params)

    def process(src: Path, dst: Path) -> dict[str, Any]:
        if is_video(src):  # the single-video path: tracks, audio kept, written atomically
            from ..media.video import probe_video

            return redact_video(probe_video(src), dst, args, detector, rel=rel_of[src])
        img = load_image(src)
        faces = detector.detect(img.rgb)
        return redact_photo(img, faces, dst, args, count_near_limit(faces, args.min_face_size), name=str(src),
                            overwrite=args.overwrite)

    rel_of = {item.path: item.rel for item, _ in run.plan}
    try:
        with folder_run(run, manifest_path, params, overwrite=args.overwrite, wait=args.wait,
                        command="redact", video_params=video_params) as manifest:
            todo = [(i, o) for i, o in run.plan if not (manifest and manifest.is_done(i.path, o, params_for(i.path)))]
            problems = precheck_inputs(todo, args.overwrite)  # unreadable photos and videos, existing outputs
            for path, message in problems.items():
                print(f"faceanon redact: error: {message}" if path in message
                      else f"faceanon redact: error: {path}: {message}", file=sys.stderr)
            refuse_unusable(todo, problems, args.stop_on_error, manifest, params, "no output was written")

            def checked(src: Path, dst: Path) -> dict[str, Any]:
                if str(src) in problems:
                    raise ValueError(problems[str(src)])
                return process(src, dst)

            runner = getattr(args, "batch_runner", None)  # --ray: cli.ray_runs (photos only)
            if runner is None:
                summary = run_batch(run.plan, checked, manifest=manifest, params=params, params_of=params_for,
                                    stop_on_error=args.stop_on_error)
            else:
                summary = runner(run.plan, checked, manifest=manifest, params=params,
                                 stop_on_error=args.stop_on_error)
    except CliError as exc:
        return _fail("redact", str(exc), exc.code)
    target = out_dir if out_dir is not None else run.plan[0][1]
    print(
        f"redact: {summary.done} written, {summary.skipped} already done, {summary.failed} failed -> {target}",
        file=sys.stderr,
    )
    report_not_handled(run, "redact")
    report_near_limit(summary, args.min_face_size, "redact")
    for path, msg in summary.errors:
        if path in problems:
            continue  # reported before the work
        print(f"faceanon redact: error: {msg}" if path in msg else f"faceanon redact: error: {path}: {msg}",
              file=sys.stderr)
    return 0 if summary.ok else EXIT_FAILED


def cmd_detect(args: argparse.Namespace) -> int:
    from ..media.video import VIDEO_EXTENSIONS

    if Path(args.photo).suffix.lower() in VIDEO_EXTENSIONS:
        return _fail("detect", f"{args.photo}: is a video; `faceanon detect` lists the faces of one photo. For the "
                               f"faces of a video, run `faceanon redact {args.photo} -o OUT.mp4 --tracks-json "
                               "tracks.json` (every face track, frame by frame)")
    try:
        img = load_image(args.photo)
        faces = detector_from_args(args).detect(img.rgb)
        near = count_near_limit(faces, args.min_face_size)
    except (ImageReadError, FaceDetectorError, ValueError) as exc:
        return _fail("detect", str(exc))
    if args.json:
        doc = {"path": str(args.photo), "width": img.width, "height": img.height,
               "min_face_size": args.min_face_size, "faces_near_min_size": near,
               "faces": [f.to_dict() for f in faces]}
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{args.photo}: {img.width}x{img.height}, {len(faces)} face(s)"
          + (f", {near} near --min-face-size {args.min_face_size:g} px" if near else ""))
    if faces:
        print(f"{'#':>2}  {'score':>6}  {'box (x0,y0,x1,y1)':<26}  landmarks (L eye, R eye, nose, L mouth, R mouth)")
        for i, f in enumerate(faces):
            box = ",".join(f"{v:.0f}" for v in f.box)
            lm = " ".join(f"({x:.0f},{y:.0f})" for x, y in f.landmarks5)
            print(f"{i:>2}  {f.score:6.3f}  {box:<26}  {lm}")
    return 0
