"""Cost of the identity-leak guard per face, as a share of the anonymization itself.

Verification of one face = two dlib embeddings (the original face, once; the output face,
once per try), measured on this CPU. Anonymization, measured in the same run:

- ``tiny``: the tiny random test model through ``FaceAnonPipeline.anonymize`` (64 px, 2 steps),
  a lower bound that mostly measures Python and scheduling overhead;
- ``sd21``: one denoising step of a full-size SD 2.1-shaped random UNet with our reference
  attention (512 px, batch 2 for guidance), the realistic per-step cost; a whole face costs
  about ``steps + 1.5`` such steps (the ReferenceNets run once per image at t = 0).

    python -m benchmarks.verify_speed                 # CPU
    python -m benchmarks.verify_speed --device cuda   # the UNet on the GPU, dlib on the CPU
    python -m benchmarks.verify_speed --no-sd21       # quick: tiny model only

Prints one JSON line. Needs the ``verify`` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from helpers.faces import astronaut


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def verify_cost(repeat: int) -> float:
    from faceanon_core.faces import default_detector
    from faceanon_core.privacy.identity import default_recognizer

    rec = default_recognizer()
    img = astronaut()
    lm = default_detector().detect(img)[0].landmarks5
    rec.embed(img, [lm])  # warm-up
    return 2 * best_of(lambda: rec.embed(img, [lm]), repeat)


def tiny_cost(repeat: int) -> float:
    from faceanon_core import FaceAnonPipeline
    from faceanon_core.testing.tiny_models import TINY_IMAGE_SIZE, write_tiny_model_folder

    with tempfile.TemporaryDirectory() as tmp:
        pipe = FaceAnonPipeline.from_pretrained(write_tiny_model_folder(tmp, seed=0))
    pipe.set_progress_bar_config(disable=True)
    face = torch.rand(1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    run = lambda: pipe.anonymize(face, degree=1.25, num_inference_steps=2, height=TINY_IMAGE_SIZE,  # noqa: E731
                                 width=TINY_IMAGE_SIZE, output_type="np", generator=torch.Generator().manual_seed(0))
    run()
    return best_of(run, repeat)


def sd21_step_cost(size: int, device: torch.device, repeat: int) -> float:
    from diffusers import UNet2DConditionModel

    from benchmarks.step_speed import SD21_UNET, reference_tokens
    from faceanon_core.method.attention import (
        ReferenceContext,
        ReferenceReader,
        attn1_names,
        install_readers,
        route_states,
    )

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD21_UNET).to(device, dtype).eval()
    routing = route_states(attn1_names(unet), "as_trained")
    latent, batch = size // 8, 2
    gen = torch.Generator().manual_seed(0)
    tokens = reference_tokens(unet, routing, latent, batch, dtype, device, gen)
    x = torch.randn(batch, 4, latent, latent, generator=gen).to(device, dtype)
    context = torch.randn(batch, 2, 1024, generator=gen).to(device, dtype)
    ctx = ReferenceContext()
    install_readers(unet, routing, ctx, reader_cls=ReferenceReader)
    ctx.begin(tokens)

    def step():
        with torch.no_grad():
            unet(x, torch.tensor(500), encoder_hidden_states=context)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up, fills the reference key/value cache as a real run's first step does
    return best_of(step, repeat)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", type=int, default=512, help="SD 2.1 step resolution (default 512)")
    ap.add_argument("--device", default="cpu", help="device for the anonymization models (default cpu)")
    ap.add_argument("--steps", type=int, default=50, help="steps of a whole anonymization (CLI default 50)")
    ap.add_argument("--no-sd21", action="store_true", help="skip the full-size UNet step")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    verify = verify_cost(args.repeat)
    tiny = tiny_cost(args.repeat)
    out = {
        "benchmark": "verify_speed", "device": str(device), "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "verify_s_per_face": round(verify, 4),
        "tiny_anonymize_s_per_face": round(tiny, 4), "verify_share_of_tiny": round(verify / tiny, 3),
    }
    if not args.no_sd21:
        step = sd21_step_cost(args.size, device, max(1, min(args.repeat, 2)))
        whole = (args.steps + 1.5) * step
        out.update({
            "sd21_size": args.size, "sd21_s_per_step": round(step, 4),
            "verify_share_of_one_sd21_step": round(verify / step, 3),
            f"sd21_s_per_face_{args.steps}_steps_est": round(whole, 2),
            f"verify_share_of_{args.steps}_step_anonymization": round(verify / whole, 4),
        })
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
