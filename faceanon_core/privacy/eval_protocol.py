"""The protocol of ``faceanon eval``: pair the inputs, embed every face, re-identify, collect the measures.

What it measures and why is described in :mod:`faceanon_core.privacy.evaluate`; the measures themselves are
:mod:`.eval_metrics`, the HTML/SVG report :mod:`.eval_report`.
"""

from __future__ import annotations

import heapq
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..faces import AlignedFace, FaceDetector, align_faces, default_detector, extract_crops
from .eval_metrics import face_region, head_pose, psnr_ssim_outside, summary_stats
from .identity import FaceRecognizer

logger = logging.getLogger(__name__)

THUMB = 128


class EvalError(ValueError):
    """The inputs of an evaluation are unusable (missing pairs, sizes, faces)."""


def pair_inputs(originals: str | os.PathLike, anonymized: str | os.PathLike, *,
                recursive: bool = False) -> list[tuple[Path, Path, str]]:
    """(original, anonymized, key) pairs; ``key`` = relative path without the extension.

    Two files pair directly; two folders pair by key. Raises :class:`EvalError`
    naming the photos without a counterpart.
    """
    from ..media.plans import expand_inputs

    a, b = Path(originals), Path(anonymized)
    for p in (a, b):
        if not p.exists():
            raise EvalError(f"{p}: no such file or folder")
    if a.is_file() and b.is_file():
        return [(a, b, a.stem)]
    if a.is_file() != b.is_file():
        raise EvalError(f"compare a folder with a folder or a file with a file; got {a} and {b}")
    if a.resolve() == b.resolve():
        raise EvalError(f"{a}: the originals and the anonymized photos are the same folder")

    def index(folder: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for item in expand_inputs([folder], recursive=recursive):
            key = item.rel.with_suffix("").as_posix()
            if key in out:
                raise EvalError(f"{out[key]} and {item.path} have the same name; keep one of them")
            out[key] = item.path
        return out

    ia, ib = index(a), index(b)
    missing = sorted(set(ia) - set(ib))
    extra = sorted(set(ib) - set(ia))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} original(s) without an anonymized version in {b} "
                         f"(e.g. {', '.join(missing[:5])})")
        if extra:
            parts.append(f"{len(extra)} anonymized photo(s) without an original in {a} (e.g. {', '.join(extra[:5])})")
        raise EvalError("the folders do not match: " + "; ".join(parts) + ". Photos pair by relative path "
                        "without the extension")
    if not ia:
        raise EvalError(f"no photos found in {a}")
    return [(ia[k], ib[k], k) for k in sorted(ia)]


@dataclass
class EvalResult:
    """Everything ``faceanon eval`` measured; :meth:`to_dict` is the JSON report."""

    summary: dict[str, Any]
    faces: list[dict[str, Any]]
    images: list[dict[str, Any]]
    worst: list[dict[str, Any]] = field(default_factory=list)  # with in-memory thumbnails

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "faces": self.faces, "images": self.images}


def _match_output_faces(orig: Sequence[AlignedFace], found: Sequence[np.ndarray]) -> list[int | None]:
    """For each original face, the index of the detected output face at the same place (eye
    midpoints within 0.5 eye distances), each output face used once."""
    pairs = []
    for i, f in enumerate(orig):
        em = f.landmarks[:2].mean(0)
        iod = max(float(np.linalg.norm(f.landmarks[1] - f.landmarks[0])), 1.0)
        for j, lm in enumerate(found):
            d = float(np.linalg.norm(lm[:2].mean(0) - em)) / iod
            if d < 0.5:
                pairs.append((d, i, j))
    out: list[int | None] = [None] * len(orig)
    used: set[int] = set()
    for _d, i, j in sorted(pairs):
        if out[i] is None and j not in used:
            out[i] = j
            used.add(j)
    return out


