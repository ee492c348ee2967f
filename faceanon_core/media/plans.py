"""Plans for a run: which input photos, and the output path of each (never two inputs on one output).

Shared by the CLI commands (``redact``, ``anonymize``) and :mod:`.manifest`, which runs a plan.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .images import IMAGE_EXTENSIONS, WRITABLE_EXTENSIONS

try:  # video support lives in its own module; without it, videos are simply not photos
    from .video_read import VIDEO_EXTENSIONS
except ImportError:  # pragma: no cover
    VIDEO_EXTENSIONS = frozenset()

logger = logging.getLogger(__name__)

__all__ = [
    "InputError",
    "InputItem",
    "Scan",
    "expand_inputs",
    "is_video",
    "scan_inputs",
    "check_output_formats",
    "output_path",
    "plan_outputs",
]

class InputError(ValueError):
    """The inputs or output folder given to a batch are unusable."""


@dataclass(frozen=True)
class InputItem:
    """One input photo and its path relative to the folder it was found in."""

    path: Path
    rel: Path


def _is_image(p: Path, extensions: frozenset[str]) -> bool:
    return p.suffix.lower() in extensions and not p.name.startswith(".")


@dataclass
class Scan:
    """What the inputs hold: the photos to do, and the files of the input folders that are not
    (``unsupported``: a .gif, .heic, .txt ...; ``videos``: the videos, which a photo-only command
    leaves out; ``video_items``: the same videos with their paths relative to their input folder,
    for the commands that take videos too)."""

    items: list[InputItem]
    unsupported: list[Path]
    videos: list[Path]
    #: Sub-folders of an input folder that a run without ``--recursive`` did not look into.
    subfolders: list[Path] = field(default_factory=list)
    video_items: list[InputItem] = field(default_factory=list)

    def not_handled_lines(self) -> list[str]:
        """One line per kind of file left out, naming the files (the first 10 of each kind)."""
        lines = []
        for files, what in ((self.unsupported, "not a photo format this command reads (png, jpg, webp, tiff, "
                                                 "bmp)"), (self.videos, "videos, not photos")):
            if files:
                names = ", ".join(str(f) for f in files[:10]) + (f" and {len(files) - 10} more" if len(files) > 10
                                                                   else "")
                lines.append(f"{len(files)} file(s) skipped, {what}: {names}")
        if self.subfolders:
            names = ", ".join(str(f) for f in self.subfolders[:10]) + (
                f" and {len(self.subfolders) - 10} more" if len(self.subfolders) > 10 else "")
            lines.append(f"{len(self.subfolders)} sub-folder(s) skipped (add --recursive to include them): {names}")
        return lines


def scan_inputs(
    inputs: Iterable[str | os.PathLike],
    *,
    recursive: bool = False,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    exclude: str | os.PathLike | None = None,
) -> Scan:
    """Files and folders -> sorted, de-duplicated photos, plus the folder files that are not photos.

    A file is taken as given (any extension; reading it decides). A folder
    contributes its photos (by extension, hidden files skipped), recursively
    when asked, with paths relative to it; its other files are listed in
    ``unsupported`` or ``videos``. ``exclude`` (the output folder) is never
    read from, so an output folder inside an input folder is safe; an output
    folder that *is* an input folder is refused (outputs would mix with the
    originals). Raises :class:`InputError` for a missing input.
    """
    exts = frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    excl = Path(exclude).resolve() if exclude is not None else None
    items: list[InputItem] = []
    video_items: list[InputItem] = []
    unsupported: list[Path] = []
    subfolders: list[Path] = []
    seen: set[Path] = set()
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
        if p.is_dir():
            if excl is not None and p.resolve() == excl:
                raise InputError(f"{p} is both an input folder and the output folder: the outputs would mix with "
                                 f"the originals; choose another output folder, e.g. -o {p.resolve().name}-out")
            it = p.rglob("*") if recursive else p.iterdir()
            found, found_videos = [], []
            for f in it:
                if f.name.startswith("."):
                    continue
                if not recursive and f.is_dir():
                    if excl is None or excl != f.resolve():
                        subfolders.append(f)
                    continue
                if not f.is_file():
                    continue
                rel = f.relative_to(p)
                if any(part.startswith(".") for part in rel.parts[:-1]):
                    continue
                if excl is not None and (excl == f.resolve().parent or excl in f.resolve().parents):
                    continue
                if _is_image(f, exts):
                    found.append(InputItem(f, rel))
                elif is_video(f):
                    found_videos.append(InputItem(f, rel))
                else:
                    unsupported.append(f)
            if not found and not found_videos:
                logger.warning("%s: no photos found (%s)", p,
                               "recursive" if recursive else "use --recursive for subfolders")
            items.extend(sorted(found, key=lambda i: str(i.rel)))
            video_items.extend(sorted(found_videos, key=lambda i: str(i.rel)))
        elif is_video(p):  # a video given by name: the video commands take it, the others name it
            video_items.append(InputItem(p, Path(p.name)))
        else:
            items.append(InputItem(p, Path(p.name)))

    def unique(found: list[InputItem]) -> list[InputItem]:
        out: list[InputItem] = []
        for item in found:
            key = item.path.resolve()
            if key in seen:
                continue
            seen.add(key)
            out.append(item)
        return out

    photos, vids = unique(items), unique(video_items)
    return Scan(photos, sorted(unsupported), [v.path for v in vids], sorted(subfolders), vids)


def is_video(path: str | os.PathLike) -> bool:
    """A file named like a video (mp4, mov, mkv, webm, avi, m4v): the video path of a run handles it."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def expand_inputs(
    inputs: Iterable[str | os.PathLike],
    *,
    recursive: bool = False,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    exclude: str | os.PathLike | None = None,
) -> list[InputItem]:
    """The photos of :func:`scan_inputs` (the files left out are logged, not returned)."""
    scan = scan_inputs(inputs, recursive=recursive, extensions=extensions, exclude=exclude)
    for line in scan.not_handled_lines():
        logger.info("%s", line)
    return scan.items


