"""The method's nodes: CLIP image encode, ReferenceNet state capture, state mixing, dual-reference sampler.

All maths lives in ``faceanon_core``; this module moves tensors through ComfyUI's model
management, progress bars and sampling.
"""

from __future__ import annotations

import logging

import torch

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io

from . import comfy_layout, patch_node, reference_patch, sockets
from .checks import check_finite_tensor, check_floats
from ..faceanon_core.method.states import ReferenceStates, expand_batch

logger = logging.getLogger(__name__)

CHUNK = 8  # images per ReferenceNet / CLIP forward (bounds activation memory for long clips)
NOISE_MODES = ("same for every image", "per image")


# ------------------------------------------------------------------------ shared functions


def check_images(image, what: str = "image") -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise ValueError(f"{what}: expected an IMAGE batch [B,H,W,C], got {type(image).__name__} "
                         f"{tuple(getattr(image, 'shape', ()))}")
    if image.shape[0] == 0:
        raise ValueError(f"{what}: the batch is empty (no images or no faces)")
    return image


@torch.no_grad()
def encode_embeds(clip_vision, image: torch.Tensor) -> torch.Tensor:
    """CLIP pooled output (post-layernorm CLS, before the projection) per image: ``[B,1,C]``."""
    check_images(image)
    vision = getattr(getattr(clip_vision, "model", None), "vision_model", None)
    if vision is None or not hasattr(vision, "post_layernorm"):
        raise ValueError("clip_vision must be a CLIP vision model (ViT-L/14 for the published weights)")
    ln = vision.post_layernorm
    pbar = comfy.utils.ProgressBar(image.shape[0])
    pooled = []
    for start in range(0, image.shape[0], 4 * CHUNK):
        chunk = image[start:start + 4 * CHUNK, :, :, :3]
        out = clip_vision.encode_image(chunk, crop=True)
        pooled.append(reference_patch.pooled_clip(out["last_hidden_state"], ln.weight.detach(), ln.bias.detach(), ln.eps))
        pbar.update(chunk.shape[0])
    return torch.cat(pooled).to(mm.intermediate_device())


@torch.no_grad()
def encode_latents(refnet, vae, image: torch.Tensor) -> torch.Tensor:
    """VAE posterior mean, scaled like ComfyUI's sampler input (the SD scaling factor)."""
    px = reference_patch.resize_images(check_images(image), refnet.resolution, refnet.resolution)
    if vae is None:
        raise ValueError("no VAE connected (the model folder has no vae/: use ComfyUI's VAE loader)")
    return refnet.latent_format.process_in(vae.encode(px))


@torch.no_grad()
def capture_from_latents(refnet, latents: torch.Tensor, embeds: torch.Tensor, degree: float) -> ReferenceStates:
    """One ReferenceNet forward at t = 0 over the images plus one unconditional row."""
    check_floats("Capture ReferenceNet States", degree=degree)
    if not hasattr(refnet, "patcher") or not hasattr(refnet, "layout"):
        raise ValueError("refnet must come from the FaceAnon model loader (FACEANON_REFNET)")
    batch = latents.shape[0]
    embeds = expand_batch(embeds, batch, "the embeddings")
    _routing, ref_layers = comfy_layout.routed_layers(refnet.layout, refnet.routing_mode)
    wanted = {key: name for key, name in refnet.layout.items() if name in ref_layers}
    x_all, c_all = reference_patch.capture_inputs(latents, embeds, float(degree))

    model = refnet.patcher.model
    context_dim = model.model_config.unet_config["context_dim"]
    if c_all.shape[-1] != context_dim:
        raise ValueError(f"the embeddings have {c_all.shape[-1]} channels but the ReferenceNet expects "
                         f"{context_dim}: use the CLIP vision model that belongs to this FaceAnon model")
    mm.load_models_gpu([refnet.patcher])
    device = refnet.patcher.load_device
    dtype = model.manual_cast_dtype or model.get_dtype()
    store_dtype = torch.float16 if dtype == torch.float16 else torch.float32
    parts: list[dict] = []
    pbar = comfy.utils.ProgressBar(x_all.shape[0])
    for start in range(0, x_all.shape[0], CHUNK):
        x = x_all[start:start + CHUNK].to(device=device, dtype=dtype)
        c = c_all[start:start + CHUNK].to(device=device, dtype=dtype)
        recorder = reference_patch.StateRecorder(wanted)
        options = {"patches": {"attn1_patch": [recorder]}}
        with torch.no_grad():
            try:
                model.diffusion_model(x, timesteps=torch.zeros(x.shape[0], device=device), context=c,
                                      transformer_options=options)
            except reference_patch.CaptureDone:
                pass
        parts.append({k: v.to(mm.intermediate_device(), store_dtype) for k, v in recorder.result().items()})
        pbar.update(x.shape[0])
    states = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
    cond, uncond = reference_patch.split_capture(states, batch)
    meta = {"routing": refnet.routing_mode, "role": refnet.role, "embed_degree": repr(float(degree))}
    return ReferenceStates(cond=cond, uncond=uncond, meta=meta)


