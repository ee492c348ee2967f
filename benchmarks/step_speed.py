"""Per denoising step: our reference attention against the authors' formulation.

Ours: queries from the UNet's own tokens, reference keys/values projected once per run
and cached.  Naive: all 3N tokens as queries (first third kept), reference keys/values
projected again at every step.  Both run the full SD 2.1 UNet configuration with the same
random weights and the same inputs, alternating in one process, with classifier-free
guidance (batch 2).  Prints one JSON line.

    python -m benchmarks.step_speed               # 256x256
    python -m benchmarks.step_speed --size 512    # the target: ratio >= 1.5
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import psutil
import torch
from diffusers import UNet2DConditionModel

from faceanon_core.method.attention import (
    NaiveReferenceReader,
    ReferenceContext,
    ReferenceReader,
    attn1_names,
    install_readers,
    route_states,
)

SD21_UNET = dict(
    sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, use_linear_projection=True,
)


class PeakMemory:
    """Peak memory while a block runs: CUDA allocator stats, or sampled process RSS on the CPU."""

    def __init__(self, device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.process, self.base, self.running = psutil.Process(), psutil.Process().memory_info().rss, True
            self.peak_rss = self.base
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak = self.peak_rss - self.base


def reference_tokens(unet, routing, latent_size, batch, dtype, device, generator):
    """Random ``[source, driving]`` states with each layer's token count and width."""
    tokens = {}
    for ref in sorted(set(routing.values())):
        kind, block = ref.split(".")[0], ref.split(".")[1]
        level = {"down_blocks": int(block) if kind == "down_blocks" else 0, "mid_block": 3}.get(kind)
        if kind == "up_blocks":
            level = 3 - int(block)
        side = latent_size // 2 ** level
        width = unet.get_submodule(ref).to_q.in_features
        tokens[ref] = torch.randn(batch, 2 * side * side, width, generator=generator).to(device, dtype)
    return tokens


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image size (latents are size/8)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method (after one warm-up)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD21_UNET).to(device, dtype).eval()
    routing = route_states(attn1_names(unet), "as_trained")
    latent = args.size // 8
    gen = torch.Generator().manual_seed(0)
    batch = 2  # classifier-free guidance: [uncond; cond]
    tokens = reference_tokens(unet, routing, latent, batch, dtype, device, gen)
    x = torch.randn(batch, 4, latent, latent, generator=gen).to(device, dtype)
    context = torch.randn(batch, 2, 1024, generator=gen).to(device, dtype)
    timesteps = torch.linspace(999, 1, args.steps + 1).long()

    contexts = {"ours": ReferenceContext(), "naive": ReferenceContext()}
    readers = {"ours": ReferenceReader, "naive": NaiveReferenceReader}
    times = {"ours": [], "naive": []}
    peaks = {"ours": 0, "naive": 0}
    outputs = {}

    def run(name, step, t):
        install_readers(unet, routing, contexts[name], reader_cls=readers[name])
        if step == 0:
            contexts[name].begin(tokens)  # one sampling run: the cache lives across its steps
        with torch.no_grad(), PeakMemory(device) as memory:
            start = time.perf_counter()
            out = unet(x, t, encoder_hidden_states=context).sample
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
        if step > 0:  # the warm-up step pays the process's first allocations
            peaks[name] = max(peaks[name], memory.peak)
        return out, elapsed

    for step, t in enumerate(timesteps):
        order = ("ours", "naive") if step % 2 == 0 else ("naive", "ours")
        for name in order:
            out, elapsed = run(name, step, t)
            if step > 0:  # step 0 is the warm-up (and fills our cache, as a real run's first step does)
                times[name].append(elapsed)
            outputs.setdefault(step, {})[name] = out.float().cpu()

    cache_bytes = sum(t.numel() * t.element_size() for kv in contexts["ours"]._cache.values() for t in kv)
    max_abs_diff = max((outputs[s]["ours"] - outputs[s]["naive"]).abs().max().item() for s in outputs)
    ours = sum(times["ours"]) / len(times["ours"])
    naive = sum(times["naive"]) / len(times["naive"])
    print(json.dumps({
        "benchmark": "step_speed", "size": args.size, "device": str(device), "dtype": str(dtype).split(".")[-1],
        "batch": batch, "timed_steps": args.steps, "ours_s_per_step": round(ours, 4),
        "naive_s_per_step": round(naive, 4), "ratio": round(naive / ours, 3), "max_abs_diff": max_abs_diff,
        "ours_peak_mem_mb": round(peaks["ours"] / 2**20, 1), "naive_peak_mem_mb": round(peaks["naive"] / 2**20, 1),
        "memory_kind": "cuda max_allocated" if device.type == "cuda" else "process RSS above baseline",
        "ours_kv_cache_mb": round(cache_bytes / 2**20, 1),
    }))


if __name__ == "__main__":
    main()
