"""Anonymize or redact the faces in photos, folders and videos.

``faceanon redact`` blurs every face offline (no model weights, no torch); ``faceanon anonymize``
replaces each face with an anonymous one (the diffusion model). Every subcommand checks its
options, inputs and outputs before any work, writes atomically, never overwrites without
``--overwrite``, and exits with the same codes (``errors.EXIT_CODES_EPILOG``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import anonymize, evaluate, faces, models, queue, ray_runs
from .errors import EXIT_CODES_EPILOG, EXIT_INTERRUPTED, EXIT_USAGE, CliError
from .options import HelpFormatter

DESCRIPTION = ("Anonymize or redact the faces in photos, folders and videos. Start with "
               "`faceanon redact PHOTO_OR_DIR -o OUT` (blur, offline, no model weights); "
               "`faceanon SUBCOMMAND --help` for the rest.")


def _version() -> str:
    from .. import __version__

    return f"faceanon {__version__}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceanon", description=DESCRIPTION, epilog=EXIT_CODES_EPILOG,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=_version(), help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    anonymize.register(sub)
    models.register(sub)
    faces.register(sub)
    evaluate.register(sub)
    queue.register(sub)
    _add_epilogs(parser)
    return parser


def _add_epilogs(parser: argparse.ArgumentParser) -> None:
    """One table of exit codes, in every (sub)command's ``--help``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                if subparser.epilog is None:
                    subparser.epilog = EXIT_CODES_EPILOG
                    subparser.formatter_class = HelpFormatter
                _add_epilogs(subparser)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")
    for noisy in ("diffusers", "transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    prefix = f"faceanon {args.command}"
    try:
        if getattr(args, "ray", None) is not None:  # folders on Ray Data: only the loop over the plan changes
            args.batch_runner = ray_runs.batch_runner(args, args.command)
        return args.func(args)
    except CliError as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted; finished outputs are kept, nothing half-written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, ValueError) as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
