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

import contextlib
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .plans import InputError, InputItem

logger = logging.getLogger(__name__)

__all__ = ["BatchSummary", "FolderBusyError", "LOCK_NAME", "Manifest", "ParamsChangedError", "RECOVERABLE", "RunLock",
           "run_batch"]

#: The lock file a run keeps in its output folder while it works there.
LOCK_NAME = ".faceanon.lock"


class FolderBusyError(InputError):
    """Another run holds the output folder."""


class ParamsChangedError(InputError):
    """The manifest's finished photos were made with other parameters than this run's."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    except OSError:
        return True
    return True


def _unwritable(folder: Path, exc: OSError) -> InputError:
    why = "is on a read-only file system" if exc.errno == errno.EROFS else "is not writable by you"
    return InputError(f"{folder}: the output folder {why} ({exc.strerror or exc}); choose a folder you can "
                      "write to with -o, or fix its permissions")


class RunLock:
    """One run at a time per output folder: a lock file holding the owner's pid, host and start time.

    A lock whose process is gone (same host, pid not running) is stale and taken over with a
    warning. Otherwise :meth:`acquire` raises :class:`FolderBusyError` naming the owner, or with
    ``wait`` polls until the owner is done. Use as a context manager.
    """

    def __init__(self, folder: str | os.PathLike, *, wait: bool = False, poll_s: float = 0.5,
                 command: str = "") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.wait = wait
        self.poll_s = poll_s
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._held = False

    def _read(self) -> dict[str, Any] | None:
        try:
            rec = json.loads(self.path.read_text(encoding="utf-8"))
            return rec if isinstance(rec, dict) else None
        except (OSError, ValueError):
            return None

    def _stale(self, owner: dict[str, Any] | None) -> bool:
        if owner is None:  # empty or torn: being written right now, or left by a crash while writing
            with contextlib.suppress(OSError):
                return time.time() - self.path.stat().st_mtime > 10.0
            return False
        if owner.get("host") != self.info["host"]:
            return False  # another machine's process: we cannot tell, so it holds the folder
        try:
            return not _pid_alive(int(owner.get("pid")))
        except (TypeError, ValueError):
            return True

    def acquire(self) -> RunLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise _unwritable(self.folder, exc) from exc
            raise InputError(f"{self.folder}: cannot create the output folder ({exc.strerror or exc})") from exc
        announced = False
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._read()
                if self._stale(owner):
                    was = (f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}"
                           + (f" by `faceanon {owner['command']}`" if owner.get("command") else "")
                           if owner else "an empty lock file")
                    logger.warning("%s: a run that is gone (%s) left its lock; taking over", self.folder, was)
                    with contextlib.suppress(FileNotFoundError):
                        if self._read() == owner:
                            self.path.unlink()
                    continue
                who = (f"pid {owner.get('pid')} on {owner.get('host')}, since {owner.get('started')}"
                       if owner else "starting up")
                if not self.wait:
                    raise FolderBusyError(
                        f"{self.folder} is in use by another faceanon run ({who}); wait for it to finish, pass "
                        f"--wait to queue behind it, or choose another output folder. If that run is gone "
                        f"(another machine, or a crash), delete {self.path}") from None
                if not announced:
                    logger.warning("%s is in use by another run (%s); waiting for it to finish", self.folder, who)
                    announced = True
                time.sleep(self.poll_s)
                continue
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise _unwritable(self.folder, exc) from exc
                raise
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.info, fh)
                fh.flush()
                os.fsync(fh.fileno())
            self._held = True
            return self

    def release(self) -> None:
        if self._held:
            self._held = False
            with contextlib.suppress(OSError):
                if self._read() == self.info:
                    self.path.unlink()

    def __enter__(self) -> RunLock:  # noqa: PYI034
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def params_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{name: (old, new)}`` for the parameters that differ (a missing one is ``None``)."""
    keys = sorted(set(old) | set(new))
    norm = lambda v: json.loads(json.dumps(v, default=str))  # noqa: E731  (tuples vs lists, paths)
    return {k: (old.get(k), new.get(k)) for k in keys if norm(old.get(k)) != norm(new.get(k))}

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

    def is_done(self, input_path: str | os.PathLike, output: str | os.PathLike | None = None,
                params: dict[str, Any] | None = None) -> bool:
        """True if the last record for ``input_path`` is done, its output file exists and (when
        ``params`` is given) it was made with these parameters."""
        rec = self.records.get(self.key(input_path))
        if not rec or rec.get("status") != "done":
            return False
        if params is not None and params_diff(rec.get("params") or {}, params):
            return False
        out = output if output is not None else rec.get("output")
        return bool(out) and Path(out).is_file()

    def changed_params(self, inputs: Sequence[str | os.PathLike], params: dict[str, Any], *,
                       params_of: Callable[[Path], dict[str, Any]] | None = None) -> dict[str, tuple]:
        """What differs between ``params`` (or each input's ``params_of(input)``) and those of the finished
        inputs among ``inputs``."""
        return self._changed(inputs, params, params_of)[0]

    def _changed(self, inputs, params, params_of) -> tuple[dict[str, tuple], int, int]:
        """(differences, finished inputs made with other parameters, of which videos)."""
        from .plans import is_video

        diffs: dict[str, tuple] = {}
        stale = videos = 0
        for p in inputs:
            rec = self.records.get(self.key(p))
            if rec and rec.get("status") == "done":
                changed = params_diff(rec.get("params") or {}, params_of(Path(p)) if params_of else params)
                for k, v in changed.items():
                    diffs.setdefault(k, v)
                if changed:
                    stale += 1
                    videos += is_video(p)
        return diffs, stale, videos

    def check_params(self, inputs: Sequence[str | os.PathLike], params: dict[str, Any], *, overwrite: bool,
                     params_of: Callable[[Path], dict[str, Any]] | None = None) -> int:
        """Refuse a rerun whose parameters differ from the finished inputs' (:class:`ParamsChangedError`
        listing what differs), unless ``overwrite``; returns how many finished inputs will be redone.
        ``params_of(input)``, when given, gives each input's parameters (a folder's videos have more)."""
        diffs, stale, videos = self._changed(inputs, params, params_of)
        if not diffs:
            return 0
        kinds = [f"{n} {name}(s)" for n, name in ((stale - videos, "photo"), (videos, "video")) if n]
        what = " and ".join(kinds)
        if not overwrite:
            listed = "; ".join(f"{k}: {json.dumps(o, default=str)} then, {json.dumps(n, default=str)} now"
                               for k, (o, n) in diffs.items())
            raise ParamsChangedError(
                f"{what} in {self.path.parent} were made with other parameters ({listed}); pass "
                "--overwrite to redo them with the new ones, or choose another output folder")
        logger.warning("%s made with other parameters (%s) are redone (--overwrite)", what, ", ".join(diffs))
        return stale

    def note_skipped(self, paths: Sequence[str | os.PathLike], reason: str) -> None:
        """Record files a run left out (not photos), once per file and reason."""
        for p in paths:
            rec = self.records.get(self.key(p))
            if rec and rec.get("status") == "skipped" and rec.get("reason") == reason:
                continue
            self.append({"input": str(p), "status": "skipped", "reason": reason, "time": _now()})

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
    #: Sums of the integer facts the callable returned (``faces``, ``faces_near_min_size`` ...).
    totals: dict[str, int] = field(default_factory=dict)

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
    params_of: Callable[[Path], dict[str, Any]] | None = None,
) -> BatchSummary:
    """Run ``process(input, output)`` over ``plan``, resumably.

    ``params_of(input)``, when given, gives each input's parameters instead of ``params`` (a folder run's
    videos have parameters its photos do not: they are compared and recorded per input).

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
        item_params = params_of(item.path) if params_of is not None else params
        if manifest is not None and manifest.is_done(item.path, out, item_params):
            summary.skipped += 1
            logger.debug("%s: done in a previous run; skipped", item.path)
            continue
        start = time.monotonic()
        record: dict[str, Any] = {
            "input": str(item.path),
            "output": str(out),
            "params": item_params or {},
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
        for k, v in info.items():
            if isinstance(v, int) and not isinstance(v, bool):
                summary.totals[k] = summary.totals.get(k, 0) + v
        record.update(status="done", error=None, time=_now(), seconds=round(time.monotonic() - start, 3))
        if manifest is not None:
            manifest.append(record)
        summary.done += 1
    return summary


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
