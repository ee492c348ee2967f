"""Batches, conditioning and noise of one dual-reference sampling run (pure torch, imports no ComfyUI)."""

from __future__ import annotations

import torch

from ...faceanon_core.method.states import expand_batch


def resolve_batch(sizes: dict[str, int]) -> int:
    """The batch every input broadcasts to: sizes of 1 broadcast, any other mismatch is an error."""
    batch = max(sizes.values())
    for what, size in sizes.items():
        if size not in (1, batch):
            other = next(k for k, v in sizes.items() if v == batch)
            raise ValueError(f"{what} has a batch of {size} but {other} has {batch}: "
                             "pass one item (used for every image) or exactly one per image")
    return batch


def sampler_conditioning(source_embeds: torch.Tensor, driving_embeds: torch.Tensor, batch: int):
    """Positive ``[Z'_src, Z_drv]`` and negative ``[0, Z_drv]`` cross-attention contexts, ``[B, 2, C]``."""
    src = expand_batch(source_embeds, batch, "the source embedding")
    drv = expand_batch(driving_embeds, batch, "the driving embedding")
    positive = torch.cat([src, drv], dim=1)
    negative = torch.cat([torch.zeros_like(src), drv], dim=1)
    return positive, negative


def seeded_noise(shape, seed: int, per_image: bool = False) -> torch.Tensor:
    """Initial noise on the CPU.

    Default: one noise image from ``seed`` shared by the whole batch, so that a given seed and
    degree give the same anonymous identity in every frame of a clip (and a frame gets the same
    result whatever batch it is processed in). ``per_image``: ComfyUI's usual consecutive draws.
    """
    shape = tuple(shape)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    if per_image:
        return torch.randn(shape, generator=generator, device="cpu")
    one = torch.randn((1,) + shape[1:], generator=generator, device="cpu")
    return one.expand(shape).contiguous()
