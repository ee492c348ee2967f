"""The dual-reference attention as a ComfyUI ``attn1`` replace, and its stacking (pure torch, imports no ComfyUI).

* :class:`ReferenceSet`: the states one patched MODEL reads (checked once: the unconditional branch, every routed
  layer present), per UNet layer through ``routing`` (as trained: the ReferenceNet's first attention of the
  same block).
* :class:`ReferenceKVPatch`: the ``attn1`` replace of the dual-reference sampler: keys/values ``[own, source,
  driving]``, the source side chosen per batch row from ``extra_options["cond_or_uncond"]`` (:func:`extend_rows`),
  the reference keys/values projected once per sampling run and cached once per distinct tensor
  (:meth:`ReferenceKVPatch.memory_bytes` for ComfyUI's memory estimate), optionally only inside a sigma range.
* :class:`StackedReplace` and :func:`owner_of`: ours and another node's replace on the same layer.

Where it is installed on a MODEL (ComfyUI's patcher, wrappers, memory estimate) is :mod:`.patching`.
"""

from __future__ import annotations

import math

import torch

from ...faceanon_core.method.states import ReferenceStates, expand_batch
from .layout import LayerKey, layer_key


def check_chunks(cond_or_uncond, rows: int) -> list[int]:
    """ComfyUI's ``cond_or_uncond`` (0 = positive, 1 = negative chunk of rows), checked against ``rows``."""
    chunks = [int(c) for c in cond_or_uncond]
    if not chunks or rows % len(chunks):
        raise ValueError(f"{rows} attention rows cannot be split into the {len(chunks)} chunks {chunks}")
    bad = [c for c in chunks if c not in (0, 1)]
    if bad:
        raise ValueError(f"unknown cond_or_uncond flag {bad[0]!r}")
    return chunks


def extend_rows(own: torch.Tensor, source: torch.Tensor, uncond: torch.Tensor, driving: torch.Tensor,
                chunks: list[int]) -> torch.Tensor:
    """``[own | source or uncond | driving]`` along the tokens for each chunk of rows, in one allocation.

    ComfyUI stacks one chunk of B rows per entry of ``chunks`` (0 = positive, 1 = negative). Positive rows get
    the (mixed) source ``S'``, negative rows ``S_uncond``; both get the driving side. Each reference tensor has a
    batch of 1 or B."""
    rows, n_own, width = own.shape
    batch = rows // len(chunks)
    if source.shape[-1] != width:
        raise ValueError(f"the reference keys have {source.shape[-1]} channels, the UNet's {width}")
    n_src = source.shape[1]
    out = own.new_empty((rows, n_own + n_src + driving.shape[1], width))
    out[:, :n_own] = own
    for i, flag in enumerate(chunks):
        rows_i = slice(i * batch, (i + 1) * batch)
        side = source if flag == 0 else uncond
        out[rows_i, n_own:n_own + n_src] = expand_batch(side, batch, "the source states" if flag == 0 else
                                                        "the unconditional source states")
        out[rows_i, n_own + n_src:] = expand_batch(driving, batch, "the driving states")
    return out


class ReferenceSet:
    """The reference states a patched MODEL reads: the source ``S'`` and ``S_uncond`` and the driving states of
    every layer ``routing`` names (as trained: the ReferenceNet's first attention of the same block), checked once.
    Shared, not copied, by ``ModelPatcher.clone()`` (states are read-only).
    """

    def __init__(self, layout: dict[LayerKey, str], routing: dict[str, str], source: ReferenceStates,
                 driving: ReferenceStates):
        if source.uncond is None:
            raise ValueError("the source states have no unconditional branch: capture them with the "
                             "FaceAnon ReferenceNet capture node")
        needed = set(routing.values())
        for what, states in (("source", source), ("driving", driving)):
            missing = sorted(needed - set(states.cond))
            if missing:
                raise ValueError(f"the {what} states lack the layer(s) {missing[:3]} this UNet reads: were they "
                                 "captured with the ReferenceNets of the same model folder?")
        self.layout = dict(layout)
        self.routing = dict(routing)
        self.source_cond = {k: source.cond[k] for k in needed}
        self.source_uncond = {k: source.uncond[k] for k in needed}
        self.driving = {k: driving.cond[k] for k in needed}

    def __deepcopy__(self, memo):
        return self

    def _layer(self, extra_options: dict) -> tuple[LayerKey, str]:
        key = layer_key(extra_options)
        layer = self.layout.get(key)
        if layer is None:
            raise ValueError(f"UNet layer {key} is not in this model's layout: the MODEL does not match the "
                             "FaceAnon reference states")
        if "cond_or_uncond" not in extra_options:
            raise ValueError("the UNet was called outside ComfyUI sampling (no cond_or_uncond): FaceAnon "
                             "cannot tell conditional from unconditional rows")
        return key, layer


