"""What every subcommand shares: the user-facing error, the model folder and pipeline, planning and image I/O."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("faceanon")

DEFAULT_MODELS_DIR = Path("~/.cache/faceanon/models")


#: The exit codes of every subcommand (``faceanon --help`` and docs/cli.md print this table).
EXIT_OK = 0  # every input done
EXIT_FAILED = 1  # some inputs failed (named on stderr); the others are done
EXIT_USAGE = 2  # bad usage, or an input/output that cannot be used: found before any work, nothing written
EXIT_INTERRUPTED = 130  # Ctrl-C: finished outputs are kept, nothing half-written

EXIT_CODES_EPILOG = """exit codes (every subcommand):
  0    every input done
  1    some inputs failed (each named on stderr); the others are done
  2    bad usage, or an input/output that cannot be used: found before any work, nothing written
  130  interrupted (Ctrl-C): finished outputs are kept, nothing half-written
errors are one line on stderr: "faceanon SUBCOMMAND: error: ..."
"""

class HelpFormatter(argparse.HelpFormatter):
    """argparse's own wrapping for descriptions; the exit-code table (the epilog) kept as laid out."""

    def _fill_text(self, text, width, indent):
        if text.startswith("exit codes"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


#: What ``pip`` installs for the diffusion model (anonymize, swap, models download).
DIFFUSION_EXTRA_HINT = ('pip install "comfyui-faceanon[diffusion]" (from a checkout: pip install -e ".[diffusion]"; '
                        'install torch first for your GPU, see https://pytorch.org)')


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2 (``EXIT_USAGE``) unless ``code`` says otherwise."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


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


# ----------------------------------------------------------------------------- option values, checked by argparse

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
             format_flag: str = "--ext", overwrite: bool = True, command: str = "", videos: bool = False) -> RunPlan:
    """Plan a run: ``-o`` names the output file for one input with a photo extension, else a folder.

    ``videos``: the command also takes the videos of its inputs (``redact``, ``anonymize``): each goes
    into the output folder under its own name and container (``--ext`` changes photos only); without
    it a video among the inputs is refused (never a run that ends with a video untouched).
    Everything that can be checked without reading pixels is: inputs exist, the output folder is not
    an input folder, no two inputs share an output, every output format can be written.
    """
    import dataclasses

    from ..media.files import check_output_file
    from ..media.images import WRITABLE_EXTENSIONS
    from ..media.plans import (
        InputError,
        check_output_formats,
        plan_outputs,
        scan_inputs,
    )
    from ..media.video import VIDEO_EXTENSIONS

    sub = f"`faceanon {command}`" if command else "this command"
    out_path = Path(out).expanduser()
    if out_path.suffix.lower() in VIDEO_EXTENSIONS and not out_path.is_dir():
        raise CliError(f"{out_path}: a video name for photo outputs; name a photo file (e.g. out.png) for one "
                       "photo, or an output folder")
    as_file = out_path.suffix.lower() in WRITABLE_EXTENSIONS | _FILE_LIKE and not out_path.is_dir()
    try:
        scan = scan_inputs(inputs, recursive=recursive, exclude=None if as_file else out_path)
        items = scan.items
        if scan.videos and not videos:  # never exit 0 with a video of the inputs untouched
            names = ", ".join(str(v) for v in scan.videos[:5]) + (" ..." if len(scan.videos) > 5 else "")
            raise CliError(f"the inputs hold {len(scan.videos)} video(s) ({names}); {sub} takes photos: "
                           "move the videos out of the folder, or run them with `faceanon redact` or "
                           "`faceanon anonymize`")
        if videos:
            items = items + scan.video_items  # photos first, then videos (each in its folder's order)
            scan = dataclasses.replace(scan, videos=[])  # handled: not named as left out
        if not items:
            extra = "; ".join(scan.not_handled_lines())
            what = "photos or videos" if videos else "photos"
            raise CliError(f"no {what} found in the inputs" + (f" ({extra})" if extra else ""))
        if as_file:
            if len(items) > 1:
                raise CliError(f"{out_path}: {len(items)} inputs need an output folder, not a file name")
            if items[0] in scan.video_items:
                raise CliError(f"{out_path}: a photo name for the output of the video {items[0].path}; name a "
                               f"video file (e.g. out{items[0].path.suffix.lower()}) or an output folder")
            plan = [(items[0], out_path)]
            check_output_formats(plan, None)
            check_output_file(out_path, CliError, overwrite=overwrite, inputs=[items[0].path])
            return RunPlan(plan, None, scan)
        if out_path.exists() and not out_path.is_dir():
            raise CliError(f"{out_path}: output exists and is not a folder")
        return RunPlan(plan_outputs(items, out_path, suffix, format_flag=format_flag), out_path, scan)
    except InputError as exc:
        raise CliError(str(exc)) from exc


