"""Per denoising step: our reference attention, the authors' formulation, and a plain SD 2.1 UNet step.

Ours: queries from the UNet's own tokens, reference keys/values projected once per run
and cached.  Naive: all 3N tokens as queries (first third kept), reference keys/values
projected again at every step.  Plain: the stock UNet without references (what the
references cost).  All run the full SD 2.1 UNet configuration with the same random
weights and the same inputs, alternating in one process, with classifier-free guidance
(batch 2).  The FLOPs of one step of each are counted on the meta device (matmuls,
convolutions and attention), so the report says how much of the ours-vs-plain gap the
attention over three times the keys explains; what it does not explain is other overhead.
Prints one JSON line.

    python -m benchmarks.step_speed               # 256x256
    python -m benchmarks.step_speed --size 512    # the target: ratio >= 1.5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time

import psutil
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

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

METHODS = ("plain", "ours", "naive")
READERS = {"ours": ReferenceReader, "naive": NaiveReferenceReader}


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
        shape = (batch, 2 * side * side, width)
        if device.type == "meta":
            tokens[ref] = torch.empty(shape, device="meta", dtype=dtype)
        else:
            tokens[ref] = torch.randn(*shape, generator=generator).to(device, dtype)
    return tokens


def set_method(unet, routing, context: ReferenceContext | None, method: str) -> None:
    """Stock processors everywhere (plain), then our or the authors' readers on the routed layers."""
    unet.set_attn_processor(AttnProcessor2_0())
    if method != "plain":
        install_readers(unet, routing, context, reader_cls=READERS[method])


def _matmul_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
    """SDPA written as two matmuls, so that FlopCounterMode counts it (it does not count SDPA on every backend)."""
    if attn_mask is not None or is_causal or dropout_p:
        raise ValueError("the FLOP count supports plain attention only")
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    return torch.softmax(query @ key.transpose(-1, -2) * scale, dim=-1) @ value


def count_step_flops(unet_config: dict, size: int, batch: int = 2, context_width: int | None = None,
                     routing_mode: str = "as_trained") -> dict[str, int]:
    """FLOPs of one UNet step for each method, on the meta device (no memory, no compute).

    For ours the reference keys/values are projected in a first call and cached, as in a
    real run; the count is that of a later step.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
    routing = route_states(attn1_names(unet), routing_mode)
    latent = size // 8
    width = context_width or unet_config["cross_attention_dim"]
    x = torch.empty(batch, unet_config["in_channels"], latent, latent, device="meta")
    context = torch.empty(batch, 2, width, device="meta")
    t = torch.tensor(500)
    tokens = reference_tokens(unet, routing, latent, batch, torch.float32, torch.device("meta"), None)
    flops = {}
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _matmul_attention
    try:
        with torch.no_grad():
            for method in METHODS:
                ctx = ReferenceContext()
                set_method(unet, routing, ctx, method)
                ctx.begin(tokens)
                unet(x, t, encoder_hidden_states=context)  # fills our cache (the run's first step)
                with FlopCounterMode(display=False) as counter:
                    unet(x, t, encoder_hidden_states=context)
                flops[method] = int(counter.get_total_flops())
                ctx.end()
    finally:
        F.scaled_dot_product_attention = original
    return flops


def gap_report(seconds: dict[str, float], flops: dict[str, int]) -> dict:
    """How much of the measured ours/plain gap the extra attention FLOPs predict."""
    measured = seconds["ours"] / seconds["plain"]
    predicted = flops["ours"] / flops["plain"]
    extra = flops["ours"] - flops["plain"]
    return {
        "ours_vs_plain_measured": round(measured, 3),
        "ours_vs_plain_predicted_by_flops": round(predicted, 3),
        "extra_attention_flop_share": round(extra / flops["ours"], 4),
        # 1.0: the gap is all attention over 3x the keys; < 1: other overhead (concatenation, casts, ...).
        "gap_explained_by_attention": round((predicted - 1) / (measured - 1), 3) if measured > 1 else None,
        "naive_vs_plain_measured": round(seconds["naive"] / seconds["plain"], 3),
        "naive_vs_plain_predicted_by_flops": round(flops["naive"] / flops["plain"], 3),
    }


def time_methods(unet, routing, size: int, steps: int, device, dtype, methods=METHODS, measure_memory=True):
    """Alternate the methods step by step on the same inputs; one warm-up step each.

    Returns (mean seconds per step, peak memory per method, max |ours - naive|, our cache bytes).
    """
    latent = size // 8
    gen = torch.Generator().manual_seed(0)
    batch = 2  # classifier-free guidance: [uncond; cond]
    tokens = reference_tokens(unet, routing, latent, batch, dtype, device, gen)
    x = torch.randn(batch, 4, latent, latent, generator=gen).to(device, dtype)
    context = torch.randn(batch, 2, unet.config.cross_attention_dim, generator=gen).to(device, dtype)
    timesteps = torch.linspace(999, 1, steps + 1).long()
    contexts = {name: ReferenceContext() for name in methods}
    times = {name: [] for name in methods}
    peaks = {name: 0 for name in methods}
    outputs: dict[int, dict[str, torch.Tensor]] = {}
    for step, t in enumerate(timesteps):
        order = methods if step % 2 == 0 else tuple(reversed(methods))
        for name in order:
            set_method(unet, routing, contexts[name], name)
            if step == 0:
                contexts[name].begin(tokens)  # one sampling run: the cache lives across its steps
            memory = PeakMemory(device) if measure_memory else contextlib.nullcontext()
            with torch.no_grad(), memory:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                out = unet(x, t, encoder_hidden_states=context).sample
                if device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
            if step > 0:  # step 0 is the warm-up (and fills our cache, as a real run's first step does)
                times[name].append(elapsed)
                if measure_memory:
                    peaks[name] = max(peaks[name], memory.peak)
            outputs.setdefault(step, {})[name] = out.float().cpu()
    cache = contexts["ours"]._cache if "ours" in contexts else {}
    cache_bytes = sum(t.numel() * t.element_size() for kv in cache.values() for t in kv)
    diff = None
    if "ours" in methods and "naive" in methods:
        diff = max((outputs[s]["ours"] - outputs[s]["naive"]).abs().max().item() for s in outputs)
    for ctx in contexts.values():
        ctx.end()
    mean = {name: sum(v) / len(v) for name, v in times.items()}
    return mean, peaks, diff, cache_bytes


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
    seconds, peaks, diff, cache_bytes = time_methods(unet, routing, args.size, args.steps, device, dtype)
    flops = count_step_flops(SD21_UNET, args.size)
    print(json.dumps({
        "benchmark": "step_speed", "size": args.size, "device": str(device), "dtype": str(dtype).split(".")[-1],
        "batch": 2, "timed_steps": args.steps, "plain_s_per_step": round(seconds["plain"], 4),
        "ours_s_per_step": round(seconds["ours"], 4), "naive_s_per_step": round(seconds["naive"], 4),
        "ratio": round(seconds["naive"] / seconds["ours"], 3), "max_abs_diff": diff,
        "gflops_per_step": {k: round(v / 1e9, 1) for k, v in flops.items()}, **gap_report(seconds, flops),
        "plain_peak_mem_mb": round(peaks["plain"] / 2**20, 1),
        "ours_peak_mem_mb": round(peaks["ours"] / 2**20, 1), "naive_peak_mem_mb": round(peaks["naive"] / 2**20, 1),
        "memory_kind": "cuda max_allocated" if device.type == "cuda" else "process RSS above baseline",
        "ours_kv_cache_mb": round(cache_bytes / 2**20, 1),
    }))


if __name__ == "__main__":
    main()
