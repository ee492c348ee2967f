"""FaceAnon Dual-Reference KSampler: Apply References followed by ComfyUI's own sampling, in one node."""

from __future__ import annotations

from comfy_api.latest import io

from . import sockets
from .backend import sampling


class FaceAnonDualReferenceSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FaceAnon_DualReferenceSampler", display_name="FaceAnon Dual-Reference KSampler",
            category=sockets.CATEGORY_METHOD,
            description=("KSampler for the FaceAnon UNet: every self-attention also attends to the source and "
                         "driving ReferenceNet states of its block (source states per row: S' for the positive, "
                         "S_uncond for the negative batch); context [Z'_src, Z_drv] vs [0, Z_drv]. noise 'same for "
                         "every image' keeps the anonymous identity stable over the frames of a clip."),
            inputs=[
                *sockets.reference_inputs(),
                io.Latent.Input("latent_image", tooltip="An empty latent of the model's size; batch 1 is used for "
                                                        "every image."),
                *sockets.sampling_inputs(),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1 for anonymization (the result is sampled from noise)."),
                io.Combo.Input("noise", options=list(sampling.NOISE_MODES), default=sampling.NOISE_MODES[0], tooltip=(
                    "same for every image: one noise image from the seed for the whole batch, one anonymous "
                    "identity across the frames of a clip; per image: ComfyUI's usual per-index noise.")),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def validate_inputs(cls, sampler_name, scheduler, noise):
        return sockets.check_choices(cls, sampler_name=sampler_name, scheduler=scheduler, noise=noise)

    @classmethod
    def execute(cls, model, source_states, source_embeds, driving_states, driving_embeds, latent_image, seed, steps,
                cfg, sampler_name, scheduler, denoise, noise):
        settings = sampling.SamplingSettings.of("Dual-Reference Sampler", seed, steps, cfg, sampler_name, scheduler,
                                                denoise, noise)
        return io.NodeOutput(sampling.dual_reference_sample(model, source_states, source_embeds, driving_states,
                                                            driving_embeds, latent_image, settings))
