"""Folders of photos: input expansion, output paths and a resumable manifest.

Shared by the CLI commands (``redact``, ``anonymize``). The driver is generic:
it takes a per-image callable that reads one input and writes one output
(atomically, through :func:`faceanon_core.imageio.save_image`) and returns
a dict of facts for the manifest.

The manifest is a JSON-lines file, append-only, flushed and fsync'ed after
every record, so a run over 10,000 photos that is killed continues where it
stopped: inputs whose last record says ``done`` and whose output exists are
skipped; everything else is (re)done. A torn last line from a crash is ignored.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .imageio import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

__all__ = [
    "BatchSummary",
    "InputError",
    "InputItem",
    "Manifest",
    "expand_inputs",
    "output_path",
    "plan_outputs",
    "run_batch",
]

#: Exceptions a per-image callable may raise for a bad image; they are recorded
#: and the batch goes on. Anything else (a bug, KeyboardInterrupt) stops the run.
RECOVERABLE = (ValueError, RuntimeError, OSError)


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


class Manifest:
    """Append-only JSON-lines record of a batch, one line per finished attempt.

    The last record of an input wins. Records: ``input``, ``output``,
    ``status`` ("done" or "error"), ``faces``, ``params``, ``seed``,
    ``error``, ``time``, ``seconds``, plus whatever the callable returned.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self._load()

    @staticmethod
    def key(p: str | os.PathLike) -> str:
        return str(Path(p).resolve())

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read the manifest ({exc})") from exc
        lines = data.split(b"\n")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or "input" not in rec:
                    raise ValueError("not a record")
            except ValueError:
                last = n == len(lines) or all(not x.strip() for x in lines[n:])
                if last:
                    logger.warning("%s: ignoring a torn last line (interrupted run)", self.path)
                else:
                    logger.warning("%s: line %d is not a valid record; ignored", self.path, n)
                continue
            self.records[self.key(rec["input"])] = rec
        if data and not data.endswith(b"\n"):
            # Terminate a torn line so the next record starts on its own line.
            with open(self.path, "ab") as fh:
                fh.write(b"\n")
                fh.flush()
                os.fsync(fh.fileno())

    def is_done(self, input_path: str | os.PathLike, output: str | os.PathLike | None = None) -> bool:
        """True if the last record for ``input_path`` is done and its output file exists."""
        rec = self.records.get(self.key(input_path))
        if not rec or rec.get("status") != "done":
            return False
        out = output if output is not None else rec.get("output")
        return bool(out) and Path(out).is_file()

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably (flush + fsync) before returning."""
        if "input" not in record:
            raise ValueError("a manifest record needs an 'input'")
        line = json.dumps(record, default=str, ensure_ascii=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.records[self.key(record["input"])] = record


@dataclass
class BatchSummary:
    """Counts of a batch run; ``errors`` pairs input paths with messages."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0


def run_batch(
    plan: Sequence[tuple[InputItem, Path]],
    process: Callable[[Path, Path], dict[str, Any] | None],
    *,
    manifest: Manifest | None = None,
    params: dict[str, Any] | None = None,
    seed: int | None = None,
    stop_on_error: bool = False,
    progress: Callable[[int, int, Path], None] | None = None,
) -> BatchSummary:
    """Run ``process(input, output)`` over ``plan``, resumably.

    Skips inputs the manifest records as done with an existing output.
    ``process`` must write atomically and refuse to replace an existing
    output unless the user asked (``save_image(overwrite=...)``); an output
    that exists without a done record (a crash between the write and the
    record) is then reported, not silently trusted. Exceptions in :data:`RECOVERABLE` are recorded and the
    batch continues (or stops with ``stop_on_error``); any other exception
    propagates, leaving the manifest valid up to the last finished image.
    """
    summary = BatchSummary()
    total = len(plan)
    for n, (item, out) in enumerate(plan, 1):
        if progress is not None:
            progress(n, total, item.path)
        if manifest is not None and manifest.is_done(item.path, out):
            summary.skipped += 1
            logger.debug("%s: done in a previous run; skipped", item.path)
            continue
        start = time.monotonic()
        record: dict[str, Any] = {
            "input": str(item.path),
            "output": str(out),
            "params": params or {},
            "seed": seed,
        }
        try:
            info = process(item.path, out) or {}
        except RECOVERABLE as exc:
            msg = str(exc) or type(exc).__name__
            summary.failed += 1
            summary.errors.append((str(item.path), msg))
            logger.error("%s: %s", item.path, msg)
            record.update(status="error", error=msg)
            record.update(time=_now(), seconds=round(time.monotonic() - start, 3))
            if manifest is not None:
                manifest.append(record)
            if stop_on_error:
                break
            continue
        record.update(info)
        record.update(status="done", error=None, time=_now(), seconds=round(time.monotonic() - start, 3))
        if manifest is not None:
            manifest.append(record)
        summary.done += 1
    return summary


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
