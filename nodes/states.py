"""The method's building blocks: FaceAnon CLIP Image Encode, ReferenceNet Capture and Mix States (the degree)."""

from __future__ import annotations

from comfy_api.latest import io

from . import sockets
from .backend import encoding, mixing
from .backend.checks import check_floats, check_images


class FaceAnonCLIPImageEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FaceAnon_CLIPImageEncode", display_name="FaceAnon CLIP Image Encode",
            category=sockets.CATEGORY_METHOD,
            description=("CLIP vision pooled output (post-layernorm CLS token, before the projection) of each image, "
                         "one token per image: what the FaceAnon UNet and ReferenceNets were trained with."),
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip=(
                    "CLIP ViT-L/14 vision (the loader's clip_vision, or ComfyUI's Load CLIP Vision when the folder "
                    "has no image_encoder/).")),
                io.Image.Input("image", tooltip="Aligned face crops (Detect & Align Faces), one embedding per image."),
            ],
            outputs=[sockets.Embeds.Output(display_name="embeds")],
        )

    @classmethod
    def execute(cls, clip_vision, image):
        return io.NodeOutput(encoding.encode_embeds(clip_vision, check_images(image)))


class FaceAnonCaptureStates(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FaceAnon_CaptureStates", display_name="FaceAnon ReferenceNet Capture",
            category=sockets.CATEGORY_METHOD,
            description=("Runs a FaceAnon ReferenceNet once at t = 0 on each image (VAE latents + its embedding) and "
                         "records its self-attention inputs, plus the unconditional branch (zero image, zero "
                         "embedding). degree: Eq. 1 applied to the embedding the ReferenceNet sees; use the "
                         "anonymization degree on the source side and 0 on the driving side."),
            inputs=[
                sockets.RefNet.Input("refnet", tooltip=("source_refnet (identity side) or driving_refnet (pose, "
                                                        "expression, background) of the FaceAnon Model Loader.")),
                io.Vae.Input("vae", tooltip="The SD 2.x VAE (the loader's vae, or ComfyUI's Load VAE)."),
                io.Image.Input("image", tooltip="The face crops; resized to the model's resolution (512)."),
                sockets.Embeds.Input("embeds", tooltip="Their CLIP embeddings (FaceAnon CLIP Image Encode)."),
                io.Float.Input("degree", default=0.0, min=0.0, max=3.0, step=0.05, tooltip=(
                    "Anonymization degree d, entered once, here: Eq. 1 before the source ReferenceNet runs; the "
                    "states carry it to Mix States (1 removes the identity, > 1 moves past it, paper 1.25). 0 on "
                    "the driving side and for a face swap.")),
            ],
            outputs=[sockets.States.Output(display_name="states")],
        )

    @classmethod
    def execute(cls, refnet, vae, image, embeds, degree):
        check_floats("Capture ReferenceNet States", degree=degree)
        return io.NodeOutput(encoding.capture_states(refnet, vae, check_images(image), embeds, degree))


class FaceAnonMixStates(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FaceAnon_MixStates", display_name="FaceAnon Mix States (degree)",
            category=sockets.CATEGORY_METHOD,
            description=("Anonymization degree d: S' = (1-d)·S + d·S_uncond (Eq. 2) on the source states and "
                         "Z' = (1-d)·Z (Eq. 1) on the source embedding. d = 1 removes the identity, d > 1 moves past "
                         "it (paper default 1.25). The degree is the one the source capture node was given; this "
                         "node's degree input is kept for saved workflows (-1 = the capture's; another value must "
                         "match it)."),
            inputs=[
                sockets.States.Input("states", tooltip="Source states from ReferenceNet Capture (with its degree)."),
                sockets.Embeds.Input("embeds", tooltip="The source CLIP embeddings given to that capture."),
                io.Float.Input("degree", default=mixing.FROM_CAPTURE, min=mixing.FROM_CAPTURE, max=3.0, step=0.05,
                               tooltip=("-1: use the degree of the source capture (set it there, once). Kept for "
                                        "workflows saved with a degree here: it must equal the capture's.")),
            ],
            outputs=[sockets.States.Output(display_name="states"), sockets.Embeds.Output(display_name="embeds")],
        )

    @classmethod
    def execute(cls, states, embeds, degree):
        check_floats("Mix States", degree=degree)
        return io.NodeOutput(*mixing.mix_captured(states, embeds, degree))
