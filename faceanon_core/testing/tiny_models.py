"""Tiny random-weight models in exactly the published folder layout.

For tests, demos and parity checks on machines without the real weights: every loader
runs the same code path on these folders as on the published ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..method.loading import UNET_PARTS, default_scheduler_config, save_clip_vision

TINY_IMAGE_SIZE = 64


def tiny_unet_config(cross_attention_dim: int = 32, layers_per_block: int = 2) -> dict:
    """SD 2.1's structure (linear projections, several attentions per block), tiny widths."""
    return dict(
        sample_size=TINY_IMAGE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=layers_per_block,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        use_linear_projection=True,
        norm_num_groups=8,
    )


def write_tiny_model_folder(root, seed: int = 0, *, extras: bool = True, layers_per_block: int = 2) -> Path:
    """Write ``unet/``, ``referencenet/``, ``conditioning_referencenet/`` (and, with ``extras``,
    ``vae/``, ``image_encoder/``, ``feature_extractor/``, ``scheduler/``) under ``root``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    root = Path(root)
    torch.manual_seed(seed)
    hidden = 32
    for part in UNET_PARTS:
        unet = UNet2DConditionModel(**tiny_unet_config(hidden, layers_per_block))
        _randomize(unet)
        unet.save_pretrained(root / part, safe_serialization=True)
        if part != "unet":
            config_path = root / part / "config.json"
            config = json.loads(config_path.read_text())
            config["_class_name"] = "ReferenceNetModel"  # as in the published weights
            config_path.write_text(json.dumps(config, indent=2))
    if not extras:
        return root
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
        norm_num_groups=8, sample_size=TINY_IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    vae.save_pretrained(root / "vae", safe_serialization=True)
    encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, projection_dim=16,
    ))
    save_clip_vision(encoder, root / "image_encoder")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "feature_extractor")
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(default_scheduler_config(), indent=2))
    return root


@torch.no_grad()
def _randomize(unet: torch.nn.Module) -> None:
    """diffusers zero-initialises some output layers; give every weight a value so tests see them."""
    for _name, param in unet.named_parameters():
        if param.abs().sum() == 0:
            param.normal_(0, 0.02)