def output_path(item: InputItem, out_dir: str | os.PathLike, ext: str | None = None) -> Path:
    """Output path keeping the relative structure; ``ext`` (e.g. "png") replaces a photo's extension
    (a video keeps its own: it stays a video, in the same container)."""
    rel = item.rel
    if ext and not is_video(item.path):
        e = ext.lower() if ext.startswith(".") else "." + ext.lower()
        rel = rel.with_suffix(e)
    return Path(out_dir) / rel


def check_output_formats(plan: Sequence[tuple[InputItem, Path]], format_flag: str | None = "--ext") -> None:
    """Refuse, before any work, outputs whose extension cannot be written (an input .gif, .heic ...).
    ``format_flag``: the option that picks the format, or None when ``-o`` names the output file itself."""
    bad = [out for item, out in plan if out.suffix.lower() not in WRITABLE_EXTENSIONS
           and not (is_video(item.path) and out.suffix.lower() == item.path.suffix.lower())]
    if bad:
        names = ", ".join(str(b) for b in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        fix = f"choose one with {format_flag} png" if format_flag else f"name the output e.g. {bad[0].stem}.png"
        raise InputError(
            f"cannot write {bad[0].suffix or 'extension-less'} outputs ({names}); outputs can be "
            f"{', '.join(sorted(e.lstrip('.') for e in WRITABLE_EXTENSIONS))}: {fix}"
        )


def plan_outputs(
    items: Sequence[InputItem], out_dir: str | os.PathLike, ext: str | None = None, *, format_flag: str = "--ext"
) -> list[tuple[InputItem, Path]]:
    """Pair inputs with outputs; raise :class:`InputError` on clashes, input == output or an output
    format that cannot be written (checked here, before any work)."""
    plan = []
    by_out: dict[Path, InputItem] = {}
    for item in items:
        out = output_path(item, out_dir, ext)
        key = out.resolve()
        if key == item.path.resolve():
            raise InputError(f"{item.path}: output would overwrite the input; choose another output folder")
        if key in by_out:
            raise InputError(
                f"{item.path} and {by_out[key].path} would both be written to {out}; "
                "give their folder instead of the files, or process them separately"
            )
        by_out[key] = item
        plan.append((item, out))
    check_output_formats(plan, format_flag)
    return plan
