"""All-in-one nodes: Face Anonymize and Face Swap (the granular graph in one box, :mod:`.backend.anonymize`)."""

from __future__ import annotations

from comfy_api.latest import io

from . import sockets
from .backend import anonymize, track_identity
from .backend.sampling import Models, SamplingSettings

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


def identity_inputs() -> list:
    """Face Anonymize's optional inputs (optional, so workflows saved without them keep loading), after its others."""
    return [
        sockets.Faces.Input("faces", optional=True, tooltip=(
            "The faces of Track Faces (or Detect & Align Faces) that the crops belong to. With Track Faces' "
            "faces and identity per-track, every person gets one anonymous identity across the clip.")),
        io.Combo.Input("identity", options=list(track_identity.IDENTITY_MODES), default=track_identity.DEFAULT_IDENTITY,
                       optional=True, tooltip=(
                           "per-track: the source side runs once per face track, on its keyframe crop, and every "
                           "frame of the track is anonymized against it (one identity per person). per-frame: every "
                           "crop is its own source. Only matters when faces come from Track Faces.")),
    ]


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
                *sockets.sampling_inputs(),
                *identity_inputs(),
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
        models = Models(model, source_refnet, driving_refnet, vae, clip_vision)
        settings = SamplingSettings.of("Face Anonymize", seed, steps, cfg, sampler_name, scheduler)
        return io.NodeOutput(anonymize.anonymize(models, image, image, degree, settings, True, tracks))


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
                *sockets.sampling_inputs(),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def validate_inputs(cls, sampler_name, scheduler):
        return sockets.check_choices(cls, sampler_name=sampler_name, scheduler=scheduler)

    @classmethod
    def execute(cls, model, source_refnet, driving_refnet, vae, clip_vision, source_image, driving_image, degree,
                seed, steps, cfg, sampler_name, scheduler):
        models = Models(model, source_refnet, driving_refnet, vae, clip_vision)
        settings = SamplingSettings.of("Face Swap", seed, steps, cfg, sampler_name, scheduler)
        return io.NodeOutput(anonymize.anonymize(models, source_image, driving_image, degree, settings, False))
