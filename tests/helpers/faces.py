"""Real face photos for the faces/redact/CLI tests, built from files that ship in
test dependencies (scikit-image, matplotlib): no downloads at test time."""

from __future__ import annotations

import functools

import cv2
import numpy as np


@functools.lru_cache(maxsize=1)
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@functools.lru_cache(maxsize=1)
def grace_hopper() -> np.ndarray:
    import matplotlib.cbook as cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        return np.asarray(im.convert("RGB")).copy()


def rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


@functools.lru_cache(maxsize=1)
def collage() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """A 700x1300 collage with 4 faces: astronaut rotated 25 degrees, a scaled-down
    Grace Hopper, an astronaut rotated -20 degrees, and a Grace Hopper cut by the
    left edge of her tile. Returns (image, approximate face centres)."""
    a, g = astronaut(), grace_hopper()
    canvas = np.full((700, 1300, 3), 200, np.uint8)
    canvas[0:512, 0:512] = rotate(a, 25)
    canvas[380:680, 540:796] = cv2.resize(g, (256, 300), interpolation=cv2.INTER_AREA)
    canvas[20:280, 600:860] = rotate(a, -20)[40:300, 120:380]
    canvas[100:700, 1000:1300] = g[:600, 212:512]
    centres = [(165.0, 145.0), (671.0, 490.0), (755.0, 92.0), (1065.0, 326.0)]
    canvas.setflags(write=False)
    return canvas, centres


def face_frame_ok(lm: np.ndarray, box) -> bool:
    """Eyes above nose above mouth in the face's own frame, eyes left-to-right, all near the box."""
    lm = np.asarray(lm, float)
    eye_c = lm[:2].mean(0)
    mouth_c = lm[3:].mean(0)
    down = mouth_c - eye_c
    down /= np.linalg.norm(down)
    right = np.array([-down[1], down[0]]) * -1  # rotate "down" by -90 degrees: image-right for an upright face
    y = (lm - eye_c) @ down
    x = (lm - eye_c) @ right
    x0, y0, x1, y1 = box
    pad = 0.1 * max(x1 - x0, y1 - y0)
    inside = ((lm[:, 0] > x0 - pad) & (lm[:, 0] < x1 + pad) & (lm[:, 1] > y0 - pad) & (lm[:, 1] < y1 + pad)).all()
    return bool(
        inside
        and x[0] < x[1]            # left eye is on the left
        and x[3] < x[4]            # left mouth corner on the left
        and y[0] < y[2] and y[1] < y[2]  # eyes above nose
        and y[2] < y[3] and y[2] < y[4]  # nose above mouth corners
    )


def _face_width(img: np.ndarray) -> float:
    """Box width MTCNN gives the one face of ``img`` (astronaut 88 px, Grace Hopper 180 px)."""
    return {id(astronaut()): 88.0, id(grace_hopper()): 180.0}[id(img)]


def big_photo_with_small_faces(
    size: tuple[int, int] = (8000, 6000), small: tuple[float, ...] = (22, 24, 26, 28, 30, 23),
    large: tuple[float, ...] = (400, 180),
) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """A ``size`` (width, height) canvas of textured grey with real faces (astronaut, Grace Hopper, in turn)
    scaled so that their face boxes are ``small`` and ``large`` px wide, spread over the canvas and one of
    them across a 1024-px tile border. Returns (image, [(centre x, centre y, face width)])."""
    w, h = size
    rng = np.random.default_rng(0)
    canvas = np.clip(rng.normal(150, 12, (h // 8, w // 8, 3)), 0, 255).astype(np.uint8)
    canvas = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_LINEAR)
    faces = []
    widths = list(small) + list(large)
    spots = [(0.11, 0.12), (0.128, 0.17), (0.52, 0.4), (0.8, 0.2), (0.3, 0.8), (0.9, 0.85), (0.6, 0.75),
             (0.25, 0.45)]
    # strict=False: ``spots`` is a fixed table of 8 places, a picture uses the first len(widths) of them
    for k, (fw, (sx, sy)) in enumerate(zip(widths, spots, strict=False)):
        src = astronaut() if k % 2 == 0 else grace_hopper()
        s = fw / _face_width(src)
        tile = cv2.resize(src, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        th, tw = tile.shape[:2]
        x0, y0 = int(sx * w) - tw // 2, int(sy * h) - th // 2
        canvas[y0:y0 + th, x0:x0 + tw] = tile
        # Face box centre within the source photo: astronaut (224, 117), Grace Hopper (267, 228).
        cx, cy = (224.0, 117.0) if k % 2 == 0 else (267.0, 228.0)
        faces.append((x0 + cx * s, y0 + cy * s, fw))
    canvas.setflags(write=False)
    return canvas, faces