class ReferenceKVPatch(ReferenceSet):
    """The dual-reference ``attn1`` *replace* callable: ``(q, k, v, extra_options) -> attention``.

    ComfyUI projects only the own tokens (``q``, ``k``, ``v`` of ``context_attn1``, including whatever
    earlier ``attn1_patch`` entries put there); this appends the reference keys/values of the rows'
    ``[source, driving]`` tokens, projected with that layer's own ``to_k``/``to_v`` **once per
    sampling run** and cached, as the core does (:class:`faceanon_core.method.attention.ReferenceContext`).

    The cache holds each distinct tensor once per layer: the source ``S'`` (batch 1 or B), the
    unconditional source ``S_uncond`` (batch 1) and the driving states (batch 1 or B), projected in one
    call. CFG rows, broadcast batches and low-memory single-chunk calls are assembled from it per call,
    never stored again (:meth:`memory_bytes` is what ComfyUI's memory estimate is told).

    ``projections``: layer key -> ``(to_k, to_v)`` callables (the UNet's modules, called so that
    ComfyUI's casting/offloading applies). ``attention``: ``(q, k, v, heads, **kw)`` on
    ``[B, N, heads*d]`` tensors (ComfyUI's ``optimized_attention``, :mod:`.patching`). ``sigma_range``:
    ``(sigma_start, sigma_end)``; at a sigma outside it the layer attends to its own tokens only
    (``extra_options["sigmas"]``, as IPAdapter's start/end percent). ``inner``: called instead of
    ``attention`` with the extended k/v (another node's replace that was there first, see
    :class:`StackedReplace`). :meth:`clear` (end of the run) and :meth:`to` drop the cache. One object
    serves every layer and is shared, not copied, by ``ModelPatcher.clone()``.
    """

    def __init__(self, layout: dict[LayerKey, str], routing: dict[str, str], source: ReferenceStates,
                 driving: ReferenceStates, projections: dict, attention, sigma_range=None):
        super().__init__(layout, routing, source, driving)
        missing = sorted(set(layout) - set(projections))
        if missing:
            raise ValueError(f"no to_k/to_v projections for the UNet layer(s) {missing[:3]}")
        if sigma_range is not None:
            start, end = (float(s) for s in sigma_range)
            if not (math.isfinite(end) and end <= start):
                raise ValueError(f"the sigma range starts at {start:g} and ends at {end:g}: start_percent must "
                                 "not be after end_percent")
            sigma_range = (start, end)
        self.projections = dict(projections)
        self.attention = attention
        self.sigma_range = sigma_range
        self._kv: dict = {}
        self.projection_calls = 0  # layers whose reference K/V were projected (logged at the end of a run)

    def to(self, device):
        """States stay where they are (cast on the fly for the one projection); the cache is dropped."""
        self._kv = {}
        return self

    def clear(self) -> None:
        """Drop the cached keys/values (end of the sampling run)."""
        self._kv = {}

    def active(self, extra_options: dict) -> bool:
        """Whether the references apply at this call's sigma (always without a range or without sigmas)."""
        sigmas = extra_options.get("sigmas")
        if self.sigma_range is None or sigmas is None:
            return True
        sigma = float(torch.as_tensor(sigmas).detach().max())
        start, end = self.sigma_range
        return end <= sigma <= start

    def _distinct(self, key: LayerKey, layer: str, like: torch.Tensor) -> dict:
        """``{"source"|"uncond"|"driving": (K, V)}`` of this layer, projected once per run and device/dtype."""
        cache_key = (key, like.device, like.dtype)
        parts = self._kv.get(cache_key)
        if parts is not None:
            return parts
        ref = self.routing[layer]
        to_k, to_v = self.projections[key]
        tensors = {"source": self.source_cond[ref], "uncond": self.source_uncond[ref], "driving": self.driving[ref]}
        width = getattr(to_k, "in_features", like.shape[-1])
        for t in tensors.values():
            if t.shape[-1] != width:
                raise ValueError(f"{layer}: reference states have {t.shape[-1]} channels, the UNet {width}")
        tensors = {what: t.to(device=like.device, dtype=like.dtype) for what, t in tensors.items()}
        shapes = {tuple(t.shape[1:]) for t in tensors.values()}
        if len(shapes) == 1:  # one projection call for the three (the usual case: same token count)
            sizes = [t.shape[0] for t in tensors.values()]
            stacked = torch.cat(list(tensors.values()))
            ks, vs = to_k(stacked).split(sizes), to_v(stacked).split(sizes)
            parts = {what: (k, v) for what, k, v in zip(tensors, ks, vs, strict=True)}
        else:
            parts = {what: (to_k(t), to_v(t)) for what, t in tensors.items()}
        self.projection_calls += 1
        self._kv[cache_key] = parts
        return parts

    @staticmethod
    def _side(parts: dict, index: int) -> tuple:
        """The source, unconditional and driving keys (index 0) or values (index 1) of a layer's cache."""
        return tuple(parts[w][index] for w in ("source", "uncond", "driving"))

    def __call__(self, q, k, v, extra_options, inner=None):
        key, layer = self._layer(extra_options)
        if self.active(extra_options):
            chunks = check_chunks(extra_options["cond_or_uncond"], q.shape[0])
            parts = self._distinct(key, layer, q)
            k = extend_rows(k, *self._side(parts, 0), chunks)
            v = extend_rows(v, *self._side(parts, 1), chunks)
        if inner is not None:
            return inner(q, k, v, extra_options)
        return self.attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
                              transformer_options=extra_options)

    def memory_bytes(self, rows: int, element_size: int) -> int:
        """What the references add to a UNet call of ``rows`` rows: the cache (every layer's distinct
        K/V, kept for the run) plus the largest layer's assembled reference K/V of one call."""
        cache, per_call = 0, 0
        for key, layer in self.layout.items():
            ref = self.routing[layer]
            to_k, _to_v = self.projections[key]
            src, unc, drv = self.source_cond[ref], self.source_uncond[ref], self.driving[ref]
            width = int(getattr(to_k, "out_features", src.shape[-1]))
            distinct = sum(t.shape[0] * t.shape[1] for t in (src, unc, drv))
            cache += 2 * distinct * width
            per_call = max(per_call, 2 * rows * (src.shape[1] + drv.shape[1]) * width)
        return (cache + per_call) * int(element_size)


