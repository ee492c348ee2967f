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

from . import encoding, mixing, sampling

logger = logging.getLogger(__name__)

#: The library's ``IDENTITY_MODES`` (faceanon_core.faces.video; not imported here: it loads OpenCV, and the schema
#: needs them while ComfyUI starts); tests/repo/test_architecture.py keeps the two equal.
IDENTITY_MODES = ("per-track", "per-frame")
DEFAULT_IDENTITY = IDENTITY_MODES[0]
NODE = "Face Anonymize"


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
def source_identity(models: sampling.Models, key_crop: torch.Tensor, degree: float):
    """The source branch on one keyframe crop ``[1,H,W,C]``: (S' states, Z' embedding), batch 1
    (the nodes' :meth:`FaceAnonPipeline.encode_source`)."""
    refnet = models.source_refnet
    embeds, latents = encoding.encode_references(refnet, models.vae, models.clip_vision, key_crop, refnet.resolution)
    states = encoding.capture_from_latents(refnet, latents, embeds, degree)
    return mixing.mix_captured(states, embeds, degree)


@torch.no_grad()
def anonymize_tracks(models: sampling.Models, image: torch.Tensor, tracks, degree: float,
                     settings: sampling.SamplingSettings) -> torch.Tensor:
    """Every crop of each track against the track's keyframe source; the crops' order and count are kept."""
    size = models.driving_refnet.resolution
    parts, order = [], []
    for track in tracks:
        source, source_embeds = source_identity(models, image[track.keyframe:track.keyframe + 1], degree)
        rows = list(track.rows)
        embeds, latents = encoding.encode_references(models.driving_refnet, models.vae, models.clip_vision,
                                                     image[rows], size)
        # the default noise mode: one noise image from the seed for every row, the same for the whole track
        parts.append(sampling.sample_against(models, source, source_embeds, embeds, latents, settings,
                                             tuple(image.shape[1:3]),
                                             f"{NODE}: the decoded image of track {track.track_id}"))
        order.extend(rows)
    logger.info("FaceAnon %s: %d crops of %d track(s), one source per track (identity per-track)", NODE,
                len(order), len(tracks))
    stacked = torch.cat(parts)
    result = torch.empty_like(stacked)
    result[torch.tensor(order)] = stacked
    return result
