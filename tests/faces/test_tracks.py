"""faces.tracks: association, gap filling, holds at track ends, landmark smoothing, keyframes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from faceanon_core.faces.tracks import FaceTracks, LandmarkSmoothing, face_size, frontality, track_faces
from helpers.tracks import Det, build, det, gt_landmarks


def identities_of_tracks(tracks, who):
    """{track id: set of ground-truth identities of its detected faces}."""
    return {
        tid: {who[f.frame_index][f.detection_index] for f in tracks.track(tid) if f.detected}
        for tid in tracks.track_ids
    }


def face_of(tracks, tid, t):
    found = [f for f in tracks.faces_in_frame(t) if f.track_id == tid]
    assert len(found) <= 1
    return found[0] if found else None


# --------------------------------------------------------------------------- association


def test_pan_two_faces_stable_ids_in_order_of_first_detection():
    # Both faces pan right; detections are shuffled in every frame, so list order tells nothing.
    paths = {"a": lambda t: (100 + 6 * t, 200, 40), "b": lambda t: (400 + 6 * t, 220, 50) if t >= 3 else None}
    frames, who = build(paths, 30)
    tracks = track_faces(frames)
    assert tracks.track_ids == [0, 1]
    assert identities_of_tracks(tracks, who) == {0: {"a"}, 1: {"b"}}
    assert all(f.detected for tid in (0, 1) for f in tracks.track(tid) if f.frame_index >= 3)


def test_crossing_distinct_sizes_and_velocities_no_identity_switch():
    # Three faces: two cross (different sizes and speeds, 1 px landmark noise), a third stands by.
    paths = {
        "big": lambda t: (80 + 9 * t, 300, 60),
        "small": lambda t: (560 - 5 * t, 310, 32),
        "still": lambda t: (300, 80, 45),
    }
    frames, who = build(paths, 60, rng=np.random.default_rng(0), sigma=1.0)
    tracks = track_faces(frames)
    ids = identities_of_tracks(tracks, who)
    assert len(tracks) == 3, ids
    assert sorted(next(iter(s)) for s in ids.values()) == ["big", "small", "still"]
    assert all(len(s) == 1 for s in ids.values()), f"identity switch: {ids}"


def test_crossing_equal_faces_follows_velocity():
    # Same size, same row, opposite velocities: at t=10 they are 2 px apart, at t=11 they have swapped
    # sides. Nearest-last-position matching would swap the identities there; the prediction must not.
    paths = {"r": lambda t: (100 + 10 * t, 200, 40), "l": lambda t: (302 - 10 * t, 200, 40)}
    frames, who = build(paths, 25)
    tracks = track_faces(frames, smoothing=None)
    assert identities_of_tracks(tracks, who) == {0: {"r"}, 1: {"l"}} or identities_of_tracks(tracks, who) == {
        0: {"l"},
        1: {"r"},
    }
    for tid in tracks.track_ids:
        xs = [f.landmarks5[:, 0].mean() for f in tracks.track(tid)]
        assert len(set(np.sign(np.diff(xs)))) == 1, "a track changed direction: identities were swapped"


@pytest.mark.parametrize(("gap", "n_tracks"), [(3, 1), (5, 1), (6, 2)])
def test_track_survives_gaps_up_to_max_gap(gap, n_tracks):
    missing = {("a", t) for t in range(10, 10 + gap)}
    frames, _ = build({"a": lambda t: (100 + 4 * t, 200, 40)}, 30, missing=missing)
    tracks = track_faces(frames, max_gap=5, hold_frames=None)
    assert len(tracks) == n_tracks
    if n_tracks == 1:
        filled = [f.frame_index for f in tracks.track(0) if f.interpolated]
        assert filled == list(range(10, 10 + gap))
    else:
        # Gap 6 > 5: the track ended, holds cover the missed frames from both sides.
        assert [f.frame_index for f in tracks.track(0) if f.held] == list(range(10, 15))
        assert [f.frame_index for f in tracks.track(1) if f.held] == list(range(11, 16))
        assert not any(f.interpolated for tid in (0, 1) for f in tracks.track(tid))


def test_face_leaving_and_new_face_entering_after_the_gap_gets_a_new_id():
    paths = {"a": lambda t: (100, 200, 40) if t < 10 else None, "b": lambda t: (110, 205, 40) if t >= 20 else None}
    frames, who = build(paths, 30)
    tracks = track_faces(frames, max_gap=5)
    assert identities_of_tracks(tracks, who) == {0: {"a"}, 1: {"b"}}


def test_far_apart_faces_never_match_even_inside_the_gap():
    # "a" is missed for frames 10..12; "b" appears far away at frame 11 and stays. "a" returns at 13.
    paths = {"a": lambda t: (100, 200, 40), "b": lambda t: (500, 200, 40) if t >= 11 else None}
    frames, who = build(paths, 20, missing={("a", t) for t in (10, 11, 12)})
    tracks = track_faces(frames, max_gap=5)
    assert identities_of_tracks(tracks, who) == {0: {"a"}, 1: {"b"}}
    assert [f.frame_index for f in tracks.track(0) if f.interpolated] == [10, 11, 12]


def test_small_face_at_a_missed_large_face_does_not_take_its_track():
    # A small face appears right where a large, momentarily missed face is: landmarks are only 0.4 face
    # sizes apart (inside the distance gate), but the size ratio of 3 is outside the scale gate.
    paths = {"big": lambda t: (300, 300, 60), "small": lambda t: (300, 300, 20) if t >= 10 else None}
    frames, who = build(paths, 20, missing={("big", t) for t in (10, 11, 12)})
    tracks = track_faces(frames, max_gap=5)
    assert identities_of_tracks(tracks, who) == {0: {"big"}, 1: {"small"}}


# --------------------------------------------------------------------------- gap filling and coverage


def test_interpolated_faces_lie_exactly_on_linear_motion():
    # Missed at frame 5 (halfway between 4 and 6) and at 9..11 (quarter points between 8 and 12).
    missing = {("a", t) for t in (5, 9, 10, 11)}
    def path(t):
        return (50 + 7 * t, 80 + 3 * t, 30 + 0.5 * t)  # moving and growing
    frames, _ = build({"a": path}, 20, missing=missing)
    for smoothing in (None, LandmarkSmoothing()):
        tracks = track_faces(frames, max_gap=5, smoothing=smoothing)
        assert len(tracks) == 1
        by_frame = {f.frame_index: f for f in tracks.track(0)}
        half = by_frame[5]
        assert half.interpolated and half.raw_landmarks5 is None and half.detection_index is None
        if smoothing is None:
            np.testing.assert_array_equal(half.landmarks5, (frames[4][0].landmarks5 + frames[6][0].landmarks5) / 2)
            np.testing.assert_allclose(half.box, (np.array(frames[4][0].box) + np.array(frames[6][0].box)) / 2)
        for t in range(20):
            np.testing.assert_allclose(by_frame[t].landmarks5, gt_landmarks(*path(t)), atol=1e-9)
        assert [t for t, f in by_frame.items() if f.interpolated] == [5, 9, 10, 11]


def test_every_ground_truth_face_frame_in_a_track_span_is_covered():
    # Three faces on linear paths, 30% of detections missed at random (runs of at most 4 frames).
    rng = np.random.default_rng(7)
    paths = {
        "a": lambda t: (60 + 5 * t, 100 + 1 * t, 36),
        "b": lambda t: (600 - 4 * t, 260, 48),
        "c": lambda t: (300 + 2 * t, 420 - 2 * t, 28),
    }
    n = 80
    missing = set()
    for ident in paths:
        run = 0
        for t in range(1, n - 1):
            if run < 4 and rng.random() < 0.3:
                missing.add((ident, t))
                run += 1
            else:
                run = 0
    frames, who = build(paths, n, missing=missing)
    tracks = track_faces(frames, max_gap=5)
    ids = identities_of_tracks(tracks, who)
    assert len(tracks) == 3 and all(len(s) == 1 for s in ids.values()), ids
    for tid, (ident,) in ((tid, tuple(s)) for tid, s in ids.items()):
        for t in range(n):
            f = face_of(tracks, tid, t)
            assert f is not None and not f.held, (ident, t)
            assert f.interpolated == ((ident, t) in missing)
            np.testing.assert_allclose(f.landmarks5, gt_landmarks(*paths[ident](t)), atol=1e-6)
    assert sum(f.interpolated for t in range(n) for f in tracks.faces_in_frame(t)) == len(missing)


def test_holds_before_first_and_after_last_detection():
    paths = {"a": lambda t: (100 + 5 * t, 200, 40) if 3 <= t <= 20 else None}
    frames, _ = build(paths, 25)
    tracks = track_faces(frames, max_gap=4, hold_frames=None)  # None: hold max_gap frames
    faces = tracks.track(0)
    held = [f.frame_index for f in faces if f.held]
    assert held == [0, 1, 2, 21, 22, 23, 24]  # 3 before (clipped at frame 0), 4 after
    first = next(f for f in faces if f.detected)
    last = [f for f in faces if f.detected][-1]
    for f in faces:
        if f.held:
            ref = first if f.frame_index < 3 else last
            np.testing.assert_array_equal(f.landmarks5, ref.landmarks5)
            assert f.box == ref.box and not f.interpolated and f.raw_landmarks5 is None
    assert len(track_faces(frames, max_gap=4, hold_frames=2).track(0)) == 18 + 2 + 2
    assert all(f.detected for f in track_faces(frames, max_gap=4, hold_frames=0).track(0))


# --------------------------------------------------------------------------- smoothing


def test_smoothing_reduces_landmark_jitter_without_bias():
    # White noise of sigma 2 px on linear motion of 6 px/frame, 3 faces x 150 frames. Savitzky-Golay
    # (9 frames, degree 2) divides white noise by sqrt(231/59) = 1.98 inside a track and by 1.96 over
    # 150 frames with the ends; the assertion leaves 8% for the sample. A causal filter would lag
    # (bias of several px along the motion); this one must not.
    rng = np.random.default_rng(42)
    paths = {
        "a": lambda t: (100 + 6 * t, 200, 40),
        "b": lambda t: (1100 - 6 * t, 500, 50),
        "c": lambda t: (500, 100 + 3 * t, 45),
    }
    n = 150
    frames, who = build(paths, n, rng=rng, sigma=2.0)
    tracks = track_faces(frames)
    ids = identities_of_tracks(tracks, who)
    assert len(tracks) == 3 and all(len(s) == 1 for s in ids.values())
    raw_err, smooth_err = [], []
    for tid, s in ids.items():
        (ident,) = s
        for f in tracks.track(tid):
            gt = gt_landmarks(*paths[ident](f.frame_index))
            raw_err.append(f.raw_landmarks5 - gt)
            smooth_err.append(f.landmarks5 - gt)
    raw_err, smooth_err = np.array(raw_err), np.array(smooth_err)
    rms_raw = np.sqrt(np.mean(raw_err**2))
    rms_smooth = np.sqrt(np.mean(smooth_err**2))
    assert rms_raw / rms_smooth >= 1.8, (rms_raw, rms_smooth)
    # Bias: mean error per coordinate over 450 faces; sd of that mean ~ 2 / sqrt(450 * 5) = 0.04 px.
    assert np.abs(smooth_err.mean(axis=(0, 1))).max() < 0.2


def test_smoothing_is_exact_on_fast_accelerating_motion_and_none_keeps_raw():
    # Up to 60 px/frame with 2 px/frame^2 acceleration: a degree-2 fit has no lag at any speed.
    def path(t):
        return (50 + 20 * t + t**2, 300 - 4 * t, 40 + 0.3 * t)
    frames, _ = build({"a": path}, 20)
    tracks = track_faces(frames)
    assert len(tracks) == 1
    for f in tracks.track(0):
        np.testing.assert_allclose(f.landmarks5, gt_landmarks(*path(f.frame_index)), atol=1e-6)
    rng = np.random.default_rng(3)
    noisy, _ = build({"a": lambda t: (100, 100, 40)}, 12, rng=rng, sigma=1.5)
    for f in track_faces(noisy, smoothing=None).track(0):
        np.testing.assert_array_equal(f.landmarks5, f.raw_landmarks5)
        np.testing.assert_array_equal(f.landmarks5, noisy[f.frame_index][0].landmarks5)


def test_smoothing_keeps_a_two_hertz_head_shake():
    # 2 Hz at 30 fps, 20 px amplitude: the default window keeps 96.5% of it (a moving average over
    # the same 9 frames would keep 51%).
    def path(t):
        return (300 + 20 * np.sin(2 * np.pi * 2 * t / 30), 200, 40)
    frames, _ = build({"a": path}, 90)
    faces = track_faces(frames).track(0)
    x = np.array([f.landmarks5[:, 0].mean() for f in faces])[20:70]
    x_gt = np.array([path(t)[0] for t in range(20, 70)])
    gain = np.sum((x - 300) * (x_gt - 300)) / np.sum((x_gt - 300) ** 2)
    assert 0.95 <= gain <= 1.0


def test_short_tracks_are_smoothed_with_a_shorter_window_or_kept():
    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 4, 6):
        frames, _ = build({"a": lambda t: (100, 100, 40)}, n, rng=rng, sigma=1.0)
        faces = track_faces(frames, hold_frames=0).track(0)
        assert len(faces) == n
        if n <= 3:  # window <= polyorder + 1: an exact fit, nothing to smooth
            for f in faces:
                np.testing.assert_allclose(f.landmarks5, f.raw_landmarks5, atol=1e-9)


# --------------------------------------------------------------------------- keyframe


def test_keyframe_picks_the_large_frontal_detection():
    frames = [
        [det(300, 300, 45, score=0.99)],  # smaller, frontal
        [det(301, 300, 60, score=0.99, nose_shift=-0.4)],  # large, turned (nose near the left eye)
        [det(302, 300, 60, score=0.98)],  # large, frontal: the keyframe
        [det(303, 300, 62, score=0.50)],  # a little larger, frontal, but a weak detection
        [det(304, 300, 50, score=0.99)],
    ]
    tracks = track_faces(frames, smoothing=None)
    assert len(tracks) == 1
    assert tracks.keyframe(0).frame_index == 2
    assert frontality(frames[2][0].landmarks5) > 0.99
    assert frontality(frames[1][0].landmarks5) < 0.3


def test_keyframe_is_never_an_interpolated_face():
    # Between two large faces turned opposite ways, the interpolated face is large and frontal.
    frames = [
        [det(300, 300, 60, nose_shift=-0.3)],
        [],
        [det(300, 300, 60, nose_shift=0.3)],
    ]
    tracks = track_faces(frames, smoothing=None)
    interp = face_of(tracks, 0, 1)
    assert interp.interpolated and frontality(interp.landmarks5) > 0.99
    assert tracks.keyframe(0).frame_index in (0, 2)
    assert tracks.keyframe(0).detected


# --------------------------------------------------------------------------- API, edges, errors


def test_empty_video_and_frames_without_faces():
    empty = track_faces([])
    assert empty.num_frames == 0 and len(empty) == 0 and empty.track_ids == []
    assert empty.to_dict()["tracks"] == []
    blank = track_faces([[], None, []])
    assert blank.num_frames == 3 and len(blank) == 0
    assert blank.faces_in_frame(1) == []
    with pytest.raises(IndexError, match="frame 3"):
        blank.faces_in_frame(3)
    with pytest.raises(KeyError, match="no track 0"):
        blank.track(0)
    # Faces in frames 2..3 of a mostly blank video.
    frames = [[], [], [det(100, 100, 40)], [det(102, 100, 40)], [], [], [], []]
    tracks = track_faces(frames, max_gap=1, hold_frames=None)
    assert [len(tracks.faces_in_frame(t)) for t in range(8)] == [0, 1, 1, 1, 1, 0, 0, 0]


def test_to_dict_is_json_and_round_trips():
    missing = {("a", 4)}
    frames, _ = build({"a": lambda t: (100 + 3 * t, 200, 40), "b": lambda t: (400, 200, 44)}, 10, missing=missing)
    tracks = track_faces(frames, max_gap=3, hold_frames=None)
    d = json.loads(json.dumps(tracks.to_dict()))
    assert d["num_frames"] == 10 and d["params"]["max_gap"] == 3 and d["params"]["hold_frames"] == 3
    assert d["params"]["smoothing"] == {"method": "savitzky-golay", "window": 9, "polyorder": 2}
    assert [t["keyframe"] for t in d["tracks"]] == [tracks.keyframe(tid).frame_index for tid in tracks.track_ids]
    back = FaceTracks.from_dict(d)
    assert back.track_ids == tracks.track_ids
    for t in range(10):
        for a, b in zip(tracks.faces_in_frame(t), back.faces_in_frame(t), strict=True):
            assert (a.track_id, a.interpolated, a.held, a.detection_index) == (
                b.track_id,
                b.interpolated,
                b.held,
                b.detection_index,
            )
            np.testing.assert_allclose(a.landmarks5, b.landmarks5, atol=1e-3)
            np.testing.assert_allclose(a.box, b.box, atol=1e-3)


def test_tracked_faces_feed_align_faces():
    from faceanon_core.faces import align_faces

    frames, _ = build({"a": lambda t: (200 + 4 * t, 200, 60), "b": lambda t: (600, 260, 80)}, 6)
    faces = track_faces(frames).faces_in_frame(3)
    aligned, skipped = align_faces(faces, frame_index=3)
    assert not skipped and len(aligned) == 2
    assert sorted(round(a.face_size) for a in aligned) == [60, 80]
    assert sorted(round(face_size(f.landmarks5)) for f in faces) == [60, 80]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_gap": -1}, "max_gap must be an integer >= 0"),
        ({"max_gap": 2.5}, "max_gap must be an integer >= 0"),
        ({"hold_frames": -2}, "hold_frames"),
        ({"max_distance": 0.0}, "max_distance"),
        ({"max_distance": float("nan")}, "max_distance"),
        ({"min_iou": 1.0}, "min_iou"),
        ({"max_scale_change": 0.9}, "max_scale_change"),
        ({"smoothing": 9}, "smoothing must be a LandmarkSmoothing"),
    ],
)
def test_invalid_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        track_faces([[det(100, 100, 40)]], **kwargs)


def test_invalid_detections_raise():
    bad = det(100, 100, 40)
    bad.landmarks5 = bad.landmarks5.copy()
    bad.landmarks5[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"frame 1, detection 0: landmarks5 contain NaN"):
        track_faces([[det(100, 100, 40)], [bad]])
    with pytest.raises(ValueError, match="box must be finite"):
        track_faces([[Det((10, 10, 5, 20), 0.9, gt_landmarks(8, 15, 4))]])
    with pytest.raises(ValueError, match="landmarks5 5x2"):
        track_faces([[Det((0, 0, 10, 10), 0.9, np.zeros((4, 2)))]])
    with pytest.raises(TypeError, match=r"\.landmarks5"):
        track_faces([[(0, 0, 10, 10)]])
    with pytest.raises(ValueError, match="odd positive"):
        LandmarkSmoothing(window=8)
    with pytest.raises(ValueError, match="polyorder"):
        LandmarkSmoothing(window=5, polyorder=5)
