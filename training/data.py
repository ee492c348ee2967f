"""Triplet datasets: reading, checking (``check-data``), deterministic sampling, alignment.

A dataset is a JSON-lines file, one triplet per line, paths relative to an images folder:

    {"source_image": "a/1.png", "conditioning_image": "a/2_swapped.png", "ground_truth": "a/2.png"}

The source and the ground truth show the same person; the conditioning (driving) image
and the ground truth share pose, expression and background.  An optional
``"driving": "real" | "synthetic"`` (default synthetic) tags triplets whose driving
image is a real photo (the paper's curriculum: ground truth = its face-swapped version,
source = the person swapped in); ``curriculum.real_driving`` sets how often those are drawn.

Every random decision for a sample (which line, flip, conditioning dropout, timestep,
noise) is a function of ``(seed, global sample index)``, so a resumed run sees exactly the
samples and noise of an uninterrupted one, whatever the number of processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .config import parse_schedule, schedule_value

ROLES = ("source_image", "conditioning_image", "ground_truth")
DRIVING_KINDS = ("real", "synthetic")


class DatasetError(ValueError):
    """A dataset failed its check; ``report`` holds the findings."""

    def __init__(self, report: DataReport):
        self.report = report
        super().__init__(report.format())


@dataclass
class Triplet:
    line: int
    source_image: str
    conditioning_image: str
    ground_truth: str
    driving: str = "synthetic"

    def paths(self, root: Path) -> dict[str, Path]:
        return {role: resolve(root, getattr(self, role)) for role in ROLES}


@dataclass
class Finding:
    severity: str  # error | warning
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{self.severity.upper():7s} {where}{self.message}"


@dataclass
class DataReport:
    path: str
    images_dir: str
    triplets: int = 0
    real_driving: int = 0
    images_checked: int = 0
    mode: str = "quick"
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, severity: str, line: int | None, message: str) -> None:
        self.findings.append(Finding(severity, line, message))

    def format(self, limit: int = 50) -> str:
        head = (f"dataset {self.path} (images in {self.images_dir}): {self.triplets} triplets "
                f"({self.real_driving} with a real driving image), {self.images_checked} images checked "
                f"[{self.mode}]: {len(self.errors)} errors, {len(self.warnings)} warnings")
        lines = [head]
        shown = self.errors + self.warnings
        lines += [f"  {f}" for f in shown[:limit]]
        if len(shown) > limit:
            lines.append(f"  ... and {len(shown) - limit} more (see --json for all)")
        lines.append("OK: the dataset can be used for training" if self.ok
                     else "BROKEN: fix the errors above before training")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"path": self.path, "images_dir": self.images_dir, "triplets": self.triplets,
                "real_driving": self.real_driving, "images_checked": self.images_checked, "mode": self.mode,
                "ok": self.ok, "errors": len(self.errors), "warnings": len(self.warnings),
                "findings": [{"severity": f.severity, "line": f.line, "message": f.message} for f in self.findings]}


def resolve(root: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def default_images_dir(jsonl: str | os.PathLike, images: str | os.PathLike | None) -> Path:
    return Path(images).expanduser() if images else Path(jsonl).expanduser().resolve().parent


def read_triplets(jsonl: str | os.PathLike, report: DataReport | None = None) -> list[Triplet]:
    """Parse the file; malformed lines become errors in ``report`` (or raise without one)."""
    path = Path(jsonl).expanduser()
    own = report is None
    report = report or DataReport(str(path), "")
    triplets: list[Triplet] = []
    try:
        text = path.read_text()
    except OSError as exc:
        report.add("error", None, f"cannot read the dataset file: {exc}")
        text = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except ValueError as exc:
            report.add("error", number, f"not valid JSON ({exc})")
            continue
        if not isinstance(item, dict):
            report.add("error", number, "must be a JSON object with source_image, conditioning_image, ground_truth")
            continue
        missing = [role for role in ROLES if not isinstance(item.get(role), str) or not item.get(role)]
        if missing:
            report.add("error", number, f"missing or non-string key(s): {', '.join(missing)}")
            continue
        driving = item.get("driving", "synthetic")
        if driving not in DRIVING_KINDS:
            report.add("error", number, f"\"driving\" must be \"real\" or \"synthetic\", got {driving!r}")
            continue
        triplets.append(Triplet(number, item["source_image"], item["conditioning_image"], item["ground_truth"],
                                driving))
    if own and report.errors:
        raise DatasetError(report)
    return triplets


def _inspect_image(path: Path, full: bool) -> dict:
    """Size (header only, or a full decode with ``full``), content hash with ``full``."""
    info: dict = {"path": path}
    if not path.is_file():
        info["error"] = "missing file"
        return info
    try:
        with Image.open(path) as image:
            info["size"] = image.size
            if full:
                image.load()
        if full:
            info["sha1"] = hashlib.sha1(path.read_bytes()).hexdigest()
    except Exception as exc:  # PIL raises many types for broken files
        info["error"] = f"unreadable image ({type(exc).__name__}: {exc})"
    return info


def check_dataset(jsonl: str | os.PathLike, images_dir: str | os.PathLike | None = None, *, resolution: int = 512,
                  resize: bool = False, mode: str = "full", threads: int = 8) -> DataReport:
    """Validate a dataset: every problem found, not only the first.

    Errors: malformed lines, missing or unreadable files, wrong sizes (not
    ``resolution``², or with ``resize`` not square), conditioning and ground truth of
    different sizes, duplicate triplets, a source equal to its ground truth, an empty
    dataset.  ``quick`` reads image headers and compares paths; ``full`` also decodes
    every image and compares contents (hashes).
    """
    root = default_images_dir(jsonl, images_dir)
    report = DataReport(str(jsonl), str(root), mode=mode)
    triplets = read_triplets(jsonl, report)
    report.triplets = len(triplets)
    report.real_driving = sum(t.driving == "real" for t in triplets)
    if not root.is_dir():
        report.add("error", None, f"the images folder {root} does not exist")
        return report
    if not triplets and not report.errors:
        report.add("error", None, "the dataset holds no triplets")
    unique = sorted({p for t in triplets for p in t.paths(root).values()})
    with ThreadPoolExecutor(max(1, threads)) as pool:
        infos = dict(zip(unique, pool.map(lambda p: _inspect_image(p, mode == "full"), unique), strict=True))
    report.images_checked = len(infos)

    bad_sizes: dict[Path, str] = {}
    for path, info in infos.items():
        size = info.get("size")
        if size is None:
            continue
        w, h = size
        if resize:
            if w != h:
                bad_sizes[path] = f"is {w}x{h}: images must be square (crop them, or align with `align-data`)"
        elif (w, h) != (resolution, resolution):
            bad_sizes[path] = (f"is {w}x{h}, expected {resolution}x{resolution} (set data.resize=true to resize "
                               "square images, or data.resolution)")
    reported: set[Path] = set()
    seen: dict[tuple, int] = {}
    for t in triplets:
        paths = t.paths(root)
        for role, path in paths.items():
            info = infos[path]
            if "error" in info:
                report.add("error", t.line, f"{role} {getattr(t, role)!r}: {info['error']}")
            elif path in bad_sizes and path not in reported:
                reported.add(path)
                report.add("error", t.line, f"{role} {getattr(t, role)!r} {bad_sizes[path]}")
        cond, truth = infos[paths["conditioning_image"]], infos[paths["ground_truth"]]
        if cond.get("size") and truth.get("size") and cond["size"] != truth["size"]:
            report.add("error", t.line, f"conditioning image {cond['size'][0]}x{cond['size'][1]} and ground truth "
                                        f"{truth['size'][0]}x{truth['size'][1]} differ in size: they must be "
                                        "pixel-aligned (same pose and background)")
        def same(a, b, paths=paths):
            sha = infos[paths[a]].get("sha1")
            return paths[a] == paths[b] or (sha is not None and sha == infos[paths[b]].get("sha1"))

        if same("source_image", "ground_truth"):
            report.add("error", t.line, "the source image is the ground truth: the model would learn to copy it")
        if same("conditioning_image", "ground_truth"):
            report.add("warning", t.line, "the conditioning image is identical to the ground truth")
        key = tuple(infos[paths[r]].get("sha1") or str(paths[r]) for r in ROLES)
        if key in seen:
            report.add("error", t.line, f"duplicate of line {seen[key]} (same three images)")
        else:
            seen[key] = t.line
    return report


def load_image(path: Path, resolution: int, resize: bool) -> torch.Tensor:
    """RGB float ``[3,H,W]`` in 0..1 (EXIF orientation applied)."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
    if image.size != (resolution, resolution):
        if not resize:
            raise ValueError(f"{path} is {image.size[0]}x{image.size[1]}, expected {resolution}x{resolution}")
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def sample_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The random generator of one sample: a function of (seed, global sample index) only."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), int(stream)])


