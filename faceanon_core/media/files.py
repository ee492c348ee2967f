"""Checks on an input file that every reader makes before decoding it, photos and videos alike."""

from __future__ import annotations

from pathlib import Path

__all__ = ["check_input_file", "check_output_file", "output_lock_name", "remove_own_partials"]


def check_input_file(p: Path, error: type[Exception], what: str) -> int:
    """The checks every reader makes before decoding (photos and videos alike): the path exists, is a
    file, can be read and is not empty. Raises ``error`` naming the file; returns its size in bytes."""
    name = str(p)
    if not p.exists():
        raise error(f"{name}: file not found; check the path")
    if p.is_dir():
        raise error(f"{name}: is a folder, not {what} file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise error(f"{name}: cannot access the file ({exc})") from exc
    if size == 0:
        raise error(f"{name}: file is empty (0 bytes); the copy or download was probably interrupted")
    return size


def check_output_file(target: Path, error: type[Exception], *, overwrite: bool, inputs=()) -> None:
    """The checks on a single output file before any work: not an input, not an existing file (unless
    ``overwrite``), not a folder, and its folder (or the nearest existing parent) writable. Raises ``error``."""
    import os

    target = Path(target)
    for src in inputs:
        if Path(src).exists() and target.exists() and Path(src).resolve() == target.resolve():
            raise error(f"{target}: the output would replace the input; choose another output path")
    if target.is_dir():
        raise error(f"{target}: is a folder; name an output file, or a folder for several inputs")
    if target.exists() and not overwrite:
        raise error(f"{target}: output exists; choose another output or pass --overwrite to replace it")
    parent = target.parent if str(target.parent) else Path(".")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise error(f"{target}: {probe} is a file, not a folder; choose another output path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise error(f"{target}: the folder {probe} is not writable by you (or read-only); choose an output you "
                    "can write to with -o, or fix its permissions")


def output_lock_name(target: Path) -> str:
    """The lock file of one output file, beside it (the folder runs lock the folder instead)."""
    return f".faceanon-{Path(target).name}.lock"


def remove_own_partials(target: Path) -> list[Path]:
    """Our temporary files for this one output (``.faceanon-<name>.<random>.part`` beside it), left by a
    killed run; call it while holding the output's lock. Returns the removed paths."""
    import contextlib

    from .partials import PARTIAL_PREFIX, PARTIAL_SUFFIX

    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    stem = f"{PARTIAL_PREFIX}{target.name}."
    for f in target.parent.iterdir():
        if f.name.startswith(stem) and f.name.endswith(PARTIAL_SUFFIX) and f.is_file() and not f.is_symlink():
            with contextlib.suppress(OSError):
                f.unlink()
                removed.append(f)
    return removed
