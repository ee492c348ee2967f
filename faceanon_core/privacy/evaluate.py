"""``faceanon eval ORIGINALS ANONYMIZED``: how anonymous are the outputs of any method?

The protocol of the paper (re-identification), plus what else changed:

- **Re-identification.** Every face of every original is embedded (the gallery).
  Each output face is embedded too and compared with the whole gallery: a *hit*
  when its nearest original face is its own. ``reid_rate`` = hits / faces;
  ``chance_rate`` = 1 / gallery size is what guessing would score. With a
  gallery of a few faces these rates are coarse; ``leak_rate`` (share of output
  faces closer to their own original than the recognizer's threshold, i.e.
  still "the same person") is the per-face measure the leak guard enforces.
- **Identity distances** of each output face to its own original (histogram).
- **Head pose change** from the 5 landmarks of the face found again in the
  output (roll exactly from the eye line; yaw and pitch approximately from the
  nose offset, see :func:`head_pose`).
- **Outside the faces:** PSNR and SSIM (luma, Gaussian window) over the pixels
  farther than :data:`OUTSIDE_MARGIN` px from every face region of the
  original: an anonymizer should not touch them (100 dB = identical).

Inputs are paired by relative path without the extension (``a/b.jpg`` with
``a/b.png``). An output face is looked for where its original face is; if the
detector no longer finds it (a solid fill, a strong blur) the output is
embedded at the original landmarks (an attacker who knows where the face was
does exactly this) and ``detected`` is false; ``require_detection=True`` makes
that an error instead. It runs on any method's output: diffusion, blur,
pixelate, solid.
"""

from __future__ import annotations

import base64
import heapq
import html
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..faces import (
    DEFAULT_FEATHER,
    AlignedFace,
    FaceDetector,
    align_faces,
    default_detector,
    extract_crops,
    paste_back,
)
from .identity import FaceRecognizer

logger = logging.getLogger(__name__)

__all__ = [
    "EvalError",
    "EvalResult",
    "OUTSIDE_MARGIN",
    "evaluate_images",
    "evaluate_folders",
    "head_pose",
    "pair_inputs",
    "psnr_ssim_outside",
    "write_report",
]

#: Pixels within this distance of a face region are not "outside" (SSIM windows
#: reach about 5 px, resampling at the mask edge 1-2 px).
OUTSIDE_MARGIN = 7
PSNR_IDENTICAL = 100.0
THUMB = 128


class EvalError(ValueError):
    """The inputs of an evaluation are unusable (missing pairs, sizes, faces)."""


# --------------------------------------------------------------------------- geometry


def head_pose(landmarks: np.ndarray) -> dict[str, float]:
    """Approximate head pose in degrees from 5 landmarks (eyes, nose tip, mouth corners).

    ``roll``: angle of the eye line. ``yaw``/``pitch``: from the nose tip's offset
    from the face's midline and from its frontal height between eyes and mouth,
    read as the rotation of a nose tip standing 0.5 eye distances in front of the
    face plane (a typical adult face). Good for comparing a face with itself
    before and after, not as an absolute pose.
    """
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    le, re, nose, lm_, rm = lm
    eye_mid, mouth_mid = (le + re) / 2, (lm_ + rm) / 2
    ex = re - le
    iod = float(np.hypot(*ex))
    if iod <= 1e-9:
        return {"yaw": float("nan"), "pitch": float("nan"), "roll": float("nan")}
    roll = math.degrees(math.atan2(ex[1], ex[0]))
    x_axis = ex / iod
    y_axis = np.array([-x_axis[1], x_axis[0]])  # image "down" for an upright face
    mid = (eye_mid + mouth_mid) / 2
    lateral = float((nose - mid) @ x_axis) / iod
    span = float((mouth_mid - eye_mid) @ y_axis)
    # Frontal template: nose at 0.495 of the eye-to-mouth height (TEMPLATE_5).
    vertical = (float((nose - eye_mid) @ y_axis) - 0.495 * span) / iod
    depth = 0.5
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, lateral / depth))))
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, vertical / depth))))
    return {"yaw": yaw, "pitch": pitch, "roll": roll}


def _face_region(rgb: np.ndarray, faces: Sequence[AlignedFace]) -> np.ndarray:
    """Boolean HxW: the union of the face masks (no erosion), grown by :data:`OUTSIDE_MARGIN`."""
    h, w = rgb.shape[:2]
    if not faces:
        return np.zeros((h, w), bool)
    s = faces[0].crop_size
    ones = np.ones((len(faces), s, s, 3), np.float32)
    _, m = paste_back(rgb, faces, ones, erode=0.0, feather=DEFAULT_FEATHER)
    region = (m > 0).astype(np.uint8)
    k = 2 * OUTSIDE_MARGIN + 1
    return cv2.dilate(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) > 0


