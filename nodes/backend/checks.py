"""Input checks shared by the nodes (pure Python/torch, imports no ComfyUI: unit-testable without the host).

ComfyUI's widget ranges do not stop NaN or infinity (they arrive through the API, from a
primitive node or from a saved workflow), and a NaN degree samples a black image that would be
saved as a success. Every float input of every node goes through :func:`check_floats`, every IMAGE input once
through :func:`check_images` (or :func:`check_face_images`), where it enters the node; the functions behind the
nodes take checked inputs.
"""

from __future__ import annotations

import math

import torch


def check_floats(node: str, **values) -> None:
    """Raise ``ValueError`` naming the first input of ``node`` that is NaN or infinite."""
    for name, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{node}: input '{name}' must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{node}: input '{name}' is {number}; it must be a finite number")


def check_finite_tensor(what: str, tensor: torch.Tensor) -> torch.Tensor:
    """Fail instead of handing on a NaN/inf result (a broken sampler or VAE gives a black image)."""
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{what} holds {bad} NaN or infinite value(s); the result was not passed on. Check the "
                         "degree, cfg and sampler settings and the model files (a broken or fp16-overflowing model "
                         "gives NaN)")
    return tensor


#: Below this side (pixels) an image cannot hold a recognisable face: the all-in-one nodes refuse it.
MIN_FACE_IMAGE_SIDE = 16


def check_images(image, what: str = "image", node: str | None = None) -> torch.Tensor:
    """An IMAGE input: a non-empty ``[B,H,W,C]`` batch (C 1, 3 or 4) of finite values."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{what}: expected an IMAGE batch [B,H,W,C], got {type(image).__name__} "
                         f"{tuple(getattr(image, 'shape', ()))}")
    if image.shape[0] == 0:
        raise ValueError(f"{what}: the batch is empty (no images or no faces)")
    return check_finite_tensor(f"{node}: {what}" if node else what, image)


def check_face_images(node: str, what: str, image) -> torch.Tensor:
    """An IMAGE input of face crops: :func:`check_images`, and large enough to hold a face."""
    check_images(image, what, node)
    height, width = int(image.shape[1]), int(image.shape[2])
    if min(height, width) < MIN_FACE_IMAGE_SIDE:
        raise ValueError(f"{what} is {width}x{height}: too small to hold a face (at least {MIN_FACE_IMAGE_SIDE} px "
                         "a side). Face Anonymize takes aligned face crops: use Detect & Align Faces on photos")
    return image


def check_fraction(what: str, value) -> float:
    """A float input that must lie in 0..1 (a sampling percent)."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{what} must be between 0 and 1, got {value!r}")
    return float(value)
