"""The models a command runs: the weights folder (checked before anything heavy is imported), the pipeline
with its sampler and device, the per-face seeds, and the face recognizer of ``--verify``."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from .errors import CliError

logger = logging.getLogger("faceanon")

DEFAULT_MODELS_DIR = Path("~/.cache/faceanon/models")

#: What ``pip`` installs for the diffusion model (anonymize, swap, models download).
DIFFUSION_EXTRA_HINT = ('pip install "comfyui-faceanon[diffusion]" (from a checkout: pip install -e ".[diffusion]"; '
                        'install torch first for your GPU, see https://pytorch.org)')


def require_diffusion(command: str) -> None:
    """The diffusion extra is installed, or a :class:`CliError` that says what to install (no import)."""
    missing = [m for m in ("torch", "diffusers", "transformers", "safetensors", "accelerate")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise CliError(f"`faceanon {command}` needs the diffusion model's packages ({', '.join(missing)} "
                       f"not installed): {DIFFUSION_EXTRA_HINT}. `faceanon redact` needs none of them.")


def require_models(args) -> Path:
    """The model folder, checked before anything heavy is imported (a missing folder answers in seconds)."""
    folder = models_dir(args)
    if not (folder / "unet").is_dir() and not args.download:
        raise CliError(
            f"no model weights in {folder}. Online: add --download to fetch them once (about 5 GB) into "
            f"that folder, or run `faceanon models download --to {folder}`. Offline: copy a model folder "
            "from a machine that has one and pass --models DIR (or set $FACEANON_MODELS). "
            "`faceanon redact` needs no weights at all.")
    return folder


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

    folder = require_models(args)
    if not (folder / "unet").is_dir():
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


def model_identity(folder: Path) -> dict:
    """What identifies the weights a run used: the folder and a digest of its config files and weight sizes."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(folder).parts):
            rel = f.relative_to(folder).as_posix()
            h.update(rel.encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
            else:
                h.update(str(f.stat().st_size).encode())
    return {"folder": str(folder.resolve()), "digest": h.hexdigest()[:16]}


def generators(seed: int, count: int):
    """The same seed for every face: a face keeps its anonymous identity across the frames of a clip."""
    import torch

    return [torch.Generator().manual_seed(seed) for _ in range(count)]


def verification(args):
    """The recognizer for ``--verify``, or None. Default: on when the ``verify`` extra is installed."""
    from ..privacy.identity import (
        VERIFY_EXTRA_HINT,
        RecognizerUnavailable,
        default_recognizer,
        recognizer_available,
    )

    if args.verify is False:
        return None
    if args.verify is None and not recognizer_available():
        logger.warning("identity verification is off: the face recognizer is not installed (%s); outputs are "
                       "not checked for identity leaks", VERIFY_EXTRA_HINT)
        return None
    if args.verify_retries < 0:
        raise CliError(f"--verify-retries must be >= 0, got {args.verify_retries}")
    if args.verify_threshold is not None and not args.verify_threshold > 0:
        raise CliError(f"--verify-threshold must be > 0, got {args.verify_threshold}")
    try:
        return default_recognizer()
    except RecognizerUnavailable as exc:
        raise CliError(str(exc)) from exc
