"""The face loop: detect -> align -> crop -> the caller's processor -> paste back, failing closed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from .align import align_faces, extract_crops
from .detect import FaceDetector, default_detector
from .paste import DEFAULT_ERODE, DEFAULT_FEATHER, paste_back
from .records import (
    CROP_SIZE,
    DEFAULT_MIN_FACE_SIZE,
    AlignedFace,
    DetectedFace,
    FaceProcessingError,
    FacesResult,
    check_rgb,
)

logger = logging.getLogger(__name__)

#: What happens to faces too small for the model (``min_face_size``): "redact" blurs them (the
#: default: a face is never handed back unchanged), "fail" raises :class:`FaceProcessingError` (nothing
#: is returned), "keep" leaves them as they are, with a warning (only when asked for explicitly).
SMALL_FACE_POLICIES = ("redact", "fail", "keep")
DEFAULT_SMALL_FACES = "redact"


def check_small_face_policy(policy: str) -> str:
    if policy not in SMALL_FACE_POLICIES:
        raise ValueError(f"small_faces must be one of {', '.join(SMALL_FACE_POLICIES)}, got {policy!r}")
    return policy


@dataclass(frozen=True)
class FaceLoopOptions:
    """How the face loop treats every photo of a run, as one object: the keywords ``process_faces``,
    ``process_faces_batch`` and ``guarded_process_faces`` share (each also takes ``options=``), so the
    per-photo steps and the CLI's single-process and Ray runs pass one value, not a dozen keywords."""

    batch_size: int = 8
    crop_size: int = CROP_SIZE
    min_face_size: float = DEFAULT_MIN_FACE_SIZE
    erode: float = DEFAULT_ERODE
    feather: float = DEFAULT_FEATHER
    color_match: bool = False
    small_faces: str = DEFAULT_SMALL_FACES

    def __post_init__(self) -> None:
        check_small_face_policy(self.small_faces)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @classmethod
    def resolve(cls, options: FaceLoopOptions | None, keywords: dict[str, Any]) -> FaceLoopOptions:
        """``options``, or the options named in ``keywords`` (a public function's ``locals()``); both at
        once is an error, so a keyword is never silently ignored."""
        values = {f.name: keywords[f.name] for f in fields(cls)}
        if options is None:
            return cls(**values)
        default = cls()
        changed = sorted(k for k, v in values.items() if v != getattr(default, k))
        if changed:
            raise TypeError(f"pass options= or {', '.join(changed)}, not both")
        return options


def refuse_small_faces(skipped: Sequence[DetectedFace], policy: str, image_name: str = "image") -> None:
    """Under ``small_faces="fail"``, raise for faces too small for the model: before the model runs."""
    if skipped and check_small_face_policy(policy) == "fail":
        raise FaceProcessingError(
            f"{image_name}: {len(skipped)} face(s) too small for the model; nothing was written. Use "
            "small_faces='redact' (CLI: --small-faces redact) to blur them, or a smaller min_face_size "
            "(CLI: --min-model-face)"
        )


def apply_small_face_policy(result: FacesResult, policy: str, image_name: str = "image") -> FacesResult:
    """Blur, refuse or (asked) keep the faces of ``result.skipped``, the detections the model did not
    process. Fails closed: a skipped face that cannot be redacted either (degenerate landmarks) raises."""
    refuse_small_faces(result.skipped, policy, image_name)
    small = list(result.skipped)
    if not small:
        return result
    if policy == "keep":
        logger.warning("%s: %d face(s) too small for the model left unchanged (small_faces='keep')",
                       image_name, len(small))
        return result
    from .redact import redact_image

    red = redact_image(result.image, "blur", faces=small, image_name=image_name)  # raises for degenerate faces
    logger.warning("%s: %d face(s) too small for the model were blurred instead", image_name, len(small))
    result.image = red.image
    result.mask = np.maximum(result.mask, red.mask)
    return result

# --------------------------------------------------------------------------- high level


