"""Per-track identity in Face Anonymize: one source per face track (the nodes' side of faceanon_core.faces.video).

With the ``faces`` of Track Faces (faces that carry track ids and, per track, the index of its keyframe
crop) and ``identity = per-track``, the source branch (CLIP embedding, Eq. 1, the source ReferenceNet, Eq. 2)
runs once per track, on the track's keyframe crop, and every crop of the track is a driving image against
that one source, from the same initial noise: the seed's one noise image for every row, as
:class:`faceanon_core.faces.video.TrackAnonymizer` does in the library. One stable anonymous identity per
person, and one source ReferenceNet pass per track instead of one per frame.

Memory: the tracks are sampled one after another with their source at batch 1 (broadcast over the track's
frames by :func:`faceanon_core.method.states.expand_batch`, never copied per frame), so the sources held are
one per track and the driving states those of one track at a time.

Without tracks (no ``faces``, the faces of Detect & Align Faces, no face at all) or with ``identity =
per-frame``, :func:`tracks_for` returns None and Face Anonymize runs exactly as before: each crop is its
own source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from comfy_api.latest import io

from . import reference, sockets

logger = logging.getLogger(__name__)

#: The library's ``IDENTITY_MODES`` (faceanon_core.faces.video; not imported here: it loads OpenCV).
IDENTITY_MODES = ("per-track", "per-frame")
DEFAULT_IDENTITY = IDENTITY_MODES[0]
NODE = "Face Anonymize"


def optional_inputs() -> list:
    """Face Anonymize's optional inputs (optional, so workflows saved without them keep loading), after its others."""
    return [
        sockets.Faces.Input("faces", optional=True, tooltip=(
            "The faces of Track Faces (or Detect & Align Faces) that the crops belong to. With Track Faces' "
            "faces and identity per-track, every person gets one anonymous identity across the clip.")),
        io.Combo.Input("identity", options=list(IDENTITY_MODES), default=DEFAULT_IDENTITY, optional=True, tooltip=(
            "per-track: the source side runs once per face track, on its keyframe crop, and every frame of the "
            "track is anonymized against it (one identity per person). per-frame: every crop is its own source. "
            "Only matters when faces come from Track Faces.")),
    ]


@dataclass(frozen=True)
class Track:
    """The crops of one face track: ``rows`` index the crop batch (frame order), ``keyframe`` is one of them."""

    track_id: int
    rows: tuple[int, ...]
    keyframe: int


def tracks_for(faces, identity: str, image) -> list[Track] | None:
    """The tracks to anonymize per track, or None for the per-crop path (no tracks, or ``per-frame``)."""
    if identity not in IDENTITY_MODES:
        raise ValueError(f"{NODE}: identity must be one of {list(IDENTITY_MODES)}, got {identity!r}")
    track_ids = list(getattr(faces, "track_ids", None) or [])
    if faces is None or identity == "per-frame" or not track_ids:
        return None
    count = len(faces.faces)
    if len(track_ids) != count:
        raise ValueError(f"{NODE}: the faces carry {len(track_ids)} track ids for {count} faces (not the output "
                         "of Track Faces?)")
    crops = image.shape[0] if isinstance(image, torch.Tensor) and image.ndim == 4 else None
    if crops != count:
        raise ValueError(f"{NODE}: {crops} crops for {count} tracked faces: connect the crops and the faces of the "
                         "same Track Faces node (or set identity to per-frame)")
    rows: dict[int, list[int]] = {}
    for row, track_id in enumerate(track_ids):
        rows.setdefault(int(track_id), []).append(row)
    keyframes = getattr(faces, "keyframes", None) or {}
    tracks = []
    for track_id, members in rows.items():
        key = keyframes.get(track_id)
        if key not in members:
            raise ValueError(f"{NODE}: track {track_id} has no keyframe among its {len(members)} crops (keyframe "
                             f"{key!r}): the faces are not those of Track Faces")
        tracks.append(Track(track_id, tuple(members), int(key)))
    return tracks


@torch.no_grad()
def source_identity(source_refnet, vae, clip_vision, key_crop: torch.Tensor, degree: float):
    """The source branch on one keyframe crop ``[1,H,W,C]``: (S' states, Z' embedding), batch 1
    (the nodes' :meth:`FaceAnonPipeline.encode_source`)."""
    embeds, latents = reference.encode_references(source_refnet, vae, clip_vision, key_crop, source_refnet.resolution)
    states = reference.capture_from_latents(source_refnet, latents, embeds, degree)
    return reference.mix(states, embeds, degree)


@torch.no_grad()
def anonymize_tracks(model, source_refnet, driving_refnet, vae, clip_vision, image: torch.Tensor, tracks, degree,
                     seed, steps, cfg, sampler_name, scheduler) -> torch.Tensor:
    """Every crop of each track against the track's keyframe source; the crops' order and count are kept."""
    size = driving_refnet.resolution
    height, width = image.shape[1:3]
    parts, order = [], []
    for track in tracks:
        source, source_embeds = source_identity(source_refnet, vae, clip_vision,
                                                image[track.keyframe:track.keyframe + 1], degree)
        rows = list(track.rows)
        embeds, latents = reference.encode_references(driving_refnet, vae, clip_vision, image[rows], size)
        # the default noise mode: one noise image from the seed for every row, the same for the whole track
        parts.append(reference.sample_against(model, driving_refnet, vae, source, source_embeds, embeds, latents,
                                              seed, steps, cfg, sampler_name, scheduler, height, width,
                                              f"{NODE}: the decoded image of track {track.track_id}"))
        order.extend(rows)
    logger.info("FaceAnon %s: %d crops of %d track(s), one source per track (identity per-track)", NODE,
                len(order), len(tracks))
    stacked = torch.cat(parts)
    result = torch.empty_like(stacked)
    result[torch.tensor(order)] = stacked
    return result
