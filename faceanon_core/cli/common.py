"""What every subcommand shares: the user-facing error, the model folder and pipeline, planning and image I/O."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger("faceanon")

DEFAULT_MODELS_DIR = Path("~/.cache/faceanon/models")


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def models_dir(args) -> Path:
    """``--models``, else ``$FACEANON_MODELS``, else the default cache folder."""
    from ..method.loading import default_models_dir

    chosen = args.models or default_models_dir() or DEFAULT_MODELS_DIR
    return Path(chosen).expanduser()


def load_pipeline(args):
    """The pipeline from the local folder; downloads only with ``--download``."""
    import torch

    from ..method.loading import ModelFolderError, download_models
    from ..method.pipeline import FaceAnonPipeline

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
    from ..media.images import IMAGE_EXTENSIONS
    from ..media.plans import InputError, expand_inputs, plan_outputs

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
    from ..media.images import ImageReadError, load_image

    try:
        return load_image(path)
    except ImageReadError as exc:
        raise CliError(str(exc)) from exc


def write_rgb(path: Path, image, rgb, overwrite: bool):
    """Write ``rgb`` with ``image``'s alpha and colour profile; metadata is not copied."""
    from ..media.images import save_image

    try:
        save_image(path, rgb, image.alpha, overwrite=overwrite, icc_profile=image.icc_profile)
    except (OSError, ValueError) as exc:
        raise CliError(f"{path}: could not write the output ({exc})") from exc


def generators(seed: int, count: int):
    """The same seed for every face: a face keeps its anonymous identity across the frames of a clip."""
    import torch

    return [torch.Generator().manual_seed(seed) for _ in range(count)]


def add_model_options(parser):
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
