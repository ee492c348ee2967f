"""The report of ``faceanon eval``: one self-contained HTML page (inline SVG histograms, PNG thumbnails) + JSON."""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .eval_protocol import EvalError, EvalResult


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
