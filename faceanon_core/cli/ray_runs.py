"""Folders on Ray Data: ``faceanon anonymize DIR -o OUT --ray [ADDRESS|auto]`` and the same for ``redact``.

Ray Data schedules, retries and streams; nothing here is a scheduler. The plan (one row per
photo still to do) flows through three stages:

1. CPU tasks: read the photo, detect the faces (and, for the model, align and crop them);
2. anonymize only: a pool of actors that each hold one pipeline (one GPU each, ``num_gpus=1``,
   where the cluster has GPUs; CPU actors otherwise) and run the model on the crops of one
   photo, chunked to ``--batch-size`` exactly as the single-process command does;
3. CPU tasks: paste back (small faces redacted as asked) and write the photo atomically to a
   hidden staging file next to its output (``media.partials.staged_path``: a run stopped before the
   commit leaves it behind, and the next run on the folder removes it under the folder lock).

The driver alone commits: it renames each staged file to its output (never over an existing
file unless ``--overwrite``) and appends the manifest record, once per input. So a worker that
Ray kills and retries rewrites only its own staging file (the same bytes); no output is written
twice, and two outputs never race for one path (plans refuse clashes). Results equal the
single-process command bit for bit: the same functions on the same data, the same seed for
every face (``--seed``, never a worker's), the same torch thread count in the model actors.
Workers must see the inputs and the output folder at the same paths (a shared filesystem on a
real cluster).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import pickle
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..faces import extract_crops, finish_faces, prepare_faces, run_crops
from ..faces.detect import count_near_limit
from ..media.images import load_image
from ..media.manifest import RECOVERABLE, BatchSummary, Manifest
from ..media.partials import staged_path
from .errors import CliError
from .options import detector_from_args, loop_options

logger = logging.getLogger(__name__)

__all__ = ["RAY_EXTRA_HINT", "batch_runner", "connect", "run_on_ray"]

RAY_EXTRA_HINT = 'pip install "comfyui-faceanon[ray]"'
#: Ray retries a task (or restarts an actor and retries its call) this often after a worker dies.
RETRIES = 3


def check_address(address: str | None) -> str | None:
    """``$RAY_ADDRESS`` for ``--ray auto`` (an error before any work when it is not set)."""
    env = os.environ.get("RAY_ADDRESS")
    if address == "auto" and not env:
        raise CliError("--ray auto joins the cluster in $RAY_ADDRESS, which is not set: start one with "
                       "`ray start --head` and export RAY_ADDRESS, or pass --ray HOST:PORT")
    return env


def connect(address: str | None) -> bool:
    """Start or join Ray. ``local``: a new instance on this machine; ``auto``: ``$RAY_ADDRESS``.

    Returns True when this call started Ray (the caller shuts it down again). A Ray already
    initialised in this process (a test, a notebook) is used as it is.
    """
    try:
        import ray
    except ImportError as exc:
        raise CliError(f"--ray needs Ray Data: {RAY_EXTRA_HINT}") from exc
    env = check_address(address)
    if ray.is_initialized():
        return False
    if address in (None, "local"):
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    elif address == "auto":
        ray.init(address=env, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return True


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed options as plain data for the workers (no functions)."""
    return {k: v for k, v in vars(args).items() if not callable(v)}


@functools.lru_cache(maxsize=4)
def _detector(min_face_size: float, threshold: float):
    """One detector per worker process (Ray reuses workers between tasks): the single process's."""
    return detector_from_args(argparse.Namespace(min_face_size=min_face_size, threshold=threshold))


def _crash_once_for_tests(s: dict, stage: str, src: str) -> None:
    """Test seam: ``_crash`` = {stage, name, marker} kills this worker once (the marker says it happened)."""
    crash = s.get("_crash")
    if crash and crash["stage"] == stage and Path(src).name == crash["name"] and not Path(crash["marker"]).exists():
        Path(crash["marker"]).write_text(str(os.getpid()))
        os._exit(1)


