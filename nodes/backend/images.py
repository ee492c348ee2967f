"""IMAGE batches in and out of the model, and CLIP's pooled output (pure torch, imports no ComfyUI).

Inputs are checked once, where they enter a node (:func:`.checks.check_images`); these functions convert.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def pooled_clip(last_hidden_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """CLIP ``pooler_output`` = post-layernorm of the CLS token (before the projection), ``[B, 1, C]``."""
    cls = last_hidden_state[:, 0].float()
    pooled = F.layer_norm(cls, (cls.shape[-1],), weight.float().to(cls.device), bias.float().to(cls.device), eps)
    return pooled.unsqueeze(1)


def resize_images(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """ComfyUI ``IMAGE`` ``[B,H,W,C]`` (C 1, 3 or 4) -> ``[B,height,width,3]`` (bicubic, antialiased, as the core)."""
    images = images[..., :3] if images.shape[-1] >= 3 else images.expand(-1, -1, -1, 3)
    if tuple(images.shape[1:3]) == (height, width):
        return images.float().contiguous()
    logger.info("FaceAnon: resizing %d image(s) from %dx%d to the model's %dx%d", images.shape[0],
                images.shape[2], images.shape[1], width, height)
    x = images.float().movedim(-1, 1)
    x = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return x.clamp(0, 1).movedim(1, -1).contiguous()


def placeholder(crops: torch.Tensor) -> torch.Tensor:
    """The crop batch of a photo without faces (Detect, Face Anonymize/Swap): one black image, never an empty
    batch, so that a Preview or Save of the crops still works; Paste Faces Back ignores it (no faces)."""
    size = tuple(crops.shape[1:3]) if crops.ndim == 4 and min(crops.shape[1:3]) > 0 else (64, 64)
    return torch.zeros((1, *size, 3), dtype=torch.float32, device=crops.device)


def is_placeholder(crops: torch.Tensor) -> bool:
    return crops.shape[0] == 0 or (crops.shape[0] == 1 and not bool(crops.any()))
