"""The ``faceanon`` command.

Every command gives a one-line error and a non-zero exit on bad input, never leaves a
half-written output file (writes are atomic) and never overwrites a file unless
``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger("faceanon")

DEFAULT_MODELS_DIR = Path("~/.cache/faceanon/models")


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


# -- shared helpers -------------------------------------------------------------------------


def models_dir(args) -> Path:
    """``--models``, else ``$FACEANON_MODELS``, else the default cache folder."""
    from .loading import default_models_dir

    chosen = args.models or default_models_dir() or DEFAULT_MODELS_DIR
    return Path(chosen).expanduser()


def load_pipeline(args):
    """The pipeline from the local folder; downloads only with ``--download``."""
    import torch

    from .loading import ModelFolderError, download_models
    from .pipeline import FaceAnonPipeline

    folder = models_dir(args)
    if not (folder / "unet").is_dir():
        if not args.download:
            raise CliError(
                f"no model weights in {folder}. Online: add --download to fetch them once (about 5 GB) into "
                f"that folder, or run `faceanon models download --to {folder}`. Offline: copy a model folder "
                "from a machine that has one and pass --models DIR (or set $FACEANON_MODELS). "
                "`faceanon redact` needs no weights at all."
            )
        logger.info("downloading the model weights into %s", folder)
        download_models(folder)
    device = pick_device(args.device)
    dtype = torch.float16 if device.type == "cuda" and not args.fp32 else torch.float32
    try:
        pipe = FaceAnonPipeline.from_pretrained(folder, torch_dtype=dtype)
    except ModelFolderError as exc:
        raise CliError(str(exc)) from exc
    pipe.to(device)
    if args.scheduler != "default":
        pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler.config)
    return pipe


def make_scheduler(name: str, config):
    import diffusers

    classes = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
               "dpm++": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler"}
    return getattr(diffusers, classes[name]).from_config(config)


def pick_device(name: str):
    import torch

    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def plan_images(inputs: list[str], out: str, suffix: str | None, recursive: bool = False):
    """(InputItem, output) pairs: ``out`` itself for one input with an image extension, else a folder."""
    from .imageio import IMAGE_EXTENSIONS
    from .photos import InputError, expand_inputs, plan_outputs

    out_path = Path(out).expanduser()
    try:
        items = expand_inputs(inputs, recursive=recursive, exclude=out_path)
        if not items:
            raise CliError("no images found in the inputs")
        if len(items) == 1 and out_path.suffix.lower() in IMAGE_EXTENSIONS:
            if out_path.resolve() == items[0].path.resolve():
                raise CliError(f"{out_path}: the output would replace the input; choose another output path")
            return [(items[0], out_path)]
        if out_path.suffix.lower() in IMAGE_EXTENSIONS or (out_path.exists() and not out_path.is_dir()):
            raise CliError(f"{out_path}: several inputs need an output folder, not a file")
        return plan_outputs(items, out_path, suffix)
    except InputError as exc:
        raise CliError(str(exc)) from exc


def plan_crops(inputs: list[str], out: str, suffix: str | None, overwrite: bool) -> list[tuple[Path, Path]]:
    """Like :func:`plan_images`, refusing outputs that exist unless ``overwrite``."""
    plan = plan_images(inputs, out, suffix)
    for _, target in plan:
        if target.exists() and not overwrite:
            raise CliError(f"{target} exists: choose another output or pass --overwrite")
    return [(item.path, target) for item, target in plan]


def read_rgb(path: Path):
    from .imageio import ImageReadError, load_image

    try:
        return load_image(path)
    except ImageReadError as exc:
        raise CliError(str(exc)) from exc


def write_rgb(path: Path, image, rgb, overwrite: bool):
    """Write ``rgb`` with ``image``'s alpha and colour profile; metadata is not copied."""
    from .imageio import save_image

    try:
        save_image(path, rgb, image.alpha, overwrite=overwrite, icc_profile=image.icc_profile)
    except (OSError, ValueError) as exc:
        raise CliError(f"{path}: could not write the output ({exc})") from exc


def generators(seed: int, count: int):
    """The same seed for every face: a face keeps its anonymous identity across the frames of a clip."""
    import torch

    return [torch.Generator().manual_seed(seed) for _ in range(count)]


