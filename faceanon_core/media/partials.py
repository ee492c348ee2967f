"""Our temporary files: one naming for photos and videos, and the cleanup of those a killed run left.

An output is written to ``PARTIAL_PREFIX + <output name> + "." + <random> + PARTIAL_SUFFIX`` next to it
and renamed into place when complete, so a reader never sees half a file. A Ray worker writes a finished
file to :func:`staged_path` instead, which the driver renames when it records the file. Only a process
killed while writing (or a driver stopped before its commit) leaves one behind; the next run on the
folder removes both kinds.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

__all__ = [
    "OutputExistsError",
    "PARTIAL_PREFIX",
    "PARTIAL_SUFFIX",
    "is_partial_name",
    "publish",
    "remove_stale_partials",
    "set_default_mode",
    "staged_path",
    "unlink_quiet",
]

#: Our temporary files, photos and videos alike: ``PARTIAL_PREFIX + <output name> + "." + <random> +
#: PARTIAL_SUFFIX`` next to the output (the video writer uses the same prefix and suffix).
PARTIAL_PREFIX = ".faceanon-"
PARTIAL_SUFFIX = ".part"
#: A finished file waiting for its commit: ``PARTIAL_PREFIX + <output stem> + STAGED_MARK + <output suffix>``
#: (it keeps the output's extension, since the image writer picks the format from it).
STAGED_MARK = ".staged"
# Before this naming, photos were written through ``.<output name>.<8 random chars>.part``.
_LEGACY_PARTIAL = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.part$")


def staged_path(dst: str | os.PathLike) -> Path:
    """Where a distributed worker writes ``dst`` before the driver commits it: hidden, same folder, same extension."""
    dst = Path(dst)
    return dst.with_name(f"{PARTIAL_PREFIX}{dst.stem}{STAGED_MARK}{dst.suffix}")


def is_partial_name(name: str) -> bool:
    """True for the name of one of our temporary files (this naming, a staged file, or the naming before them)."""
    if not name.startswith(PARTIAL_PREFIX):
        return bool(_LEGACY_PARTIAL.match(name))
    stem, dot, _suffix = name.rpartition(".")
    return name.endswith(PARTIAL_SUFFIX) or bool(dot and stem.endswith(STAGED_MARK))


def remove_stale_partials(folder: str | os.PathLike, *, recursive: bool = True, max_age_s: float = 0.0) -> list[Path]:
    """Delete our temporary files (:func:`is_partial_name`) under ``folder`` older than ``max_age_s``.

    They are left only by a process killed while writing. Call it while holding the folder's run lock
    (then no writer of ours is running there, and ``max_age_s=0`` is safe); without the lock, pass an
    age that a live writer, which keeps touching its file, cannot reach. Returns the removed paths.
    """
    removed: list[Path] = []
    now = time.time()
    root = Path(folder)
    if not root.is_dir():
        return removed
    walker = os.walk(root) if recursive else [(str(root), [], [e.name for e in os.scandir(root)])]
    for dirpath, _dirs, files in walker:
        for fname in files:
            if not is_partial_name(fname):
                continue
            full = Path(dirpath) / fname
            with contextlib.suppress(OSError):
                if full.is_file() and not full.is_symlink() and now - full.stat().st_mtime >= max_age_s:
                    full.unlink()
                    removed.append(full)
    return removed


class OutputExistsError(FileExistsError):
    """The output file exists and overwriting was not requested."""


def set_default_mode(tmp: str | os.PathLike) -> None:
    """mkstemp creates 0600 files; give the output the usual umask-based mode."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o666 & ~umask)


def unlink_quiet(path: str | os.PathLike) -> None:
    with contextlib.suppress(FileNotFoundError, PermissionError):
        os.unlink(path)


def publish(tmp: str | os.PathLike, dst: Path, overwrite: bool) -> None:
    """Move the finished temporary file to ``dst``: replacing it only with ``overwrite``, else without
    a check-then-write race where the filesystem allows (a hard link fails atomically if ``dst`` exists)."""
    if overwrite:
        os.replace(tmp, dst)
        return
    try:
        os.link(tmp, dst)
    except FileExistsError as exc:
        raise OutputExistsError(f"{dst}: output exists; pass --overwrite (overwrite=True) to replace it") from exc
    except OSError:
        # Filesystems without hard links (FAT, some network shares): best effort.
        if dst.exists():
            raise OutputExistsError(f"{dst}: output exists; pass --overwrite (overwrite=True) to replace it") from None
        os.replace(tmp, dst)
        return
    unlink_quiet(tmp)
