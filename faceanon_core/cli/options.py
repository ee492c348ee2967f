"""The options the subcommands share, checked by argparse before any work: value types (numbers, ranges,
extensions), the model, folder-run, output-format and detector options, and the help layout."""

from __future__ import annotations

import argparse
import math

from ..faces import FaceLoopOptions, MTCNNDetector
from ..faces.detect import DEFAULT_DETECTOR_MIN_FACE, SMALLEST_DETECTABLE_FACE


class HelpFormatter(argparse.HelpFormatter):
    """argparse's own wrapping for descriptions; the exit-code table (the epilog) kept as laid out."""

    def _fill_text(self, text, width, indent):
        if text.startswith("exit codes"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _number(text: str, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {'a whole number' if kind is int else 'a number'}: {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def int_at_least(low: int, *, multiple: int = 1, high: int | None = None):
    """An argparse ``type``: a whole number >= ``low`` (and <= ``high``), a multiple of ``multiple``."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"must be {'at least ' + str(low) if high is None else f'between {low} and {high}'}, got {text}")
        if value % multiple:
            raise argparse.ArgumentTypeError(f"must be a multiple of {multiple} (the model's resolution steps), "
                                             f"got {text}; e.g. {max(low, value // multiple * multiple)}")
        return value

    return parse


def probability(text: str) -> float:
    """An argparse ``type``: a number strictly between 0 and 1."""
    value = _number(text, float)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def float_at_least(low: float, *, strict: bool = False):
    """An argparse ``type``: a finite number >= ``low`` (> ``low`` when ``strict``)."""

    def parse(text: str) -> float:
        value = _number(text, float)
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {text}")
        return value

    return parse


def face_px(text: str) -> float:
    """An argparse ``type``: a face size in pixels, at least the smallest face the detector finds."""
    value = _number(text, float)
    if value < SMALLEST_DETECTABLE_FACE:
        raise argparse.ArgumentTypeError(f"must be at least {SMALLEST_DETECTABLE_FACE:g} px (the detector finds "
                                         f"no smaller faces), got {text}")
    return value


def add_detector_args(p: argparse.ArgumentParser) -> None:
    """``--min-face-size`` and ``--threshold``: what the face detector looks for (every command that detects)."""
    p.add_argument("--min-face-size", type=face_px, default=DEFAULT_DETECTOR_MIN_FACE, metavar="PX",
                   help=f"smallest face to look for: face box width in pixels of the photo, at any photo size "
                        f"(default {DEFAULT_DETECTOR_MIN_FACE:g}, at least {SMALLEST_DETECTABLE_FACE:g})")
    p.add_argument("--threshold", type=probability, default=0.95, metavar="P",
                   help="detector confidence threshold, 0-1 (default 0.95; lower finds more, with more false alarms)")


def detector_from_args(args: argparse.Namespace) -> MTCNNDetector:
    """The face detector of :func:`add_detector_args`' options (photos, videos and the Ray workers alike)."""
    return MTCNNDetector(min_face_size=args.min_face_size, thresholds=(0.6, 0.7, args.threshold))


def loop_options(args) -> FaceLoopOptions:
    """The face loop of ``anonymize`` (``--batch-size``, ``--small-faces``, ``--min-model-face``): one object
    for photos, videos and the Ray stages alike."""
    min_size = {} if args.min_model_face is None else {"min_face_size": args.min_model_face}
    return FaceLoopOptions(batch_size=args.batch_size, small_faces=args.small_faces, **min_size)


def add_run_options(parser) -> None:
    """Options of every folder run (``redact`` and ``anonymize``)."""
    parser.add_argument("--wait", action="store_true",
                        help="if another run is working in the output folder, wait for it (default: refuse)")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="run the folder on Ray Data: a local instance (no value), a cluster (HOST:PORT), "
                             "or auto ($RAY_ADDRESS); needs the 'ray' extra")


def add_model_options(parser):
    parser.add_argument("--models", help="model folder (default: $FACEANON_MODELS or ~/.cache/faceanon/models)")
    parser.add_argument("--download", action="store_true",
                        help="fetch the weights into the model folder if they are missing (online only)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default)")
    parser.add_argument("--fp32", action="store_true", help="full precision on the GPU (default there: fp16)")
    parser.add_argument("--steps", type=int_at_least(1, high=1000), default=50,
                        help="denoising steps, 1-1000 (default 50; the paper: 200)")
    parser.add_argument("--guidance", type=float_at_least(0.0), default=4.0,
                        help="classifier-free guidance scale, a finite number >= 0 (default 4)")
    parser.add_argument("--seed", type=int_at_least(0, high=2**63 - 1), default=0,
                        help="random seed, the same for every face (default 0)")
    parser.add_argument("--scheduler", default="default", choices=["default", "ddpm", "ddim", "euler", "dpm++",
                                                                    "unipc"],
                        help="sampler: the model folder's own (default), or one of these with its settings")
    parser.add_argument("--size", type=int_at_least(64, multiple=8, high=2048), default=512,
                        help="model resolution in pixels, a multiple of 8 from 64 to 2048 (default 512, as trained)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=4, help="faces per model call (default 4)")
    parser.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    add_format_option(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def add_format_option(parser) -> None:
    """The output format: ``--ext`` everywhere (``--suffix``, its old name in anonymize/swap, still works)."""
    parser.add_argument("--ext", "--suffix", dest="ext", default=None, metavar="EXT", type=_extension,
                        help="output format by extension for folder runs: png, jpg, webp, tiff or bmp "
                             "(default: as the input; --suffix is the old name)")


def _extension(text: str) -> str:
    from ..media.images import WRITABLE_EXTENSIONS

    ext = "." + text.strip().lower().lstrip(".")
    if ext not in WRITABLE_EXTENSIONS:
        raise argparse.ArgumentTypeError(f"{text!r}: use png, jpg, webp, tiff or bmp")
    return ext
