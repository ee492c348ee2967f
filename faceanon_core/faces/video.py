"""Processing the frames of a video along face tracks: redaction, and anonymization with one identity per track.

Frames are in memory here (numpy HxWx3 uint8, one chunk at a time); decoding and encoding
are the CLI's (:mod:`faceanon_core.cli.video`, with :mod:`faceanon_core.media.video`), so this
module stays testable without files. The faces of a frame are those of
:meth:`FaceTracks.faces_in_frame`: detected, interpolated and held faces alike, so a frame in which
the detector missed a tracked face is still processed (on video the privacy unit is the track).

:func:`process_frames` aligns every tracked face of a chunk of frames, hands the crops of each
track to ``process_track(track_id, crops)`` (all of a track's crops of the chunk in one call, so a
per-track model call batches them against one source), checks every result (fail closed, as
:func:`faces.run_crops`) and pastes back. :class:`TrackAnonymizer` is that ``process_track`` for the
diffusion pipeline: per track, the source branch runs once on the track's keyframe crop
(:meth:`FaceAnonPipeline.encode_source`) and every frame of the track is a driving image against it,
from the same initial noise: one stable anonymous identity per person.

Keyframe rather than an average of the track's embeddings (decision): the source branch is a
CLIP embedding *and* ReferenceNet states of one image (Eq. 2 mixes the states, which are spatial
token maps of that image); averaging states over frames with different poses blurs them, and an
average of CLIP embeddings paired with the states of one frame is a source the model never saw in
training. The keyframe is the track's largest, most frontal, most confident detection
(:func:`faces.track_records.keyframe_quality`), the frame the model sees the identity best in, which is the
one Eq. 1-2 remove it from most reliably.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .align import align_faces, extract_crops, resize_crops
from .paste import DEFAULT_ERODE, DEFAULT_FEATHER
from .process import FaceLoopOptions, finish_faces, refuse_small_faces, run_crops
from .records import CROP_SIZE, DEFAULT_MIN_FACE_SIZE, AlignedFace, FaceProcessingError, FacesResult, check_rgb
from .redact import DEFAULT_MARGIN, redact_image
from .track_records import FaceTracks, TrackedFace

logger = logging.getLogger(__name__)

__all__ = ["IDENTITY_MODES", "TrackAnonymizer", "keyframe_crop", "process_frames", "redact_frames"]

IDENTITY_MODES = ("per-track", "per-frame")


def _faces_of(tracks: FaceTracks, frame_index: int) -> list[TrackedFace]:
    return tracks.faces_in_frame(frame_index)


def redact_frames(
    frames: Sequence[np.ndarray],
    frame_indices: Sequence[int],
    tracks: FaceTracks,
    method: str = "blur",
    strength: float | None = None,
    *,
    color: Sequence[int] = (0, 0, 0),
    margin: float = DEFAULT_MARGIN,
    name: str = "video",
) -> list[FacesResult]:
    """Redact every tracked face (detected, interpolated, held) of each frame; any size.
    ``margin``: the head region's growth around each face box, as in :func:`redact_image`."""
    out = []
    for rgb, t in zip(frames, frame_indices, strict=True):
        faces = _faces_of(tracks, t)
        check_rgb(rgb, f"{name} frame {t}")
        if not faces:
            out.append(FacesResult(rgb.copy(), np.zeros(rgb.shape[:2], np.float32), [], []))
            continue
        res = redact_image(rgb, method, strength, color=color, faces=faces, margin=margin,
                           image_name=f"{name} frame {t}")
        if len(res.faces) != len(faces):  # degenerate landmarks: never pass a tracked face through
            raise FaceProcessingError(
                f"{name} frame {t}: {len(faces) - len(res.faces)} tracked face(s) could not be aligned "
                "(degenerate landmarks); nothing was written"
            )
        for f in res.faces:
            f.frame_index = t
        out.append(res)
    return out


def process_frames(
    frames: Sequence[np.ndarray],
    frame_indices: Sequence[int],
    tracks: FaceTracks,
    process_track: Callable[[int, np.ndarray], Any],
    *,
    batch_size: int = 8,
    crop_size: int = CROP_SIZE,
    min_face_size: float = DEFAULT_MIN_FACE_SIZE,
    small_faces: str = "redact",
    erode: float = DEFAULT_ERODE,
    feather: float = DEFAULT_FEATHER,
    name: str = "video",
) -> list[FacesResult]:
    """Run ``process_track(track_id, crops)`` on every tracked face of the frames and paste back.

    ``crops`` are float32 ``[n, S, S, 3]`` in 0..1, all of one track, in frame order (at most
    ``batch_size`` per call); the result must have the same shape, finite, in 0..1, else
    :class:`FaceProcessingError` names the frame and track and nothing is returned. Faces too small
    for the model (eye distance < ``min_face_size``) are blurred (``small_faces="redact"``), fail
    the run (``"fail"``) or are left (``"keep"``, logged).
    """
    opts = FaceLoopOptions(batch_size=batch_size, crop_size=crop_size, min_face_size=min_face_size, erode=erode,
                           feather=feather, small_faces=small_faces)  # checks the policy and the batch size
    frames = list(frames)
    indices = [int(t) for t in frame_indices]
    if len(frames) != len(indices):
        raise ValueError(f"got {len(indices)} frame indices for {len(frames)} frames")
    aligned_per: list[list[AlignedFace]] = []
    tids_per: list[list[int]] = []
    small_per: list[list[TrackedFace]] = []
    by_track: dict[int, list[tuple[int, int]]] = {}  # track id -> (frame position, face position)
    for pos, (rgb, t) in enumerate(zip(frames, indices, strict=True)):
        where = f"{name} frame {t}"
        check_rgb(rgb, where)
        faces = _faces_of(tracks, t)
        aligned, _ = align_faces(faces, frame_index=t, crop_size=crop_size, min_face_size=0.0, image_name=where)
        if len(aligned) != len(faces):
            raise FaceProcessingError(f"{where}: a tracked face has degenerate landmarks; nothing was written")
        keep, small, tids = [], [], []
        for a in aligned:
            face = faces[a.index]
            if a.face_size < min_face_size:
                small.append(face)
            else:
                keep.append(a)
                tids.append(face.track_id)
        refuse_small_faces(small, small_faces, where)  # "fail": before the model runs
        for k, tid in enumerate(tids):
            by_track.setdefault(tid, []).append((pos, k))
        aligned_per.append(keep)
        tids_per.append(tids)
        small_per.append(small)

    processed: list[list[np.ndarray | None]] = [[None] * len(a) for a in aligned_per]
    for tid, members in by_track.items():
        crops = np.concatenate(
            [extract_crops(frames[pos], [aligned_per[pos][k]]) for pos, k in members]
        )
        owners = [(f"{name} frame {indices[pos]} (track {tid})", k) for pos, k in members]
        done = run_crops(crops, lambda c, tid=tid: process_track(tid, c), owners, opts.batch_size)
        for (pos, k), crop in zip(members, done, strict=True):
            processed[pos][k] = crop

    results = []
    for pos, (rgb, t) in enumerate(zip(frames, indices, strict=True)):
        al = aligned_per[pos]
        done = np.stack(processed[pos]) if al else None
        results.append(finish_faces(rgb, al, small_per[pos], done, opts, f"{name} frame {t}"))
    return results


