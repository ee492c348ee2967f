"""A folder through one workflow on one or more ComfyUI servers, with a manifest to resume from.

Each input file is one run: uploaded into a random folder of its own, set into the workflow's loader
node, queued under a prompt id chosen here (written to the manifest *before* the POST, so a run that
reached the server is found again after a crash), followed by polling ``/history`` and downloaded all
or nothing into ``OUT/<input stem>/`` (a hidden staging folder renamed into place).

The manifest (``OUT/manifest.jsonl`` by default) holds exactly one JSON line per input, rewritten
atomically (temp + rename) at every change: ``input``, ``status`` (pending, queued, done, failed),
``server``, ``prompt_id``, ``outputs`` (paths relative to OUT), ``error`` (the server's own text).
On resume: done inputs are skipped; queued ones are looked up on their server (``/history``, then
``/queue``) and only requeued when the server has no trace of them; failed ones run again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, QueueError
from .server import (
    Client,
    execution_error,
    finished,
    new_run_folder,
    output_items,
    relative_target,
)
from .workflows import in_run_folder

logger = logging.getLogger("faceanon.queue")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


def folder_inputs(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The folder's files (not hidden, recursively) with one of ``suffixes``, sorted."""
    if not folder.is_dir():
        raise QueueError(f"--inputs {folder}: not a folder")
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in suffixes
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise QueueError(f"--inputs {folder}: no input files ({' '.join(suffixes)})")
    return files


def prompt_hash(prompt: dict) -> str:
    return hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Job:
    input: Path
    key: str  # the input's path relative to --inputs (posix): its manifest key
    target: str  # its output folder, relative to OUT
    record: dict = field(default_factory=dict)
    client: Client | None = None


