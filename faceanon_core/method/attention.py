"""Reference attention on stock diffusers: "write" and "read" attention processors.

The UNet's self-attention takes its queries from its own tokens and its keys/values
from ``[own, source state, driving state]`` along the token axis.  The authors' code
uses all three as queries and keeps the first third of the output; each query row is
independent, so queries from the own tokens alone give the same result at a third of
the cost (proved by ``tests/method/test_attention.py``).  The reference keys/values do not
depend on the timestep, so they are projected once per sampling run and cached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from .states import (  # noqa: F401  (ROUTING_MODES, route_states: their old import path)
    ROUTING_MODES,
    CaptureComplete,
    StateCapture,
    route_states,
    sorted_in_forward_order,
)


def attn1_names(unet: torch.nn.Module) -> list[str]:
    """Names of the self-attention layers of the transformer blocks, in forward order."""
    names = [
        name
        for name, module in unet.named_modules()
        if name.endswith("attn1") and isinstance(module, Attention) and ".transformer_blocks." in name
    ]
    return sorted_in_forward_order(names)


def _heads(attn: Attention, tensor: torch.Tensor) -> torch.Tensor:
    batch, tokens, inner = tensor.shape
    return tensor.view(batch, tokens, attn.heads, inner // attn.heads).transpose(1, 2)


def _finish(attn: Attention, out: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, head_dim = out.shape
    out = out.transpose(1, 2).reshape(batch, tokens, heads * head_dim)
    out = attn.to_out[1](attn.to_out[0](out))
    return out / attn.rescale_output_factor


def _check_plain(attn: Attention) -> None:
    if attn.group_norm is not None or attn.spatial_norm is not None or attn.residual_connection:
        raise ValueError("reference attention supports only plain transformer self-attention layers")
    if attn.norm_q is not None or attn.norm_k is not None:
        raise ValueError("reference attention does not support query/key normalisation layers")


def project_reference(attn: Attention, reference_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of the reference tokens, split into heads: computed once per run."""
    return _heads(attn, attn.to_k(reference_tokens)), _heads(attn, attn.to_v(reference_tokens))


def reference_attention(
    attn: Attention, hidden_states: torch.Tensor, ref_key: torch.Tensor, ref_value: torch.Tensor
) -> torch.Tensor:
    """Queries from the own tokens; keys/values ``[own, reference]`` (reference already projected)."""
    _check_plain(attn)
    query = _heads(attn, attn.to_q(hidden_states))
    key = torch.cat([_heads(attn, attn.to_k(hidden_states)), ref_key.to(query.dtype)], dim=2)
    value = torch.cat([_heads(attn, attn.to_v(hidden_states)), ref_value.to(query.dtype)], dim=2)
    out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
    return _finish(attn, out)


def reference_attention_naive(
    attn: Attention, hidden_states: torch.Tensor, source_state: torch.Tensor, driving_state: torch.Tensor
) -> torch.Tensor:
    """The authors' formulation: all 3N tokens as queries, keys and values; keep the first third.

    Kept as the numerical reference for tests and the speed benchmark.
    """
    _check_plain(attn)
    tokens = hidden_states.shape[1]
    joint = torch.cat([hidden_states, source_state.to(hidden_states.dtype), driving_state.to(hidden_states.dtype)], 1)
    query, key, value = (_heads(attn, proj(joint)) for proj in (attn.to_q, attn.to_k, attn.to_v))
    out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
    return _finish(attn, out[:, :, :tokens])


class StateRecorder:
    """"Write" processor: hands the input of ``attn1`` (= ``norm1(x)``) to a :class:`StateCapture`,
    then attends normally (unless the capture has all it needs and stops the forward)."""

    def __init__(self, name: str, capture: StateCapture):
        self.name, self.capture = name, capture
        self._plain = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        self.capture.record(self.name, hidden_states)
        return self._plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def capture_states(
    refnet: torch.nn.Module,
    latents: torch.Tensor,
    embeds: torch.Tensor,
    layer_names: list[str],
    timestep: int = 0,
) -> dict[str, torch.Tensor]:
    """Run a ReferenceNet once at ``timestep`` and return the states of ``layer_names``.

    The processors installed for the capture are removed again afterwards, whatever happens.
    Gradients flow when the caller enables them (the trainer does; inference wraps it in
    ``torch.no_grad``).
    """
    available = set(attn1_names(refnet))
    missing = [n for n in sorted_in_forward_order(layer_names) if n not in available]
    if missing:
        raise ValueError(f"the ReferenceNet has no self-attention layer(s) {missing}: does it match the UNet?")
    capture = StateCapture(layer_names)
    original = refnet.attn_processors
    processors = dict(original)
    for name in capture.wanted:
        processors[f"{name}.processor"] = StateRecorder(name, capture)
    refnet.set_attn_processor(processors)
    try:
        refnet(latents, timestep, encoder_hidden_states=embeds, return_dict=False)
    except CaptureComplete:
        pass
    finally:
        refnet.set_attn_processor(original)
    return capture.result()


class ReferenceContext:
    """The reference tokens of one sampling run, shared by all "read" processors.

    ``tokens[ref_layer]`` is ``[batch, N_src + N_drv, C]`` in the row order of the UNet
    batch.  Projected keys/values are cached per UNet layer, since each UNet layer has
    its own projections, and dropped at the end of the run.
    """

    def __init__(self):
        self.tokens: dict[str, torch.Tensor] | None = None
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.cache_projections = True

    def begin(self, tokens: dict[str, torch.Tensor]) -> None:
        self.tokens, self._cache = tokens, {}

    def end(self) -> None:
        self.tokens, self._cache = None, {}

    def keys_values(self, layer: str, ref_layer: str, attn: Attention):
        if self.tokens is None:
            raise RuntimeError(
                "the UNet was called without reference states: use FaceAnonPipeline, or "
                "ReferenceContext.begin() before calling the UNet directly"
            )
        cached = self._cache.get(layer)
        if cached is None:
            cached = project_reference(attn, self.tokens[ref_layer])
            if self.cache_projections:
                self._cache[layer] = cached
        return cached


class ReferenceReader:
    """"Read" processor for a UNet ``attn1`` layer: extends keys/values with reference tokens."""

    def __init__(self, name: str, ref_layer: str, context: ReferenceContext):
        self.name, self.ref_layer, self.context = name, ref_layer, context

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(f"{self.name}: reference self-attention takes no context and no mask")
        key, value = self.context.keys_values(self.name, self.ref_layer, attn)
        if key.shape[0] != hidden_states.shape[0]:
            raise ValueError(
                f"{self.name}: {hidden_states.shape[0]} UNet rows but reference states for {key.shape[0]}"
            )
        return reference_attention(attn, hidden_states, key, value)


def install_readers(unet: torch.nn.Module, routing: dict[str, str], context: ReferenceContext,
                    reader_cls=None) -> None:
    """Give every routed UNet ``attn1`` a read processor; all other layers keep theirs."""
    reader_cls = reader_cls or ReferenceReader
    processors = dict(unet.attn_processors)
    for layer, ref_layer in routing.items():
        processors[f"{layer}.processor"] = reader_cls(layer, ref_layer, context)
    unet.set_attn_processor(processors)


class NaiveReferenceReader(ReferenceReader):
    """The authors' formulation as a processor (all tokens as queries, no key/value cache).

    Only for the equivalence tests and the speed benchmark's baseline.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        tokens = self.context.tokens[self.ref_layer].to(hidden_states.dtype)
        half = tokens.shape[1] // 2
        return reference_attention_naive(attn, hidden_states, tokens[:, :half], tokens[:, half:])

