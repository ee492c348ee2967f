"""Every GPU figure of the project in one command and one JSON document.

Random weights in the full SD 2.1 configuration (three UNets, the SD VAE, CLIP ViT-L/14
vision), built inside the run on the device; nothing is downloaded.  Sections:

- ``step``: seconds per denoising step at 512 (CFG batch 2) in fp16 and bf16 (the CPU:
  fp32 and bf16): ours vs the authors' 3N-query formulation vs a plain SD 2.1 UNet step,
  and how much of the ours-vs-plain gap the attention over 3x the keys explains (FLOPs
  counted on the meta device).
- ``memory``: peak VRAM during the denoising loop with the ReferenceNets moved off the GPU
  after they ran, vs all three networks resident.
- ``end_to_end``: seconds per face for batches of 1, 4 and 16 aligned crops, 25 steps.
- ``comfyui``: the ComfyUI node path (``benchmarks.comfy_step_speed``, run with the host's
  Python) vs the core step, where ``COMFYUI_PATH`` names a ComfyUI; skipped with a reason
  otherwise.
- ``trainer``: optimizer steps per second at 512 with bf16 and gradient checkpointing.

A section that fails is reported in ``errors`` (exit code 1); the others still run.

    python -m benchmarks.device_suite            # one H200: under 8 minutes
    python -m benchmarks.device_suite --small    # a CPU-sized configuration, for CI (well under a minute)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from benchmarks.step_speed import SD21_UNET, count_step_flops, gap_report, time_methods

logger = logging.getLogger("device_suite")

#: ``--small``: every width of SD 2.1 divided by this (depths, heads and block types kept).
SMALL_DIVISOR = 16


def unet_config(divisor: int) -> dict:
    """The SD 2.1 UNet config, widths divided by ``divisor`` (the same shapes as ``train_speed.sd21_parts``)."""
    if divisor == 1:
        return dict(SD21_UNET)
    return dict(SD21_UNET, block_out_channels=tuple(c // divisor for c in SD21_UNET["block_out_channels"]),
                cross_attention_dim=1024 // divisor, norm_num_groups=32 // min(divisor, 8))


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_pipeline(divisor: int, device, dtype):
    """A FaceAnonPipeline of random SD 2.1-shaped parts, created directly on ``device``."""
    from diffusers import DDIMScheduler

    from benchmarks.train_speed import sd21_parts
    from faceanon_core.method.pipeline import FaceAnonPipeline

    with torch.device(device):
        parts = sd21_parts(divisor)
        if divisor != 1:  # CI: a 2-layer CLIP at 32 px instead of 24 layers at 224 (the UNets keep SD 2.1's shape)
            from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

            hidden = parts["unet"].config.cross_attention_dim
            parts["image_encoder"] = CLIPVisionModel(CLIPVisionConfig(
                hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                image_size=32, patch_size=8, projection_dim=16))
            parts["feature_extractor"] = CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32})
    scheduler = DDIMScheduler.from_config(parts["scheduler_config"])
    pipe = FaceAnonPipeline(parts["unet"], parts["referencenet"], parts["conditioning_referencenet"], parts["vae"],
                            parts["image_encoder"], parts["feature_extractor"], scheduler, routing="as_trained")
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def section_step(args, device, dtypes) -> dict:
    """Per-step seconds of plain / ours / naive for each dtype, plus the FLOP account of the gap."""
    from diffusers import UNet2DConditionModel

    from faceanon_core.method.attention import attn1_names, route_states

    config = unet_config(args.divisor)
    torch.manual_seed(0)
    with torch.device(device):
        master = UNet2DConditionModel(**config).eval()
    routing = route_states(attn1_names(master), "as_trained")
    flops = count_step_flops(config, args.size)
    out = {"size": args.size, "batch": 2, "timed_steps": args.step_steps,
           "gflops_per_step": {k: round(v / 1e9, 3) for k, v in flops.items()}}
    for dtype in dtypes:
        unet = copy.deepcopy(master).to(dtype)
        seconds, _, diff, cache = time_methods(unet, routing, args.size, args.step_steps, device, dtype,
                                               measure_memory=False)
        out[str(dtype).split(".")[-1]] = {
            **{f"{k}_s_per_step": round(v, 5) for k, v in seconds.items()},
            "naive_vs_ours": round(seconds["naive"] / seconds["ours"], 3), **gap_report(seconds, flops),
            "max_abs_diff_ours_naive": diff, "ours_kv_cache_mib": round(cache / 2**20, 2),
        }
        del unet
    del master
    return out


def _weights_mib(modules, device) -> float:
    return round(sum(p.numel() * p.element_size() for m in modules for p in m.parameters()
                     if p.device.type == device.type) / 2**20, 1)


def section_memory(args, pipe, device) -> dict:
    """Peak allocated memory over the UNet calls of one sampling run, per residency mode.

    ``refnets_offloaded``: at the first UNet call (the ReferenceNets have run; their states are
    on the device) both ReferenceNets move to the CPU, as the ComfyUI nodes do.
    """
    refnets = [pipe.referencenet, pipe.conditioning_referencenet]
    modules = [pipe.unet, pipe.vae, pipe.image_encoder, *refnets]
    images = np.random.default_rng(1).integers(0, 256, (1, args.size, args.size, 3), dtype=np.uint8)
    out = {"kind": "cuda max_memory_allocated over the denoising loop" if device.type == "cuda" else
           "not measured: no CUDA device (weights on the device are reported)", "steps": args.memory_steps}
    for mode in ("all_resident", "refnets_offloaded"):
        state = {"calls": 0, "peak": 0, "weights": None}

        def pre_hook(module, inputs, state=state, mode=mode):
            if state["calls"] == 0:
                if mode == "refnets_offloaded":
                    for net in refnets:
                        net.to("cpu")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                state["weights"] = _weights_mib(modules, device)
            state["calls"] += 1

        def post_hook(module, inputs, output, state=state):
            if device.type == "cuda":
                state["peak"] = max(state["peak"], torch.cuda.max_memory_allocated())

        handles = [pipe.unet.register_forward_pre_hook(pre_hook), pipe.unet.register_forward_hook(post_hook)]
        try:
            pipe.anonymize(images, num_inference_steps=args.memory_steps, height=args.size, width=args.size,
                           generator=torch.Generator().manual_seed(0), output_type="np")
        finally:
            for handle in handles:
                handle.remove()
            for net in refnets:
                net.to(device)
        out[mode] = {"peak_mib": round(state["peak"] / 2**20, 1) if device.type == "cuda" else None,
                     "weights_on_device_mib": state["weights"], "unet_calls": state["calls"]}
    if device.type == "cuda":
        out["saved_mib"] = round(out["all_resident"]["peak_mib"] - out["refnets_offloaded"]["peak_mib"], 1)
    return out


def section_end_to_end(args, pipe, device) -> dict:
    """Seconds per aligned face crop, model only (no detection), for each batch size."""
    rng = np.random.default_rng(2)
    pipe.anonymize(rng.integers(0, 256, (1, args.size, args.size, 3), dtype=np.uint8), num_inference_steps=1,
                   height=args.size, width=args.size, output_type="np")  # warm-up
    out = {"steps": args.e2e_steps, "size": args.size, "scheduler": type(pipe.scheduler).__name__}
    for batch in args.batches:
        images = rng.integers(0, 256, (batch, args.size, args.size, 3), dtype=np.uint8)
        generators = [torch.Generator().manual_seed(i) for i in range(batch)]
        sync(device)
        start = time.perf_counter()
        result = pipe.anonymize(images, num_inference_steps=args.e2e_steps, height=args.size, width=args.size,
                                generator=generators, output_type="np").images
        sync(device)
        elapsed = time.perf_counter() - start
        out[f"batch_{batch}"] = {"seconds": round(elapsed, 4), "seconds_per_face": round(elapsed / batch, 4),
                                 "faces": int(result.shape[0])}
    return out


def section_comfyui(args, step: dict | None) -> dict:
    """The nodes' per-step path inside a real ComfyUI (its own Python) vs the core step of this run."""
    root = os.environ.get("COMFYUI_PATH")
    if not root or not Path(root, "comfy").is_dir():
        return {"skipped": "COMFYUI_PATH does not name a ComfyUI checkout (set it, and COMFYUI_PYTHON to its "
                           "Python, to compare the node path)"}
    if args.divisor != 1:
        return {"skipped": "--small: the ComfyUI comparison runs the full SD 2.1 UNet; run without --small"}
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    repo = Path(__file__).resolve().parents[1]
    cmd = [python, "-m", "benchmarks.comfy_step_speed", "--size", str(args.size), "--reps", "3"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=args.comfy_timeout,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"comfy_step_speed failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    comfy = json.loads(lines[-1])
    out = {"comfy_step_speed": comfy}
    core_dtype = "float16" if "float16" in comfy.get("dtype", "") else "float32"
    core = (step or {}).get(core_dtype)
    if core and comfy.get("batch") == 1:
        out["node_vs_core_s_per_step"] = round(comfy["replace_s_per_step"] / core["ours_s_per_step"], 3)
    return out


def section_trainer(args, device) -> dict:
    """``benchmarks.train_speed`` in process: SD 2.1 at 512, bf16, gradient checkpointing."""
    from benchmarks import train_speed

    argv = ["--full", "--mixed-precision", "bf16", "--steps", str(args.train_steps),
            "--accumulation", str(args.accumulation), "--resolution", str(args.size)]
    if args.divisor != 1:
        argv += ["--divisor", str(args.divisor)]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        train_speed.main(argv)
    return json.loads(buffer.getvalue().strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="CPU-sized configuration (widths / 16, 64x64)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sections", default="step,memory,end_to_end,comfyui,trainer",
                        help="comma-separated subset to run")
    parser.add_argument("--comfy-timeout", type=int, default=240)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="device_suite: %(message)s")
    for name in ("diffusers", "transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.divisor = SMALL_DIVISOR if args.small else 1
    args.size = 64 if args.small else 512
    args.step_steps = 1 if args.small else 5
    args.memory_steps = 1 if args.small else 3
    args.e2e_steps = 2 if args.small else 25
    args.batches = (1, 2, 4) if args.small else (1, 4, 16)
    args.train_steps = 1 if args.small else 3
    args.accumulation = 1 if args.small else 8
    dtypes = (torch.float16, torch.bfloat16) if cuda else (torch.float32, torch.bfloat16)
    pipe_dtype = torch.float16 if cuda else torch.float32
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]

    doc = {"benchmark": "device_suite", "config": "small" if args.small else "sd21", "size": args.size,
           "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
           "device_type": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "pipeline_dtype": str(pipe_dtype).split(".")[-1], "weights": "random", "sections": {},
           "section_seconds": {}, "errors": []}
    start = time.perf_counter()
    pipe = None

    def run(name, fn):
        if name not in wanted:
            return None
        logger.info("%s ...", name)
        t0 = time.perf_counter()
        try:
            doc["sections"][name] = fn()
        except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
            doc["sections"][name] = None
            doc["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
            traceback.print_exc(file=sys.stderr)
        doc["section_seconds"][name] = round(time.perf_counter() - t0, 2)
        return doc["sections"][name]

    step = run("step", lambda: section_step(args, device, dtypes))
    if "memory" in wanted or "end_to_end" in wanted:
        t0 = time.perf_counter()
        try:
            pipe = build_pipeline(args.divisor, device, pipe_dtype)
        except Exception as exc:  # noqa: BLE001
            doc["errors"].append(f"build_pipeline: {type(exc).__name__}: {exc}")
        doc["section_seconds"]["build_pipeline"] = round(time.perf_counter() - t0, 2)
    if pipe is not None:
        run("memory", lambda: section_memory(args, pipe, device))
        run("end_to_end", lambda: section_end_to_end(args, pipe, device))
    pipe = None  # free the pipeline before the trainer builds its own networks
    if cuda:
        torch.cuda.empty_cache()
    run("comfyui", lambda: section_comfyui(args, step))
    run("trainer", lambda: section_trainer(args, device))
    doc["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(doc, indent=1))
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