def _to_numpy_batch(out: Any) -> np.ndarray:
    if hasattr(out, "detach"):  # torch tensor on any device
        out = out.detach().float().cpu().numpy()
    return np.asarray(out)


def run_crops(
    crops: np.ndarray,
    process_crops: Callable[[np.ndarray], Any],
    owners: list[tuple[str, int]],
    batch_size: int,
) -> np.ndarray:
    """Call ``process_crops`` in chunks and check every result (shape, finite, 0..1). Fails closed:
    any failure raises :class:`FaceProcessingError` naming the image and face."""
    n, s = crops.shape[0], crops.shape[1]
    results = np.empty((n, s, s, 3), dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        chunk = crops[start:stop].astype(np.float32) * np.float32(1.0 / 255.0)
        names = ", ".join(f"{img} face {k}" for img, k in owners[start:stop])
        try:
            out = _to_numpy_batch(process_crops(chunk))
        except FaceProcessingError:
            raise
        except Exception as exc:  # any failure of the caller's model: report which faces, fail closed
            raise FaceProcessingError(f"processing failed for {names}: {type(exc).__name__}: {exc}") from exc
        if out.shape != chunk.shape:
            raise FaceProcessingError(
                f"processing returned shape {tuple(out.shape)} for {names}; expected {tuple(chunk.shape)} "
                "(one float 0..1 crop per face); the output was not written"
            )
        out = out.astype(np.float32, copy=False)
        bad = ~np.isfinite(out).reshape(out.shape[0], -1).all(axis=1)
        if bad.any():
            k = int(np.nonzero(bad)[0][0])
            img, idx = owners[start + k]
            raise FaceProcessingError(
                f"{img} face {idx}: processing returned NaN or infinite values; the output was not written"
            )
        lo, hi = float(out.min()), float(out.max())
        if lo < -0.1 or hi > 1.1:
            raise FaceProcessingError(
                f"processing returned values in [{lo:.3g}, {hi:.3g}] for {names}; expected 0..1"
            )
        results[start:stop] = np.clip(out, 0.0, 1.0)
    return results


def locate_faces(
    rgb: np.ndarray,
    *,
    detector: FaceDetector | None = None,
    faces: Sequence[DetectedFace] | None = None,
    crop_size: int = CROP_SIZE,
    min_face_size: float = DEFAULT_MIN_FACE_SIZE,
    image_name: str = "image",
    frame_index: int = 0,
) -> tuple[list[AlignedFace], list[DetectedFace]]:
    """The first stage of every face loop: check the image, detect (unless ``faces`` are given) and
    align. Returns (aligned faces for the model, detections too small for it)."""
    check_rgb(rgb, image_name)
    found = list(faces) if faces is not None else (detector or default_detector()).detect(rgb)
    aligned, skipped = align_faces(
        found, frame_index=frame_index, crop_size=crop_size, min_face_size=min_face_size, image_name=image_name
    )
    if not found:
        logger.warning("%s: no face found; image returned unchanged", image_name)
    return aligned, skipped


def prepare_faces(
    rgb: np.ndarray,
    options: FaceLoopOptions,
    *,
    detector: FaceDetector | None = None,
    faces: Sequence[DetectedFace] | None = None,
    image_name: str = "image",
    frame_index: int = 0,
) -> tuple[list[AlignedFace], list[DetectedFace]]:
    """The first step for one photo, in every loop (library, guard, CLI, Ray stages): :func:`locate_faces`,
    then a ``small_faces="fail"`` refusal before any model runs. Returns (aligned, too small)."""
    aligned, skipped = locate_faces(rgb, detector=detector, faces=faces, crop_size=options.crop_size,
                                    min_face_size=options.min_face_size, image_name=image_name,
                                    frame_index=frame_index)
    refuse_small_faces(skipped, options.small_faces, image_name)
    return aligned, skipped


def finish_faces(
    rgb: np.ndarray,
    aligned: Sequence[AlignedFace],
    skipped: Sequence[DetectedFace],
    processed: np.ndarray,
    options: FaceLoopOptions,
    image_name: str = "image",
) -> FacesResult:
    """The last step for one photo: paste the processed crops back, then the small-face policy. Shared by
    :func:`process_faces_batch` and the CLI's Ray stages, so both write the same bytes."""
    if aligned:
        img, mask = paste_back(rgb, aligned, processed, erode=options.erode, feather=options.feather,
                               color_match=options.color_match)
    else:
        img, mask = rgb.copy(), np.zeros(rgb.shape[:2], dtype=np.float32)
    result = FacesResult(image=img, mask=mask, faces=list(aligned), skipped=list(skipped))
    return apply_small_face_policy(result, options.small_faces, image_name)


def process_faces_batch(
    images: Sequence[np.ndarray],
    process_crops: Callable[[np.ndarray], Any],
    *,
    detector: FaceDetector | None = None,
    faces: Sequence[Sequence[DetectedFace]] | None = None,
    batch_size: int = 8,
    crop_size: int = CROP_SIZE,
    min_face_size: float = DEFAULT_MIN_FACE_SIZE,
    erode: float = DEFAULT_ERODE,
    feather: float = DEFAULT_FEATHER,
    color_match: bool = False,
    image_names: Sequence[str] | None = None,
    small_faces: str = DEFAULT_SMALL_FACES,
    options: FaceLoopOptions | None = None,
) -> list[FacesResult]:
    """:func:`process_faces` for several images, crops of all images batched together (``options``: the
    keywords as one :class:`FaceLoopOptions`)."""
    opts = FaceLoopOptions.resolve(options, locals())
    names = list(image_names) if image_names is not None else [f"image {i}" for i in range(len(images))]
    if len(names) != len(images):
        raise ValueError(f"got {len(names)} names for {len(images)} images")
    if faces is not None and len(faces) != len(images):
        raise ValueError(f"got face lists for {len(faces)} images, expected {len(images)}")
    located = [prepare_faces(rgb, opts, detector=detector, faces=None if faces is None else faces[i],
                             image_name=names[i], frame_index=i) for i, rgb in enumerate(images)]
    owners = [(names[i], f.index) for i, (al, _) in enumerate(located) for f in al]
    crops = [extract_crops(images[i], al) for i, (al, _) in enumerate(located) if al]
    processed = np.zeros((0, opts.crop_size, opts.crop_size, 3), np.float32)
    if crops:
        processed = run_crops(np.concatenate(crops), process_crops, owners, opts.batch_size)
    results, pos = [], 0
    for i, (al, skipped) in enumerate(located):
        results.append(finish_faces(images[i], al, skipped, processed[pos : pos + len(al)], opts, names[i]))
        pos += len(al)
    return results


def process_faces(
    rgb: np.ndarray,
    process_crops: Callable[[np.ndarray], Any],
    *,
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
) -> FacesResult:
    """Detect -> align -> ``process_crops`` -> paste back, for one HxWx3 uint8 image.

    ``process_crops`` receives float32 [n, S, S, 3] batches in 0..1 (at most
    ``batch_size`` crops) and must return an array (or torch tensor) of the
    same shape, finite, in 0..1. Anything else raises
    :class:`FaceProcessingError` naming the image and face. Pass ``faces`` to
    skip detection. No face found: the image is returned unchanged (a copy),
    with a warning.

    Faces smaller than ``min_face_size`` (eye distance in pixels) are not given
    to the model; they are listed in ``result.skipped`` and ``small_faces``
    decides what happens to them (:data:`SMALL_FACE_POLICIES`): "redact" (the
    default) blurs them in the returned image, "fail" raises
    :class:`FaceProcessingError`, "keep" leaves them unchanged with a warning.
    So with the default no detected face comes back unchanged. ``options``: these keywords as one
    :class:`FaceLoopOptions` (pass one or the other).
    """
    opts = FaceLoopOptions.resolve(options, locals())
    res = process_faces_batch([rgb], process_crops, detector=detector, faces=None if faces is None else [faces],
                              image_names=[image_name], options=opts)[0]
    for f in res.faces:
        f.frame_index = frame_index
    return res
