"""What every subcommand shares: the user-facing error, the model folder and pipeline, planning and image I/O."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


#: Photo extensions that name a file when given to ``-o`` with one input, even those we cannot write
#: (refused with a clear message instead of becoming a folder named ``out.gif``).
_FILE_LIKE = frozenset({".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".ico", ".psd", ".raw", ".dng"})


@dataclass
class RunPlan:
    """A planned run: ``plan`` pairs inputs with outputs; ``folder`` is the output folder (None when
    ``-o`` names the output file of a single input); ``scan`` lists what the inputs hold."""

    plan: list
    folder: Path | None
    scan: Any


def plan_run(inputs: list[str], out: str, suffix: str | None, recursive: bool = False,
             format_flag: str = "--suffix") -> RunPlan:
    """Plan a photo run: ``-o`` names the output file for one input with a photo extension, else a folder.

    Everything that can be checked without reading pixels is: inputs exist, the output folder is not
    an input folder, no two inputs share an output, every output format can be written.
    """
    from ..media.images import WRITABLE_EXTENSIONS
    from ..media.plans import InputError, check_output_formats, plan_outputs, scan_inputs

    out_path = Path(out).expanduser()
    as_file = out_path.suffix.lower() in WRITABLE_EXTENSIONS | _FILE_LIKE and not out_path.is_dir()
    try:
        scan = scan_inputs(inputs, recursive=recursive, exclude=None if as_file else out_path)
        items = scan.items
        if not items:
            extra = "; ".join(scan.not_handled_lines())
            raise CliError("no photos found in the inputs" + (f" ({extra})" if extra else ""))
        if as_file:
            if len(items) > 1:
                raise CliError(f"{out_path}: {len(items)} inputs need an output folder, not a file name")
            if out_path.resolve() == items[0].path.resolve():
                raise CliError(f"{out_path}: the output would replace the input; choose another output path")
            plan = [(items[0], out_path)]
            check_output_formats(plan, "a .png or .jpg output name")
            return RunPlan(plan, None, scan)
        if out_path.exists() and not out_path.is_dir():
            raise CliError(f"{out_path}: output exists and is not a folder")
        return RunPlan(plan_outputs(items, out_path, suffix, format_flag=format_flag), out_path, scan)
    except InputError as exc:
        raise CliError(str(exc)) from exc


def plan_images(inputs: list[str], out: str, suffix: str | None, recursive: bool = False):
    """(InputItem, output) pairs: ``out`` itself for one input with a photo extension, else a folder."""
    return plan_run(inputs, out, suffix, recursive).plan


@contextlib.contextmanager
def folder_run(run: RunPlan, manifest_path, params: dict, *, overwrite: bool, wait: bool, command: str):
    """Lock the output folder, clean our stale temporary files, open the manifest, refuse changed
    parameters (unless ``overwrite``), record the files left out. Yields the manifest (or None)."""
    from ..media.images import remove_stale_partials
    from ..media.manifest import Manifest, RunLock
    from ..media.plans import InputError

    lock = RunLock(run.folder, wait=wait, command=command) if run.folder is not None else None
    try:
        if lock is not None:
            lock.acquire()
            for stale in remove_stale_partials(run.folder):
                logger.info("removed %s, left by a run that was killed while writing", stale)
        manifest = Manifest(manifest_path) if manifest_path else None
        if manifest is not None:
            manifest.check_params([item.path for item, _ in run.plan], params, overwrite=overwrite)
            manifest.note_skipped(run.scan.unsupported, "not a photo format this command reads")
            manifest.note_skipped(run.scan.videos, "video")
    except InputError as exc:
        if lock is not None:
            lock.release()
        raise CliError(str(exc)) from exc
    try:
        yield manifest
    finally:
        if lock is not None:
            lock.release()


def report_not_handled(run: RunPlan, command: str) -> None:
    """Name the files of the input folders that the run left out (summary lines on stderr)."""
    import sys

    for line in run.scan.not_handled_lines():
        print(f"{command}: {line}", file=sys.stderr)


def report_near_limit(summary, min_face_size: float, command: str) -> None:
    """Say how many detections were close to ``--min-face-size``: a slightly smaller face was missed."""
    import sys

    from ..faces.detect import NEAR_LIMIT_FACTOR

    near = summary.totals.get("faces_near_min_size", 0)
    if near:
        print(f"{command}: {near} face(s) were less than {NEAR_LIMIT_FACTOR:g}x --min-face-size "
              f"({min_face_size:g} px) wide; faces a little smaller are not found: lower --min-face-size "
              "(down to 8) to look for them", file=sys.stderr)


def add_run_options(parser) -> None:
    """Options of every folder run (``redact`` and ``anonymize``)."""
    parser.add_argument("--wait", action="store_true",
                        help="if another run is working in the output folder, wait for it (default: refuse)")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="run the folder on Ray Data: a local instance (no value), a cluster (HOST:PORT), "
                             "or auto ($RAY_ADDRESS); needs the 'ray' extra")


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