def _rows(batch) -> list[dict]:
    return [pickle.loads(blob) for blob in batch["payload"]]


def _batch(rows: list[dict]) -> dict:
    return {"payload": np.array([pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in rows], dtype=object)}


def _guarded(row: dict, fn) -> dict:
    """Run one stage on a row; a bad photo (RECOVERABLE) becomes the row's error, as in ``run_batch``."""
    if row.get("error"):
        return row
    start = time.monotonic()
    try:
        fn(row)
    except RECOVERABLE as exc:
        row["error"] = str(exc) or type(exc).__name__
        row.pop("image", None)
    row["seconds"] = row.get("seconds", 0.0) + time.monotonic() - start
    return row


def read_detect(batch, settings: dict, mode: str) -> dict:
    """Stage 1 (CPU): read and detect; for the model without the guard also the single process's first step
    of a photo (:func:`faces.prepare_faces`: align, refuse small faces under ``fail``) and the crops."""
    def one(row):
        img = load_image(row["src"])
        found = _detector(settings["min_face_size"], settings["threshold"]).detect(img.rgb)
        row["image"], row["near"] = img, count_near_limit(found, settings["min_face_size"])
        if mode == "anonymize" and not settings.get("_verify"):
            aligned, skipped = prepare_faces(img.rgb, loop_options(argparse.Namespace(**settings)), faces=found,
                                             image_name=row["src"])
            row["aligned"], row["skipped"] = aligned, skipped
            row["crops"] = extract_crops(img.rgb, aligned) if aligned else None
        else:
            row["faces"] = found
    return _batch([_guarded(row, one) for row in _rows(batch)])


class ModelStage:
    """Stage 2 (actor): one pipeline per actor; the model on the crops of one photo at a time."""

    def __init__(self, settings: dict):
        import torch

        from .anonymize import crop_processor
        from .loading import load_pipeline

        if settings.get("_threads"):
            torch.set_num_threads(settings["_threads"])  # the driver's count: the same float reductions
        self.settings = settings
        self.args = argparse.Namespace(**settings)
        self.pipe = load_pipeline(self.args)
        self.pipe.set_progress_bar_config(disable=True)
        self.process_crops = crop_processor(self.pipe, self.args)
        self.batch_size = loop_options(self.args).batch_size
        self.recognizer = None
        if settings.get("_verify"):
            from ..privacy.identity import default_recognizer

            self.recognizer = default_recognizer()

    def __call__(self, batch) -> dict:
        from .anonymize import anonymize_faces

        def one(row):
            _crash_once_for_tests(self.settings, "model", row["src"])
            if self.recognizer is None:  # the crops of faces.prepare_faces, run as process_faces runs them
                if row["crops"] is not None:
                    owners = [(row["src"], f.index) for f in row["aligned"]]
                    row["processed"] = run_crops(row["crops"], self.process_crops, owners, self.batch_size)
                row.pop("crops")
                return
            # the guard retries on the whole photo: the single process's call, pasted and small faces handled
            row["result"] = anonymize_faces(row["image"].rgb, row.pop("faces"), self.args, self.pipe,
                                            self.recognizer, name=row["src"])
        return _batch([_guarded(row, one) for row in _rows(batch)])


