"""The pack's socket types in ComfyUI's V3 node API (``comfy_api.latest.io``) and the inputs several nodes share.

The type names (``FACEANON_REFNET``...) are a public API: saved workflows store them on every link.
The tooltips are the README's words for each input (the "Nodes" table and workflows/README.md).
"""

from __future__ import annotations

import inspect

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
