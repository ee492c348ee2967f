"""Video faces: coverage, identity switches, landmark jitter, throughput and memory, on a clip with known faces.

The clip is built here from photos that packages ship (``skimage.data.astronaut``, matplotlib's
``grace_hopper.jpg``): three faces (the astronaut, Grace Hopper, the astronaut mirrored) warped onto a
textured background with a known similarity transform per frame (pan, zoom and a head roll of up to
+-20 degrees), so every frame's ground-truth landmarks are the photo's landmarks (MTCNN on the
photo) under that transform. A grey "hand" passes over the faces: face 0 is fully hidden for 3
frames (no detector can find it), face 1 half hidden for 3 frames, face 2 has its eyes covered for
2 frames.

Reported (one JSON line, and a table with ``--table``):

* identity switches: per ground-truth face, changes of the track that covers it between frames;
* uncovered face-frames: ground-truth faces whose face region (the eye-mouth quadrilateral, 1.2x)
  is not >= 99% under a redaction mask >= 0.5, with the per-frame detections only (photo mode: no
  gap filling) and with tracks (interpolation + holds);
* landmark error against ground truth (RMS, px and in eye distances) and jitter (RMS of its
  frame-to-frame change), raw detector landmarks against the smoothed track;
* throughput: video redaction (detect + track + redact, frames in memory, and the whole
  ``faceanon redact`` CLI with decoding and encoding) against per-frame photo redaction of the same
  frames in the same run, frames per second at 1280x720;
* ``--memory``: peak RSS (the child's own VmHWM) of ``faceanon redact`` on 1080p clips of two
  lengths (``--memory-lengths 96,192``), as the ratio long/short (target 1.0) and extrapolated
  linearly to 10 minutes at 25 and 30 fps; ``--memory-command anonymize`` measures the anonymize
  path with the tiny test model.

    python -m benchmarks.video_tracks [--frames 60] [--memory] [--table]
    python -m benchmarks.video_tracks --memory-only [--memory-lengths 96,384] [--memory-command anonymize]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@functools.cache
def _sources() -> list[tuple[np.ndarray, np.ndarray, tuple[float, float], float]]:
    """(photo, its 5 landmarks, head centre, head radius) for each of the three faces."""
    import matplotlib.cbook as cbook
    from PIL import Image
    from skimage import data

    from faceanon_core.faces import MTCNNDetector

    det = MTCNNDetector()
    astro = data.astronaut()
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        grace = np.asarray(im.convert("RGB")).copy()
    out = []
    for img, mirror in ((astro, False), (grace, False), (astro, True)):
        if mirror:
            img = np.ascontiguousarray(img[:, ::-1])
        face = max(det.detect(img), key=lambda f: f.score)
        lm = np.asarray(face.landmarks5, np.float64)
        eye = float(np.hypot(*(lm[1] - lm[0])))
        centre = (float(lm[:, 0].mean()), float(lm[:, 1].mean()) - 0.2 * eye)
        out.append((img, lm, centre, 2.3 * eye))
    return out


@dataclass(frozen=True)
class Clip:
    frames: list[np.ndarray]
    truth: list[list[np.ndarray]]  # per frame, per face: 5x2 ground-truth landmarks
    occluded: dict[tuple[int, int], str]  # (frame, face) -> how


def _affine(scale: float, angle_deg: float, src_c, dst_c) -> np.ndarray:
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    m = np.array([[c, -s, 0.0], [s, c, 0.0]])
    m[:, 2] = np.asarray(dst_c) - m[:, :2] @ np.asarray(src_c)
    return m


def build_clip(n: int = 60, width: int = 1280, height: int = 720, seed: int = 0) -> Clip:
    """The test clip: three faces panning, zooming and rolling; a grey hand over some of them."""
    rng = np.random.default_rng(seed)
    k = width / 1280.0
    noise = cv2.resize(rng.integers(60, 200, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8),
                       (width, height), interpolation=cv2.INTER_CUBIC)
    # Eye distance on screen, start position, pan (px/frame), zoom and roll amplitudes, phases.
    plan = [
        dict(eye=55, x=260, y=330, vx=3.0, vy=0.6, zoom=0.25, roll=20, ph=0.0),
        dict(eye=70, x=700, y=380, vx=-1.5, vy=-0.8, zoom=0.30, roll=-15, ph=1.3),
        dict(eye=45, x=1020, y=300, vx=-2.5, vy=1.0, zoom=0.20, roll=12, ph=2.1),
    ]
    occl = {}
    for t in (20, 21, 22):
        occl[(t, 0)] = "full"
    for t in (35, 36, 37):
        occl[(t, 1)] = "lower half"
    for t in (44, 45):
        occl[(t, 2)] = "eyes"
    frames, truth = [], []
    for t in range(n):
        img = noise.copy()
        lms = []
        # The whole shot pans and zooms a little too (a moving camera).
        cam = 1.0 + 0.08 * math.sin(2 * math.pi * t / n)
        for (src, lm, centre, radius), p in zip(_sources(), plan, strict=True):
            eye_src = float(np.hypot(*(lm[1] - lm[0])))
            scale = k * cam * p["eye"] * (1 + p["zoom"] * math.sin(2 * math.pi * t / 48 + p["ph"])) / eye_src
            angle = p["roll"] * math.sin(2 * math.pi * t / 40 + p["ph"])
            dst = (k * (p["x"] + p["vx"] * t), k * (p["y"] + p["vy"] * t))
            m = _affine(scale, angle, centre, dst)
            mask = np.zeros(src.shape[:2], np.float32)
            cv2.ellipse(mask, (int(centre[0]), int(centre[1])), (int(radius * 0.85), int(radius)), 0, 0, 360, 1.0, -1)
            mask = cv2.GaussianBlur(mask, (0, 0), radius * 0.08)
            warped = cv2.warpAffine(src, m, (width, height), flags=cv2.INTER_LINEAR)
            alpha = cv2.warpAffine(mask, m, (width, height), flags=cv2.INTER_LINEAR)[..., None]
            img = (img * (1 - alpha) + warped * alpha).astype(np.uint8)
            lms.append(lm @ m[:, :2].T + m[:, 2])
        for (tt, face), how in occl.items():
            if tt != t:
                continue
            g = lms[face]
            eye = float(np.hypot(*(g[1] - g[0])))
            cx, cy = g[:, 0].mean(), g[:, 1].mean()
            if how == "full":
                x0, y0, x1, y1 = cx - 1.8 * eye, cy - 1.8 * eye, cx + 1.8 * eye, cy + 1.8 * eye
            elif how == "lower half":
                x0, y0, x1, y1 = cx - 1.6 * eye, g[2, 1], cx + 1.6 * eye, cy + 1.8 * eye
            else:
                x0, y0, x1, y1 = cx - 1.6 * eye, g[:2, 1].min() - 0.5 * eye, cx + 1.6 * eye, g[:2, 1].max() + 0.35 * eye
            cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), (150, 130, 120), -1)
        frames.append(img)
        truth.append(lms)
    return Clip(frames, truth, occl)


def _face_region(lm: np.ndarray, shape) -> np.ndarray:
    """Boolean mask: the eye-mouth quadrilateral of ground-truth landmarks, grown 1.2x."""
    quad = lm[[0, 1, 4, 3]]
    c = quad.mean(0)
    quad = c + 1.2 * (quad - c)
    m = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(m, np.round(quad).astype(np.int32), 1)
    return m.astype(bool)


def uncovered(masks: list[np.ndarray], clip: Clip) -> list[tuple[int, int]]:
    """(frame, face) pairs whose face region is not >= 99% under a mask >= 0.5."""
    bad = []
    for t, (mask, lms) in enumerate(zip(masks, clip.truth, strict=True)):
        for j, lm in enumerate(lms):
            region = _face_region(lm, mask.shape)
            if region.any() and (mask[region] >= 0.5).mean() < 0.99:
                bad.append((t, j))
    return bad


def _match(faces, lm: np.ndarray):
    """The tracked face nearest to a ground-truth face (mean landmark distance < 0.5 eye distances)."""
    eye = float(np.hypot(*(lm[1] - lm[0])))
    best = min(faces, key=lambda f: np.linalg.norm(f.landmarks5 - lm, axis=1).mean(), default=None)
    if best is None or np.linalg.norm(best.landmarks5 - lm, axis=1).mean() > 0.5 * eye:
        return None
    return best


def identity_switches(tracks, clip: Clip) -> tuple[int, dict[int, list[int]]]:
    """Changes of the covering track id per ground-truth face, and the track ids each face had."""
    switches, ids = 0, {}
    for j in range(len(clip.truth[0])):
        prev, seen = None, []
        for t in range(tracks.num_frames):
            f = _match(tracks.faces_in_frame(t), clip.truth[t][j])
            if f is None:
                continue
            if prev is not None and f.track_id != prev:
                switches += 1
            if f.track_id not in seen:
                seen.append(f.track_id)
            prev = f.track_id
        ids[j] = seen
    return switches, ids


def landmark_errors(tracks, clip: Clip) -> dict[str, float]:
    """RMS error against ground truth and jitter (RMS frame-to-frame change of the error), raw vs smoothed."""
    out = {}
    for key in ("raw", "smoothed"):
        errs, jit, errs_rel = [], [], []
        for j in range(len(clip.truth[0])):
            prev = None
            for t in range(tracks.num_frames):
                gt = clip.truth[t][j]
                f = _match(tracks.faces_in_frame(t), gt)
                if f is None or not f.detected:
                    prev = None
                    continue
                lm = f.raw_landmarks5 if key == "raw" else f.landmarks5
                e = lm - gt
                eye = float(np.hypot(*(gt[1] - gt[0])))
                errs.append(np.sum(e**2, axis=1))
                errs_rel.append(np.sum((e / eye) ** 2, axis=1))
                if prev is not None:
                    jit.append(np.sum((e - prev) ** 2, axis=1))
                prev = e
        out[f"{key}_rms_px"] = float(np.sqrt(np.mean(np.concatenate(errs))))
        out[f"{key}_rms_eye"] = float(np.sqrt(np.mean(np.concatenate(errs_rel))))
        out[f"{key}_jitter_px"] = float(np.sqrt(np.mean(np.concatenate(jit))))
    return out


def coverage_report(clip: Clip, detections=None, detector=None) -> dict:
    """Switches and uncovered face-frames with and without tracks (the fast check the tests run too)."""
    from faceanon_core.faces.redact import redact_image
    from faceanon_core.faces.tracks import track_faces
    from faceanon_core.faces.video import redact_frames

    if detections is None:
        from faceanon_core.faces import MTCNNDetector

        detector = detector or MTCNNDetector()
        detections = [detector.detect(f) for f in clip.frames]
    n = len(clip.frames)
    photo_masks = [redact_image(f, faces=d, image_name=f"frame {t}").mask
                   for t, (f, d) in enumerate(zip(clip.frames, detections, strict=True))]
    size = clip.frames[0].shape[1::-1]  # (width, height): the border rule, as the CLI's video run
    tracks = track_faces(detections, frame_size=size)
    track_masks = [r.mask for r in redact_frames(clip.frames, list(range(n)), tracks)]
    switches, ids = identity_switches(tracks, clip)
    faces = [f for tid in tracks.track_ids for f in tracks.track(tid)]
    return {
        "frames": n,
        "ground_truth_face_frames": n * len(clip.truth[0]),
        "missed_detections": sum(
            _match(d, gt) is None for d, lms in zip(detections, clip.truth, strict=True) for gt in lms
        ),
        "tracks": len(tracks),
        "track_ids_per_face": ids,
        "identity_switches": switches,
        "uncovered_without_gap_filling": len(uncovered(photo_masks, clip)),
        "uncovered_with_tracks": len(uncovered(track_masks, clip)),
        "uncovered_with_tracks_list": uncovered(track_masks, clip),
        "filled_face_frames": sum(not f.detected for f in faces),
        "_tracks": tracks,
        "_detections": detections,
    }


def _throughput(clip: Clip, reps: int = 2) -> dict:
    """Frames per second: video redaction vs per-frame photo redaction of the same frames.

    After a warm-up detection, the two alternate (order swapped every repetition); the best time of
    each counts."""
    from faceanon_core.faces import MTCNNDetector
    from faceanon_core.faces.redact import redact_image
    from faceanon_core.faces.tracks import track_faces
    from faceanon_core.faces.video import redact_frames

    det = MTCNNDetector()
    n = len(clip.frames)
    det.detect(clip.frames[0])  # warm-up (OpenCV's first forward pass allocates)

    def photo() -> float:
        t0 = time.perf_counter()
        for f in clip.frames:
            redact_image(f, detector=det, image_name="frame")
        return time.perf_counter() - t0

    def video() -> float:
        t0 = time.perf_counter()
        dets = [det.detect(f) for f in clip.frames]
        redact_frames(clip.frames, list(range(n)), track_faces(dets, frame_size=clip.frames[0].shape[1::-1]))
        return time.perf_counter() - t0

    video_t, photo_t = [], []
    for r in range(reps):
        if r % 2:
            video_t.append(video())
            photo_t.append(photo())
        else:
            photo_t.append(photo())
            video_t.append(video())
    return {"photo_fps": n / min(photo_t), "video_fps": n / min(video_t),
            "video_over_photo": min(photo_t) / min(video_t)}


def _write_clip(clip: Clip, path: Path, fps: int = 30) -> Path:
    import av

    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        v.height, v.width = clip.frames[0].shape[:2]
        v.pix_fmt = "yuv420p"
        for f in clip.frames:
            for p in v.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
    return path


def _cli_fps(clip: Clip, folder: Path) -> float:
    src = _write_clip(clip, folder / "clip720.mp4")
    t0 = time.perf_counter()
    code = subprocess.run([sys.executable, "-m", "faceanon_core.cli.main", "-q", "redact", str(src), "-o",
                           str(folder / "out720.mp4")], cwd=REPO, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if code.returncode:
        raise RuntimeError(code.stderr)
    return len(clip.frames) / dt


# The child reports its own high-water mark, VmHWM. Not ru_maxrss: on Linux a process started from
# another one inherits the parent's peak RSS in ru_maxrss (exec records the old address space's
# high-water mark; with vfork that is the parent's), so a child started by a benchmark that had
# built a 144-frame 1080p clip in memory "peaked" at the benchmark's 1.4 GB, whatever it did itself.
_MEM_CHILD = (
    "import sys\n"
    "from faceanon_core.cli.main import main\n"
    "try:\n"
    "    code = main(['-q'] + sys.argv[1:])\n"
    "except SystemExit as exc:\n"
    "    code = exc.code\n"
    "status = open('/proc/self/status').read()\n"
    "print(int(status.split('VmHWM:')[1].split()[0]))\n"
    "sys.exit(code)\n"
)

#: The memory clip: 48 frames of :func:`build_clip` at 1080p, played forwards and backwards (the faces
#: move continuously, so they stay 3 tracks), for as long as asked: every length shows the same faces
#: at the same sizes, so two lengths differ only in length.
MEMORY_BASE_FRAMES = 48


def write_memory_clip(path: Path, n: int, base: list[np.ndarray], fps: int = 30) -> Path:
    """``n`` frames of the ping-pong clip, encoded one at a time (the clip is never held whole)."""
    import av

    seq = base + base[::-1]
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        v.height, v.width = base[0].shape[:2]
        v.pix_fmt = "yuv420p"
        for i in range(n):
            for p in v.encode(av.VideoFrame.from_ndarray(seq[i % len(seq)], format="rgb24")):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
    return path


def _peak_mib(argv: list[str], check: bool = True) -> float:
    """Peak RSS in MiB of ``faceanon ARGV`` in a child process (its own, not this process's)."""
    r = subprocess.run([sys.executable, "-c", _MEM_CHILD, *argv], cwd=REPO, capture_output=True, text=True,
                       check=False)
    if check and r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return int(r.stdout.strip().splitlines()[-1]) / 1024.0  # kB -> MiB


def _memory(folder: Path, lengths=(96, 192), command: str = "redact") -> dict:
    """Peak RSS of ``faceanon redact`` (or ``anonymize`` with the tiny test model) on 1080p clips of two
    lengths in the same run: the ratio long/short (bounded memory: about 1.0), and the peak extrapolated
    linearly to 10 minutes at 25 and 30 fps (the slope clipped at 0).

    Both lengths should be past the encoder's warm-up: libx264 fills its lookahead and frame threads over
    the first ~70 frames at 1080p (the peak grows until then and is flat after), so a line through a
    shorter clip would extrapolate that warm-up, not a growth with length."""
    base = build_clip(MEMORY_BASE_FRAMES, 1920, 1080, seed=1).frames
    extra: list[str] = []
    if command == "anonymize":
        from faceanon_core.testing.tiny_models import write_tiny_model_folder

        models = write_tiny_model_folder(folder / "tiny_model", seed=0)
        extra = ["--models", str(models), "--no-verify", "--size", "64", "--steps", "2", "--scheduler", "ddim"]
    elif command != "redact":
        raise ValueError(f"command must be redact or anonymize, got {command!r}")
    clips = {n: write_memory_clip(folder / f"clip1080_{n}.mp4", n, base) for n in lengths}
    del base
    peaks = {n: _peak_mib([command, str(src), "-o", str(folder / f"out1080_{command}_{n}.mp4"), *extra])
             for n, src in clips.items()}
    (a, pa), (b, pb) = sorted(peaks.items())
    slope = max(0.0, (pb - pa) / (b - a))
    return {"command": command, "peak_mib": {str(k): round(v, 1) for k, v in peaks.items()},
            "ratio_long_over_short": round(pb / pa, 3), "mib_per_frame": round(slope, 4),
            "extrapolated_10min_1080p25_mib": round(pb + slope * (10 * 60 * 25 - b), 1),
            "extrapolated_10min_1080p30_mib": round(pb + slope * (10 * 60 * 30 - b), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--memory", action="store_true", help="also measure peak RSS on 1080p clips")
    parser.add_argument("--table", action="store_true", help="also print a Markdown table")
    parser.add_argument("--memory-only", action="store_true", help="only the 1080p memory measurement")
    parser.add_argument("--memory-lengths", default="96,192", metavar="SHORT,LONG",
                        help="the two clip lengths of the memory measurement, in frames (default 96,192)")
    parser.add_argument("--memory-command", choices=("redact", "anonymize"), default="redact",
                        help="what the memory measurement runs (anonymize: the tiny test model)")
    args = parser.parse_args()
    lengths = tuple(int(v) for v in args.memory_lengths.split(","))
    if len(lengths) != 2 or lengths[0] >= lengths[1]:
        parser.error("--memory-lengths takes two lengths, shorter first: SHORT,LONG")
    if args.memory_only:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps({"memory": _memory(Path(tmp), lengths, args.memory_command)}))
        return

    clip = build_clip(args.frames)
    rep = coverage_report(clip)
    tracks, dets = rep.pop("_tracks"), rep.pop("_detections")
    from faceanon_core.faces.tracks import track_faces

    rough = track_faces(dets, smoothing=None, frame_size=clip.frames[0].shape[1::-1])
    errs = {k: v for k, v in landmark_errors(tracks, clip).items() if k.startswith("smoothed")}
    errs.update({k: v for k, v in landmark_errors(rough, clip).items() if k.startswith("raw")})
    rep["landmarks"] = {k: round(v, 3) for k, v in errs.items()}
    rep["throughput_720p"] = {k: round(v, 3) for k, v in _throughput(clip).items()}
    with tempfile.TemporaryDirectory() as tmp:
        rep["throughput_720p"]["cli_fps_with_decode_encode"] = round(_cli_fps(clip, Path(tmp)), 3)
        if args.memory:
            rep["memory"] = _memory(Path(tmp), lengths, args.memory_command)
    rep["uncovered_with_tracks_list"] = [list(p) for p in rep["uncovered_with_tracks_list"]]
    print(json.dumps(rep))
    if args.table:
        lm, tp = rep["landmarks"], rep["throughput_720p"]
        print(f"| ground-truth face-frames | {rep['ground_truth_face_frames']} ({rep['frames']} frames x 3 faces) |")
        print(f"| detector misses | {rep['missed_detections']} |")
        print(f"| tracks / identity switches | {rep['tracks']} / {rep['identity_switches']} |")
        print(f"| uncovered face-frames, per-frame detections | {rep['uncovered_without_gap_filling']} |")
        print(f"| uncovered face-frames, tracks (gap filling + holds) | {rep['uncovered_with_tracks']} |")
        print(f"| landmark RMS error raw / smoothed | {lm['raw_rms_px']:.2f} px / {lm['smoothed_rms_px']:.2f} px |")
        print(f"| landmark jitter raw / smoothed | {lm['raw_jitter_px']:.2f} px / {lm['smoothed_jitter_px']:.2f} px |")
        print(f"| redaction 720p, photo per frame / video | {tp['photo_fps']:.2f} / {tp['video_fps']:.2f} frames/s |")


if __name__ == "__main__":
    main()
