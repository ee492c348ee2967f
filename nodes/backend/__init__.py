"""The method's ComfyUI backend: what the node classes in ``nodes/`` run, one job per module.

Pure torch (no ComfyUI import; unit-tested without the host):

* :mod:`.layout`: diffusers configs -> ComfyUI's UNet/VAE configs, and the layer names that tie the two backends.
* :mod:`.capture`: the ReferenceNet state capture (an ``attn1_patch`` recorder).
* :mod:`.mixing`: the degree's bookkeeping on captured states (Eq. 1 before the capture, Eq. 2 after it).
* :mod:`.attention`: the dual-reference ``attn1`` replace (cached reference keys/values) and its stacking.
* :mod:`.batching`: batch broadcasting, the positive/negative conditioning, the seeded noise.
* :mod:`.images`: IMAGE conversions, CLIP's pooled output, the no-face placeholder.
* :mod:`.checks`: input checks, run once where an input enters a node.
* :mod:`.track_identity` and :mod:`.anonymize`: per-track identity and the all-in-one run (they import no ComfyUI
  themselves; they call the modules below).

On ComfyUI (its models, sampler, patcher and loaders):

* :mod:`.loading`: a FaceAnon model folder through ``comfy.sd``'s loaders.
* :mod:`.encoding`: CLIP, VAE and the ReferenceNet forward through ComfyUI's model management.
* :mod:`.patching`: the attention installed on a cloned MODEL (wrappers, memory estimate, stacking at run time).
* :mod:`.sampling`: dual-reference sampling with ``comfy.sample``; the :class:`~.sampling.Models` and
  :class:`~.sampling.SamplingSettings` bundles.

The method's maths (routing, Eq. 1, Eq. 2, batch broadcasting) is :mod:`faceanon_core.method`'s.
"""