def paste_write(batch, settings: dict, mode: str) -> dict:
    """Stage 3 (CPU): the single process's last step of a photo (paste back and small faces, or the redaction)
    and its writer, into the staging file; returns small rows for the driver."""
    from .anonymize import save_anonymized
    from .faces import redact_photo

    args = argparse.Namespace(**settings)

    def one(row):
        img, src = row.pop("image"), row["src"]
        staged = staged_path(Path(row["dst"]))
        if mode == "redact":
            row["info"] = redact_photo(img, row.pop("faces"), staged, args, row["near"], name=src, overwrite=True)
        else:
            result = row.pop("result", None)
            if result is None:
                result = finish_faces(img.rgb, row.pop("aligned"), row.pop("skipped"), row.pop("processed", None),
                                      loop_options(args), src)
            row["info"] = save_anonymized(staged, img, result, args, row["near"], overwrite=True)
        row["staged"] = str(staged)
        _crash_once_for_tests(settings, "write", src)  # after the staging write, before the driver hears of it

    rows = [_guarded(row, one) for row in _rows(batch)]
    for row in rows:
        for key in ("image", "faces", "aligned", "skipped", "crops", "processed", "result"):
            row.pop(key, None)
    return _batch(rows)


def _commit(staged: Path, dst: Path, overwrite: bool) -> None:
    """Move a finished staging file to its output: atomic, and never over a file without ``overwrite``."""
    if overwrite:
        os.replace(staged, dst)
        return
    try:
        os.link(staged, dst)  # fails if dst exists: no clobbering, no race
    except FileExistsError:
        staged.unlink(missing_ok=True)
        raise
    except OSError:  # a filesystem without hard links
        if dst.exists():
            staged.unlink(missing_ok=True)
            raise FileExistsError(dst) from None
        os.replace(staged, dst)
        return
    staged.unlink()