def mix(states: ReferenceStates, embeds: torch.Tensor, degree: float | None = None):
    """Eq. 2 on the states, Eq. 1 on the embeddings, with the capture's degree (``reference_patch.mix_captured``)."""
    if degree is not None:
        check_floats("Mix States", degree=degree)
    if not isinstance(states, ReferenceStates):
        raise ValueError("states must come from the FaceAnon ReferenceNet capture node")
    return reference_patch.mix_captured(states, embeds, degree)


#: What a sampled LATENT does not carry on: as core's KSampler (the newest also drops the VAE's downscale ratios,
#: which describe the input latent, not the sampled one).
DROPPED_LATENT_KEYS = ("samples", "batch_index", "noise_mask", "downscale_ratio_spacial", "downscale_ratio_temporal")

# The patch itself lives in patch_node (FaceAnon Apply References); the sampler below is built on it.
install_reference_patch = patch_node.install_reference_patch


@torch.no_grad()
def dual_reference_sample(model, source_states: ReferenceStates, source_embeds: torch.Tensor,
                          driving_states: ReferenceStates, driving_embeds: torch.Tensor, latent: dict, seed: int,
                          steps: int, cfg: float, sampler_name: str, scheduler: str, denoise: float = 1.0,
                          noise_mode: str = NOISE_MODES[0]) -> dict:
    """ComfyUI sampling of ``model`` patched by :func:`patch_node.apply_references` (the Apply References node).
    A non-finite result is an error, never an output."""
    check_floats("Dual-Reference Sampler", cfg=cfg, denoise=denoise)
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise_mode!r}")
    patched, positive, negative, batch, _patch = patch_node.apply_references(
        model, source_states, source_embeds, driving_states, driving_embeds)
    samples = latent["samples"]
    batch = reference_patch.resolve_batch({"the latent": samples.shape[0], "the references": batch})
    samples = expand_batch(samples, batch, "the latent")
    latent_image = comfy.sample.fix_empty_latent_channels(patched, samples.contiguous())
    noise = reference_patch.seeded_noise(latent_image.shape, seed, per_image=noise_mode == "per image")
    callback = latent_preview.prepare_callback(patched, steps)
    out = comfy.sample.sample(patched, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                              denoise=denoise, noise_mask=latent.get("noise_mask"), callback=callback,
                              disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    result = {k: v for k, v in latent.items() if k not in DROPPED_LATENT_KEYS}
    result["samples"] = check_finite_tensor("Dual-Reference Sampler: the sampled latent", out)
    return result


@torch.no_grad()
def encode_references(refnet, vae, clip_vision, images: torch.Tensor, size: int):
    """Images resized to ``size`` (the model's resolution) -> (CLIP embeddings, VAE latents): what a ReferenceNet
    capture reads (the all-in-one nodes' first step, for the source side and the driving side alike)."""
    px = reference_patch.resize_images(images, size, size)
    return encode_embeds(clip_vision, px), encode_latents(refnet, vae, px)


@torch.no_grad()
def sample_against(model, driving_refnet, vae, source: ReferenceStates, source_embeds: torch.Tensor,
                   driving_embeds: torch.Tensor, driving_latents: torch.Tensor, seed, steps, cfg, sampler_name,
                   scheduler, height: int, width: int, what: str) -> torch.Tensor:
    """The driving capture (degree 0), the dual-reference sampling from an empty latent (one noise image from the
    seed for every row), the VAE decode (a non-finite image is an error naming ``what``) and the resize back to
    ``height`` x ``width``: the all-in-one nodes' last steps, for a whole batch or for one face track."""
    driving = capture_from_latents(driving_refnet, driving_latents, driving_embeds, 0.0)
    latent = {"samples": torch.zeros_like(driving_latents, device=mm.intermediate_device())}
    out = dual_reference_sample(model, source, source_embeds, driving, driving_embeds, latent, seed, steps, cfg,
                                sampler_name, scheduler)
    images = check_finite_tensor(what, vae.decode(out["samples"]))  # unscaled latents in
    if tuple(images.shape[1:3]) != (height, width):
        images = reference_patch.resize_images(images, height, width)
    return images


# ------------------------------------------------------------------------ nodes


def capture_states(refnet, vae, image, embeds, degree: float) -> ReferenceStates:
    """ReferenceNet Capture: VAE latents of the images, then :func:`capture_from_latents` (degree 0 on the driving
    side)."""
    if getattr(refnet, "role", None) == "driving" and float(degree) != 0.0:
        raise ValueError(f"degree {degree:g} on the driving ReferenceNet: the driving side keeps the real "
                         "image, use degree 0 here and the degree on the source capture")
    latents = encode_latents(refnet, vae, image)
    return capture_from_latents(refnet, latents, embeds, degree)


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
        return io.NodeOutput(encode_embeds(clip_vision, image))


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
        return io.NodeOutput(capture_states(refnet, vae, image, embeds, degree))


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
                io.Float.Input("degree", default=reference_patch.FROM_CAPTURE, min=reference_patch.FROM_CAPTURE,
                               max=3.0, step=0.05, tooltip=(
                                   "-1: use the degree of the source capture (set it there, once). Kept for "
                                   "workflows saved with a degree here: it must equal the capture's.")),
            ],
            outputs=[sockets.States.Output(display_name="states"), sockets.Embeds.Output(display_name="embeds")],
        )

    @classmethod
    def execute(cls, states, embeds, degree):
        return io.NodeOutput(*mix(states, embeds, degree))