def _thumb(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The aligned face at ``landmarks`` as a small uint8 thumbnail."""
    from ..faces import DetectedFace

    lm = np.asarray(landmarks, np.float64)
    det = DetectedFace(box=(*lm.min(0), *lm.max(0)), score=1.0, landmarks5=lm)
    crop = extract_crops(rgb, align_faces([det], min_face_size=0.0)[0])[0]
    return cv2.resize(crop, (THUMB, THUMB), interpolation=cv2.INTER_AREA)


def evaluate_images(
    pairs: Iterable[tuple[np.ndarray, np.ndarray, str]],
    recognizer: FaceRecognizer,
    *,
    detector: FaceDetector | None = None,
    threshold: float | None = None,
    require_detection: bool = False,
    worst: int = 8,
) -> EvalResult:
    """Evaluate (original, anonymized, name) uint8 RGB image pairs (any iterable: pairs are
    used one at a time and not kept). See the module doc."""
    from ..faces import check_rgb

    det = detector or default_detector()
    thr = float(threshold if threshold is not None else getattr(recognizer, "threshold", 0.6))
    gallery: list[np.ndarray] = []
    outputs: list[np.ndarray] = []
    faces: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    heap: list[tuple[float, int, dict[str, Any]]] = []
    for orig, out, name in pairs:
        check_rgb(orig, name)
        check_rgb(out, f"{name} (anonymized)")
        if orig.shape != out.shape:
            raise EvalError(f"{name}: the anonymized photo is {out.shape[1]}x{out.shape[0]}, the original "
                            f"{orig.shape[1]}x{orig.shape[0]}; they must be the same size")
        aligned, _ = align_faces(det.detect(orig), min_face_size=0.0, image_name=name)
        found = [f.landmarks5 for f in det.detect(out)] if aligned else []
        match = _match_output_faces(aligned, found)
        if require_detection:
            lost = [aligned[i].index for i, m in enumerate(match) if m is None]
            if lost:
                raise EvalError(f"{name}: no face found in the anonymized photo where the original has face(s) "
                                f"{lost}; without --require-detection such faces are embedded at the original's "
                                "landmarks")
        out_lms = [found[m] if m is not None else f.landmarks for f, m in zip(aligned, match, strict=True)]
        if aligned:
            e_orig = recognizer.embed(orig, [f.landmarks for f in aligned])
            e_out = recognizer.embed(out, out_lms)
            own = np.asarray(recognizer.distance(e_out, e_orig), np.float64).reshape(-1)
        psnr, ssim = psnr_ssim_outside(orig, out, face_region(orig, aligned))
        images.append({"name": name, "faces": len(aligned), "faces_found_in_output": len(found),
                       "psnr_outside_db": None if psnr is None else round(psnr, 3),
                       "ssim_outside": None if ssim is None else round(ssim, 5)})
        if not aligned:
            logger.warning("%s: no face in the original; only the outside of faces is compared", name)
            continue
        for i, f in enumerate(aligned):
            rec: dict[str, Any] = {"image": name, "face": f.index, "gallery_index": len(gallery) + i,
                                   "detected": match[i] is not None, "distance": round(float(own[i]), 4),
                                   "leak": bool(own[i] < thr)}
            p0 = head_pose(f.landmarks)
            if match[i] is not None:
                p1 = head_pose(found[match[i]])
                rec["pose_change"] = {k: round(abs(p1[k] - p0[k]), 3) for k in p0}
            else:
                rec["pose_change"] = None
            faces.append(rec)
            item = (-float(own[i]), len(faces), {"record": rec, "original": _thumb(orig, f.landmarks),
                                                  "output": _thumb(out, out_lms[i])})
            if worst > 0:
                if len(heap) < worst:
                    heapq.heappush(heap, item)
                elif item[0] > heap[0][0]:
                    heapq.heapreplace(heap, item)
        gallery.extend(e_orig)
        outputs.extend(e_out)

    if not faces:
        raise EvalError("no face found in any original photo; nothing to evaluate")
    g = np.asarray(gallery)
    o = np.asarray(outputs)
    full = np.asarray(recognizer.distance(o[:, None, :], g[None, :, :]), np.float64)
    nearest = full.argmin(axis=1)
    for k, rec in enumerate(faces):
        rec["nearest_original"] = int(nearest[k])
        rec["hit"] = bool(nearest[k] == k)
        rec["rank_of_own"] = int((full[k] < full[k, k]).sum()) + 1
        others = np.delete(full[k], k)
        rec["nearest_other_distance"] = round(float(others.min()), 4) if others.size else None
    n = len(faces)
    poses = [r["pose_change"] for r in faces if r["pose_change"]]
    summary = {
        "recognizer": getattr(recognizer, "name", type(recognizer).__name__),
        "threshold": thr,
        "images": len(images),
        "faces": n,
        "reid_rate": round(sum(r["hit"] for r in faces) / n, 4),
        "chance_rate": round(1.0 / n, 4),
        "leak_rate": round(sum(r["leak"] for r in faces) / n, 4),
        "detected_in_output_rate": round(sum(r["detected"] for r in faces) / n, 4),
        "distance": summary_stats([r["distance"] for r in faces]),
        "pose_change_deg": ({k: summary_stats([p[k] for p in poses]) for k in ("yaw", "pitch", "roll")}
                            if poses else None),
        "psnr_outside_db": summary_stats([im["psnr_outside_db"] for im in images]),
        "ssim_outside": summary_stats([im["ssim_outside"] for im in images]),
    }
    worst_cases = [entry for _, _, entry in sorted(heap, key=lambda t: -t[0])]
    return EvalResult(summary=summary, faces=faces, images=images, worst=worst_cases)


def evaluate_folders(
    originals: str | os.PathLike,
    anonymized: str | os.PathLike,
    recognizer: FaceRecognizer,
    *,
    recursive: bool = False,
    **kwargs: Any,
) -> EvalResult:
    """:func:`evaluate_images` on photo files: folders paired by :func:`pair_inputs`."""
    from ..media.images import ImageReadError, load_image

    pairs = pair_inputs(originals, anonymized, recursive=recursive)

    def load():
        for a, b, key in pairs:
            try:
                yield load_image(a).rgb, load_image(b).rgb, key
            except ImageReadError as exc:
                raise EvalError(str(exc)) from exc

    result = evaluate_images(load(), recognizer, **kwargs)
    result.summary["originals"] = str(originals)
    result.summary["anonymized"] = str(anonymized)
    return result