def _model_actors(settings: dict) -> tuple[int, float]:
    """(actors, GPUs per actor): one actor per GPU of the cluster; else CPU actors, one per 2 CPUs."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if settings.get("_actors"):
        return int(settings["_actors"]), 1.0 if gpus else 0.0
    if gpus:
        return gpus, 1.0
    return max(1, int(resources.get("CPU", 1)) // 2), 0.0


def run_on_ray(args: argparse.Namespace, mode: str, plan, manifest: Manifest | None, params: dict,
               seed: int | None = None, *, extra: dict | None = None, progress=None) -> BatchSummary:
    """Run ``plan`` (``(InputItem, output)`` pairs) on Ray Data with the manifest semantics of ``run_batch``.

    ``mode`` is ``"redact"`` or ``"anonymize"``; ``extra`` adds worker settings (``_verify``: the
    leak guard is on; ``_actors``: model actors; ``_workers``: concurrent CPU tasks per stage).
    """
    started = connect(getattr(args, "ray", None))
    plan = list(plan)
    try:
        return _run(args, mode, plan, manifest, params, seed, extra or {}, progress)
    finally:
        if started:
            import ray

            ray.shutdown()
        # Tasks still in flight when the run stopped early (--stop-on-error, a failure) may have written
        # staging files after _run's own cleanup; the driver commits by renaming, so any left are uncommitted.
        for _, out in plan:
            staged_path(out).unlink(missing_ok=True)


def _run(args, mode, plan, manifest, params, seed, extra, progress) -> BatchSummary:
    import ray
    import torch

    summary = BatchSummary()
    settings = {**_settings(args), **extra, "_threads": torch.get_num_threads()}
    todo = []
    for item, out in plan:
        if manifest is not None and manifest.is_done(item.path, out):
            summary.skipped += 1
            if progress:
                progress()
        else:
            todo.append((item, Path(out)))
    if not todo:
        return summary

    def record(item, out, **fields):
        rec = {"input": str(item.path), "output": str(out), "params": params or {}, "seed": seed, **fields,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if manifest is not None:
            manifest.append(rec)

    def fail(item, out, msg, seconds=0.0):
        summary.failed += 1
        summary.errors.append((str(item.path), msg))
        logger.error("%s: %s", item.path, msg)
        record(item, out, status="error", error=msg, seconds=round(seconds, 3))

    rows = []
    for n, (item, out) in enumerate(todo):
        if out.exists() and not args.overwrite:  # what save_image would refuse, found before any work
            fail(item, out, f"{out}: output exists; pass --overwrite (overwrite=True) to replace it")
            if progress:
                progress()
            if args.stop_on_error:
                return summary
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        rows.append({"index": n, "src": str(item.path), "dst": str(out)})
    if not rows:
        return summary

    workers = settings.get("_workers")
    task_args = {"batch_size": 1, "num_cpus": 1, "max_retries": RETRIES,
                 **({"concurrency": workers} if workers else {})}
    with warnings.catch_warnings():  # bounded retries are 'ray_remote_args', deprecated in 2.60, kept to <2.64
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ray.data.from_items([{"payload": pickle.dumps(r)} for r in rows], override_num_blocks=len(rows))
        ds = ds.map_batches(read_detect, fn_kwargs={"settings": settings, "mode": mode}, **task_args)
        if mode == "anonymize":
            actors, gpus = _model_actors(settings)
            ds = ds.map_batches(ModelStage, fn_constructor_kwargs={"settings": settings}, batch_size=1,
                                concurrency=actors, num_gpus=gpus, num_cpus=0 if gpus else 1,
                                max_restarts=RETRIES, max_task_retries=RETRIES)
        ds = ds.map_batches(paste_write, fn_kwargs={"settings": settings, "mode": mode}, **task_args)

    by_index = {n: todo[n] for n in (r["index"] for r in rows)}
    committed: set[int] = set()
    try:
        for batch in ds.iter_batches(batch_size=1, batch_format="numpy"):
            for row in _rows(batch):
                n = row["index"]
                if n in committed:  # a duplicate delivery: never commit twice
                    continue
                committed.add(n)
                item, out = by_index[n]
                if progress:
                    progress()
                if row.get("error"):
                    fail(item, out, row["error"], row.get("seconds", 0.0))
                else:
                    try:
                        _commit(Path(row["staged"]), out, args.overwrite)
                    except FileExistsError:
                        fail(item, out, f"{out}: output exists; pass --overwrite (overwrite=True) to replace it")
                    else:
                        summary.done += 1
                        for k, v in row["info"].items():  # as run_batch sums them (faces, faces_near_min_size)
                            if isinstance(v, int) and not isinstance(v, bool):
                                summary.totals[k] = summary.totals.get(k, 0) + v
                        record(item, out, **row["info"], status="done", error=None,
                               seconds=round(row.get("seconds", 0.0), 3))
                if summary.failed and args.stop_on_error:
                    return summary
    except Exception as exc:  # a task that failed after every retry: stop, the manifest holds what is done
        if isinstance(exc, (KeyboardInterrupt, CliError)):
            raise
        raise CliError(f"the Ray run stopped: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                       f" ({summary.done} photo(s) written and recorded; rerun to continue)") from exc
    finally:
        for n, (_, out) in by_index.items():  # staging files of photos not committed (stopped early)
            if n not in committed:
                staged_path(out).unlink(missing_ok=True)
    return summary


def batch_runner(args: argparse.Namespace, mode: str):
    """A drop-in for :func:`faceanon_core.media.manifest.run_batch` that runs the plan on Ray.

    The commands plan, open the manifest and build the record's params as always; only the loop
    over the plan changes (``process``, the single-process callable, is not used).
    """
    check_address(args.ray)  # a usage error, before any folder is planned or locked
    if mode == "anonymize" and getattr(args, "aligned", False):
        raise CliError("--ray runs photos and folders (faces are found and pasted back); "
                       "drop --aligned, or run aligned crops without --ray")

    def runner(plan, process=None, *, manifest=None, params=None, seed=None, stop_on_error=False, progress=None):
        extra = {}
        if mode == "anonymize" and (params or {}).get("verify"):
            extra["_verify"] = True  # the driver found the recognizer: the actors check every face too
        total, done = len(plan), [0]

        def tick():
            done[0] += 1
            if progress is not None:
                progress(done[0], total, None)

        return run_on_ray(args, mode, plan, manifest, params, seed, extra=extra, progress=tick)

    return runner
