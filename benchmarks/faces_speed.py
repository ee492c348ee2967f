"""Speed of the face pipeline on this CPU: detection, alignment (crop extraction)
and paste-back, per megapixel and per face. One JSON line per case.

    python -m benchmarks.faces_speed [--repeat 3] [--no-big]

Photos come from scikit-image and matplotlib (astronaut, Grace Hopper) and a
4-face collage built from them at several sizes; no downloads.

Big photos (4, 14 and 48 Mpx): detection cost per megapixel with the
full-resolution pass for small faces against the downscaled copy alone (the
behaviour before it), measured in the same run and given as a ratio, on two
kinds of photo: the collage upscaled (real texture everywhere) and a canvas with
faces 22-30 px and 180-400 px wide (how many of them each mode finds).
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
from helpers.faces import astronaut, big_photo_with_small_faces, collage, grace_hopper

BIG_SIZES = {"4mp": (2448, 1632), "14mp": (4592, 3056), "48mp": (8000, 6000)}


def found(faces, truth) -> int:
    return sum(1 for cx, cy, w in truth if any(abs((f.box[0] + f.box[2]) / 2 - cx) < w / 3
                                               and abs((f.box[1] + f.box[3]) / 2 - cy) < w / 3 for f in faces))


def big_cases(repeat: int):
    """One JSON line per (photo, size): seconds per megapixel before/after and faces found."""
    before, after = MTCNNDetector(full_resolution=False), MTCNNDetector()
    base = collage()[0]
    for label, (w, h) in BIG_SIZES.items():
        mp = w * h / 1e6
        small, truth = big_photo_with_small_faces((w, h), large=(round(400 * w / 8000), 180))
        textured = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
        for kind, img in (("small_faces_canvas", small), ("collage_upscaled", textured)):
            t0, f0 = best_of(lambda img=img: before.detect(img), repeat)
            t1, f1 = best_of(lambda img=img: after.detect(img), repeat)
            row = {"case": f"{kind}_{label}_{w}x{h}", "megapixels": round(mp, 2),
                   "before_s_per_mp": round(t0 / mp, 4), "after_s_per_mp": round(t1 / mp, 4),
                   "ratio_after_before": round(t1 / t0, 2), "faces_before": len(f0), "faces_after": len(f1),
                   "smallest_reachable_before_px": round(12 * max(w, h) / 2000, 1),
                   "threads": cv2.getNumThreads()}
            if kind == "small_faces_canvas":
                row.update(true_faces=len(truth), found_before=found(f0, truth), found_after=found(f1, truth),
                           true_widths=[w_ for _, _, w_ in truth])
            print(json.dumps(row), flush=True)


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
    ap.add_argument("--no-big", action="store_true", help="skip the 4/14/48 Mpx detection cases")
    ap.add_argument("--only-big", action="store_true", help="only the 4/14/48 Mpx detection cases")
    ap.add_argument("--big-repeat", type=int, default=1, help="runs per big case (default 1: they take seconds)")
    args = ap.parse_args(argv)
    det = MTCNNDetector()
    det.detect(astronaut())  # warm-up (OpenCV DNN initialisation)
    for name, img in ([] if args.only_big else cases()):
        mp = img.shape[0] * img.shape[1] / 1e6
        t_det, faces = best_of(lambda img=img: det.detect(img), args.repeat)
        t_align, (aligned, crops) = best_of(
            lambda img=img, faces=faces: (lambda al: (al, extract_crops(img, al)))(align_faces(faces)[0]),
            args.repeat,
        )
        t_paste, _ = best_of(lambda img=img, aligned=aligned, crops=crops: paste_back(img, aligned, crops), args.repeat)
        n = max(len(aligned), 1)
        print(json.dumps({
            "case": name, "megapixels": round(mp, 2), "faces": len(aligned),
            "detect_s": round(t_det, 4), "detect_s_per_mp": round(t_det / mp, 4),
            "align_s_per_face": round(t_align / n, 4), "paste_s_per_face": round(t_paste / n, 4),
            "total_s": round(t_det + t_align + t_paste, 4),
            "cpu": platform.processor() or platform.machine(), "threads": cv2.getNumThreads(),
            "opencv": cv2.__version__,
        }), flush=True)
    if not args.no_big:
        big_cases(args.big_repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
