"""A folder run, before and around the work: plan inputs -> outputs, check them, lock the output folder
and open the manifest, refuse what cannot be done (exit code 2, nothing written), report what was left out."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CliError

logger = logging.getLogger("faceanon")


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


def plan_crops(inputs: list[str], out: str, suffix: str | None, overwrite: bool) -> list[tuple[Path, Path]]:
    """Like :func:`plan_images`, refusing outputs that exist unless ``overwrite``."""
    plan = plan_images(inputs, out, suffix, overwrite=overwrite)
    for _, target in plan:
        if target.exists() and not overwrite:
            raise CliError(f"{target} exists: choose another output or pass --overwrite")
    return [(item.path, target) for item, target in plan]
