"""What a ReferenceNet capture reads and does, through ComfyUI's models: CLIP embeddings, VAE latents, and the
ReferenceNet forward at t = 0 that records the states (:mod:`.capture`). Inputs are checked where they enter a node.
"""

from __future__ import annotations

import contextlib

import comfy.model_management as mm
import comfy.utils
import torch

from ...faceanon_core.method.states import ReferenceStates, StatesMeta, expand_batch
from . import layout as comfy_layout
from .capture import CaptureDone, StateRecorder, capture_inputs, split_capture
from .images import pooled_clip, resize_images

IMAGES_PER_FORWARD = 8  # images per ReferenceNet / CLIP forward (bounds activation memory for long clips)


@torch.no_grad()
def encode_embeds(clip_vision, image: torch.Tensor) -> torch.Tensor:
    """CLIP pooled output (post-layernorm CLS, before the projection) per image: ``[B,1,C]``."""
    vision = getattr(getattr(clip_vision, "model", None), "vision_model", None)
    if vision is None or not hasattr(vision, "post_layernorm"):
        raise ValueError("clip_vision must be a CLIP vision model (ViT-L/14 for the published weights)")
    ln = vision.post_layernorm
    pbar = comfy.utils.ProgressBar(image.shape[0])
    pooled = []
    for start in range(0, image.shape[0], 4 * IMAGES_PER_FORWARD):
        chunk = image[start:start + 4 * IMAGES_PER_FORWARD, :, :, :3]
        out = clip_vision.encode_image(chunk, crop=True)
        pooled.append(pooled_clip(out["last_hidden_state"], ln.weight.detach(), ln.bias.detach(), ln.eps))
        pbar.update(chunk.shape[0])
    return torch.cat(pooled).to(mm.intermediate_device())


@torch.no_grad()
def encode_latents(refnet, vae, image: torch.Tensor) -> torch.Tensor:
    """VAE posterior mean, scaled like ComfyUI's sampler input (the SD scaling factor)."""
    px = resize_images(image, refnet.resolution, refnet.resolution)
    if vae is None:
        raise ValueError("no VAE connected (the model folder has no vae/: use ComfyUI's VAE loader)")
    return refnet.latent_format.process_in(vae.encode(px))


@torch.no_grad()
def encode_references(refnet, vae, clip_vision, images: torch.Tensor, size: int):
    """Images resized to ``size`` (the model's resolution) -> (CLIP embeddings, VAE latents): what a ReferenceNet
    capture reads (the all-in-one nodes' first step, for the source side and the driving side alike)."""
    px = resize_images(images, size, size)
    return encode_embeds(clip_vision, px), encode_latents(refnet, vae, px)


@torch.no_grad()
def capture_from_latents(refnet, latents: torch.Tensor, embeds: torch.Tensor, degree: float) -> ReferenceStates:
    """One ReferenceNet forward at t = 0 over the images plus one unconditional row."""
    if not hasattr(refnet, "patcher") or not hasattr(refnet, "layout"):
        raise ValueError("refnet must come from the FaceAnon model loader (FACEANON_REFNET)")
    batch = latents.shape[0]
    embeds = expand_batch(embeds, batch, "the embeddings")
    _routing, ref_layers = comfy_layout.routed_layers(refnet.layout, refnet.routing_mode)
    wanted = {key: name for key, name in refnet.layout.items() if name in ref_layers}
    x_all, c_all = capture_inputs(latents, embeds, float(degree))

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
    for start in range(0, x_all.shape[0], IMAGES_PER_FORWARD):
        x = x_all[start:start + IMAGES_PER_FORWARD].to(device=device, dtype=dtype)
        c = c_all[start:start + IMAGES_PER_FORWARD].to(device=device, dtype=dtype)
        recorder = StateRecorder(wanted)
        options = {"patches": {"attn1_patch": [recorder]}}
        with torch.no_grad(), contextlib.suppress(CaptureDone):
            model.diffusion_model(x, timesteps=torch.zeros(x.shape[0], device=device), context=c,
                                  transformer_options=options)
        parts.append({k: v.to(mm.intermediate_device(), store_dtype) for k, v in recorder.result().items()})
        pbar.update(x.shape[0])
    states = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
    cond, uncond = split_capture(states, batch)
    meta = StatesMeta(role=refnet.role, routing=refnet.routing_mode, embed_degree=float(degree))
    return ReferenceStates(cond=cond, uncond=uncond, meta=meta)


def capture_states(refnet, vae, image, embeds, degree: float) -> ReferenceStates:
    """The ReferenceNet Capture node: VAE latents of the images, then :func:`capture_from_latents` (degree 0 on the
    driving side)."""
    if getattr(refnet, "role", None) == "driving" and float(degree) != 0.0:
        raise ValueError(f"degree {degree:g} on the driving ReferenceNet: the driving side keeps the real "
                         "image, use degree 0 here and the degree on the source capture")
    latents = encode_latents(refnet, vae, image)
    return capture_from_latents(refnet, latents, embeds, degree)