# -- commands -----------------------------------------------------------------------------


def run_anonymize_aligned(args) -> int:
    """Aligned 512x512 face crops in, anonymized crops out (photos: see ``faceanon anonymize``)."""
    pipe_call = lambda pipe, crops, **kw: pipe.anonymize(crops, **kw)  # noqa: E731
    return _run_on_crops(args, args.inputs, pipe_call)


def run_swap(args) -> int:
    source = read_rgb(Path(args.source))

    def pipe_call(pipe, crops, **kw):
        return pipe.swap(_square(source.rgb, args.size)[None], crops, **kw)

    return _run_on_crops(args, args.driving, pipe_call)


def _run_on_crops(args, inputs, pipe_call) -> int:
    """Read every crop first (bad input fails before the model loads), then run in batches."""
    import numpy as np

    plan = plan_crops(inputs, args.output, args.suffix, args.overwrite)
    images = [read_rgb(path) for path, _ in plan]
    pipe = load_pipeline(args)
    size = args.size
    for start in range(0, len(images), args.batch_size):
        chunk = images[start:start + args.batch_size]
        crops = np.stack([_square(img.rgb, size) for img in chunk])
        result = pipe_call(
            pipe, crops, degree=args.degree, guidance_scale=args.guidance, num_inference_steps=args.steps,
            generator=generators(args.seed, len(chunk)), height=size, width=size, output_type="np",
        ).images
        for img, out, (_, target) in zip(chunk, result, plan[start:start + args.batch_size]):
            out = _resize_back((out * 255).round().astype(np.uint8), img.rgb.shape[:2])
            write_rgb(target, img, out, args.overwrite)
            logger.info("wrote %s", target)
    return 0


def _square(rgb, size: int):
    """An aligned crop resized to the model's resolution (crops are square already)."""
    import cv2

    height, width = rgb.shape[:2]
    if height != width:
        raise CliError(f"aligned face crops must be square, got {width}x{height}: crop it, or let "
                       "`faceanon anonymize` find the faces in the photo (without --aligned)")
    if height == size:
        return rgb
    interp = cv2.INTER_AREA if height > size else cv2.INTER_CUBIC
    return cv2.resize(rgb, (size, size), interpolation=interp)


def _resize_back(rgb, shape):
    import cv2

    if rgb.shape[:2] == tuple(shape):
        return rgb
    interp = cv2.INTER_AREA if rgb.shape[0] > shape[0] else cv2.INTER_CUBIC
    return cv2.resize(rgb, (shape[1], shape[0]), interpolation=interp)


def run_models_download(args) -> int:
    from .loading import download_models

    folder = Path(args.to).expanduser() if args.to else models_dir(args)
    download_models(folder, model_repo=args.model_repo, vae_repo=args.vae_repo,
                    image_encoder_repo=args.image_encoder_repo)
    print(f"complete model folder: {folder}")
    return 0


def run_models_check(args) -> int:
    from .loading import check_model_folder

    report = check_model_folder(args.folder, require_extras=not args.unets_only)
    for found in report.found:
        print(f"ok       {found}")
    for problem in report.problems:
        print(f"PROBLEM  {problem}")
    print("the folder is complete" if report.ok else f"{len(report.problems)} problem(s) found")
    return 0 if report.ok else 1


# -- argument parsing ---------------------------------------------------------------------


