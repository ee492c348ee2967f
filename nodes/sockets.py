"""The pack's socket types in ComfyUI's V3 node API (``comfy_api.latest.io``) and the inputs several nodes share.

The type names (``FACEANON_REFNET``...) are a public API: saved workflows store them on every link.
The tooltips are the README's words for each input (the "Nodes" table and workflows/README.md).
"""

from __future__ import annotations

import inspect

import comfy.samplers
from comfy_api.latest import io

CATEGORY = "FaceAnon"
CATEGORY_FACES = f"{CATEGORY}/faces"  # detect, paste back, redact, verify
CATEGORY_METHOD = f"{CATEGORY}/method"  # the diffusion method: loader, one-node samplers, building blocks
CATEGORY_VIDEO = f"{CATEGORY}/video"  # tracks across frames

RefNet = io.Custom("FACEANON_REFNET")
Embeds = io.Custom("FACEANON_EMBEDS")
States = io.Custom("FACEANON_STATES")
Faces = io.Custom("FACEANON_FACES")

TOOLTIPS = {
    "model": "The FaceAnon UNet: the MODEL output of the FaceAnon Model Loader.",
    "source_refnet": "source_refnet of the FaceAnon Model Loader: the ReferenceNet of the identity side.",
    "driving_refnet": "driving_refnet of the FaceAnon Model Loader: the ReferenceNet of pose, expression and "
                      "background.",
    "vae": "The SD 2.x VAE: the loader's vae, or ComfyUI's Load VAE when the model folder has no vae/.",
    "clip_vision": "CLIP ViT-L/14 vision: the loader's clip_vision, or ComfyUI's Load CLIP Vision when the model "
                   "folder has no image_encoder/.",
    "threshold": "MTCNN's confidence for a face (its last stage): lower finds more faces, and more false ones.",
    "crop_size": "Side of the aligned square crops in pixels (FFHQ-like alignment; the model works at 512).",
    "faces_from_detect": "The faces output of Detect & Align Faces (or of Track Faces for video).",
}


def model_inputs() -> list:
    """The five model inputs of the all-in-one nodes (the FaceAnon Model Loader's outputs, in its order)."""
    return [
        io.Model.Input("model", tooltip=TOOLTIPS["model"]),
        RefNet.Input("source_refnet", tooltip=TOOLTIPS["source_refnet"]),
        RefNet.Input("driving_refnet", tooltip=TOOLTIPS["driving_refnet"]),
        io.Vae.Input("vae", tooltip=TOOLTIPS["vae"]),
        io.ClipVision.Input("clip_vision", tooltip=TOOLTIPS["clip_vision"]),
    ]


REFERENCE_TOOLTIPS = {
    "model": "The FaceAnon UNet (MODEL of the FaceAnon Model Loader); other model patches may come before or "
             "after this node.",
    "source_states": "States of the source ReferenceNet (ReferenceNet Capture with the source_refnet, then Mix "
                     "States with the degree): the identity side, S' for the positive and S_uncond for the "
                     "negative rows.",
    "source_embeds": "Source embedding Z' = (1-d)·Z (the embeds output of Mix States; the CLIP embedding itself "
                     "for a face swap at degree 0).",
    "driving_states": "States of the driving ReferenceNet (ReferenceNet Capture with the driving_refnet, degree "
                      "0): pose, expression and background.",
    "driving_embeds": "CLIP embedding of the driving image (FaceAnon CLIP Image Encode).",
    "start_percent": "Where in the sampling the references start to apply (0 = from the first step). Outside "
                     "start/end each layer attends to its own tokens only.",
    "end_percent": "Where the references stop applying (1 = until the last step).",
}


def reference_inputs() -> list:
    """model and the four reference inputs of Apply References and the Dual-Reference KSampler."""
    t = REFERENCE_TOOLTIPS
    return [
        io.Model.Input("model", tooltip=t["model"]),
        States.Input("source_states", tooltip=t["source_states"]),
        Embeds.Input("source_embeds", tooltip=t["source_embeds"]),
        States.Input("driving_states", tooltip=t["driving_states"]),
        Embeds.Input("driving_embeds", tooltip=t["driving_embeds"]),
    ]


def sampling_inputs() -> list:
    """seed, steps, cfg, sampler_name, scheduler: KSampler's inputs, in its order."""
    return [
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Seed of the initial noise: with the degree it picks the anonymous identity."),
        io.Int.Input("steps", default=30, min=1, max=1000, tooltip="Sampling steps; 25-50 are enough for photos."),
        io.Float.Input("cfg", default=4.0, min=0.0, max=30.0, step=0.1, round=0.01,
                       tooltip="Guidance scale g between the positive (S', Z') and negative (S_uncond, 0) rows; "
                               "paper 4."),
        io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler", tooltip=(
            "Any ComfyUI sampler; deterministic ones (euler, dpmpp_2m, ddim) keep video frames consistent.")),
        io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                       tooltip="Any ComfyUI scheduler."),
    ]


def threshold_input() -> io.Float.Input:
    return io.Float.Input("threshold", default=0.95, min=0.5, max=0.999, step=0.005, tooltip=TOOLTIPS["threshold"])


def crop_size_input() -> io.Int.Input:
    return io.Int.Input("crop_size", default=512, min=64, max=2048, step=64, tooltip=TOOLTIPS["crop_size"])


def check_choices(node: type, **values) -> bool | str:
    """``validate_inputs`` of a node with choice inputs: each value must be one of the input's options.

    ComfyUI's prompt validation checks only V1 combos (a list as the type); a V3 combo ("COMBO", options in
    the dict) is let through as it is in 0.3.64, and KSampler then runs an unknown sampler_name as its first
    sampler without a word. A value that is None is a linked input, checked by the node that makes it.
    """
    schema = node.define_schema()
    for spec in schema.inputs:
        if not isinstance(spec, io.Combo.Input) or spec.id not in values or values[spec.id] is None:
            continue
        options = list(spec.options or [])
        if values[spec.id] not in options:
            shown = options if len(options) <= 20 else options[:8] + [f"... ({len(options)} choices)"]
            return f"Value not in list: {spec.id}: {values[spec.id]!r} not in {shown}"
    return True


def _takes(callable_, name: str) -> bool:
    try:
        return name in inspect.signature(callable_).parameters
    except (TypeError, ValueError):
        return False


#: Optional Schema fields of newer ComfyUI versions; left out where the running one lacks them (0.3.64 raises
#: TypeError on an unknown field).
NEWER_SCHEMA_FIELDS = ("search_aliases",)


def schema(**fields) -> io.Schema:
    """``io.Schema`` with only the fields this ComfyUI knows (feature-detected, not version-compared)."""
    for name in NEWER_SCHEMA_FIELDS:
        if name in fields and not _takes(io.Schema, name):
            del fields[name]
    return io.Schema(**fields)


def advanced(input_class, *args, **kwargs):
    """An input shown among the node's advanced inputs where this ComfyUI has them (``advanced=True``)."""
    if _takes(input_class, "advanced"):
        kwargs["advanced"] = True
    return input_class(*args, **kwargs)