def _permutation(seed: int, pool: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, 7919 + pool, int(epoch)]).permutation(n)


class TripletDataset(torch.utils.data.Dataset):
    """Map-style over *global sample indices*: ``dataset[g]`` is the g-th sample of the run.

    Lines are visited in per-epoch permutations: each line once per epoch. With a
    curriculum that mixes real and synthetic driving images, every sample first draws its
    pool (real with the schedule's probability at its step), and each pool is walked in its
    own per-epoch permutations by the count of earlier draws from that pool, so every line
    of a pool is visited once before any line of it is visited again (without replacement
    within a pool; only how often each pool is drawn is random). ``samples_per_step``
    converts a sample index into the optimizer step the curriculum is evaluated at.
    """

    def __init__(self, triplets: list[Triplet], images_dir: str | os.PathLike, *, resolution: int = 512,
                 resize: bool = False, random_flip: float = 0.5, conditioning_dropout: float = 0.1,
                 real_driving_schedule=None, samples_per_step: int = 1, seed: int = 0):
        if not triplets:
            raise ValueError("the dataset holds no triplets")
        self.triplets = triplets
        self.root = Path(images_dir)
        self.resolution, self.resize = resolution, resize
        self.random_flip, self.dropout = random_flip, conditioning_dropout
        self.schedule = parse_schedule(real_driving_schedule)
        self.samples_per_step = max(1, int(samples_per_step))
        self.seed = seed
        real = [i for i, t in enumerate(triplets) if t.driving == "real"]
        synthetic = [i for i, t in enumerate(triplets) if t.driving != "real"]
        self.pools = [real, synthetic] if self.schedule else [list(range(len(triplets)))]
        self._real_before = np.zeros(1, np.int64)  # [g] = samples before g drawn from pool 0 (grown lazily)

    def __len__(self) -> int:  # nominal: one epoch
        return len(self.triplets)

    def _pool_of(self, index: int, u_pool: float) -> int:
        if not self.schedule:
            return 0
        p_real = schedule_value(self.schedule, index // self.samples_per_step)
        pool_id = 0 if u_pool < p_real else 1
        return pool_id if self.pools[pool_id] else 1 - pool_id

    def _draws_before(self, index: int, pool_id: int) -> int:
        """How many samples before ``index`` were drawn from ``pool_id`` (a deterministic function of the
        seed; computed once per index and cached, about 10 us per sample, so a resumed run pays it once)."""
        if not self.schedule:
            return index
        known = len(self._real_before) - 1
        if index > known:
            stop = max(index, 2 * known, 1024)
            real = np.fromiter((self._pool_of(j, sample_rng(self.seed, j).random()) == 0
                                for j in range(known, stop)), dtype=bool, count=stop - known)
            self._real_before = np.concatenate([self._real_before,
                                                self._real_before[-1] + np.cumsum(real, dtype=np.int64)])
        real_before = int(self._real_before[index])
        return real_before if pool_id == 0 else index - real_before

    def choose(self, index: int) -> tuple[int, np.random.Generator]:
        """Which line the global sample ``index`` uses, and that sample's generator."""
        rng = sample_rng(self.seed, index)
        pool_id = self._pool_of(index, rng.random())
        pool = self.pools[pool_id]
        epoch, position = divmod(self._draws_before(index, pool_id), len(pool))
        return pool[_permutation(self.seed, pool_id, epoch, len(pool))[position]], rng

    def __getitem__(self, index: int) -> dict:
        line, rng = self.choose(index)
        triplet = self.triplets[line]
        flip = bool(rng.random() < self.random_flip)
        drop = bool(rng.random() < self.dropout)
        noise_seed = int(rng.integers(0, 2**62))
        images = {role: load_image(path, self.resolution, self.resize)
                  for role, path in triplet.paths(self.root).items()}
        if flip:
            images = {role: image.flip(-1) for role, image in images.items()}
        return {
            **images,
            "drop_source": torch.tensor(drop),
            "noise_seed": torch.tensor(noise_seed, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
            "line": torch.tensor(triplet.line, dtype=torch.int64),
            "flipped": torch.tensor(flip),
            "real_driving": torch.tensor(triplet.driving == "real"),
        }


class StreamSampler(torch.utils.data.Sampler):
    """Global sample indices of one process, from a given micro-batch on, forever.

    Micro-batch ``m`` of process ``rank`` holds samples ``((m*world + rank)*batch + j)``.
    """

    def __init__(self, batch_size: int, rank: int = 0, world: int = 1, start_micro_batch: int = 0):
        self.batch, self.rank, self.world, self.start = batch_size, rank, world, start_micro_batch

    def __iter__(self):
        m = self.start
        while True:
            base = (m * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)
            m += 1


# --------------------------------------------------------------------------- alignment


def align_dataset(jsonl: str | os.PathLike, images_dir: str | os.PathLike | None, out_dir: str | os.PathLike,
                  *, resolution: int = 512, detector=None) -> tuple[Path, list[str]]:
    """Align in-the-wild triplets with ``faceanon_core.faces``: one crop per image.

    The largest face of the ground truth sets the crop of both the ground truth and the
    conditioning image (they must stay pixel-aligned); the source is aligned on its own
    largest face.  Writes PNG crops under ``out_dir/images`` and ``out_dir/train.jsonl``;
    returns that file and the lines that could not be aligned (they are left out).
    """
    from faceanon_core import faces as face_lib

    detector = detector or face_lib.default_detector()
    root = default_images_dir(jsonl, images_dir)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    triplets = read_triplets(jsonl)
    skipped: list[str] = []
    cache: dict[Path, tuple] = {}

    def read(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))

    def largest_face(path: Path):
        if path not in cache:
            rgb = read(path)
            found = detector.detect(rgb)
            aligned, _ = face_lib.align_faces(found, crop_size=resolution, image_name=str(path))
            cache[path] = (rgb, max(aligned, key=lambda f: f.face_size) if aligned else None)
        return cache[path]

    def write(rel: str, suffix: str, crop: np.ndarray) -> str:
        name = str(Path(rel).with_suffix("")) + suffix + ".png"
        target = out_dir / "images" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            Image.fromarray(crop).save(target)
        return name

    lines = []
    for t in triplets:
        paths = t.paths(root)
        try:
            src_rgb, src_face = largest_face(paths["source_image"])
            gt_rgb, gt_face = largest_face(paths["ground_truth"])
            cond_rgb = read(paths["conditioning_image"])
        except Exception as exc:
            skipped.append(f"line {t.line}: {exc}")
            continue
        if src_face is None or gt_face is None:
            which = "source image" if src_face is None else "ground truth"
            skipped.append(f"line {t.line}: no usable face in the {which}")
            continue
        if cond_rgb.shape != gt_rgb.shape:
            skipped.append(f"line {t.line}: conditioning image and ground truth differ in size")
            continue
        item = {
            "source_image": write(t.source_image, "", face_lib.extract_crops(src_rgb, [src_face])[0]),
            "ground_truth": write(t.ground_truth, "", face_lib.extract_crops(gt_rgb, [gt_face])[0]),
            "conditioning_image": write(t.conditioning_image, ".gt-" + Path(t.ground_truth).stem,
                                        face_lib.extract_crops(cond_rgb, [gt_face])[0]),
        }
        if t.driving != "synthetic":
            item["driving"] = t.driving
        lines.append(json.dumps(item))
    out_file = out_dir / "train.jsonl"
    out_file.write_text("\n".join(lines) + ("\n" if lines else ""))
    return out_file, skipped
