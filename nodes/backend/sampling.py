"""Dual-reference sampling through ComfyUI's own sampler, and the two small bundles the all-in-one nodes pass on:
:class:`Models` (the FaceAnon Model Loader's outputs) and :class:`SamplingSettings` (KSampler's settings), each
checked once, where a node builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import comfy.model_management as mm
import comfy.sample
import comfy.utils
import latent_preview
import torch

from ...faceanon_core.method.states import ReferenceStates, expand_batch
from . import encoding, patching
from .batching import resolve_batch, seeded_noise
from .checks import check_finite_tensor, check_floats
from .images import resize_images

NOISE_MODES = ("same for every image", "per image")

#: What a sampled LATENT does not carry on: as core's KSampler (the newest also drops the VAE's downscale ratios,
#: which describe the input latent, not the sampled one).
DROPPED_LATENT_KEYS = ("samples", "batch_index", "noise_mask", "downscale_ratio_spacial", "downscale_ratio_temporal")


@dataclass(frozen=True)
class Models:
    """The FaceAnon Model Loader's outputs (MODEL, source and driving FACEANON_REFNET, VAE, CLIP_VISION)."""

    model: Any
    source_refnet: Any
    driving_refnet: Any
    vae: Any
    clip_vision: Any

    def check_encoders(self) -> None:
        if self.vae is None or self.clip_vision is None:
            raise ValueError("connect a VAE and a CLIP vision model (the model folder has no vae/ or image_encoder/)")


@dataclass(frozen=True)
class SamplingSettings:
    """KSampler's settings plus the noise mode; :meth:`of` checks them (a node's inputs)."""

    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    denoise: float = 1.0
    noise_mode: str = NOISE_MODES[0]

    @classmethod
    def of(cls, node: str, seed, steps, cfg, sampler_name, scheduler, denoise=1.0, noise_mode=NOISE_MODES[0]):
        check_floats(node, cfg=cfg, denoise=denoise)
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise_mode!r}")
        return cls(seed, steps, cfg, sampler_name, scheduler, denoise, noise_mode)


@torch.no_grad()
def dual_reference_sample(model, source_states: ReferenceStates, source_embeds: torch.Tensor,
                          driving_states: ReferenceStates, driving_embeds: torch.Tensor, latent: dict,
                          settings: SamplingSettings) -> dict:
    """ComfyUI sampling of ``model`` patched by :func:`.patching.apply_references` (the Apply References node).
    A non-finite result is an error, never an output."""
    s = settings
    patched, positive, negative, batch, _patch = patching.apply_references(
        model, source_states, source_embeds, driving_states, driving_embeds)
    samples = latent["samples"]
    batch = resolve_batch({"the latent": samples.shape[0], "the references": batch})
    samples = expand_batch(samples, batch, "the latent")
    latent_image = comfy.sample.fix_empty_latent_channels(patched, samples.contiguous())
    noise = seeded_noise(latent_image.shape, s.seed, per_image=s.noise_mode == "per image")
    callback = latent_preview.prepare_callback(patched, s.steps)
    out = comfy.sample.sample(patched, noise, s.steps, s.cfg, s.sampler_name, s.scheduler, positive, negative,
                              latent_image, denoise=s.denoise, noise_mask=latent.get("noise_mask"), callback=callback,
                              disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=s.seed)
    result = {k: v for k, v in latent.items() if k not in DROPPED_LATENT_KEYS}
    result["samples"] = check_finite_tensor("Dual-Reference Sampler: the sampled latent", out)
    return result


@torch.no_grad()
def sample_against(models: Models, source: ReferenceStates, source_embeds: torch.Tensor,
                   driving_embeds: torch.Tensor, driving_latents: torch.Tensor, settings: SamplingSettings,
                   size: tuple[int, int], what: str) -> torch.Tensor:
    """The driving capture (degree 0), the dual-reference sampling from an empty latent (one noise image from the
    seed for every row), the VAE decode (a non-finite image is an error naming ``what``) and the resize back to
    ``size`` (height, width): the all-in-one nodes' last steps, for a whole batch or for one face track."""
    driving = encoding.capture_from_latents(models.driving_refnet, driving_latents, driving_embeds, 0.0)
    latent = {"samples": torch.zeros_like(driving_latents, device=mm.intermediate_device())}
    out = dual_reference_sample(models.model, source, source_embeds, driving, driving_embeds, latent, settings)
    images = check_finite_tensor(what, models.vae.decode(out["samples"]))  # unscaled latents in
    if tuple(images.shape[1:3]) != tuple(size):
        images = resize_images(images, *size)
    return images
