"""Tiny model folders for the host tests (no ComfyUI imports)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from faceanon_core.testing.tiny_models import TINY_IMAGE_SIZE, write_tiny_model_folder


def write_host_model_folder(root, seed: int = 0) -> Path:
    """``write_tiny_model_folder`` plus a VAE ComfyUI can build.

    ComfyUI's VAE hard-codes GroupNorm(32) (every SD VAE has 32 groups), so the 8-group tiny
    VAE is replaced by a 4-level 32-channel one; the UNets keep their 8 groups (the loader
    honours ``norm_num_groups``).
    """
    from diffusers import AutoencoderKL

    root = write_tiny_model_folder(root, seed=seed)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32, 32), layers_per_block=1,
        norm_num_groups=32, sample_size=TINY_IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    shutil.rmtree(root / "vae")
    vae.save_pretrained(root / "vae", safe_serialization=True)
    return root
