"""Speed of the face pipeline on this CPU: detection, alignment (crop extraction)
and paste-back, per megapixel and per face. One JSON line per case.

    python -m benchmarks.faces_speed [--repeat 3]

Photos come from scikit-image and matplotlib (astronaut, Grace Hopper) and a
4-face collage built from them at several sizes; no downloads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import cv2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from faceanon_core.faces import MTCNNDetector, align_faces, extract_crops, paste_back  # noqa: E402
from faces_helpers import astronaut, collage, grace_hopper  # noqa: E402


def cases():
    yield "astronaut_512x512", astronaut()
    yield "grace_hopper_512x600", grace_hopper()
    base = collage()[0]
    for f in (1, 2, 4):
        img = base if f == 1 else cv2.resize(base, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC)
        yield f"collage4_{img.shape[1]}x{img.shape[0]}", img


def best_of(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per stage; the best is reported")
    args = ap.parse_args(argv)
    det = MTCNNDetector()
    det.detect(astronaut())  # warm-up (OpenCV DNN initialisation)
    for name, img in cases():
        mp = img.shape[0] * img.shape[1] / 1e6
        t_det, faces = best_of(lambda: det.detect(img), args.repeat)
        t_align, (aligned, crops) = best_of(
            lambda: (lambda al: (al, extract_crops(img, al)))(align_faces(faces)[0]), args.repeat
        )
        t_paste, _ = best_of(lambda: paste_back(img, aligned, crops), args.repeat)
        n = max(len(aligned), 1)
        print(json.dumps({
            "case": name, "megapixels": round(mp, 2), "faces": len(aligned),
            "detect_s": round(t_det, 4), "detect_s_per_mp": round(t_det / mp, 4),
            "align_s_per_face": round(t_align / n, 4), "paste_s_per_face": round(t_paste / n, 4),
            "total_s": round(t_det + t_align + t_paste, 4),
            "cpu": platform.processor() or platform.machine(), "threads": cv2.getNumThreads(),
            "opencv": cv2.__version__,
        }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
