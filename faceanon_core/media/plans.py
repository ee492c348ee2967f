"""Plans for a run: which input photos, and the output path of each (never two inputs on one output).

Shared by the CLI commands (``redact``, ``anonymize``) and :mod:`.manifest`, which runs a plan.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .images import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

__all__ = [
    "InputError",
    "InputItem",
    "expand_inputs",
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


def expand_inputs(
    inputs: Iterable[str | os.PathLike],
    *,
    recursive: bool = False,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    exclude: str | os.PathLike | None = None,
) -> list[InputItem]:
    """Files and folders -> sorted, de-duplicated photos.

    A file is taken as given (any extension; reading it decides). A folder
    contributes its photos (by extension, hidden files skipped), recursively
    when asked, with paths relative to it. ``exclude`` (the output folder) is
    never read from, so an output folder inside an input folder is safe.
    Raises :class:`InputError` for a missing input or when two inputs would
    write the same output name.
    """
    exts = frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    excl = Path(exclude).resolve() if exclude is not None else None
    items: list[InputItem] = []
    seen: set[Path] = set()
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            found = []
            for f in it:
                if not f.is_file() or not _is_image(f, exts):
                    continue
                rel = f.relative_to(p)
                if any(part.startswith(".") for part in rel.parts[:-1]):
                    continue
                if excl is not None and (excl == f.resolve().parent or excl in f.resolve().parents):
                    continue
                found.append(InputItem(f, rel))
            if not found:
                logger.warning("%s: no photos found (%s)", p, "recursive" if recursive else "use --recursive for subfolders")
            items.extend(sorted(found, key=lambda i: str(i.rel)))
        else:
            items.append(InputItem(p, Path(p.name)))
    out: list[InputItem] = []
    for item in items:
        key = item.path.resolve()
        if key in seen:
            continue
        seen.add(key)
        out.append(item)
    return out


def output_path(item: InputItem, out_dir: str | os.PathLike, ext: str | None = None) -> Path:
    """Output path keeping the relative structure; ``ext`` (e.g. "png") replaces the extension."""
    rel = item.rel
    if ext:
        e = ext.lower() if ext.startswith(".") else "." + ext.lower()
        rel = rel.with_suffix(e)
    return Path(out_dir) / rel


def plan_outputs(
    items: Sequence[InputItem], out_dir: str | os.PathLike, ext: str | None = None
) -> list[tuple[InputItem, Path]]:
    """Pair inputs with outputs; raise :class:`InputError` on clashes or input == output."""
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
    return plan