def _add_model_options(parser):
    parser.add_argument("--models", help="model folder (default: $FACEANON_MODELS or ~/.cache/faceanon/models)")
    parser.add_argument("--download", action="store_true",
                        help="fetch the weights into the model folder if they are missing (online only)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default)")
    parser.add_argument("--fp32", action="store_true", help="full precision on the GPU (default there: fp16)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed, the same for every face (default 0)")
    parser.add_argument("--scheduler", default="default", choices=["default", "ddpm", "ddim", "euler", "dpm++",
                                                                    "unipc"])
    parser.add_argument("--size", type=int, default=512, help="model resolution (default 512)")
    parser.add_argument("--batch-size", type=int, default=4, help="faces per model call (default 4)")
    parser.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    parser.add_argument("--suffix", help="output extension, e.g. .png (default: same as the input)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def build_parser() -> argparse.ArgumentParser:
    from . import cli_eval, cli_faces, queue_client

    parser = argparse.ArgumentParser(prog="faceanon", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    anon = sub.add_parser("anonymize", help="replace each face with an anonymous one (diffusion model)")
    anon.add_argument("inputs", nargs="+", help="image files or folders")
    anon.add_argument("--degree", type=float, default=1.25,
                      help="anonymization degree d: 0 keeps the identity, 1 removes it, >1 goes further "
                           "(default 1.25)")
    anon.add_argument("--aligned", action="store_true",
                      help="inputs are aligned square face crops (default: find every face in the photos)")
    anon.add_argument("--small-faces", choices=["redact", "fail", "keep"], default="redact",
                      help="faces too small for the model: blur them (default), fail the photo, or keep them")
    anon.add_argument("--min-model-face", type=float, default=None, metavar="PX",
                      help="eye distance below which a face is too small for the model (default 10 px)")
    anon.add_argument("--manifest", help="resumable JSON-lines record (default: OUT/faceanon-manifest.jsonl "
                                         "for several photos)")
    anon.add_argument("-r", "--recursive", action="store_true", help="look for photos in subfolders too")
    anon.add_argument("--keep-metadata", action="store_true",
                      help="keep EXIF (GPS, maker notes and thumbnails are always dropped)")
    anon.add_argument("--stop-on-error", action="store_true", help="stop at the first photo that fails")
    anon.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                      help="check every output face with a face recognizer and retry (new seed, larger degree) "
                           "while it still matches the original (default: on when the 'verify' extra is "
                           "installed)")
    anon.add_argument("--verify-threshold", type=float, default=None, metavar="D",
                      help="identity distance below which a face still counts as the same person "
                           "(default 0.6, dlib's decision distance)")
    anon.add_argument("--verify-retries", type=int, default=2, metavar="N",
                      help="tries after the first, each with seed+1 and degree+0.25 (default 2)")
    anon.add_argument("--verify-fallback", choices=["fail", "redact"], default="fail",
                      help="a face still recognizable after every try: fail the photo (default) or blur it")
    cli_faces.add_detector_args(anon)
    _add_model_options(anon)
    anon.set_defaults(func=run_anonymize)

    swap = sub.add_parser("swap", help="put the face of --source onto each --driving crop")
    swap.add_argument("--source", required=True, help="aligned face crop whose identity is used")
    swap.add_argument("--driving", required=True, nargs="+", help="aligned face crops (files or folders)")
    swap.add_argument("--degree", type=float, default=0.0, help="degree applied to the source (default 0)")
    _add_model_options(swap)
    swap.set_defaults(func=run_swap)

    models = sub.add_parser("models", help="fetch or check the model weights")
    msub = models.add_subparsers(dest="models_command", required=True)
    download = msub.add_parser("download", help="fetch everything into one folder (explicit, resumable)")
    download.add_argument("--to", help="target folder (default: $FACEANON_MODELS or ~/.cache/faceanon/models)")
    download.add_argument("--models", help=argparse.SUPPRESS)
    from .loading import DEFAULT_HUB_SOURCES

    download.add_argument("--model-repo", default=DEFAULT_HUB_SOURCES["model"])
    download.add_argument("--vae-repo", default=DEFAULT_HUB_SOURCES["vae"])
    download.add_argument("--image-encoder-repo", default=DEFAULT_HUB_SOURCES["image_encoder"])
    download.set_defaults(func=run_models_download)
    check = msub.add_parser("check", help="validate a model folder and say what is missing")
    check.add_argument("folder")
    check.add_argument("--unets-only", action="store_true",
                       help="only the three UNets (VAE and CLIP are given separately)")
    check.set_defaults(func=run_models_check)

    cli_faces.register(sub)
    cli_eval.register(sub)
    queue_client.register(sub)
    return parser


def run_anonymize(args) -> int:
    if args.aligned:
        return run_anonymize_aligned(args)
    from .cli_photos import run_anonymize_photos

    return run_anonymize_photos(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")
    for noisy in ("diffusers", "transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    try:
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
