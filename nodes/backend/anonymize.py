"""The all-in-one nodes' run (Face Anonymize, Face Swap): the granular graph in one function.

Both images are resized to the model's resolution and the result back to the driving size. The inputs are checked
here, once; the steps after take them as checked.
"""

from __future__ import annotations

import logging

import torch

from . import encoding, mixing, sampling, track_identity
from .batching import resolve_batch
from .checks import check_face_images, check_floats
from .images import is_placeholder, placeholder
from .sampling import Models, SamplingSettings

logger = logging.getLogger(__name__)


@torch.no_grad()
def anonymize(models: Models, source_image, driving_image, degree: float, settings: SamplingSettings,
              same_image: bool, tracks=None) -> torch.Tensor:
    """Face Anonymize (``same_image``: each crop is its own source; with ``tracks``, one source per track) or Face
    Swap. No driving face (an empty batch, or Detect's black placeholder) gives one black placeholder without
    running the model, so that previews work; Paste Faces Back then returns the photos unchanged."""
    node = "Face Anonymize" if same_image else "Face Swap"
    check_floats(node, degree=degree)
    if isinstance(driving_image, torch.Tensor) and driving_image.ndim == 4 and is_placeholder(driving_image):
        logger.warning("FaceAnon %s: no face crops (no face was detected, or an all-black image): nothing to "
                       "anonymize; returning a black placeholder (Paste Faces Back returns the photos unchanged)",
                       node)
        return placeholder(driving_image)
    check_face_images(node, "the image" if same_image else "the driving image", driving_image)
    if not same_image:
        check_face_images(node, "the source image", source_image)
        if is_placeholder(source_image):
            raise ValueError("Face Swap: the source image holds no face (Detect & Align Faces found none in it, or "
                             "it is all black): there is no identity to swap in")
    models.check_encoders()
    if tracks is not None:  # Face Anonymize on Track Faces' faces: one source per track
        return track_identity.anonymize_tracks(models, driving_image, tracks, degree, settings)
    size = models.driving_refnet.resolution
    driving_embeds, driving_latents = encoding.encode_references(models.driving_refnet, models.vae,
                                                                 models.clip_vision, driving_image, size)
    if same_image:
        source_embeds, source_latents = driving_embeds, driving_latents
    else:
        resolve_batch({"the source image": source_image.shape[0], "the driving image": driving_image.shape[0]})
        source_embeds, source_latents = encoding.encode_references(models.source_refnet, models.vae,
                                                                   models.clip_vision, source_image, size)
    source = encoding.capture_from_latents(models.source_refnet, source_latents, source_embeds, degree)
    source, source_embeds = mixing.mix_captured(source, source_embeds, degree)
    return sampling.sample_against(models, source, source_embeds, driving_embeds, driving_latents, settings,
                                   tuple(driving_image.shape[1:3]), f"{node}: the decoded image")