def sampling_inputs() -> list:
    """seed, steps, cfg, sampler_name, scheduler: KSampler's inputs, in its order."""
    return [
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Seed of the initial noise: with the degree it picks the anonymous identity."),
        io.Int.Input("steps", default=30, min=1, max=1000, tooltip="Sampling steps; 25-50 are enough for photos."),
        io.Float.Input("cfg", default=4.0, min=0.0, max=30.0, step=0.1, round=0.01,
                       tooltip="Guidance scale g between the positive (S', Z') and negative (S_uncond, 0) rows; "
                               "paper 4."),
        io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler", tooltip=(
            "Any ComfyUI sampler; deterministic ones (euler, dpmpp_2m, ddim) keep video frames consistent.")),
        io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                       tooltip="Any ComfyUI scheduler."),
    ]


class FaceAnonDualReferenceSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        tips = patch_node.TOOLTIPS
        return io.Schema(
            node_id="FaceAnon_DualReferenceSampler", display_name="FaceAnon Dual-Reference KSampler",
            category=sockets.CATEGORY_METHOD,
            description=("KSampler for the FaceAnon UNet: every self-attention also attends to the source and "
                         "driving ReferenceNet states of its block (source states per row: S' for the positive, "
                         "S_uncond for the negative batch); context [Z'_src, Z_drv] vs [0, Z_drv]. noise 'same for "
                         "every image' keeps the anonymous identity stable over the frames of a clip."),
            inputs=[
                io.Model.Input("model", tooltip=tips["model"]),
                sockets.States.Input("source_states", tooltip=tips["source_states"]),
                sockets.Embeds.Input("source_embeds", tooltip=tips["source_embeds"]),
                sockets.States.Input("driving_states", tooltip=tips["driving_states"]),
                sockets.Embeds.Input("driving_embeds", tooltip=tips["driving_embeds"]),
                io.Latent.Input("latent_image", tooltip="An empty latent of the model's size; batch 1 is used for "
                                                        "every image."),
                *sampling_inputs(),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1 for anonymization (the result is sampled from noise)."),
                io.Combo.Input("noise", options=list(NOISE_MODES), default=NOISE_MODES[0], tooltip=(
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
        return io.NodeOutput(dual_reference_sample(model, source_states, source_embeds, driving_states,
                                                   driving_embeds, latent_image, seed, steps, cfg, sampler_name,
                                                   scheduler, denoise, noise))
