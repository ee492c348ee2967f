"""The dual-reference method as ComfyUI patches, in pure torch (imports no ComfyUI: unit-testable without the host).

The nodes in this folder are thin adapters around these pieces:

* :class:`StateRecorder`: an ``attn1_patch`` that hands ``n = norm1(x)`` (the state) of the needed
  layers to the same :class:`~faceanon_core.method.states.StateCapture` the diffusers backend uses,
  stopping the ReferenceNet forward at t = 0 after the last state that is used.
* :func:`reference_rows` and :class:`ReferenceKVPatch`: the ``attn1`` replace of the dual-reference
  sampler: keys/values ``[own, source, driving]``, the source side chosen per batch row from
  ``extra_options["cond_or_uncond"]``, the reference keys/values projected once per sampling run and
  cached once per distinct tensor (:meth:`ReferenceKVPatch.memory_bytes` for ComfyUI's memory
  estimate), optionally only inside a sigma range. :class:`StackedReplace`: ours and another node's
  replace on the same layer. :class:`ReferencePatch`: the same method as an ``attn1_patch``
  (extended context, projected by ComfyUI at every step), the reference the tests compare with.
* :func:`pooled_clip`: CLIP's pooled output (post-layernorm CLS) from the last hidden state.
* :func:`seeded_noise`, :func:`resolve_batch`, :func:`sampler_conditioning`, :func:`resize_images`.

The method's maths (routing, Eq. 1, Eq. 2, batch broadcasting) is reused from
:mod:`faceanon_core.method`.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from ..faceanon_core.method.states import (
    CaptureComplete,
    ReferenceStates,
    StateCapture,
    expand_batch,
    mix_embeds,
)
from .comfy_layout import LayerKey, layer_key

logger = logging.getLogger(__name__)

#: The name the nodes catch; the same exception the diffusers backend stops a capture with.
CaptureDone = CaptureComplete


# ------------------------------------------------------------------------ capture


class StateRecorder:
    """``attn1_patch`` recording ``n`` (= ``norm1(x)``, the state) of the needed layers.

    ``wanted``: ComfyUI layer key -> diffusers name. The recording itself (which layers, stopping
    after the last one in forward order, the missing-layer check) is :class:`StateCapture`'s.
    """

    def __init__(self, wanted: dict[LayerKey, str], stop_early: bool = True):
        self.wanted = dict(wanted)
        self.capture = StateCapture(self.wanted.values(), stop_early=stop_early)

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        name = self.wanted.get(layer_key(extra_options))
        if name is not None:
            self.capture.record(name, n.detach())
        return n, context_attn1, value_attn1

    def result(self) -> dict[str, torch.Tensor]:
        return self.capture.result()


def split_capture(states: dict[str, torch.Tensor], batch: int) -> tuple[dict, dict]:
    """A capture of ``batch`` image rows followed by one unconditional row -> (cond, uncond)."""
    cond = {k: v[:batch] for k, v in states.items()}
    uncond = {k: v[batch:batch + 1] for k, v in states.items()}
    return cond, uncond


def capture_inputs(latents: torch.Tensor, embeds: torch.Tensor, degree: float):
    """ReferenceNet inputs: the images (context ``Z' = (1-d)·Z``, Eq. 1) plus one
    unconditional row (zero latents, zero embedding) appended at the end."""
    context = mix_embeds(embeds, degree)
    x = torch.cat([latents, torch.zeros_like(latents[:1])])
    c = torch.cat([context, torch.zeros_like(context[:1])])
    return x, c


#: The Mix node's ``degree`` meaning "the degree the states were captured with" (its default).
FROM_CAPTURE = -1.0


def captured_degree(states: ReferenceStates) -> float:
    """The degree a capture was made with (Eq. 1 before the ReferenceNet): a property of the states."""
    return float(states.meta.get("embed_degree", "0.0"))


def mix_captured(states: ReferenceStates, embeds: torch.Tensor, degree: float | None = None):
    """The mixing node: Eq. 2 on captured states, Eq. 1 on the embeddings, with the states' own degree.

    The source ReferenceNet saw ``Z' = (1-d)·Z`` already (Eq. 1 comes before it), so the degree is
    the capture's. ``degree`` (the Mix node's input, kept for saved workflows) is checked:
    ``None`` or :data:`FROM_CAPTURE` take the capture's, any other value must equal it.
    """
    if "degree" in states.meta:
        raise ValueError(f"these states are already mixed (degree {states.meta['degree']}); mix captured states once")
    captured = captured_degree(states)
    if degree is not None and float(degree) != FROM_CAPTURE and abs(captured - float(degree)) > 1e-6:
        raise ValueError(
            f"the states were captured with degree {captured:g} but Mix States says {float(degree):g}: the degree "
            f"is set once, on the source capture node; set Mix States' degree to {FROM_CAPTURE:g} (use the "
            f"capture's) or to {captured:g}"
        )
    resolve_batch({"the states": states.batch_size, "the embeddings": embeds.shape[0]})
    return states.mixed(captured), mix_embeds(embeds, captured)


def check_source_degree(states: ReferenceStates) -> None:
    """Sampling needs Eq. 2 applied to states captured with a degree (else the identity side is half-done)."""
    captured = captured_degree(states)
    if captured != 0.0 and "degree" not in states.meta:
        raise ValueError(f"the source states were captured with degree {captured:g} but never mixed: connect them "
                         "through FaceAnon Mix States (Eq. 2) and use its states and embeds outputs")


def check_driving_degree(states: ReferenceStates) -> None:
    """The driving ReferenceNet always sees the real image (degree 0)."""
    captured = captured_degree(states)
    if captured != 0.0 or "degree" in states.meta:
        raise ValueError(f"the driving states were captured or mixed with degree "
                         f"{states.meta.get('degree', captured)}: the driving side keeps the real image, use "
                         "degree 0 on its capture node and no Mix States")


# ------------------------------------------------------------------------ sampling


def resolve_batch(sizes: dict[str, int]) -> int:
    """The batch every input broadcasts to: sizes of 1 broadcast, any other mismatch is an error."""
    batch = max(sizes.values())
    for what, size in sizes.items():
        if size not in (1, batch):
            other = next(k for k, v in sizes.items() if v == batch)
            raise ValueError(f"{what} has a batch of {size} but {other} has {batch}: "
                             "pass one item (used for every image) or exactly one per image")
    return batch


def sampler_conditioning(source_embeds: torch.Tensor, driving_embeds: torch.Tensor, batch: int):
    """Positive ``[Z'_src, Z_drv]`` and negative ``[0, Z_drv]`` cross-attention contexts, ``[B, 2, C]``."""
    src = expand_batch(source_embeds, batch, "the source embedding")
    drv = expand_batch(driving_embeds, batch, "the driving embedding")
    positive = torch.cat([src, drv], dim=1)
    negative = torch.cat([torch.zeros_like(src), drv], dim=1)
    return positive, negative


def seeded_noise(shape, seed: int, per_image: bool = False) -> torch.Tensor:
    """Initial noise on the CPU.

    Default: one noise image from ``seed`` shared by the whole batch, so that a given seed and
    degree give the same anonymous identity in every frame of a clip (and a frame gets the same
    result whatever batch it is processed in). ``per_image``: ComfyUI's usual consecutive draws.
    """
    shape = tuple(shape)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    if per_image:
        return torch.randn(shape, generator=generator, device="cpu")
    one = torch.randn((1,) + shape[1:], generator=generator, device="cpu")
    return one.expand(shape).contiguous()


def reference_rows(cond_or_uncond, rows: int, source_cond: torch.Tensor, source_uncond: torch.Tensor,
                   driving: torch.Tensor) -> torch.Tensor:
    """Reference tokens ``[rows, N_src + N_drv, C]`` for one UNet call.

    ComfyUI stacks one chunk of B rows per entry of ``cond_or_uncond`` (0 = positive, 1 =
    negative). Positive rows get the (mixed) source states ``S'``, negative rows ``S_uncond``;
    both get the driving states. Each state tensor has a batch of 1 or B.
    """
    chunks = list(cond_or_uncond)
    if not chunks or rows % len(chunks):
        raise ValueError(f"{rows} attention rows cannot be split into the {len(chunks)} chunks {chunks}")
    batch = rows // len(chunks)
    src = expand_batch(source_cond, batch, "the source states")
    unc = expand_batch(source_uncond, batch, "the unconditional source states")
    drv = expand_batch(driving, batch, "the driving states")
    per_chunk = {0: torch.cat([src, drv], dim=1), 1: torch.cat([unc, drv], dim=1)}
    for c in chunks:
        if c not in per_chunk:
            raise ValueError(f"unknown cond_or_uncond flag {c!r}")
    return torch.cat([per_chunk[c] for c in chunks])


class ReferencePatch:
    """The dual-reference ``attn1_patch``: keys/values ``[own(+earlier patches), source, driving]``.

    Queries stay the UNet's own tokens. The reference layer of each UNet layer comes from
    ``routing`` (as trained: the ReferenceNet's first attention of the same block).
    The object is shared, not copied, by ``ModelPatcher.clone()`` (states are read-only).
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
        self._cast: dict = {}

    def __deepcopy__(self, memo):
        return self

    def to(self, device):
        for states in (self.source_cond, self.source_uncond, self.driving):
            for k in states:
                states[k] = states[k].to(device)
        self._cast = {}
        return self

    def _tensor(self, which: dict, name: str, like: torch.Tensor) -> torch.Tensor:
        key = (id(which), name, like.device, like.dtype)
        t = self._cast.get(key)
        if t is None:
            t = which[name].to(device=like.device, dtype=like.dtype)
            self._cast[key] = t
        return t

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

    def _rows(self, layer: str, extra_options: dict, like: torch.Tensor) -> torch.Tensor:
        ref = self.routing[layer]
        return reference_rows(extra_options["cond_or_uncond"], like.shape[0], self._tensor(self.source_cond, ref, like),
                              self._tensor(self.source_uncond, ref, like), self._tensor(self.driving, ref, like))

    def tokens(self, n: torch.Tensor, extra_options: dict) -> torch.Tensor:
        _key, layer = self._layer(extra_options)
        tokens = self._rows(layer, extra_options, n)
        if tokens.shape[-1] != n.shape[-1]:
            raise ValueError(f"{layer}: reference states have {tokens.shape[-1]} channels, the UNet {n.shape[-1]}")
        return tokens

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        tokens = self.tokens(n, extra_options)
        context = n if context_attn1 is None else context_attn1
        value = context if value_attn1 is None else value_attn1
        return n, torch.cat([context, tokens], dim=1), torch.cat([value, tokens], dim=1)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, **_kw) -> torch.Tensor:
    """``[B, N, heads*d]`` attention with SDPA: the pure-torch stand-in for ComfyUI's ``optimized_attention``."""
    b, _, inner = q.shape
    d = inner // heads
    split = lambda t: t.reshape(b, -1, heads, d).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, -1, inner)


