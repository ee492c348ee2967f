"""``faceanon eval ORIGINALS ANONYMIZED``: re-identification, identity distances, pose change and
PSNR/SSIM outside the faces, for the output of any method (see :mod:`faceanon_core.privacy.evaluate`).

``register(subparsers)`` adds the command to the ``faceanon`` parser.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import EXIT_CODES_EPILOG
from .options import HelpFormatter, float_at_least, int_at_least, probability

__all__ = ["register", "cmd_eval"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="how identifiable are anonymized photos? (re-identification, distances, pose, PSNR/SSIM)",
        description="Compare anonymized photos with their originals: for each output face the nearest "
                    "original face (a hit when it is its own), identity distances, head-pose change and "
                    "PSNR/SSIM outside the faces. Writes eval.json and report.html. Needs the 'verify' extra.",
        epilog=EXIT_CODES_EPILOG, formatter_class=HelpFormatter,
    )
    p.add_argument("originals", metavar="ORIGINALS", help="original photo or folder")
    p.add_argument("anonymized", metavar="ANONYMIZED",
                   help="anonymized photo or folder (paired by relative path without the extension)")
    p.add_argument("-o", "--output", metavar="DIR", default=None,
                   help="report folder for eval.json and report.html (default: print the JSON summary only)")
    p.add_argument("--threshold", type=float_at_least(0.0, strict=True), default=None, metavar="D",
                   help="identity distance below which a face counts as leaked (default: the recognizer's, 0.6)")
    p.add_argument("--require-detection", action="store_true",
                   help="fail when a face is not found again in its anonymized photo (default: embed it at the "
                        "original's landmarks)")
    p.add_argument("--worst", type=int_at_least(0), default=8, metavar="N",
                   help="worst cases shown in the report (default 8)")
    p.add_argument("-r", "--recursive", action="store_true", help="look for photos in subfolders too")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument("--detect-threshold", type=probability, default=0.95, metavar="P",
                   help="face detector confidence threshold (default 0.95)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..faces import FaceDetectorError, MTCNNDetector
    from ..media.plans import InputError
    from ..privacy.evaluate import EvalError, evaluate_folders, write_report
    from ..privacy.identity import RecognizerUnavailable, default_recognizer

    def fail(msg: str) -> int:
        print(f"faceanon eval: error: {msg}", file=sys.stderr)
        return 2

    from .video import is_video_run, run_eval_video

    if is_video_run([args.originals, args.anonymized]):  # videos: per track, see privacy/video_eval.py
        return run_eval_video(args)
    if args.threshold is not None and not args.threshold > 0:
        return fail(f"--threshold must be > 0, got {args.threshold}")
    for p in (args.originals, args.anonymized):  # before the recognizer loads
        if not Path(p).exists():
            return fail(f"{p}: no such file or folder")
    if args.output and not args.overwrite:
        for name in ("eval.json", "report.html"):
            if (Path(args.output) / name).exists():
                return fail(f"{Path(args.output) / name}: output exists; choose another report folder or pass "
                            "--overwrite")
    try:
        recognizer = default_recognizer()
        detector = MTCNNDetector(thresholds=(0.6, 0.7, args.detect_threshold))
        result = evaluate_folders(args.originals, args.anonymized, recognizer, detector=detector,
                                  threshold=args.threshold, require_detection=args.require_detection,
                                  worst=args.worst, recursive=args.recursive)
        paths = write_report(result, args.output, overwrite=args.overwrite) if args.output else {}
    except (EvalError, InputError, RecognizerUnavailable, FaceDetectorError) as exc:
        return fail(str(exc))
    print(json.dumps(result.summary))
    s = result.summary
    print(f"eval: {s['faces']} face(s) in {s['images']} photo(s): re-identified {s['reid_rate']:.1%} "
          f"(chance {s['chance_rate']:.1%}), leak rate {s['leak_rate']:.1%} at distance < {s['threshold']:g}"
          + (f" -> {paths['html']}" if paths else ""), file=sys.stderr)
    return 0
