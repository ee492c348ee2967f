"""Identity-leak guard: never hand back a face that a recognizer still matches to its original.

The face is embedded in the new photo and in the original, at the original landmarks; a distance below
the threshold (:data:`DEFAULT_THRESHOLD`, dlib's 0.6) is a leak, retried with another seed and a larger
degree, then failed (:class:`IdentityLeakError`) or redacted, and recorded per face (:class:`FaceCheck`).
:func:`guarded_process_faces` retries (CLI, all-in-one node); :func:`check_faces` only checks (a node after
paste-back). Design and measurements: docs/privacy.md, "How the guard works".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..faces import (
    CROP_SIZE,
    DEFAULT_ERODE,
    DEFAULT_FEATHER,
    DEFAULT_MIN_FACE_SIZE,
    DEFAULT_SMALL_FACES,
    AlignedFace,
    DetectedFace,
    FaceDetector,
    FaceLoopOptions,
    FaceProcessingError,
    FacesResult,
    apply_small_face_policy,
    check_rgb,
    extract_crops,
    paste_back,
    prepare_faces,
    run_crops,
)
from .identity import FaceRecognizer

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_THRESHOLD",
    "FALLBACKS",
    "FaceCheck",
    "GuardConfig",
    "GuardedResult",
    "IdentityLeakError",
    "check_faces",
    "guarded_process_faces",
]

#: Distance at or above which an output face counts as a different person.
DEFAULT_THRESHOLD = 0.6

FALLBACKS = ("fail", "redact")


class IdentityLeakError(FaceProcessingError):
    """A face still matches its original after every retry; the image must not be written."""


@dataclass
class GuardConfig:
    """How hard the guard tries.

    Try k (0-based) uses ``seed + k * seed_step`` and ``min(degree + k * degree_step,
    max_degree)``; ``retries`` is the number of tries after the first.
    ``threshold=None`` takes the recognizer's own threshold (dlib: 0.6).
    ``redact_method``/``redact_strength``: the fallback redaction (a face
    that still matches after it is filled solid).
    """

    threshold: float | None = None
    retries: int = 2
    degree_step: float = 0.25
    max_degree: float = 2.0
    seed_step: int = 1
    fallback: str = "fail"
    redact_method: str = "blur"
    redact_strength: float | None = None

    def __post_init__(self) -> None:
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}, got {self.fallback!r}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {self.threshold}")
        if self.degree_step < 0:
            raise ValueError(f"degree_step must be >= 0, got {self.degree_step}")

    def threshold_for(self, recognizer: FaceRecognizer) -> float:
        if self.threshold is not None:
            return float(self.threshold)
        return float(getattr(recognizer, "threshold", DEFAULT_THRESHOLD))

    def attempt(self, k: int, seed: int, degree: float) -> tuple[int, float]:
        return int(seed) + k * self.seed_step, float(min(degree + k * self.degree_step, max(self.max_degree, degree)))


@dataclass
class FaceCheck:
    """The guard's record for one face (JSON via :meth:`to_dict`).

    ``action``: "anonymized" (passed), "redacted" (fallback), "leak" (failed;
    only in a :class:`IdentityLeakError` or with ``check_faces(on_leak="report")``).
    ``seed``/``degree``: of the kept result (None for faces only checked or redacted).
    """

    image: str
    face: int
    distance: float
    threshold: float
    tries: int
    seed: int | None
    degree: float | None
    passed: bool
    action: str
    recognizer: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "face": self.face,
            "distance": round(float(self.distance), 4),
            "threshold": float(self.threshold),
            "tries": int(self.tries),
            "seed": self.seed,
            "degree": None if self.degree is None else round(float(self.degree), 4),
            "passed": bool(self.passed),
            "action": self.action,
            "recognizer": self.recognizer,
            "history": self.history,
        }


@dataclass
class GuardedResult(FacesResult):
    """:class:`faceanon_core.faces.FacesResult` plus one :class:`FaceCheck` per processed face."""

    checks: list[FaceCheck] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(super().to_dict(), checks=[c.to_dict() for c in self.checks])


def _distances(recognizer: FaceRecognizer, image: np.ndarray, faces: Sequence[AlignedFace],
               ref: np.ndarray) -> np.ndarray:
    emb = recognizer.embed(image, [f.landmarks for f in faces])
    return np.asarray(recognizer.distance(emb, ref), dtype=np.float64).reshape(len(faces))


def _redact_faces(image: np.ndarray, faces: Sequence[AlignedFace], method: str, strength: float | None) -> np.ndarray:
    """The redaction of :func:`faces.redact.redact_image` on ``faces``: the whole head, not the inner face."""
    from ..faces.redact import redact_image

    found = [DetectedFace(box=f.box, score=f.score, landmarks5=f.landmarks) for f in faces]
    return redact_image(image, method, strength, faces=found).image


def _fallback_redact(
    image: np.ndarray,
    faces: Sequence[AlignedFace],
    refs: np.ndarray,
    recognizer: FaceRecognizer,
    threshold: float,
    config: GuardConfig,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Redact ``faces`` (blur by default), escalate to a solid fill for any that still match.
    Returns (image, distances, method per face)."""
    out = _redact_faces(image, faces, config.redact_method, config.redact_strength)
    dist = _distances(recognizer, out, faces, refs)
    methods = [config.redact_method] * len(faces)
    still = [i for i in range(len(faces)) if not dist[i] >= threshold]
    if still and config.redact_method != "solid":
        sub = [faces[i] for i in still]
        out = _redact_faces(out, sub, "solid", None)
        dist[still] = _distances(recognizer, out, sub, refs[still])
        for i in still:
            methods[i] = "solid"
    return out, dist, methods


