"""``faceanon-train``: train, check-data, align-data, export, print-config.

    faceanon-train train config.yaml [section.key=value ...] [--resume latest]
    accelerate launch -m training train config.yaml        (several GPUs / nodes)
    faceanon-train check-data train.jsonl --images DIR --resolution 512
    faceanon-train export config.yaml --checkpoint latest --out DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

EXIT_BAD_DATA = 2
EXIT_BAD_CONFIG = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceanon-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train or fine-tune (plainly, or under `accelerate launch`)")
    train.add_argument("config", nargs="?", help="YAML or TOML config file")
    train.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=1000")
    train.add_argument("--set", dest="extra", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="another override (repeatable)")
    train.add_argument("--resume", metavar="latest|PATH", help="continue from the latest or a given checkpoint")
    train.add_argument("--max-steps", type=int, help="shorthand for train.max_steps")
    train.add_argument("--output-dir", help="shorthand for train.output_dir")

    check = sub.add_parser("check-data", help="validate a triplet dataset and print a report")
    check.add_argument("data", help="JSON-lines file of triplets")
    check.add_argument("--images", help="folder the paths are relative to (default: the file's folder)")
    check.add_argument("--resolution", type=int, default=512)
    check.add_argument("--resize", action="store_true", help="square images of another size are acceptable")
    check.add_argument("--quick", action="store_true", help="headers and paths only (no decode, no hashes)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")

    align = sub.add_parser("align-data", help="align in-the-wild triplets to face crops (faceanon_core.faces)")
    align.add_argument("data")
    align.add_argument("--images")
    align.add_argument("--out", required=True, help="folder for images/ and train.jsonl")
    align.add_argument("--resolution", type=int, default=512)

    export = sub.add_parser("export", help="export a checkpoint to the published folder layout")
    export.add_argument("config")
    export.add_argument("overrides", nargs="*")
    export.add_argument("--checkpoint", default="latest", help="latest (default) or a checkpoint folder")
    export.add_argument("--out", required=True)

    sub.add_parser("print-config", help="print the default configuration")
    return parser


def main(argv=None) -> int:
    from .config import ConfigError, default_config_text, load_config
    from .data import DatasetError, check_dataset

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    if args.command == "print-config":
        print(default_config_text(), end="")
        return 0
    if args.command == "check-data":
        report = check_dataset(args.data, args.images, resolution=args.resolution, resize=args.resize,
                               mode="quick" if args.quick else "full")
        print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
        return 0 if report.ok else EXIT_BAD_DATA
    if args.command == "align-data":
        from .data import align_dataset

        out, skipped = align_dataset(args.data, args.images, args.out, resolution=args.resolution)
        for line in skipped:
            print(f"skipped {line}", file=sys.stderr)
        print(f"wrote {out} ({len(skipped)} triplets skipped)")
        return 0

    overrides = list(args.overrides) + list(getattr(args, "extra", []) or [])
    if getattr(args, "max_steps", None):
        overrides.append(f"train.max_steps={args.max_steps}")
    if getattr(args, "output_dir", None):
        overrides.append(f"train.output_dir={json.dumps(args.output_dir)}")
    config_path = args.config
    if config_path and "=" in config_path and not config_path.endswith((".yaml", ".yml", ".toml", ".json")):
        overrides.insert(0, config_path)  # no file, only overrides
        config_path = None
    try:
        config = load_config(config_path, overrides)
    except ConfigError as exc:
        print(f"faceanon-train: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG

    if args.command == "export":
        from .trainer import export_checkpoint

        out = export_checkpoint(config, args.checkpoint, args.out)
        print(f"exported {out}")
        return 0

    from .trainer import train

    try:
        result = train(config, resume=args.resume)
    except DatasetError as exc:
        print(f"faceanon-train: the dataset is broken, training refused:\n{exc.report.format()}", file=sys.stderr)
        return EXIT_BAD_DATA
    summary = {"step": result.step, "final_loss": result.losses[-1] if result.losses else None,
               "seconds": round(result.seconds, 2), "output_dir": str(result.output_dir),
               "export_dir": str(result.export_dir) if result.export_dir else None}
    if _is_main():
        print(json.dumps(summary))
    return 0


def _is_main() -> bool:
    try:
        from accelerate import PartialState

        return PartialState().is_main_process
    except Exception:
        return True


if __name__ == "__main__":
    sys.exit(main())
