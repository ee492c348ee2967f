"""Test-only references for the nodes' attention patch (nothing in the product uses them).

* :func:`sdpa_attention`: ``[B, N, heads*d]`` attention with SDPA, the pure-torch stand-in for ComfyUI's
  ``optimized_attention``.
* :func:`reference_patch`: the dual-reference method as an ``attn1_patch`` (the extended context, projected by
  ComfyUI at every step): the slow, obvious form that :class:`ReferenceKVPatch` (the ``attn1`` replace with
  keys/values projected once per run) is compared with, on the stand-in here and in the host parity test.

Both take the pack's backend as it is imported (``nodes.backend.attention``), so they run against the pack
under test, in process or inside a host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, **_kw) -> torch.Tensor:
    b, _, inner = q.shape
    d = inner // heads
    split = lambda t: t.reshape(b, -1, heads, d).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, -1, inner)


def reference_rows(attention, cond_or_uncond, rows: int, source_cond, source_uncond, driving) -> torch.Tensor:
    """The reference tokens ``[rows, N_src + N_drv, C]`` of one UNet call, assembled by the pack's own
    ``extend_rows`` (no own tokens): S' in the positive, S_uncond in the negative chunks, the driving states in
    both."""
    chunks = attention.check_chunks(cond_or_uncond, rows)
    own = source_cond.new_empty((rows, 0, source_cond.shape[-1]))
    return attention.extend_rows(own, source_cond, source_uncond, driving, chunks)


def cached_bytes(patch) -> int:
    """Bytes a ReferenceKVPatch's key/value cache holds now."""
    return sum(t.numel() * t.element_size() for parts in patch._kv.values() for kv in parts.values() for t in kv)


def reference_patch(attention, layout, routing, source, driving):
    """The ``attn1_patch`` form of the method over the pack's :class:`ReferenceSet` (``attention`` is the pack's
    ``nodes.backend.attention`` module): keys/values ``[own(+earlier patches), source, driving]``."""

    class ReferencePatch(attention.ReferenceSet):
        def __init__(self):
            super().__init__(layout, routing, source, driving)
            self._cast = {}

        def to(self, device):
            for states in (self.source_cond, self.source_uncond, self.driving):
                for k in states:
                    states[k] = states[k].to(device)
            self._cast = {}
            return self

        def _tensor(self, which: dict, name: str, like: torch.Tensor) -> torch.Tensor:
            key = (id(which), name, like.device, like.dtype)
            if key not in self._cast:
                self._cast[key] = which[name].to(device=like.device, dtype=like.dtype)
            return self._cast[key]

        def tokens(self, n: torch.Tensor, extra_options: dict) -> torch.Tensor:
            _key, layer = self._layer(extra_options)
            ref = self.routing[layer]
            tokens = reference_rows(attention, extra_options["cond_or_uncond"], n.shape[0],
                                    self._tensor(self.source_cond, ref, n), self._tensor(self.source_uncond, ref, n),
                                    self._tensor(self.driving, ref, n))
            if tokens.shape[-1] != n.shape[-1]:
                raise ValueError(f"{layer}: reference states have {tokens.shape[-1]} channels, the UNet "
                                 f"{n.shape[-1]}")
            return tokens

        def __call__(self, n, context_attn1, value_attn1, extra_options):
            tokens = self.tokens(n, extra_options)
            context = n if context_attn1 is None else context_attn1
            value = context if value_attn1 is None else value_attn1
            return n, torch.cat([context, tokens], dim=1), torch.cat([value, tokens], dim=1)

    return ReferencePatch()
