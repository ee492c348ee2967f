"""All-in-one nodes: Face Anonymize and Face Swap (the granular graph in one box)."""

from __future__ import annotations

import logging

import torch

from comfy_api.latest import io

from . import reference_patch
from . import reference, sockets, track_identity
from .checks import check_face_image_size, check_finite_tensor, check_floats
from .faces_nodes import is_placeholder, placeholder

logger = logging.getLogger(__name__)


@torch.no_grad()
def _run(model, source_refnet, driving_refnet, vae, clip_vision, source_image, driving_image, degree, seed, steps,
         cfg, sampler_name, scheduler, same_image: bool, tracks=None):
    """Both images resized to the model's resolution; the result resized back to the driving size.

    No driving face (an empty batch, or Detect's black placeholder) gives one black placeholder without
    running the model, so that previews work; Paste Faces Back then returns the photos unchanged."""
    node = "Face Anonymize" if same_image else "Face Swap"
    check_floats(node, degree=degree, cfg=cfg)
    if isinstance(driving_image, torch.Tensor) and driving_image.ndim == 4 and is_placeholder(driving_image):
        logger.warning("FaceAnon %s: no face crops (no face was detected, or an all-black image): nothing to "
                       "anonymize; returning a black placeholder (Paste Faces Back returns the photos unchanged)",
                       node)
        return placeholder(driving_image)
    reference.check_images(driving_image, "driving image")
    what = "the driving image" if not same_image else "the image"
    check_face_image_size(what, driving_image)
    check_finite_tensor(f"{node}: {what}", driving_image)
    if not same_image:
        check_face_image_size("the source image", reference.check_images(source_image, "source image"))
        check_finite_tensor(f"{node}: the source image", source_image)
        if is_placeholder(source_image):
            raise ValueError("Face Swap: the source image holds no face (Detect & Align Faces found none in it, or "
                             "it is all black): there is no identity to swap in")
    if vae is None or clip_vision is None:
        raise ValueError("connect a VAE and a CLIP vision model (the model folder has no vae/ or image_encoder/)")
    if tracks is not None:  # Face Anonymize on Track Faces' faces: one source per track (track_identity)
        return track_identity.anonymize_tracks(model, source_refnet, driving_refnet, vae, clip_vision, driving_image,
                                               tracks, degree, seed, steps, cfg, sampler_name, scheduler)
    size = driving_refnet.resolution
    driving_embeds, driving_latents = reference.encode_references(driving_refnet, vae, clip_vision, driving_image,
                                                                  size)
    if same_image:
        source_embeds, source_latents = driving_embeds, driving_latents
    else:
        reference_patch.resolve_batch({"the source image": source_image.shape[0],
                                       "the driving image": driving_image.shape[0]})
        source_embeds, source_latents = reference.encode_references(source_refnet, vae, clip_vision, source_image,
                                                                    size)
    source = reference.capture_from_latents(source_refnet, source_latents, source_embeds, degree)
    source, source_embeds = reference.mix(source, source_embeds, degree)
    height, width = driving_image.shape[1:3]
    images = reference.sample_against(model, driving_refnet, vae, source, source_embeds, driving_embeds,
                                      driving_latents, seed, steps, cfg, sampler_name, scheduler, height, width,
                                      f"{node}: the decoded image")
    return images


ANONYMIZE_TOOLTIPS = {
    "image": "Aligned face crops (the crops of Detect & Align Faces; use it first for photos): each is source and "
             "driving image at once. Resized to the model's resolution (512) and back.",
    "degree": "Anonymization degree d: 1 removes the identity, > 1 moves past it (paper 1.25), 0 keeps the person.",
}
SWAP_TOOLTIPS = {
    "source_image": "Aligned face crop(s) that give the identity; a batch of 1 is used for every driving image "
                    "(Track Faces' keyframes: one per driving crop).",
    "driving_image": "Aligned face crops that keep their pose, expression and background.",
    "degree": "Anonymization degree on the source: 0 for a face swap (the source identity as it is); 1.25 with "
              "Track Faces' keyframes as source for one stable anonymous identity per person.",
}


class FaceAnonAnonymize(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return sockets.schema(
            node_id="FaceAnon_Anonymize", display_name="FaceAnon Anonymize",
            search_aliases=["anonymize", "anonymize faces", "face anonymization", "privacy"],
            category=sockets.CATEGORY_METHOD,
            description=("Anonymizes aligned face crops (use Detect & Align Faces first for photos): the same image "
                         "as source and driving with degree d (1 removes the identity, > 1 moves past it). Images "
                         "are resized to the model's resolution (512) and back. With the faces of Track Faces "
                         "(video) and identity per-track, each person's source is its track's keyframe: one "
                         "anonymous identity per person."),
            inputs=[
                *sockets.model_inputs(),
                io.Image.Input("image", tooltip=ANONYMIZE_TOOLTIPS["image"]),
                io.Float.Input("degree", default=1.25, min=0.0, max=3.0, step=0.05,
                               tooltip=ANONYMIZE_TOOLTIPS["degree"]),
                *reference.sampling_inputs(),
                *track_identity.optional_inputs(),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def validate_inputs(cls, sampler_name, scheduler, identity=track_identity.DEFAULT_IDENTITY):
        return sockets.check_choices(cls, sampler_name=sampler_name, scheduler=scheduler, identity=identity)

    @classmethod
    def execute(cls, model, source_refnet, driving_refnet, vae, clip_vision, image, degree, seed, steps, cfg,
                sampler_name, scheduler, faces=None, identity=track_identity.DEFAULT_IDENTITY):
        tracks = track_identity.tracks_for(faces, identity, image)
        return io.NodeOutput(_run(model, source_refnet, driving_refnet, vae, clip_vision, image, image, degree, seed,
                                  steps, cfg, sampler_name, scheduler, same_image=True, tracks=tracks))


class FaceAnonSwap(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return sockets.schema(
            node_id="FaceAnon_Swap", display_name="FaceAnon Face Swap",
            search_aliases=["face swap", "swap faces", "identity swap"],
            category=sockets.CATEGORY_METHOD,
            description=("Face swap on aligned crops: the identity of source_image with the pose, expression and "
                         "background of driving_image (degree 0). A source batch of 1 is used for every driving "
                         "image. Swapping the faces of real people needs their consent."),
            inputs=[
                *sockets.model_inputs(),
                io.Image.Input("source_image", tooltip=SWAP_TOOLTIPS["source_image"]),
                io.Image.Input("driving_image", tooltip=SWAP_TOOLTIPS["driving_image"]),
                io.Float.Input("degree", default=0.0, min=0.0, max=3.0, step=0.05, tooltip=SWAP_TOOLTIPS["degree"]),
                *reference.sampling_inputs(),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def validate_inputs(cls, sampler_name, scheduler):
        return sockets.check_choices(cls, sampler_name=sampler_name, scheduler=scheduler)

    @classmethod
    def execute(cls, model, source_refnet, driving_refnet, vae, clip_vision, source_image, driving_image, degree,
                seed, steps, cfg, sampler_name, scheduler):
        return io.NodeOutput(_run(model, source_refnet, driving_refnet, vae, clip_vision, source_image,
                                  driving_image, degree, seed, steps, cfg, sampler_name, scheduler, same_image=False))