def guarded_process_faces(
    rgb: np.ndarray,
    anonymize: Callable[[np.ndarray, int, float], Any],
    recognizer: FaceRecognizer,
    *,
    seed: int = 0,
    degree: float = 1.25,
    config: GuardConfig | None = None,
    detector: FaceDetector | None = None,
    faces: Sequence[DetectedFace] | None = None,
    batch_size: int = 8,
    crop_size: int = CROP_SIZE,
    min_face_size: float = DEFAULT_MIN_FACE_SIZE,
    erode: float = DEFAULT_ERODE,
    feather: float = DEFAULT_FEATHER,
    color_match: bool = False,
    image_name: str = "image",
    frame_index: int = 0,
    small_faces: str = DEFAULT_SMALL_FACES,
    options: FaceLoopOptions | None = None,
) -> GuardedResult:
    """:func:`faceanon_core.faces.process_faces` with the identity check and retries.

    ``anonymize(crops, seed, degree)`` gets float32 [n, S, S, 3] crops in 0..1
    (at most ``batch_size``) and returns the same shape (array or tensor);
    failures and bad outputs raise :class:`FaceProcessingError` as in
    ``process_faces``. All faces of a try share its seed and degree. Faces too
    small for the model (``min_face_size``) are returned in ``skipped``,
    unchecked, and handled by ``small_faces`` as in ``process_faces`` (default:
    blurred). Raises :class:`IdentityLeakError`
    (with the records in ``.checks``) when a face still matches after every
    try and ``config.fallback == "fail"``. ``options``: the face-loop keywords
    as one :class:`~faceanon_core.faces.FaceLoopOptions` (one or the other).
    """
    opts = FaceLoopOptions.resolve(options, locals())
    config = config or GuardConfig()
    threshold = config.threshold_for(recognizer)
    aligned, skipped = prepare_faces(rgb, opts, detector=detector, faces=faces, image_name=image_name,
                                     frame_index=frame_index)  # "fail" refuses here, before the model runs
    if not aligned:
        empty = GuardedResult(rgb.copy(), np.zeros(rgb.shape[:2], np.float32), aligned, skipped, [])
        return apply_small_face_policy(empty, opts.small_faces, image_name)

    name = getattr(recognizer, "name", type(recognizer).__name__)
    refs = recognizer.embed(rgb, [f.landmarks for f in aligned])
    crops = extract_crops(rgb, aligned)
    current = np.empty(crops.shape, np.float32)
    owners = [(image_name, f.index) for f in aligned]
    history: list[list[dict[str, Any]]] = [[] for _ in aligned]
    kept: list[tuple[int, float] | None] = [None] * len(aligned)
    dist = np.full(len(aligned), np.nan)
    pending = list(range(len(aligned)))
    image, mask = rgb, None
    for k in range(config.retries + 1):
        s, d = config.attempt(k, seed, degree)
        sel = pending

        def run(chunk: np.ndarray, s=s, d=d):
            return anonymize(chunk, s, d)

        current[sel] = run_crops(crops[sel], run, [owners[i] for i in sel], opts.batch_size)
        image, mask = paste_back(rgb, aligned, current, erode=opts.erode, feather=opts.feather,
                                 color_match=opts.color_match)
        # Every face is re-checked: a retried neighbour that overlaps could change an earlier pass.
        dist = _distances(recognizer, image, aligned, refs)
        for i in sel:
            history[i].append({"seed": s, "degree": round(d, 4), "distance": round(float(dist[i]), 4)})
            kept[i] = (s, d)
        pending = [i for i in range(len(aligned)) if not dist[i] >= threshold]
        for i in pending:
            logger.info("%s face %d: identity distance %.3f < %.3f after try %d (seed %d, degree %.2f)",
                        image_name, aligned[i].index, dist[i], threshold, k + 1, s, d)
        if not pending:
            break

    checks = [
        FaceCheck(image=image_name, face=f.index, distance=float(dist[i]), threshold=threshold,
                  tries=len(history[i]), seed=kept[i][0], degree=kept[i][1], passed=i not in pending,
                  action="anonymized" if i not in pending else "leak", recognizer=name, history=history[i])
        for i, f in enumerate(aligned)
    ]
    if pending:
        if config.fallback == "fail":
            which = ", ".join(f"face {aligned[i].index} (distance {dist[i]:.3f})" for i in pending)
            err = IdentityLeakError(
                f"{image_name}: {which} still match(es) the original person (threshold {threshold:.2f}) after "
                f"{config.retries + 1} tries with larger degrees; the output was not written. Use a larger "
                "--degree or --verify-retries, or --verify-fallback redact to blur such faces"
            )
            err.checks = checks  # type: ignore[attr-defined]
            raise err
        sub = [aligned[i] for i in pending]
        image, red_dist, methods = _fallback_redact(image, sub, refs[pending], recognizer, threshold, config)
        mask = np.maximum(mask, _support(rgb, sub))
        for j, i in enumerate(pending):
            c = checks[i]
            c.history.append({"redact": methods[j], "distance": round(float(red_dist[j]), 4)})
            c.distance, c.passed = float(red_dist[j]), bool(red_dist[j] >= threshold)
            c.action, c.seed, c.degree = "redacted", None, None
            logger.warning("%s face %d: still recognizable after %d tries; %s instead (distance %.3f)",
                           image_name, c.face, c.tries, "blurred" if methods[j] == "blur" else methods[j], red_dist[j])
            if not c.passed:
                raise IdentityLeakError(
                    f"{image_name}: face {c.face} still matches the original (distance {c.distance:.3f}) even "
                    "filled solid; the output was not written")
    return apply_small_face_policy(GuardedResult(image, mask, aligned, skipped, checks), opts.small_faces,
                                   image_name)


