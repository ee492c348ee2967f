"""One identity per track: encode_source once, every frame a driving image against it (tiny models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceanon_core.faces.tracks import track_faces
from faceanon_core.faces.video import TrackAnonymizer, process_frames
from faceanon_core.method.pipeline import SourceIdentity
from faceanon_core.testing.tiny_models import TINY_IMAGE_SIZE
from helpers.tiny import noise

S = TINY_IMAGE_SIZE


def test_encode_source_equals_the_per_call_source_branch(tiny_pipe, face_images, run_kwargs):
    """anonymize(x, source=encode_source(x, d)) is anonymize(x, degree=d): same states, same result."""
    x = face_images[:1]
    direct = tiny_pipe.anonymize(x, degree=1.25, latents=noise(1), **run_kwargs).images
    ident = tiny_pipe.encode_source(x, degree=1.25, height=S, width=S)
    assert isinstance(ident, SourceIdentity) and ident.batch == 1 and ident.degree == 1.25
    reused = tiny_pipe.anonymize(x, source=ident, latents=noise(1), **run_kwargs).images
    # Same operations on the same tensors in the same order: equal up to float32 rounding.
    np.testing.assert_allclose(reused, direct, atol=1e-5)


def test_one_source_broadcasts_over_a_driving_batch_like_swap(tiny_pipe, face_images, run_kwargs):
    """A batch-1 identity against 3 driving images equals swap(keyframe, driving) per call."""
    key = face_images[:1]
    driving = np.stack([face_images[1], face_images[0], face_images[1][::-1].copy()])
    direct = tiny_pipe.swap(key, driving, degree=1.25, latents=noise(3), **run_kwargs).images
    ident = tiny_pipe.encode_source(key, degree=1.25, height=S, width=S)
    reused = tiny_pipe.swap(ident, driving, latents=noise(3), **run_kwargs).images
    np.testing.assert_allclose(reused, direct, atol=1e-5)
    other = tiny_pipe.encode_source(face_images[1:], degree=1.25, height=S, width=S)
    assert np.abs(tiny_pipe.swap(other, driving, latents=noise(3), **run_kwargs).images - direct).max() > 1e-3


def test_wrong_source_batch_and_type_are_errors(tiny_pipe, face_images, run_kwargs):
    ident = tiny_pipe.encode_source(face_images, degree=1.0, height=S, width=S)  # batch 2
    with pytest.raises(ValueError, match="batch 2"):
        tiny_pipe.anonymize(np.concatenate([face_images] * 2)[:3], source=ident, **run_kwargs)
    with pytest.raises(TypeError, match="SourceIdentity"):
        tiny_pipe.anonymize(face_images, source=face_images, **run_kwargs)


def _two_track_clip(n: int = 5):
    """n frames of 160x96, two faces drifting right; face 1 undetected in frame 2 (interpolated)."""
    rng = np.random.default_rng(1)
    frames = [np.kron(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
              for _ in range(n)]

    class Det:
        def __init__(self, cx, cy, e):
            self.landmarks5 = np.array([[cx - e / 2, cy], [cx + e / 2, cy], [cx, cy + 0.45 * e],
                                        [cx - 0.35 * e, cy + 0.85 * e], [cx + 0.35 * e, cy + 0.85 * e]])
            self.box = (cx - e, cy - e, cx + e, cy + 1.5 * e)
            self.score = 0.99

    dets = [[Det(40 + 2 * t, 40, 20)] + ([] if t == 2 else [Det(115 + 2 * t, 45, 18)]) for t in range(n)]
    return frames, track_faces(dets, max_gap=2, hold_frames=0)


def _counting(pipe, monkeypatch):
    """Counts of ReferenceNet forward passes (source, driving) and the source states every sampling call read."""
    calls = {"source": 0, "driving": 0, "states": []}
    hooks = [
        pipe.referencenet.register_forward_pre_hook(lambda *a: calls.__setitem__("source", calls["source"] + 1)),
        pipe.conditioning_referencenet.register_forward_pre_hook(
            lambda *a: calls.__setitem__("driving", calls["driving"] + 1)),
    ]
    original = pipe._reference_tokens

    def spy(source, *a, **k):
        calls["states"].append(source)
        return original(source, *a, **k)

    monkeypatch.setattr(pipe, "_reference_tokens", spy)
    return calls, hooks


@pytest.mark.parametrize("identity", ["per-track", "per-frame"])
def test_per_track_runs_the_source_branch_once_per_track(tiny_pipe, monkeypatch, identity):
    frames, tracks = _two_track_clip()
    assert len(tracks) == 2 and tracks.faces_in_frame(2)[1].interpolated
    keys = {}
    for tid in tracks.track_ids:
        key = tracks.keyframe(tid)
        from faceanon_core.faces.video import keyframe_crop

        keys[tid] = keyframe_crop(frames[key.frame_index], key, crop_size=S)
    anon = TrackAnonymizer(tiny_pipe, keys, identity=identity, degree=1.25, num_inference_steps=2, size=S)
    calls, hooks = _counting(tiny_pipe, monkeypatch)
    try:
        # Two chunks (frames 0-2, 3-4) and batch_size 2: several sampling calls per track.
        results = []
        for chunk in ([0, 1, 2], [3, 4]):
            results += process_frames([frames[t] for t in chunk], chunk, tracks, anon, batch_size=2,
                                      crop_size=S, min_face_size=0.0)
    finally:
        for h in hooks:
            h.remove()
    n_faces = sum(len(tracks.faces_in_frame(t)) for t in range(5))
    assert n_faces == 10 and sum(len(r.faces) for r in results) == 10  # the interpolated face too
    sampling_calls = len(calls["states"])
    assert calls["driving"] == sampling_calls  # one driving pass per sampling call
    if identity == "per-track":
        assert calls["source"] == 2 * len(tracks)  # cond + uncond, once per track, never per frame
        per_track = {}
        for st in calls["states"]:
            per_track.setdefault(id(st), st)
        assert len(per_track) == len(tracks)  # every call read one of the two tracks' states objects
    else:
        assert calls["source"] == 2 * sampling_calls
    # The interpolated frame's face was changed, like every other tracked face.
    changed = np.abs(results[2].image.astype(int) - frames[2].astype(int)).sum(axis=2) > 0
    x0, y0, x1, y1 = (int(v) for v in tracks.faces_in_frame(2)[1].box)
    assert changed[y0:y1, x0:x1].mean() > 0.3


def test_same_source_states_and_noise_for_every_frame_of_a_track(tiny_pipe):
    frames, tracks = _two_track_clip()
    keys = {tid: np.full((S, S, 3), 100 + 50 * tid, np.uint8) for tid in tracks.track_ids}
    anon = TrackAnonymizer(tiny_pipe, keys, degree=1.25, num_inference_steps=2, size=S)
    assert anon.source(0) is anon.source(0) and anon.source(0) is not anon.source(1)
    want = tiny_pipe.encode_source(keys[1][None], degree=1.25, height=S, width=S)
    for name, t in want.states.cond.items():
        torch.testing.assert_close(anon.source(1).states.cond[name], t, rtol=0, atol=0)
    a, b = anon.initial_noise(3), anon.initial_noise(1)
    assert torch.equal(a[0], a[2]) and torch.equal(a[1], b[0])
    # Same crop twice in one call and in a later call: the same output (same source, same noise).
    crop = frames[0][:S, :S].astype(np.float32)[None] / 255
    one = anon(0, np.concatenate([crop, crop]))
    # Batched kernels may sum in another order per row: float32 rounding through the network, ~1e-6.
    np.testing.assert_allclose(one[0], one[1], atol=1e-5)
    np.testing.assert_allclose(anon(0, crop)[0], one[0], atol=1e-5)


def test_a_failing_track_fails_the_chunk_closed():
    frames, tracks = _two_track_clip()

    def broken(tid, crops):
        return np.full_like(crops, np.nan) if tid == 1 else crops

    from faceanon_core.faces import FaceProcessingError

    with pytest.raises(FaceProcessingError, match="track 1"):
        process_frames(frames[:2], [0, 1], tracks, broken, crop_size=S, min_face_size=0.0)
