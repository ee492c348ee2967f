"""Redaction throughput on Ray Data: one worker vs two, in the same run (plus the single-process command).

A local Ray instance with ``--cpus`` CPUs; a folder of real face photos (public-domain samples,
copied ``--photos`` times); ``faceanon redact DIR -o OUT --ray`` with the CPU stages limited to 1
and then 2 concurrent tasks, after a warm-up run that starts the workers. Prints one JSON line.

    python -m benchmarks.ray_throughput                # 2 CPUs, 24 photos
    python -m benchmarks.ray_throughput --cpus 8 --workers 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image


def write_photos(folder: Path, count: int) -> None:
    from faceanon_core.samples import sample_path

    grace = Image.open(sample_path("grace_hopper")).convert("RGB")
    try:
        from skimage import data

        astronaut = Image.fromarray(data.astronaut())
    except ImportError:
        astronaut = grace.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for i in range(count):
        (grace if i % 2 else astronaut).save(folder / f"photo_{i:04d}.png")


def redact(photos: Path, out: Path, workers: int | None) -> float:
    from faceanon_core.cli import ray_runs
    from faceanon_core.cli.main import build_parser

    shutil.rmtree(out, ignore_errors=True)
    args = build_parser().parse_args(["redact", str(photos), "-o", str(out), "--ray"])
    if workers is not None:
        args._workers = workers  # concurrent CPU tasks per stage (a worker setting of the engine)
        args.batch_runner = ray_runs.batch_runner(args, "redact")
    else:
        args.ray = None
    start = time.perf_counter()
    code = args.func(args)
    elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"redaction failed (exit {code})")
    return elapsed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    import logging

    import ray

    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = tmp / "photos"
        photos.mkdir()
        write_photos(photos, args.photos)
        single = redact(photos, tmp / "single", None)  # no Ray: the baseline command
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        try:
            redact(photos, tmp / "warm", max(args.workers))  # starts and warms the workers
            seconds = {w: redact(photos, tmp / f"w{w}", w) for w in args.workers}
        finally:
            ray.shutdown()
    base = seconds[args.workers[0]]
    print(json.dumps({
        "benchmark": "ray_throughput", "photos": args.photos, "cpus": args.cpus,
        "single_process_s": round(single, 3), "single_process_photos_per_s": round(args.photos / single, 3),
        **{f"workers_{w}_s": round(s, 3) for w, s in seconds.items()},
        **{f"workers_{w}_photos_per_s": round(args.photos / s, 3) for w, s in seconds.items()},
        **{f"speedup_{w}_vs_{args.workers[0]}": round(base / s, 3) for w, s in seconds.items() if w != args.workers[0]},
    }))


if __name__ == "__main__":
    main()
