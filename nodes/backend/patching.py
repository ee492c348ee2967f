"""The dual-reference attention installed on a ComfyUI MODEL: a patched clone plus positive/negative CONDITIONING.

:func:`apply_references` clones the MODEL, installs the dual-reference attention
(:class:`.attention.ReferenceKVPatch`, an ``attn1`` replace per layer) and returns the
conditioning ``[Z'_src, Z_drv]`` / ``[0, Z_drv]``, so that stock KSampler, KSamplerAdvanced and
SamplerCustomAdvanced + CFGGuider sample the method (as IPAdapter and core's SAG patch a model): the
Apply References node. The Dual-Reference KSampler is this function followed by ComfyUI's own sampling.

Per sampling run an ``OUTER_SAMPLE`` wrapper (:class:`ReferenceRun`) checks the latent batch, stacks
over ``attn1`` replaces other nodes installed after ours, tells ComfyUI's memory estimate
(``memory_required``) what the reference keys/values take, and drops their cache at the end.
"""

from __future__ import annotations

import logging

import comfy.ldm.modules.attention
import comfy.model_management as mm
import comfy.patcher_extension
import torch

from ...faceanon_core.method.states import ReferenceStates
from . import layout as comfy_layout
from .attention import ReferenceKVPatch, StackedReplace, owner_of
from .batching import resolve_batch, sampler_conditioning
from .checks import check_fraction
from .mixing import check_driving_degree, check_source_degree

logger = logging.getLogger(__name__)

WRAPPER_KEY = "faceanon_references"

def _comfy_attention(q, k, v, heads, **kwargs):
    # looked up at call time: ComfyUI picks optimized_attention at startup (--use-pytorch-cross-attention, ...)
    return comfy.ldm.modules.attention.optimized_attention(q, k, v, heads, **kwargs)


def check_reference_inputs(model, source_states, source_embeds, driving_states, driving_embeds) -> tuple[dict, int]:
    """-> (the UNet config, the batch every input broadcasts to); clear errors for wrong connections."""
    for what, states, role in (("source_states", source_states, "source"),
                               ("driving_states", driving_states, "driving")):
        if not isinstance(states, ReferenceStates):
            raise ValueError(f"{what} must come from the FaceAnon ReferenceNet capture node")
        if states.meta.role not in (None, role):
            raise ValueError(f"{what} were captured with the {states.meta.role} ReferenceNet; "
                             f"connect the loader's {role}_refnet to that capture node")
    check_source_degree(source_states)
    check_driving_degree(driving_states)
    for what, embeds in (("source_embeds", source_embeds), ("driving_embeds", driving_embeds)):
        if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3:
            raise ValueError(f"{what} must be FACEANON_EMBEDS [B,1,C] (FaceAnon CLIP Image Encode or Mix States)")
    unet_config = getattr(getattr(getattr(model, "model", None), "model_config", None), "unet_config", None)
    if not unet_config or "transformer_depth" not in unet_config:
        raise ValueError("model must be the FaceAnon UNet (an SD-style UNet MODEL from the FaceAnon loader)")
    batch = resolve_batch({
        "the source states": source_states.batch_size, "the source embeddings": source_embeds.shape[0],
        "the driving states": driving_states.batch_size, "the driving embeddings": driving_embeds.shape[0]})
    if unet_config["context_dim"] != source_embeds.shape[-1] or source_embeds.shape[-1] != driving_embeds.shape[-1]:
        raise ValueError(f"embedding sizes {source_embeds.shape[-1]}/{driving_embeds.shape[-1]} do not match the "
                         f"UNet's context size {unet_config['context_dim']}")
    return unet_config, batch


def _attn1_replaces(model_options: dict) -> dict:
    return model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})


def refuse_multigpu(model) -> None:
    """The references are one set of tensors on one device and the patch sits on this model only: clones for
    other GPUs (newest ComfyUI's MultiGPU nodes) would sample without them or on the wrong device. Refused."""
    clones = getattr(model, "get_additional_models_with_key", lambda key: [])("multigpu")
    if clones:
        raise ValueError(f"this MODEL is set up for sampling on {len(clones) + 1} GPUs (a MultiGPU node); FaceAnon's "
                         "references run on one GPU: remove the MultiGPU node from this model's path")


