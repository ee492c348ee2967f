"""A resumable run over a plan: the per-image driver and its append-only manifest.

The driver is generic: it takes a per-image callable that reads one input and writes one output
(atomically, through :func:`faceanon_core.media.images.save_image`) and returns a dict of facts for
the manifest.

The manifest is a JSON-lines file, append-only, flushed and fsync'ed after every record, so a run
over 10,000 photos that is killed continues where it stopped: inputs whose last record says ``done``
and whose output exists are skipped; everything else is (re)done. A torn last line from a crash is
ignored.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .plans import InputError, InputItem

logger = logging.getLogger(__name__)

__all__ = ["BatchSummary", "Manifest", "RECOVERABLE", "run_batch"]

#: Exceptions a per-image callable may raise for a bad image; they are recorded
#: and the batch goes on. Anything else (a bug, KeyboardInterrupt) stops the run.
RECOVERABLE = (ValueError, RuntimeError, OSError)


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
