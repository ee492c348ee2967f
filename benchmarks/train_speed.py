"""Training throughput: optimizer steps per second and peak memory of ``faceanon-train``.

Default: the tiny test configuration (random tiny models, 64x64, CPU or GPU).
``--full``: the SD 2.1 configuration (three 865M-parameter UNets, the SD VAE, CLIP
ViT-L/14 vision, random weights) at 512x512 with mixed precision and gradient
checkpointing, for a GPU.  Batch 1 x gradient accumulation 8 (the paper's setting) unless
told otherwise.  Prints one JSON line.

    python -m benchmarks.train_speed
    python -m benchmarks.train_speed --full                # on a GPU
    python -m benchmarks.train_speed --full --use-8bit-adam
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.step_speed import SD21_UNET, PeakMemory


def write_data(root: Path, size: int, count: int = 2) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        item = {}
        for role in ("source_image", "conditioning_image", "ground_truth"):
            small = rng.integers(0, 256, size=(size // 16, size // 16, 3), dtype=np.uint8)
            Image.fromarray(np.kron(small, np.ones((16, 16, 1), dtype=np.uint8))).save(root / f"{i}_{role}.png")
            item[role] = f"{i}_{role}.png"
        lines.append(json.dumps(item))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root / "train.jsonl"


def sd21_parts(divisor: int = 1) -> dict:
    """SD 2.1-shaped parts with random weights (``divisor`` shrinks widths, for a dry run)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from faceanon_core.method.loading import default_scheduler_config

    hidden = 1024 // divisor
    unet_config = dict(SD21_UNET, block_out_channels=tuple(c // divisor for c in SD21_UNET["block_out_channels"]),
                       cross_attention_dim=hidden, norm_num_groups=32 // min(divisor, 8))
    torch.manual_seed(0)
    nets = {part: UNet2DConditionModel(**unet_config) for part in ("unet", "referencenet", "conditioning_referencenet")}
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=tuple(c // divisor for c in (128, 256, 512, 512)), norm_num_groups=32 // min(divisor, 8),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
    encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=4096 // divisor, num_hidden_layers=24,
        num_attention_heads=max(1, 16 // divisor), image_size=224, patch_size=14, projection_dim=768))
    return {**nets, "vae": vae, "image_encoder": encoder, "feature_extractor": CLIPImageProcessor(),
            "scheduler_config": default_scheduler_config(), "routing": "as_trained", "init": None,
            "part_dirs": {}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="SD 2.1 at 512 with mixed precision + checkpointing")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps (after one warm-up)")
    parser.add_argument("--accumulation", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=None, help="default 64 (tiny) / 512 (full)")
    parser.add_argument("--mixed-precision", default=None, choices=["no", "fp16", "bf16"])
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument("--use-8bit-adam", action="store_true")
    parser.add_argument("--divisor", type=int, default=1, help=argparse.SUPPRESS)  # shrink --full for a dry run
    args = parser.parse_args(argv)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)

    from training.config import config_from_dict
    from training.trainer import Trainer

    cuda = torch.cuda.is_available()
    resolution = args.resolution or (512 if args.full else 64)
    if args.mixed_precision is None:
        args.mixed_precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if (args.full and cuda) else "no"
    steps = args.steps or (5 if args.full else 3)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_data(tmp, resolution)
        if args.full:
            parts, init = sd21_parts(args.divisor), "(random SD 2.1 weights)"
        else:
            from faceanon_core.testing.tiny_models import write_tiny_model_folder

            parts, init = None, str(write_tiny_model_folder(tmp / "model"))
        config = config_from_dict({
            "model": {"init_from": init, "gradient_checkpointing": args.full and not args.no_checkpointing},
            "data": {"train": str(data), "resolution": resolution, "check": "quick"},
            "optim": {"use_8bit_adam": args.use_8bit_adam},
            "train": {"output_dir": str(tmp / "out"), "batch_size": args.batch_size,
                      "gradient_accumulation_steps": args.accumulation, "mixed_precision": args.mixed_precision,
                      "progress_bar": False, "report_to": "none", "checkpoint_every": 10**9},
        })
        trainer = Trainer(config, parts=parts)
        device = trainer.accelerator.device
        data_iter = iter(trainer.loader(0))
        next_step = lambda: [next(data_iter) for _ in range(args.accumulation)]  # noqa: E731
        trainer.train_step(next_step())  # warm-up (allocator, kernels, optimizer state)
        times = []
        with PeakMemory(device) as memory:
            for _ in range(steps):
                batches = next_step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                trainer.train_step(batches)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        peak_total = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
        per_step = float(np.median(times))
        print(json.dumps({
            "benchmark": "train_speed", "config": "sd21" if args.full else "tiny", "resolution": resolution,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "mixed_precision": trainer.accelerator.mixed_precision,
            "gradient_checkpointing": bool(config.model.gradient_checkpointing),
            "optimizer": "adamw8bit" if args.use_8bit_adam else "adamw", "batch_size": args.batch_size,
            "gradient_accumulation_steps": args.accumulation, "timed_steps": steps,
            "optimizer_steps_per_s": round(1 / per_step, 4), "samples_per_s": round(
                args.batch_size * args.accumulation / per_step, 3),
            "s_per_optimizer_step": round(per_step, 4),
            "trainable_params_m": {k: round(v / 1e6, 2) for k, v in trainer.trainable_counts.items()},
            "peak_memory_mib": round((peak_total if peak_total is not None else memory.peak) / 2**20, 1),
            "peak_process_rss_mib": None if device.type == "cuda" else round(memory.peak_rss / 2**20, 1),
            "memory_kind": "cuda max_allocated (whole run)" if device.type == "cuda" else
                           "process RSS increase during the timed steps",
        }))


if __name__ == "__main__":
    main()
