"""The dual-reference method as ComfyUI patches, in pure torch (imports no ComfyUI: unit-testable without the host).

The nodes in this folder are thin adapters around these pieces:

* :class:`StateRecorder`: an ``attn1_patch`` that hands ``n = norm1(x)`` (the state) of the needed
  layers to the same :class:`~faceanon_core.method.states.StateCapture` the diffusers backend uses,
  stopping the ReferenceNet forward at t = 0 after the last state that is used.
* :func:`reference_rows` and :class:`ReferenceKVPatch`: the ``attn1`` replace of the dual-reference
  sampler: keys/values ``[own, source, driving]``, the source side chosen per batch row from
  ``extra_options["cond_or_uncond"]``, the reference keys/values projected once per sampling run.
  :class:`ReferencePatch`: the same as an ``attn1_patch`` (extended context, projected by ComfyUI at
  every step), the fallback when another node owns a replace.
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


def mix_captured(states: ReferenceStates, embeds: torch.Tensor, degree: float):
    """The mixing node: Eq. 2 on captured states, Eq. 1 on the embeddings.

    The source ReferenceNet must have seen ``Z' = (1-d)·Z`` already (Eq. 1 comes before it), so
    states captured with a different degree, or mixed twice, are an error.
    """
    if "degree" in states.meta:
        raise ValueError(f"these states are already mixed (degree {states.meta['degree']}); mix captured states once")
    captured = float(states.meta.get("embed_degree", "0.0"))
    if abs(captured - float(degree)) > 1e-6:
        raise ValueError(
            f"the states were captured with degree {captured:g} but are mixed with degree {float(degree):g}: "
            "set the same degree on the capture node (Eq. 1 is applied before the ReferenceNet runs)"
        )
    resolve_batch({"the states": states.batch_size, "the embeddings": embeds.shape[0]})
    return states.mixed(float(degree)), mix_embeds(embeds, float(degree))


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

    ComfyUI projects only the own tokens (``q``, ``k``, ``v`` of ``context_attn1``); this appends
    the reference keys/values of the rows' ``[source, driving]`` tokens, projected with that
    layer's own ``to_k``/``to_v`` **once per sampling run** and cached, as the core does
    (:class:`faceanon_core.method.attention.ReferenceContext`). Same result as :class:`ReferencePatch`
    (whose extended context ComfyUI projects again at every step).

    ``projections``: layer key -> ``(to_k, to_v)`` callables (the UNet's modules, called so that
    ComfyUI's casting/offloading applies). ``attention``: ``(q, k, v, heads, **kw)`` on
    ``[B, N, heads*d]`` tensors (ComfyUI's ``optimized_attention`` in the node). The cache is
    keyed by layer, ``cond_or_uncond`` pattern, row count, device and dtype (low-memory
    single-chunk calls get their own entry); :meth:`clear` (end of the run) and :meth:`to` drop it.
    One object serves every layer and is shared, not copied, by ``ModelPatcher.clone()``.
    """

    def __init__(self, layout: dict[LayerKey, str], routing: dict[str, str], source: ReferenceStates,
                 driving: ReferenceStates, projections: dict, attention=None):
        super().__init__(layout, routing, source, driving)
        missing = sorted(set(layout) - set(projections))
        if missing:
            raise ValueError(f"no to_k/to_v projections for the UNet layer(s) {missing[:3]}")
        self.projections = dict(projections)
        self.attention = attention or sdpa_attention
        self._kv: dict = {}
        self.projection_calls = 0  # reference projections done (for tests and logging)

    def to(self, device):
        super().to(device)
        self._kv = {}
        return self

    def clear(self) -> None:
        """Drop the cached keys/values and casts (end of the sampling run)."""
        self._kv, self._cast = {}, {}

    def reference_kv(self, q: torch.Tensor, extra_options: dict) -> tuple[torch.Tensor, torch.Tensor]:
        key, layer = self._layer(extra_options)
        chunks = tuple(int(c) for c in extra_options["cond_or_uncond"])
        cache_key = (key, chunks, q.shape[0], q.device, q.dtype)
        kv = self._kv.get(cache_key)
        if kv is None:
            to_k, to_v = self.projections[key]
            tokens = self._rows(layer, extra_options, q)
            width = getattr(to_k, "in_features", tokens.shape[-1])
            if tokens.shape[-1] != width:
                raise ValueError(f"{layer}: reference states have {tokens.shape[-1]} channels, the UNet {width}")
            kv = (to_k(tokens), to_v(tokens))
            self.projection_calls += 1
            self._kv[cache_key] = kv
        return kv

    def __call__(self, q, k, v, extra_options):
        ref_k, ref_v = self.reference_kv(q, extra_options)
        k = torch.cat([k, ref_k.to(k.dtype)], dim=1)
        v = torch.cat([v, ref_v.to(v.dtype)], dim=1)
        return self.attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
                              transformer_options=extra_options)


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