class StackedReplace:
    """Our ``attn1`` replace on a layer where another node's replace is installed too.

    ComfyUI keeps one replace per layer; this keeps both: ours extends the keys/values with the
    references, the other one (``inner``, e.g. an attention recorder) then computes the attention
    on them. Shared, not copied, by ``ModelPatcher.clone()``; ``to`` is forwarded to both.
    """

    def __init__(self, patch: ReferenceKVPatch, inner):
        if not callable(inner):
            raise ValueError(f"the attn1 replace already installed ({type(inner).__name__}) is not callable")
        self.patch = patch
        self.inner = inner

    def __call__(self, q, k, v, extra_options):
        return self.patch(q, k, v, extra_options, inner=self.inner)

    def __deepcopy__(self, memo):
        return self

    def to(self, device):
        self.patch.to(device)
        if hasattr(self.inner, "to"):
            self.inner = self.inner.to(device)
        return self

    def models(self):
        return self.inner.models() if hasattr(self.inner, "models") else []


def owner_of(replace) -> ReferenceKVPatch | None:
    """The FaceAnon patch behind an ``attn1`` replace entry (ours or ours stacked over another), else None."""
    if isinstance(replace, ReferenceKVPatch):
        return replace
    if isinstance(replace, StackedReplace):
        return replace.patch
    return None