def plan_images(inputs: list[str], out: str, suffix: str | None, recursive: bool = False, overwrite: bool = True):
    """(InputItem, output) pairs: ``out`` itself for one input with a photo extension, else a folder."""
    return plan_run(inputs, out, suffix, recursive, overwrite=overwrite).plan


def params_of(params: dict, video_params: dict | None):
    """``input path -> parameters``: a video's (``video_params``: the photos' plus the video options)
    or a photo's."""
    from ..media.plans import is_video

    return lambda path: video_params if video_params is not None and is_video(path) else params


def video_params_of(params: dict, args) -> dict:
    """A folder run's parameters for its videos: the photos' plus the options of the video path."""
    video = {"max_gap": args.max_gap, "smoothing": not args.no_smoothing}
    if hasattr(args, "identity"):
        video["identity"] = args.identity
    return {**params, "video": video}


def refuse_videos_on_ray(run: RunPlan, args, command: str) -> None:
    """``--ray`` runs photos only: a folder with videos is refused before any work (never a run that
    ends with code 0 and a video untouched)."""
    from ..media.plans import is_video

    if getattr(args, "ray", None) is None:
        return
    vids = [str(item.path) for item, _ in run.plan if is_video(item.path)]
    if vids:
        names = ", ".join(vids[:5]) + (" ..." if len(vids) > 5 else "")
        raise CliError(f"--ray runs photos, and the inputs hold {len(vids)} video(s) ({names}): run the folder "
                       f"without --ray (`faceanon {command}` does its photos and videos), or move the videos out "
                       "and run them on their own")


@contextlib.contextmanager
def folder_run(run: RunPlan, manifest_path, params: dict, *, overwrite: bool, wait: bool, command: str,
               video_params: dict | None = None):
    """Lock the output folder, clean our stale temporary files, open the manifest, refuse changed
    parameters (unless ``overwrite``; videos against ``video_params``), record the files left out.
    Yields the manifest (or None)."""
    from ..media.files import output_lock_name, remove_own_partials
    from ..media.images import remove_stale_partials
    from ..media.manifest import Manifest, RunLock
    from ..media.plans import InputError

    if run.folder is not None:
        lock = RunLock(run.folder, wait=wait, command=command)
    else:  # one output file: a lock of its own beside it, so two runs never both do the work for it
        target = run.plan[0][1]
        lock = RunLock(target.parent if str(target.parent) else Path("."), wait=wait, command=command)
        lock.path = lock.folder / output_lock_name(target)
    try:
        lock.acquire()
        stale_files = remove_stale_partials(run.folder) if run.folder is not None else remove_own_partials(target)
        for stale in stale_files:
            logger.info("removed %s, left by a run that was killed while writing", stale)
        manifest = Manifest(manifest_path) if manifest_path else None
        if manifest is not None:
            manifest.check_params([item.path for item, _ in run.plan], params, overwrite=overwrite,
                                  params_of=params_of(params, video_params))
            manifest.note_skipped(run.scan.unsupported, "not a photo format this command reads")
            manifest.note_skipped(run.scan.videos, "video")
    except InputError as exc:
        lock.release()
        raise CliError(str(exc)) from exc
    try:
        yield manifest
    finally:
        lock.release()


def precheck_inputs(todo, overwrite: bool) -> dict[str, str]:
    """Problems found before any work: unreadable photos, unreadable or truncated videos (probed), outputs
    that exist. ``{input: message}``."""
    from ..media.images import ImageReadError, probe_image
    from ..media.plans import is_video

    problems = {}
    for item, out in todo:
        try:
            if is_video(item.path):
                from ..media.video import VideoReadError, probe_video

                try:
                    probe_video(item.path)
                except VideoReadError as exc:
                    raise ImageReadError(str(exc)) from exc
            else:
                probe_image(item.path)
        except ImageReadError as exc:
            problems[str(item.path)] = str(exc)
            continue
        if out.exists() and not overwrite:
            problems[str(item.path)] = f"{out}: output exists; pass --overwrite to replace it"
    return problems


def refuse_unusable(todo, problems: dict[str, str], stop_on_error: bool, manifest, params: dict, note: str) -> None:
    """Exit code 2 before any work when every input to do is unusable (or one is, with ``--stop-on-error``);
    else the run goes on and those inputs count as failed (exit code 1)."""
    if problems and (stop_on_error or len(problems) == len(todo)):
        if manifest is not None:
            for item, out in todo:
                if str(item.path) in problems:
                    manifest.append({"input": str(item.path), "output": str(out), "status": "error",
                                     "error": problems[str(item.path)], "params": params})
        raise CliError(f"{len(problems)} of {len(todo)} input(s) cannot be done (above); nothing was processed "
                       f"and {note}")


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
    plan = plan_images(inputs, out, suffix, overwrite=overwrite)
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
