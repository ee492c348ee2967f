"""Inputs for the tiny random-weight models (faceanon_core.testing.tiny_models)."""

from __future__ import annotations

import torch

from faceanon_core.testing.tiny_models import TINY_IMAGE_SIZE


def noise(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn((batch, 4, TINY_IMAGE_SIZE // 8, TINY_IMAGE_SIZE // 8), generator=torch.manual_seed(seed))
