"""Synthetic detections along ground-truth paths, for the track tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faceanon_core.faces import TEMPLATE_5

# faceanon_core.faces.TEMPLATE_5 (eye distance 0.25 of the crop).
T5 = TEMPLATE_5


@dataclass
class Det:
    """Duck-typed DetectedFace."""

    box: tuple
    score: float
    landmarks5: np.ndarray


def gt_landmarks(cx, cy, eye, nose_shift=0.0):
    """Template face with eye distance ``eye`` centred at (cx, cy); nose moved by nose_shift * eye in x."""
    lm = (T5 - T5.mean(0)) * (eye / 0.25) + np.array([cx, cy])
    lm[2, 0] += nose_shift * eye
    return lm


def det(cx, cy, eye, score=0.99, nose_shift=0.0, noise=None):
    lm = gt_landmarks(cx, cy, eye, nose_shift)
    if noise is not None:
        lm = lm + noise
    box = (cx - 1.2 * eye, cy - 1.5 * eye, cx + 1.2 * eye, cy + 1.3 * eye)
    return Det(box, score, lm)


def build(paths, n_frames, missing=(), rng=None, sigma=0.0, shuffle=True):
    """Detections per frame from ground-truth paths.

    ``paths``: {identity: f(t) -> (cx, cy, eye) or None}; ``missing``: set of (identity, t) the detector
    misses. Returns (frames, who) where who[t][j] is the identity of frame t's detection j.
    """
    shuffle_rng = np.random.default_rng(1234)
    frames, who = [], []
    for t in range(n_frames):
        dets, ids = [], []
        for ident, path in paths.items():
            p = path(t)
            if p is None or (ident, t) in missing:
                continue
            noise = rng.normal(0.0, sigma, (5, 2)) if rng is not None else None
            dets.append(det(*p, noise=noise))
            ids.append(ident)
        order = shuffle_rng.permutation(len(dets)) if shuffle else np.arange(len(dets))
        frames.append([dets[k] for k in order])
        who.append([ids[k] for k in order])
    return frames, who