class ReferenceKVPatch(ReferencePatch):
    """The dual-reference ``attn1`` *replace* callable: ``(q, k, v, extra_options) -> attention``.

    ComfyUI projects only the own tokens (``q``, ``k``, ``v`` of ``context_attn1``, including whatever
    earlier ``attn1_patch`` entries put there); this appends the reference keys/values of the rows'
    ``[source, driving]`` tokens, projected with that layer's own ``to_k``/``to_v`` **once per
    sampling run** and cached, as the core does (:class:`faceanon_core.method.attention.ReferenceContext`).
    Same result as :class:`ReferencePatch` (whose extended context ComfyUI projects at every step).

    The cache holds each distinct tensor once per layer: the source ``S'`` (batch 1 or B), the
    unconditional source ``S_uncond`` (batch 1) and the driving states (batch 1 or B), projected in one
    call. CFG rows, broadcast batches and low-memory single-chunk calls are assembled from it per call,
    never stored again (:meth:`memory_bytes` is what ComfyUI's memory estimate is told).

    ``projections``: layer key -> ``(to_k, to_v)`` callables (the UNet's modules, called so that
    ComfyUI's casting/offloading applies). ``attention``: ``(q, k, v, heads, **kw)`` on
    ``[B, N, heads*d]`` tensors (ComfyUI's ``optimized_attention`` in the node). ``sigma_range``:
    ``(sigma_start, sigma_end)``; at a sigma outside it the layer attends to its own tokens only
    (``extra_options["sigmas"]``, as IPAdapter's start/end percent). ``inner``: called instead of
    ``attention`` with the extended k/v (another node's replace that was there first, see
    :class:`StackedReplace`). :meth:`clear` (end of the run) and :meth:`to` drop the cache. One object
    serves every layer and is shared, not copied, by ``ModelPatcher.clone()``.
    """

    def __init__(self, layout: dict[LayerKey, str], routing: dict[str, str], source: ReferenceStates,
                 driving: ReferenceStates, projections: dict, attention=None, sigma_range=None):
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
        self.attention = attention or sdpa_attention
        self.sigma_range = sigma_range
        self._kv: dict = {}
        self.projection_calls = 0  # layers whose reference K/V were projected (for tests and logging)

    def to(self, device):
        """States stay where they are (cast on the fly for the one projection); the cache is dropped."""
        self._kv, self._cast = {}, {}
        return self

    def clear(self) -> None:
        """Drop the cached keys/values and casts (end of the sampling run)."""
        self._kv, self._cast = {}, {}

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
        for what, t in tensors.items():
            if t.shape[-1] != width:
                raise ValueError(f"{layer}: reference states have {t.shape[-1]} channels, the UNet {width}")
        tensors = {what: t.to(device=like.device, dtype=like.dtype) for what, t in tensors.items()}
        shapes = {tuple(t.shape[1:]) for t in tensors.values()}
        if len(shapes) == 1:  # one projection call for the three (the usual case: same token count)
            sizes = [t.shape[0] for t in tensors.values()]
            stacked = torch.cat(list(tensors.values()))
            ks, vs = to_k(stacked).split(sizes), to_v(stacked).split(sizes)
            parts = {what: (k, v) for what, k, v in zip(tensors, ks, vs)}
        else:
            parts = {what: (to_k(t), to_v(t)) for what, t in tensors.items()}
        self.projection_calls += 1
        self._kv[cache_key] = parts
        return parts

    @staticmethod
    def _extended(own: torch.Tensor, parts: dict, index: int, chunks: list) -> torch.Tensor:
        """``[own | source or uncond | driving]`` along the tokens for each chunk of rows, in one allocation."""
        rows, n_own, width = own.shape
        batch = rows // len(chunks)
        src, unc, drv = (parts[w][index] for w in ("source", "uncond", "driving"))
        if src.shape[-1] != width:
            raise ValueError(f"the reference keys have {src.shape[-1]} channels, the UNet's {width}")
        n_src = src.shape[1]
        out = own.new_empty((rows, n_own + n_src + drv.shape[1], width))
        out[:, :n_own] = own
        for i, flag in enumerate(chunks):
            rows_i = slice(i * batch, (i + 1) * batch)
            side = src if flag == 0 else unc
            out[rows_i, n_own:n_own + n_src] = expand_batch(side, batch, "the source states" if flag == 0 else
                                                            "the unconditional source states")
            out[rows_i, n_own + n_src:] = expand_batch(drv, batch, "the driving states")
        return out

    def reference_kv(self, q: torch.Tensor, extra_options: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference keys/values ``[rows, N_src + N_drv, C]`` of this call (assembled from the cache)."""
        key, layer = self._layer(extra_options)
        chunks = self._chunks(extra_options, q.shape[0])
        parts = self._distinct(key, layer, q)
        rows = q.shape[0]
        k = self._extended(q.new_empty((rows, 0, parts["source"][0].shape[-1])), parts, 0, chunks)
        v = self._extended(q.new_empty((rows, 0, parts["source"][1].shape[-1])), parts, 1, chunks)
        return k, v

    @staticmethod
    def _chunks(extra_options: dict, rows: int) -> list[int]:
        chunks = [int(c) for c in extra_options["cond_or_uncond"]]
        if not chunks or rows % len(chunks):
            raise ValueError(f"{rows} attention rows cannot be split into the {len(chunks)} chunks {chunks}")
        bad = [c for c in chunks if c not in (0, 1)]
        if bad:
            raise ValueError(f"unknown cond_or_uncond flag {bad[0]!r}")
        return chunks

    def __call__(self, q, k, v, extra_options, inner=None):
        key, layer = self._layer(extra_options)
        if self.active(extra_options):
            chunks = self._chunks(extra_options, q.shape[0])
            parts = self._distinct(key, layer, q)
            k = self._extended(k, parts, 0, chunks)
            v = self._extended(v, parts, 1, chunks)
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

    def cached_bytes(self) -> int:
        """Bytes the cache holds now (for tests and logging)."""
        return sum(t.numel() * t.element_size() for parts in self._kv.values() for kv in parts.values() for t in kv)


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


# ------------------------------------------------------------------------ images / CLIP


def pooled_clip(last_hidden_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """CLIP ``pooler_output`` = post-layernorm of the CLS token (before the projection), ``[B, 1, C]``."""
    cls = last_hidden_state[:, 0].float()
    pooled = F.layer_norm(cls, (cls.shape[-1],), weight.float().to(cls.device), bias.float().to(cls.device), eps)
    return pooled.unsqueeze(1)


def resize_images(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """ComfyUI ``IMAGE`` ``[B,H,W,C]`` -> ``[B,height,width,3]`` (bicubic, antialiased, as the core)."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an IMAGE batch [B,H,W,C], got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("the IMAGE batch is empty")
    images = images[..., :3] if images.shape[-1] >= 3 else images.expand(-1, -1, -1, 3)
    if not torch.isfinite(images).all():
        raise ValueError("the image holds NaN or infinite values")
    if tuple(images.shape[1:3]) == (height, width):
        return images.float().contiguous()
    logger.info("FaceAnon: resizing %d image(s) from %dx%d to the model's %dx%d", images.shape[0],
                images.shape[2], images.shape[1], width, height)
    x = images.float().movedim(-1, 1)
    x = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return x.clamp(0, 1).movedim(1, -1).contiguous()


def latent_hw(resolution: int, factor: int = 8) -> int:
    if resolution % factor:
        raise ValueError(f"resolution {resolution} is not a multiple of {factor}")
    return resolution // factor


def is_finite_number(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