def keyframe_crop(rgb: np.ndarray, face: TrackedFace, crop_size: int = CROP_SIZE) -> np.ndarray:
    """The aligned uint8 crop of one tracked face (a track's keyframe: the source identity)."""
    aligned, _ = align_faces([face], frame_index=face.frame_index, crop_size=crop_size, min_face_size=0.0)
    if not aligned:
        raise FaceProcessingError(f"frame {face.frame_index} track {face.track_id}: degenerate keyframe landmarks")
    return extract_crops(rgb, aligned)[0]


class TrackAnonymizer:
    """``process_track`` for :func:`process_frames` with a :class:`FaceAnonPipeline`.

    ``identity="per-track"``: per track, :meth:`encode_source` once on ``keyframes[track_id]``
    (uint8 or float crop) at ``degree``, and every crop of the track is a driving image against
    it, all from the same initial noise (``seed``). ``"per-frame"``: every crop anonymizes itself
    (the photo behaviour; a new identity per frame), same seed. ``size`` is the model resolution;
    crops of another size are resized to it and back.
    """

    def __init__(
        self,
        pipe,
        keyframes: dict[int, np.ndarray] | None = None,
        *,
        identity: str = "per-track",
        degree: float = 1.25,
        seed: int = 0,
        guidance_scale: float = 4.0,
        num_inference_steps: int = 50,
        size: int = 512,
    ):
        if identity not in IDENTITY_MODES:
            raise ValueError(f"identity must be one of {IDENTITY_MODES}, got {identity!r}")
        if identity == "per-track" and keyframes is None:
            raise ValueError("per-track identity needs the keyframe crop of every track")
        self.pipe = pipe
        self.keyframes = dict(keyframes or {})
        self.identity = identity
        self.degree = float(degree)
        self.seed = int(seed)
        self.guidance_scale = float(guidance_scale)
        self.steps = int(num_inference_steps)
        self.size = int(size)
        self._sources: dict[int, Any] = {}
        self._noise = None

    def source(self, track_id: int):
        """The track's :class:`SourceIdentity`, computed on first use and kept."""
        if track_id not in self._sources:
            try:
                key = self.keyframes[track_id]
            except KeyError:
                raise FaceProcessingError(
                    f"track {track_id}: no keyframe crop to take the source identity from"
                ) from None
            key = np.asarray(key)
            key = key.astype(np.float32) / 255.0 if key.dtype == np.uint8 else key.astype(np.float32)
            model_in = resize_crops(key[None], self.size)
            self._sources[track_id] = self.pipe.encode_source(
                model_in, degree=self.degree, height=self.size, width=self.size
            )
        return self._sources[track_id]

    def initial_noise(self, n: int):
        """The same initial latents for every frame (``seed``), batch ``n``."""
        import torch

        if self._noise is None:
            f = self.pipe.vae_scale_factor
            shape = (1, self.pipe.unet.config.in_channels, self.size // f, self.size // f)
            self._noise = torch.randn(shape, generator=torch.Generator().manual_seed(self.seed))
        return self._noise.expand(n, -1, -1, -1).clone()

    def __call__(self, track_id: int, crops: np.ndarray) -> np.ndarray:
        import torch

        n, crop = crops.shape[0], crops.shape[1]
        model_in = torch.from_numpy(np.ascontiguousarray(resize_crops(crops, self.size))).permute(0, 3, 1, 2)
        common = dict(
            guidance_scale=self.guidance_scale, num_inference_steps=self.steps,
            generator=[torch.Generator().manual_seed(self.seed) for _ in range(n)],
            latents=self.initial_noise(n), height=self.size, width=self.size, output_type="np",
        )
        if self.identity == "per-track":
            out = self.pipe.anonymize(model_in, source=self.source(track_id), **common).images
        else:
            out = self.pipe.anonymize(model_in, degree=self.degree, **common).images
        return np.clip(resize_crops(np.asarray(out, np.float32), crop), 0.0, 1.0)
