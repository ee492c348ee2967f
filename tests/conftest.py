"""Shared fixtures: tiny random models in the published layout, built once per session."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from faceanon_core.testing.tiny_models import TINY_IMAGE_SIZE, write_tiny_model_folder

# The CI policy of the host tests (only a top-level conftest may load a plugin for the tests below it).
pytest_plugins = ["helpers.host.ci_policy"]

logging.getLogger("diffusers").setLevel(logging.ERROR)
logging.getLogger("transformers").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return write_tiny_model_folder(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    from diffusers import DDIMScheduler

    from faceanon_core import FaceAnonPipeline

    pipe = FaceAnonPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    # Deterministic given the initial latents (DDPM adds fresh noise at every step).
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


@pytest.fixture
def face_images():
    """Two different, smooth 64x64 uint8 images (smooth so that resizing behaves like photos)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    return np.stack([np.kron(img, np.ones((8, 8, 1), dtype=np.uint8)) for img in small])


@pytest.fixture
def run_kwargs():
    return dict(num_inference_steps=2, height=TINY_IMAGE_SIZE, width=TINY_IMAGE_SIZE, output_type="np")


@pytest.fixture(scope="session")
def rec():
    """dlib's face recognizer (the 'verify' extra); tests that use it skip when it is missing."""
    from faceanon_core.privacy.identity import RecognizerUnavailable, default_recognizer

    try:
        return default_recognizer()
    except RecognizerUnavailable as exc:
        pytest.skip(str(exc))