class Manifest:
    """One JSON line per input; the whole file replaced atomically on every change."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict] = {}
        if path.exists():
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    self.records[record["input"]] = record
                except (ValueError, KeyError, TypeError):
                    raise QueueError(f"{path}:{number}: not a manifest line of faceanon queue: {line[:200]}",
                                     EXIT_USAGE) from None

    def write(self, order: list[str]) -> None:
        text = "".join(json.dumps(self.records[key], sort_keys=True) + "\n" for key in order if key in self.records)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def download_into(client: Client, items: list[dict], out: Path, target: str) -> list[str]:
    """All of one run's files into ``out/target/`` or none: staged in a hidden folder, renamed into place."""
    relatives = [relative_target(item) for item in items]
    if len(set(relatives)) != len(relatives):
        raise QueueError("the server returned two outputs with the same name", EXIT_FAILED)
    final = out / target
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".faceanon-{final.name}.", suffix=".part", dir=final.parent))
    try:
        for item, relative in zip(items, relatives, strict=True):
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            client.download(item, path)
        old = None
        if final.exists():  # an earlier, complete result of this input (e.g. renamed just before a crash)
            old = final.parent / f".faceanon-{final.name}.{uuid.uuid4().hex[:8]}.old"
            os.replace(final, old)
        os.replace(staging, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [f"{target}/{relative}" for relative in relatives]


class FolderRun:
    """The loop: keep up to ``max_in_flight`` prompts per server, collect finished ones, rewrite the manifest."""

    def __init__(self, clients: list[Client], template: dict, loader: tuple[str, str], inputs: Path,
                 out: Path, manifest: Path, *, max_in_flight: int = 2, include_temp: bool = False,
                 overwrite: bool = False, timeout: float = 3600.0, poll_interval: float = 1.0,
                 progress: bool = True, suffixes: tuple[str, ...] = IMAGE_SUFFIXES):
        if max_in_flight < 1:
            raise QueueError("--max-in-flight must be at least 1")
        self.clients = {client.base: client for client in clients}
        self.template = template
        self.loader = loader
        self.out = out
        self.include_temp = include_temp
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.max_in_flight = max_in_flight
        self.progress = progress
        self.params = prompt_hash(template)
        files = folder_inputs(inputs, suffixes)
        self.jobs: list[Job] = []
        targets: dict[str, str] = {}
        for path in files:
            key = path.relative_to(inputs).as_posix()
            target = str(Path(key).with_suffix(""))
            if target in targets or target == Path(manifest).name:
                raise QueueError(f"--inputs: {targets.get(target, key)} and {key} would share the output folder "
                                 f"{out / target}: rename one")
            targets[target] = key
            self.jobs.append(Job(path, key, target))
        out.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(manifest)
        self.order = [job.key for job in self.jobs]
        for job in self.jobs:
            old = self.manifest.records.get(job.key)
            if old is not None and old.get("status") == "done" and old.get("params") != self.params and not overwrite:
                raise QueueError(f"{manifest}: {job.key} was done with another workflow or other --set values: "
                                 f"use --overwrite to run every input again, or another --out", EXIT_USAGE)
            if old is None or (overwrite and old.get("status") == "done" and old.get("params") != self.params):
                if (out / job.target).exists() and not overwrite:
                    raise QueueError(f"{out / job.target} exists and the manifest has no record of it: use "
                                     f"--overwrite or another --out", EXIT_USAGE)
                old = {"input": job.key, "status": "pending"}
            job.record = dict(old)
            self.manifest.records[job.key] = job.record
        self.manifest.write(self.order)

    # ---------------------------------------------------------------- one input

    def _client_for(self, job: Job, in_flight: dict[str, int]) -> Client:
        return min(self.clients.values(), key=lambda c: (in_flight.get(c.base, 0), list(self.clients).index(c.base)))

    def _submit(self, job: Job, client: Client) -> None:
        run_folder = new_run_folder()
        node_id, key = self.loader
        prompt_id = str(uuid.uuid4())
        job.client = client
        job.record.update(status="queued", server=client.base, prompt_id=prompt_id, params=self.params,
                          outputs=[], error=None, queued_at=time.time())
        self.manifest.write(self.order)  # before the upload and POST: a crash after them finds the run by its id
        stored = client.upload(job.input.name, job.input, run_folder)
        prompt = in_run_folder(self.template, run_folder, node_files={(node_id, key): stored})
        client.queue(prompt, prompt_id)
        logger.info("%s: queued prompt %s on %s", job.key, prompt_id, client.base)

    def _collect(self, job: Job, entry: dict) -> None:
        message = execution_error(entry)
        if message:
            raise QueueError(message, EXIT_FAILED)
        items = output_items(entry, self.include_temp)
        if not items:
            raise QueueError("the run finished without output files", EXIT_FAILED)
        job.record.update(status="done", outputs=download_into(job.client, items, self.out, job.target), error=None)

    def _fail(self, job: Job, exc: QueueError) -> None:
        job.record.update(status="failed", error=str(exc))
        logger.error("%s: %s", job.key, exc)

    # ---------------------------------------------------------------- the loop

    def run(self) -> int:
        from tqdm import tqdm

        todo = [job for job in self.jobs if job.record.get("status") != "done"]
        in_flight: list[Job] = []
        pending: list[Job] = []
        for job in todo:
            if job.record.get("status") == "queued" and job.record.get("server") in self.clients:
                job.client = self.clients[job.record["server"]]
                in_flight.append(job)  # checked on its server before anything is requeued
            else:
                pending.append(job)
        bar = tqdm(total=len(self.jobs), initial=len(self.jobs) - len(todo), unit="input", desc="queue",
                   disable=not self.progress or None, file=sys.stderr)
        try:
            self._recheck(in_flight, pending)
            while pending or in_flight:
                counts: dict[str, int] = {}
                for job in in_flight:
                    counts[job.client.base] = counts.get(job.client.base, 0) + 1
                while pending and min(counts.get(b, 0) for b in self.clients) < self.max_in_flight:
                    job = pending.pop(0)
                    client = self._client_for(job, counts)
                    try:
                        self._submit(job, client)
                    except QueueError as exc:
                        if exc.code == EXIT_USAGE:  # the server refused the workflow: every input would fail
                            job.record.update(status="failed", error=str(exc))
                            self.manifest.write(self.order)
                            raise
                        self._fail(job, exc)
                        self.manifest.write(self.order)
                        bar.update(1)
                        continue
                    in_flight.append(job)
                    counts[client.base] = counts.get(client.base, 0) + 1
                time.sleep(self.poll_interval)
                for job in list(in_flight):
                    try:
                        entry = job.client.history(job.record["prompt_id"])
                        if not finished(entry):
                            if time.time() - job.record.get("queued_at", time.time()) > self.timeout:
                                raise QueueError(f"prompt {job.record['prompt_id']} did not finish in time "
                                                 f"(--timeout); it may still be queued or running on the server",
                                                 EXIT_FAILED)
                            continue
                        self._collect(job, entry)
                    except QueueError as exc:
                        self._fail(job, exc)
                    in_flight.remove(job)
                    self.manifest.write(self.order)
                    bar.update(1)
        finally:
            bar.close()
        failed = [job for job in self.jobs if job.record.get("status") != "done"]
        for job in failed:
            print(f"faceanon queue: {job.key}: failed: {job.record.get('error')}", file=sys.stderr)
        done = len(self.jobs) - len(failed)
        print(f"faceanon queue: {done} of {len(self.jobs)} inputs done, {len(failed)} failed; manifest "
              f"{self.manifest.path}", file=sys.stderr)
        return EXIT_FAILED if failed else EXIT_OK

    def _recheck(self, in_flight: list[Job], pending: list[Job]) -> None:
        """Runs a killed command left queued: finished ones are collected, running ones waited for, and
        only those their server never got (or forgot) requeued."""
        if not in_flight:
            return
        busy: dict[str, set] = {}
        for job in list(in_flight):
            try:
                entry = job.client.history(job.record["prompt_id"])
                if entry is not None:
                    continue  # finished (or failing): the loop collects it
                if job.client.base not in busy:
                    busy[job.client.base] = job.client.queued_ids()
                if job.record["prompt_id"] in busy[job.client.base]:
                    continue  # still waiting or running there
            except QueueError as exc:
                logger.warning("%s: cannot check prompt %s on %s (%s): running it again", job.key,
                               job.record.get("prompt_id"), job.client.base, exc)
            logger.info("%s: prompt %s is unknown to %s: queueing it again", job.key, job.record.get("prompt_id"),
                        job.client.base)
            in_flight.remove(job)
            pending.insert(0, job)