def _ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM map of two uint8 RGB images on luma (Wang et al. 2004: Gaussian sigma 1.5, K1 0.01, K2 0.03)."""
    ya = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64)
    yb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    ma, mb = blur(ya), blur(yb)
    saa, sbb, sab = blur(ya * ya) - ma * ma, blur(yb * yb) - mb * mb, blur(ya * yb) - ma * mb
    return ((2 * ma * mb + c1) * (2 * sab + c2)) / ((ma * ma + mb * mb + c1) * (saa + sbb + c2))


def psnr_ssim_outside(original: np.ndarray, output: np.ndarray,
                      region: np.ndarray) -> tuple[float | None, float | None]:
    """PSNR (dB, capped at 100 for identical pixels) and mean SSIM where ``region`` is False.
    (None, None) when nothing is outside."""
    outside = ~region
    n = int(outside.sum())
    if n == 0:
        return None, None
    diff = original[outside].astype(np.float64) - output[outside].astype(np.float64)
    mse = float((diff * diff).mean())
    psnr = PSNR_IDENTICAL if mse == 0 else min(PSNR_IDENTICAL, 10 * math.log10(255.0**2 / mse))
    ssim = float(_ssim_map(original, output)[outside].mean())
    return psnr, ssim


# --------------------------------------------------------------------------- inputs


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


# --------------------------------------------------------------------------- evaluation


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


def _stats(values: Sequence[float]) -> dict[str, float] | None:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if v.size == 0:
        return None
    return {"n": int(v.size), "min": round(float(v.min()), 4), "p10": round(float(np.percentile(v, 10)), 4),
            "median": round(float(np.median(v)), 4), "mean": round(float(v.mean()), 4),
            "p90": round(float(np.percentile(v, 90)), 4), "max": round(float(v.max()), 4)}


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
        psnr, ssim = psnr_ssim_outside(orig, out, _face_region(orig, aligned))
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
        "distance": _stats([r["distance"] for r in faces]),
        "pose_change_deg": {k: _stats([p[k] for p in poses]) for k in ("yaw", "pitch", "roll")} if poses else None,
        "psnr_outside_db": _stats([im["psnr_outside_db"] for im in images]),
        "ssim_outside": _stats([im["ssim_outside"] for im in images]),
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


# --------------------------------------------------------------------------- report


def _png_b64(rgb: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return base64.b64encode(buf.tobytes()).decode("ascii") if ok else ""


def _svg_histogram(values: Sequence[float], *, lo: float, hi: float, bins: int = 24, line: float | None = None,
                   title: str = "", width: int = 420, height: int = 180) -> str:
    v = np.clip(np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64), lo, hi)
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    top = max(int(counts.max()) if counts.size else 1, 1)
    pad_l, pad_b, pad_t = 30, 24, 18
    pw, ph = width - pad_l - 8, height - pad_b - pad_t
    sx = lambda x: pad_l + (x - lo) / (hi - lo) * pw  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11" '
             f'font-family="sans-serif"><text x="{pad_l}" y="12">{html.escape(title)}</text>']
    for c, e0, e1 in zip(counts, edges[:-1], edges[1:], strict=True):
        bh = ph * c / top
        parts.append(f'<rect x="{sx(e0):.1f}" y="{pad_t + ph - bh:.1f}" width="{max(sx(e1) - sx(e0) - 1, 1):.1f}" '
                     f'height="{bh:.1f}" fill="#4a7ab5"/>')
    parts.append(f'<line x1="{pad_l}" y1="{pad_t + ph}" x2="{pad_l + pw}" y2="{pad_t + ph}" stroke="#333"/>')
    for t in np.linspace(lo, hi, 5):
        parts.append(f'<text x="{sx(t):.1f}" y="{height - 6}" text-anchor="middle">{t:g}</text>')
    parts.append(f'<text x="4" y="{pad_t + 8}">{top}</text>')
    if line is not None and lo <= line <= hi:
        parts.append(f'<line x1="{sx(line):.1f}" y1="{pad_t}" x2="{sx(line):.1f}" y2="{pad_t + ph}" '
                     'stroke="#c33" stroke-dasharray="4,3"/>')
        parts.append(f'<text x="{sx(line) + 3:.1f}" y="{pad_t + 10}" fill="#c33">threshold {line:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _fmt(stats: dict[str, float] | None, key: str = "mean") -> str:
    return "n/a" if not stats else f"{stats[key]:.3f}"


def render_html(result: EvalResult) -> str:
    """A self-contained HTML page: summary, histograms (inline SVG) and the worst cases side by side."""
    s = result.summary
    rows = [
        ("faces / photos", f"{s['faces']} / {s['images']}"),
        ("re-identification rate (nearest original is its own)",
         f"{s['reid_rate']:.1%} (chance {s['chance_rate']:.1%})"),
        (f"leak rate (distance < {s['threshold']:g})", f"{s['leak_rate']:.1%}"),
        ("identity distance to own original: median (min-max)",
         f"{_fmt(s['distance'], 'median')} ({_fmt(s['distance'], 'min')}-{_fmt(s['distance'], 'max')})"),
        ("faces found again in the outputs", f"{s['detected_in_output_rate']:.1%}"),
        ("mean pose change yaw / pitch / roll (deg)",
         " / ".join(_fmt((s["pose_change_deg"] or {}).get(k)) for k in ("yaw", "pitch", "roll"))),
        ("outside the faces: PSNR dB (mean, 100 = identical)", _fmt(s["psnr_outside_db"])),
        ("outside the faces: SSIM (mean)", _fmt(s["ssim_outside"])),
    ]
    table = "".join(f"<tr><td>{html.escape(k)}</td><td><b>{html.escape(v)}</b></td></tr>" for k, v in rows)
    dists = [f["distance"] for f in result.faces]
    others = [f["nearest_other_distance"] for f in result.faces if f["nearest_other_distance"] is not None]
    yaw = [f["pose_change"]["yaw"] for f in result.faces if f["pose_change"]]
    roll = [f["pose_change"]["roll"] for f in result.faces if f["pose_change"]]
    plots = [
        _svg_histogram(dists, lo=0.0, hi=1.2, line=s["threshold"], title="distance to own original"),
        _svg_histogram(others, lo=0.0, hi=1.2, line=s["threshold"], title="distance to nearest other original"),
    ]
    if yaw:
        plots.append(_svg_histogram(yaw, lo=0.0, hi=30.0, title="|yaw change| (deg)"))
        plots.append(_svg_histogram(roll, lo=0.0, hi=30.0, title="|roll change| (deg)"))
    cards = []
    for w in result.worst:
        r = w["record"]
        cards.append(
            '<figure><img src="data:image/png;base64,{}"><img src="data:image/png;base64,{}">'
            "<figcaption>{} face {}<br>distance {:.3f}{}{}</figcaption></figure>".format(
                _png_b64(w["original"]), _png_b64(w["output"]), html.escape(r["image"]), r["face"], r["distance"],
                " &middot; <b>re-identified</b>" if r.get("hit") else "",
                "" if r["detected"] else " &middot; not detected"))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>faceanon eval</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1100px}td{padding:2px 12px}"
        "figure{display:inline-block;margin:6px;text-align:center;font-size:12px}"
        "figure img{margin:1px}</style></head><body>"
        f"<h1>Anonymization report</h1><p>{html.escape(str(s.get('originals', '')))} &rarr; "
        f"{html.escape(str(s.get('anonymized', '')))} &middot; recognizer {html.escape(s['recognizer'])}</p>"
        f"<table>{table}</table><h2>Distributions</h2>{''.join(plots)}"
        f"<h2>Worst cases (closest to their original): original | output</h2>{''.join(cards) or '<p>none</p>'}"
        "<p style='color:#666;font-size:12px'>A face recognizer is a proxy for re-identification, not a proof "
        "of anonymity: another recognizer, or a person who knows the subject, may still match a face it does "
        "not.</p></body></html>"
    )


def write_report(result: EvalResult, out_dir: str | os.PathLike, *, overwrite: bool = False) -> dict[str, Path]:
    """Write ``eval.json`` and ``report.html`` into ``out_dir`` (atomically). Returns their paths."""
    import tempfile

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "eval.json", "html": folder / "report.html"}
    if not overwrite:
        for p in paths.values():
            if p.exists():
                raise EvalError(f"{p} exists: choose another report folder or pass --overwrite")
    texts = {"json": json.dumps(result.to_dict(), indent=2), "html": render_html(result)}
    for key, p in paths.items():
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".part", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(texts[key])
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    return paths
