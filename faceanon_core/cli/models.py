"""``faceanon models download | check``: fetch the weights (only when asked) or validate a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import EXIT_FAILED, EXIT_USAGE, CliError
from .loading import DIFFUSION_EXTRA_HINT, models_dir


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="fetch or check the model weights",
                            description="Fetch the diffusion model's weights (only when asked) or check a model "
                                        "folder. `faceanon redact` needs no weights.")
    msub = models.add_subparsers(dest="models_command", metavar="{download,check}")
    models.set_defaults(func=lambda args: _print_help(models))
    download = msub.add_parser("download", help="fetch everything into one folder (explicit, resumable)",
                               description="Fetch the three model repositories into one folder (about 5 GB, "
                                           "resumable). Needs huggingface_hub (the 'diffusion' extra).")
    download.add_argument("--to", help="target folder (default: $FACEANON_MODELS or ~/.cache/faceanon/models)")
    download.add_argument("--models", help=argparse.SUPPRESS)
    from ..method.loading import DEFAULT_HUB_SOURCES

    download.add_argument("--model-repo", default=DEFAULT_HUB_SOURCES["model"], metavar="REPO",
                          help=f"hub repository of the three UNets (default {DEFAULT_HUB_SOURCES['model']})")
    download.add_argument("--vae-repo", default=DEFAULT_HUB_SOURCES["vae"], metavar="REPO",
                          help=f"hub repository of the VAE (default {DEFAULT_HUB_SOURCES['vae']})")
    download.add_argument("--image-encoder-repo", default=DEFAULT_HUB_SOURCES["image_encoder"], metavar="REPO",
                          help="hub repository of the CLIP image encoder "
                               f"(default {DEFAULT_HUB_SOURCES['image_encoder']})")
    download.set_defaults(func=run_models_download)
    check = msub.add_parser("check", help="validate a model folder and say what is missing",
                            description="Validate a model folder and say what is missing (no torch needed).")
    check.add_argument("folder", help="the model folder to check")
    check.add_argument("--unets-only", action="store_true",
                       help="only the three UNets (VAE and CLIP are given separately)")
    check.set_defaults(func=run_models_check)


def _print_help(parser: argparse.ArgumentParser) -> int:
    """``faceanon models`` alone: its help (which subcommand?), exit code 2 (bad usage)."""
    import sys

    parser.print_help(sys.stderr)
    return EXIT_USAGE


def run_models_download(args) -> int:
    import importlib.util

    from ..method.loading import download_models

    if importlib.util.find_spec("huggingface_hub") is None:
        raise CliError(f"`faceanon models download` needs huggingface_hub: {DIFFUSION_EXTRA_HINT}")

    folder = Path(args.to).expanduser() if args.to else models_dir(args)
    download_models(folder, model_repo=args.model_repo, vae_repo=args.vae_repo,
                    image_encoder_repo=args.image_encoder_repo)
    print(f"complete model folder: {folder}")
    return 0


def run_models_check(args) -> int:
    from ..method.loading import check_model_folder

    report = check_model_folder(args.folder, require_extras=not args.unets_only)
    for found in report.found:
        print(f"ok       {found}")
    for problem in report.problems:
        print(f"PROBLEM  {problem}")
    print("the folder is complete" if report.ok else f"{len(report.problems)} problem(s) found")
    return 0 if report.ok else EXIT_FAILED
