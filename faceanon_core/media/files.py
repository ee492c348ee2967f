"""Checks on an input file that every reader makes before decoding it, photos and videos alike."""

from __future__ import annotations

from pathlib import Path

__all__ = ["check_input_file"]


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