def _support(rgb: np.ndarray, faces: Sequence[AlignedFace]) -> np.ndarray:
    """The image-space mask of the fallback redaction of ``faces`` (their head regions)."""
    from ..faces.redact import head_mask

    return head_mask(rgb.shape, faces)


def check_faces(
    originals: Sequence[np.ndarray],
    outputs: Sequence[np.ndarray],
    faces: Sequence[AlignedFace],
    recognizer: FaceRecognizer,
    *,
    threshold: float | None = None,
    on_leak: str = "fail",
    redact_method: str = "blur",
    redact_strength: float | None = None,
    image_names: Sequence[str] | None = None,
) -> tuple[list[np.ndarray], list[FaceCheck]]:
    """Check anonymized frames against their originals; fail or redact the faces that leak.

    ``originals``/``outputs``: uint8 HxWx3 frames, pairwise the same size;
    ``faces``: the aligned faces (``frame_index`` says which frame), e.g. from
    a detect node before anonymization. ``on_leak``: "fail" raises
    :class:`IdentityLeakError`; "redact" blurs (then fills) the leaking faces;
    "report" only records them. Returns (frames, one check per face in the
    order of ``faces``). This is the logic of the ComfyUI verify node.
    """
    if on_leak not in FALLBACKS + ("report",):
        raise ValueError(f"on_leak must be fail, redact or report, got {on_leak!r}")
    if len(originals) != len(outputs):
        raise ValueError(f"got {len(outputs)} anonymized frames for {len(originals)} originals")
    names = list(image_names) if image_names is not None else [f"frame {i}" for i in range(len(originals))]
    config = GuardConfig(threshold=threshold, fallback="redact" if on_leak == "redact" else "fail",
                         redact_method=redact_method, redact_strength=redact_strength)
    thr = config.threshold_for(recognizer)
    rec_name = getattr(recognizer, "name", type(recognizer).__name__)
    frames = [np.asarray(o) for o in outputs]
    checks: list[FaceCheck | None] = [None] * len(faces)
    for fi, (orig, out) in enumerate(zip(originals, outputs, strict=True)):
        check_rgb(orig, names[fi])
        check_rgb(out, names[fi])
        if orig.shape != out.shape:
            raise ValueError(f"{names[fi]}: anonymized frame is {out.shape[1]}x{out.shape[0]}, "
                             f"original {orig.shape[1]}x{orig.shape[0]}")
        idx = [i for i, f in enumerate(faces) if f.frame_index == fi]
        if not idx:
            continue
        sub = [faces[i] for i in idx]
        refs = recognizer.embed(orig, [f.landmarks for f in sub])
        dist = _distances(recognizer, out, sub, refs)
        for j, i in enumerate(idx):
            checks[i] = FaceCheck(image=names[fi], face=faces[i].index, distance=float(dist[j]), threshold=thr,
                                  tries=1, seed=None, degree=None, passed=bool(dist[j] >= thr),
                                  action="anonymized" if dist[j] >= thr else "leak", recognizer=rec_name,
                                  history=[{"distance": round(float(dist[j]), 4)}])
        leaking = [j for j in range(len(idx)) if not dist[j] >= thr]
        if not leaking or on_leak == "report":
            continue
        if on_leak == "fail":
            which = ", ".join(f"face {sub[j].index} (distance {dist[j]:.3f})" for j in leaking)
            err = IdentityLeakError(f"{names[fi]}: {which} still match(es) the original person "
                                    f"(threshold {thr:.2f}); anonymize with a larger degree or redact")
            err.checks = [c for c in checks if c is not None]  # type: ignore[attr-defined]
            raise err
        lsub = [sub[j] for j in leaking]
        frames[fi], red_dist, methods = _fallback_redact(out, lsub, refs[leaking], recognizer, thr, config)
        for j, rd, m in zip(leaking, red_dist, methods, strict=True):
            c = checks[idx[j]]
            c.history.append({"redact": m, "distance": round(float(rd), 4)})
            c.distance, c.passed, c.action = float(rd), bool(rd >= thr), "redacted"
            if not c.passed:
                raise IdentityLeakError(f"{names[fi]}: face {c.face} still matches the original even filled solid")
    return frames, [c for c in checks if c is not None]
