"""What Track Faces runs: the faces of a batch of video frames as tracks (adapter over faceanon_core.faces.tracks).

Like Detect & Align Faces, but the privacy unit is the track: a frame in which the detector missed a
tracked face still gets that face (interpolated from its neighbours, or held at a track's ends), and
landmarks are smoothed along the track, so the aligned crops do not jitter. The ``faces`` output is
a ``FACEANON_FACES`` that Paste Faces Back and Redact Faces take as it is; it also carries each
face's track id: wire ``faces`` into Face Anonymize too (identity per-track, :mod:`.track_identity`)
and every frame of a person is anonymized against the crop of the track's best frame, giving one
stable anonymous identity per person. ``keyframes`` is, per crop, that crop (a source image for Face Swap).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import comfy.model_management as mm
import comfy.utils
import numpy as np
import torch

from .checks import check_floats
from .faces import DETECTOR_MIN_FACE, FaceSet, mtcnn, to_image, to_uint8_frames
from .images import placeholder

logger = logging.getLogger(__name__)


@dataclass
class TrackedFaceSet(FaceSet):
    """A :class:`FaceSet` whose faces belong to tracks: ``track_ids[i]`` is the track of ``faces[i]``;
    ``keyframes[track_id]`` the index (into ``faces``) of the track's keyframe; ``filled[i]`` is true for a
    face the detector missed in that frame (interpolated or held)."""

    track_ids: list = field(default_factory=list)
    keyframes: dict = field(default_factory=dict)
    filled: list = field(default_factory=list)


def track_frames(frames, threshold: float, max_gap: int, smoothing: bool, crop_size: int, min_face_size: float,
                 progress=None):
    """(crops uint8 [N,S,S,3], keyframe crops [N,S,S,3], TrackedFaceSet) for a list of uint8 frames."""
    from ...faceanon_core.faces import align_faces, extract_crops
    from ...faceanon_core.faces.tracks import LandmarkSmoothing, track_faces

    detector = mtcnn(float(threshold), DETECTOR_MIN_FACE)
    detections = []
    for frame in frames:
        detections.append(detector.detect(frame))
        if progress is not None:
            progress()
    size = frames[0].shape[1::-1] if len(frames) else None  # faces followed out through the frame border
    tracks = track_faces(detections, max_gap=int(max_gap), smoothing=LandmarkSmoothing() if smoothing else None,
                         frame_size=size)
    result = TrackedFaceSet(frame_sizes=[f.shape[:2] for f in frames], crop_size=crop_size)
    crops = []
    keys = {tid: tracks.keyframe(tid) for tid in tracks.track_ids}
    for index, frame in enumerate(frames):
        tracked = tracks.faces_in_frame(index)
        aligned, _ = align_faces(tracked, frame_index=index, crop_size=crop_size, min_face_size=0.0,
                                 image_name=f"frame {index}")
        if len(aligned) != len(tracked):
            raise ValueError(f"frame {index}: a tracked face has degenerate landmarks")
        for a in aligned:
            face = tracked[a.index]
            if a.face_size < min_face_size:
                result.small.append((index, face))  # blurred by Paste Faces Back
                continue
            if keys[face.track_id].frame_index == index:
                result.keyframes[face.track_id] = len(result.faces)
            result.faces.append(a)
            result.track_ids.append(face.track_id)
            result.filled.append(not face.detected)
            crops.append(extract_crops(frame, [a]))
    empty = np.zeros((0, crop_size, crop_size, 3), np.uint8)
    crops_np = np.concatenate(crops) if crops else empty
    # A track whose keyframe face was too small for the model has no keyframe crop: use its largest crop.
    for tid in set(result.track_ids) - set(result.keyframes):
        members = [i for i, t in enumerate(result.track_ids) if t == tid]
        result.keyframes[tid] = max(members, key=lambda i: result.faces[i].face_size)
    key_np = crops_np[[result.keyframes[t] for t in result.track_ids]] if crops else empty
    return crops_np, key_np, result


def track_faces_node(frames, threshold, max_gap, smoothing, min_face_size, crop_size):
    """Track Faces: (crops IMAGE, TrackedFaceSet, keyframe crops IMAGE) for an IMAGE batch of frames."""
    check_floats("Track Faces", threshold=threshold, min_face_size=min_face_size)  # a NaN threshold finds no face
    images = to_uint8_frames(frames, "frames")
    pbar = comfy.utils.ProgressBar(len(images))
    crops, keys, result = track_frames(images, threshold, max_gap, smoothing, crop_size, min_face_size,
                                       progress=lambda: pbar.update(1))
    logger.info("FaceAnon: %d track(s), %d tracked faces (%d filled in) in %d frames",
                len(result.keyframes), len(result.faces), sum(result.filled), len(images))
    device = mm.intermediate_device()
    if len(crops):
        return to_image(crops).to(device), result, to_image(keys).to(device)
    # no face in any frame: one black placeholder crop, as Detect & Align Faces gives (a Preview or Save of the
    # crops still works; Face Anonymize passes it on and Paste Faces Back returns the frames unchanged)
    empty = placeholder(torch.zeros((0, crop_size, crop_size, 3), device=device))
    return empty, result, empty.clone()


