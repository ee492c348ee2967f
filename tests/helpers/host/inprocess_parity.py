"""The in-process parity checks, run by COMFYUI_PYTHON (ComfyUI's own environment) as a child of pytest.

ComfyUI imports packages that the test environment need not have (torchvision, einops, ...), so the
parts of the host tests that import ComfyUI itself run here, in the host's interpreter, and hand back
plain numbers as JSON (the last stdout line, after ``RESULT``):

    python -m helpers.host.inprocess_parity sigmas SCHEDULER STEPS     -> ComfyUI's sigma schedule (a list)
    python -m helpers.host.inprocess_parity noise TINY_FOLDER          -> {check: max |diff|} of one UNet call

``run_inprocess`` starts it with this checkout and tests/ first on the path (the pack, faceanon_core,
the helpers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HOST_DIR = Path(__file__).resolve().parent
REPO = HOST_DIR.parents[2]


def run_inprocess(*args: str, timeout: float = 600):
    """Run this script with COMFYUI_PYTHON and return its JSON result (raises with its output on failure)."""
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HOST_DIR.parents[1]),
                                         *filter(None, [os.environ.get("PYTHONPATH")])])
    done = subprocess.run([python, "-m", "helpers.host.inprocess_parity", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=str(REPO), start_new_session=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"{python} {Path(__file__).name} {' '.join(args)} exited with {done.returncode}:\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def sigmas(scheduler: str, steps: int) -> list[float]:
    from helpers.host.comfy_inprocess import import_comfy

    import_comfy()
    import comfy.model_sampling
    import comfy.samplers

    class Config:
        sampling_settings = {}

    sampling = comfy.model_sampling.ModelSamplingDiscrete(Config())
    return [float(s) for s in comfy.samplers.calculate_sigmas(sampling, scheduler, steps)]


def noise_prediction_diffs(tiny_folder: Path) -> dict[str, float]:
    """One UNet call at t = 500 through ComfyUI's apply_model with the pack's patches vs the core pipeline."""
    import numpy as np
    import torch

    from helpers.host.comfy_inprocess import PACK_NAME, import_pack
    from helpers.host.server import test_images

    import_pack()
    import folder_paths

    from faceanon_core import FaceAnonPipeline

    folder_paths.add_model_folder_path("faceanon", str(tiny_folder.parent))
    from importlib import import_module

    from helpers.reference_attn1_patch import reference_patch

    comfy_layout = import_module(f"{PACK_NAME}.nodes.backend.layout")
    attention = import_module(f"{PACK_NAME}.nodes.backend.attention")
    batching = import_module(f"{PACK_NAME}.nodes.backend.batching")
    loading = import_module(f"{PACK_NAME}.nodes.backend.loading")
    encoding = import_module(f"{PACK_NAME}.nodes.backend.encoding")
    mixing = import_module(f"{PACK_NAME}.nodes.backend.mixing")
    patching = import_module(f"{PACK_NAME}.nodes.backend.patching")

    core_pipe = FaceAnonPipeline.from_pretrained(tiny_folder)
    core_pipe.set_progress_bar_config(disable=True)
    unet, src_refnet, drv_refnet, vae, clip = loading.load_model_folder(tiny_folder.name)
    images = test_images(3, 0)
    pixels = torch.from_numpy(images.astype(np.float32) / 255)
    degree, g = 1.25, 4.0

    # node path
    embeds = encoding.encode_embeds(clip, pixels)
    latents = encoding.encode_latents(src_refnet, vae, pixels)
    src = encoding.capture_from_latents(src_refnet, latents, embeds, degree)
    src, src_embeds = mixing.mix_captured(src, embeds, degree)
    drv = encoding.capture_from_latents(drv_refnet, latents, embeds, 0.0)

    # core path
    px = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    core_embeds = core_pipe.encode_image_embeds(px)
    core_latents = core_pipe.encode_latents(px)
    core_src = core_pipe.source_states(core_latents, core_embeds, degree)
    core_drv = core_pipe.reference_states(core_pipe.conditioning_referencenet, core_latents, core_embeds)
    diffs = {
        "clip embeds": float((embeds - core_embeds).abs().max()),
        "vae latents": float((latents - core_latents).abs().max()),
        "source states": max(float((src.cond[k] - core_src.cond[k]).abs().max()) for k in core_src.cond),
        "uncond states": max(float((src.uncond[k] - core_src.uncond[k]).abs().max()) for k in core_src.cond),
        "driving states": max(float((drv.cond[k] - core_drv[k]).abs().max()) for k in core_drv),
    }

    # one UNet call at t = 500 through ComfyUI's apply_model with the patch, rows [uncond; cond]
    layout = comfy_layout.attn1_layout(unet.model.model_config.unet_config)
    routing, _ = comfy_layout.routed_layers(layout, "as_trained")
    positive, negative = batching.sampler_conditioning(src_embeds, embeds, 3)
    sampling = unet.model.model_sampling
    sigma = sampling.sigma(torch.tensor([500.0])).repeat(6)
    x = torch.randn(3, 4, 8, 8, generator=torch.manual_seed(0)) * (sigma[0] ** 2 + 1) ** 0.5
    import comfy.model_management as mm

    # the sampler node's path: attn1 replace with cached reference K/V (installed on a clone, as the node does)
    patched = unet.clone()
    kv_patch = patching.install_reference_patch(patched, layout, routing, src, drv)
    assert isinstance(kv_patch, attention.ReferenceKVPatch), type(kv_patch)
    replace_options = dict(patched.model_options["transformer_options"], cond_or_uncond=[1, 0])
    # the fallback path: attn1_patch, ComfyUI projects the extended context
    patch_options = {"patches": {"attn1_patch": [reference_patch(attention, layout, routing, src, drv)]},
                     "cond_or_uncond": [1, 0]}

    mm.load_models_gpu([patched])
    with torch.no_grad():
        guided_by = {}
        for name, options in (("replace", replace_options), ("attn1_patch", patch_options)):
            denoised = unet.model.apply_model(torch.cat([x, x]), sigma, c_crossattn=torch.cat([negative, positive]),
                                              transformer_options=options)
            uncond, cond = denoised.chunk(2)
            guided_by[name] = uncond + g * (cond - uncond)
        guided = guided_by["replace"]
        diffs["K/V projection calls per layer"] = float(kv_patch.projection_calls - len(layout))
        kv_patch.clear()

        tokens, context = core_pipe._reference_tokens(core_src, core_drv, src_embeds, embeds, 3, True,
                                                      torch.float32)
        a = 1 / (sigma[0] ** 2 + 1) ** 0.5
        x_t = x * a
        core_pipe.reference_context.begin(tokens)
        try:
            v = core_pipe.unet(torch.cat([x_t, x_t]), 500, encoder_hidden_states=context, return_dict=False)[0]
        finally:
            core_pipe.reference_context.end()
        v_uncond, v_cond = v.chunk(2)
        v_guided = (1 - g) * v_uncond + g * v_cond
        core_x0 = a * x_t - sigma[0] * a * v_guided
    diffs["denoised (cfg 4) at t=500"] = float((guided - core_x0).abs().max())
    diffs["attn1_patch path at t=500"] = float((guided_by["attn1_patch"] - core_x0).abs().max())
    diffs["replace vs attn1_patch"] = float((guided - guided_by["attn1_patch"]).abs().max())
    return diffs


def main(argv: list[str]) -> None:
    if argv[0] == "sigmas":
        result = sigmas(argv[1], int(argv[2]))
    elif argv[0] == "noise":
        result = noise_prediction_diffs(Path(argv[1]))
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
