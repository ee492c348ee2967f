"""Tiny random-weight models in the published folder layout, for our tests and for users' tests."""

from .tiny_models import TINY_IMAGE_SIZE, tiny_unet_config, write_tiny_model_folder

__all__ = ["TINY_IMAGE_SIZE", "tiny_unet_config", "write_tiny_model_folder"]
