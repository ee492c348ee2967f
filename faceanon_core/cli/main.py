"""The ``faceanon`` command: one parser, one module per subcommand group.

Every command gives a one-line error and a non-zero exit on bad input, never leaves a
half-written output file (writes are atomic) and never overwrites a file unless
``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import anonymize, evaluate, faces, models, queue, ray_runs
from .common import CliError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceanon", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only")
    sub = parser.add_subparsers(dest="command", required=True)
    anonymize.register(sub)
    models.register(sub)
    faces.register(sub)
    evaluate.register(sub)
    queue.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")
    for noisy in ("diffusers", "transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    try:
        if getattr(args, "ray", None) is not None:  # folders on Ray Data: only the loop over the plan changes
            args.batch_runner = ray_runs.batch_runner(args, args.command)
        return args.func(args)
    except CliError as exc:
        print(f"faceanon: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("faceanon: interrupted; finished outputs are kept, nothing half-written", file=sys.stderr)
        return 130
    except (OSError, ValueError) as exc:
        print(f"faceanon: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
