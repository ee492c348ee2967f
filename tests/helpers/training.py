"""Fixtures for the trainer tests: small synthetic triplets and configs for tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64


def smooth_image(seed: int, size: int = SIZE) -> np.ndarray:
    """A smooth random uint8 image (blocks of 8 px), so VAE latents are not pure noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(size // 8, size // 8, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), dtype=np.uint8))


def write_triplets(root, count: int = 2, *, seed: int = 0, size: int = SIZE, real: int = 0,
                   name: str = "train.jsonl") -> Path:
    """``count`` triplets of distinct images under ``root/images``; the last ``real`` are tagged real."""
    root = Path(root)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        names = {}
        for j, role in enumerate(("source_image", "conditioning_image", "ground_truth")):
            rel = f"p{i}/{role}.png"
            (images / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(smooth_image(seed * 1000 + i * 10 + j, size)).save(images / rel)
            names[role] = rel
        if i >= count - real:
            names["driving"] = "real"
        lines.append(json.dumps(names))
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_config(model_dir, data_file, output_dir, **sections) -> dict:
    """A config dict for the tiny model at 64x64; ``sections`` update single keys: train={"max_steps": 3}."""
    config = {
        "model": {"init_from": str(model_dir)},
        "data": {"train": str(data_file), "images": str(Path(data_file).parent / "images"), "resolution": SIZE},
        "train": {"output_dir": str(output_dir), "max_steps": 4, "gradient_accumulation_steps": 1,
                  "checkpoint_every": 1000, "progress_bar": False, "report_to": "none", "export_at_end": False},
        "optim": {"learning_rate": 1e-4},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config