class ReferenceRun:
    """``OUTER_SAMPLE`` wrapper of one patched MODEL: batch check, late stacking, memory accounting, cache life."""

    def __init__(self, patch: ReferenceKVPatch, layout: dict, batch: int, blocks_seen: set):
        self.patch = patch
        self.layout = dict(layout)
        self.batch = int(batch)
        self.blocks_seen = set(blocks_seen)  # block-level attn1 replaces that were there when ours went in

    def __deepcopy__(self, memo):
        return self

    def check_batch(self, latent_batch: int) -> None:
        if self.batch not in (1, latent_batch):
            raise ValueError(f"the latent has a batch of {latent_batch} but the FaceAnon references have "
                             f"{self.batch} images: use a latent with batch_size {self.batch} (one per driving "
                             "image), or references of one image")

    def restack(self, model_options: dict) -> None:
        """Keep replaces that nodes after ours installed on our layers: they run on the extended keys/values."""
        replaces = _attn1_replaces(model_options)
        for key in self.layout:
            current = replaces.get(key)
            owner = owner_of(current)
            if current is None:
                raise RuntimeError(f"FaceAnon's attention patch on UNet layer {key} was removed by a node after "
                                   "FaceAnon Apply References: the references would be silently missing")
            if owner is None:
                logger.info("FaceAnon: a later node replaced attn1 of %s; stacking over it", key)
                replaces[key] = StackedReplace(self.patch, current)
            elif owner is not self.patch:
                raise ValueError("this MODEL holds two sets of FaceAnon references: apply them once per model")
            elif key[:2] in replaces and key[:2] not in self.blocks_seen and not isinstance(
                    current, StackedReplace):
                logger.info("FaceAnon: a later node replaced attn1 of block %s; stacking over it", key[:2])
                replaces[key] = StackedReplace(self.patch, replaces[key[:2]])

    def __call__(self, executor, *args, **kwargs):
        noise = args[0] if args else kwargs["noise"]
        self.check_batch(int(noise.shape[0]))
        guider = executor.class_obj
        refuse_multigpu(guider.model_patcher)
        self.restack(guider.model_options)
        base = guider.model_patcher.model
        dtype = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
        size = mm.dtype_size(dtype)
        had = "memory_required" in vars(base)
        previous = vars(base).get("memory_required")
        estimate_without = base.memory_required
        patch = self.patch

        def memory_required(input_shape, cond_shapes={}):  # noqa: B006 (ComfyUI's own signature)
            return estimate_without(input_shape, cond_shapes=cond_shapes) + patch.memory_bytes(int(input_shape[0]),
                                                                                               size)

        base.memory_required = memory_required
        try:
            return executor(*args, **kwargs)
        finally:
            if had:
                base.memory_required = previous
            else:
                del base.memory_required
            self.patch.clear()  # the reference keys/values live for one sampling run


def install_reference_patch(patched, layout: dict, routing: dict, source_states: ReferenceStates,
                            driving_states: ReferenceStates, sigma_range=None, batch: int = 1):
    """Install the dual-reference attention on the (already cloned) MODEL ``patched``; -> the patch.

    An ``attn1`` replace per layer, projecting the reference keys/values once per run with that
    layer's own ``to_k``/``to_v``. A replace another node installed earlier is kept: ours extends
    the keys/values and then calls it (:class:`StackedReplace`); ``attn1_patch``
    entries run before any replace and are untouched.
    """
    replaces = _attn1_replaces(patched.model_options)
    if any(owner_of(r) is not None for r in replaces.values()):
        raise ValueError("this MODEL already has FaceAnon references (an earlier FaceAnon Apply References): "
                         "connect the loader's MODEL, or other patches only, to this node")
    projections = {}
    for key in layout:
        path = "diffusion_model." + comfy_layout.comfy_attn1_path(key)
        try:
            attn = patched.get_model_object(path)
        except AttributeError as e:
            raise ValueError(f"the MODEL has no {path}: it does not match the FaceAnon layout") from e
        if not (hasattr(attn, "to_k") and hasattr(attn, "to_v")):
            raise ValueError(f"{path} is not a self-attention module: the MODEL does not match the FaceAnon layout")
        projections[key] = (attn.to_k, attn.to_v)
    patch = ReferenceKVPatch(layout, routing, source_states, driving_states, projections,
                             attention=_comfy_attention, sigma_range=sigma_range)
    blocks_seen = {k for k in replaces if len(k) == 2}
    for key in layout:
        kind, number, index = key
        earlier = replaces.get(key, replaces.get(key[:2]))
        if earlier is not None:
            logger.info("FaceAnon: attn1 of %s is already replaced by %s; stacking over it", key,
                        type(earlier).__name__)
        patched.set_model_attn1_replace(patch if earlier is None else StackedReplace(patch, earlier),
                                        kind, number, index)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY,
                                 ReferenceRun(patch, layout, batch, blocks_seen))
    return patch


def sigma_range_of(model, start_percent: float, end_percent: float):
    """``(sigma_start, sigma_end)`` from sampling percents (None for the whole run, 0 -> 1)."""
    start_percent = check_fraction("start_percent", start_percent)
    end_percent = check_fraction("end_percent", end_percent)
    if float(start_percent) > float(end_percent):
        raise ValueError(f"start_percent {start_percent} is after end_percent {end_percent}")
    if float(start_percent) <= 0.0 and float(end_percent) >= 1.0:
        return None
    sampling = model.get_model_object("model_sampling")
    return sampling.percent_to_sigma(float(start_percent)), sampling.percent_to_sigma(float(end_percent))


def apply_references(model, source_states, source_embeds, driving_states, driving_embeds,
                     start_percent: float = 0.0, end_percent: float = 1.0):
    """-> (patched MODEL clone, positive, negative CONDITIONING, batch, patch)."""
    refuse_multigpu(model)
    unet_config, batch = check_reference_inputs(model, source_states, source_embeds, driving_states, driving_embeds)
    layout = comfy_layout.attn1_layout(unet_config)
    routing, _ = comfy_layout.routed_layers(layout, source_states.meta.routing or "as_trained")
    patched = model.clone()
    patch = install_reference_patch(patched, layout, routing, source_states, driving_states,
                                    sigma_range=sigma_range_of(model, start_percent, end_percent), batch=batch)
    positive, negative = sampler_conditioning(source_embeds, driving_embeds, batch)
    positive = [[positive.to(mm.intermediate_device()), {}]]
    negative = [[negative.to(mm.intermediate_device()), {}]]
    return patched, positive, negative, batch, patch
