"""ComfyUI backend, per denoising step: attn1 replace with cached reference K/V vs the attn1_patch.

Both paths run ComfyUI's own SD 2.1-sized UNet (random weights) in-process with the same inputs,
alternating, with classifier-free guidance (rows ``[uncond; cond]``). "patch": the extended
context ``[own, source, driving]`` is projected by ComfyUI at every step. "replace": the
reference keys/values are projected once per run (first call) and reused. Prints one JSON line.
Needs ComfyUI: run with ComfyUI's Python and ``COMFYUI_PATH`` set.

    COMFYUI_PATH=/path/to/ComfyUI python -m benchmarks.comfy_step_speed --size 256
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

SD21_UNET = {
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True, "upcast_attention": True,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "sample_size": 96, "norm_num_groups": 32,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers.host.comfy_inprocess import import_pack
    from helpers.reference_attn1_patch import reference_patch

    import_pack()
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    from faceanon_pack_under_test.faceanon_core.method.states import ReferenceStates
    from faceanon_pack_under_test.nodes.backend import attention, capture, loading, patching
    from faceanon_pack_under_test.nodes.backend import layout as comfy_layout

    torch.manual_seed(0)
    unet_config = comfy_layout.comfy_unet_config(SD21_UNET)
    model_config = loading.FaceAnonSD2Config(unet_config)
    device = mm.get_torch_device()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model_config.set_inference_dtype(dtype, None)
    model = comfy.model_base.BaseModel(model_config, model_type=comfy.model_base.ModelType.V_PREDICTION,
                                       device=mm.unet_offload_device())
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            offset = 1.0 if "norm" in name and "weight" in name else 0.0
            p.copy_(torch.randn_like(p, dtype=torch.float32).mul_(0.02) + offset)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device())
    mm.load_models_gpu([patcher])

    layout = comfy_layout.attn1_layout(model.model_config.unet_config)
    routing, refs = comfy_layout.routed_layers(layout, "as_trained")
    b, h = args.batch, args.size // 8
    x = torch.randn(b, 4, h, h, device=device)
    ctx = torch.randn(b, 2, 1024, device=device)
    with torch.no_grad():  # realistic states: this UNet's own attn1 inputs at t = 0
        recorder = capture.StateRecorder({k: v for k, v in layout.items() if v in refs})
        with contextlib.suppress(capture.CaptureDone):
            model.diffusion_model(x.to(dtype), timesteps=torch.zeros(b, device=device), context=ctx.to(dtype),
                                  transformer_options={"patches": {"attn1_patch": [recorder]}})
        states = recorder.result()
    src = ReferenceStates(cond=states, uncond={k: v[:1] * 0.5 for k, v in states.items()})
    drv = ReferenceStates(cond={k: v.flip(1) for k, v in states.items()})

    replaced = patcher.clone()
    kv_patch = patching.install_reference_patch(replaced, layout, routing, src, drv)
    assert isinstance(kv_patch, attention.ReferenceKVPatch)
    options = {
        "replace": dict(replaced.model_options["transformer_options"], cond_or_uncond=[1, 0]),
        "patch": {"patches": {"attn1_patch": [reference_patch(attention, layout, routing, src, drv)]},
                  "cond_or_uncond": [1, 0]},
    }
    sigma = model.model_sampling.sigma(torch.tensor([500.0])).repeat(2 * b).to(device)
    xin, cin = torch.cat([x, x]), torch.cat([ctx, ctx])

    def step(name):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.apply_model(xin, sigma, c_crossattn=cin, transformer_options=options[name])
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    times = {"patch": [], "replace": []}
    with torch.no_grad():
        first_replace, out_r = step("replace")  # includes the once-per-run reference projection
        _, out_p = step("patch")
        for _ in range(args.reps):
            for name in ("patch", "replace"):
                times[name].append(step(name)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "device": str(device), "dtype": str(dtype), "size": args.size, "batch": b, "reps": args.reps,
        "patch_s_per_step": round(med["patch"], 4), "replace_s_per_step": round(med["replace"], 4),
        "replace_first_step_s": round(first_replace, 4), "speedup": round(med["patch"] / med["replace"], 3),
        "max_abs_diff": float((out_r.float() - out_p.float()).abs().max()),
        "projection_calls": kv_patch.projection_calls, "layers": len(layout),
    }))


if __name__ == "__main__":
    main()
