"""Reference states: the tokens captured from a ReferenceNet, and the paper's mixing.

A *state* is the input of a transformer block's self-attention (``norm1(x)``),
``[B, N_l, C_l]`` per layer.  States are keyed by the diffusers module name of the
ReferenceNet ``attn1`` layer they were captured at
(``down_blocks.0.attentions.0.transformer_blocks.0.attn1``) and kept in forward order
(down, mid, up), so that both backends (diffusers and ComfyUI) can address them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

_BLOCK_RE = re.compile(
    r"^(?P<kind>down_blocks|mid_block|up_blocks)(?:\.(?P<block>\d+))?\.attentions\.(?P<attn>\d+)"
    r"\.transformer_blocks\.(?P<tb>\d+)\.attn1$"
)
_KIND_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def parse_attn1_name(name: str) -> tuple[str, int, int, int]:
    """Split an ``attn1`` module name into (kind, block, attention, transformer block)."""
    match = _BLOCK_RE.match(name)
    if match is None:
        raise ValueError(
            f"{name!r} is not the name of a UNet self-attention layer "
            "(expected e.g. 'down_blocks.1.attentions.0.transformer_blocks.0.attn1')"
        )
    block = int(match["block"]) if match["block"] is not None else 0
    return match["kind"], block, int(match["attn"]), int(match["tb"])


ROUTING_MODES = ("as_trained", "per_layer")


def route_states(unet_layers: list[str], mode: str = "as_trained") -> dict[str, str]:
    """Map each UNet ``attn1`` layer to the ReferenceNet layer whose state it reads.

    ``as_trained``: every attention of a block reads the state of the ReferenceNet's
    *first* attention of the same block (``...attentions.0.transformer_blocks.t``): this
    is how the published weights were trained.  ``per_layer``: each layer reads its own
    counterpart, as the paper's prose describes.
    """
    if mode not in ROUTING_MODES:
        raise ValueError(f"unknown state routing {mode!r}: choose one of {ROUTING_MODES}")
    routing = {}
    for name in unet_layers:
        if mode == "per_layer":
            routing[name] = name
            continue
        kind, block, _attn, tb = parse_attn1_name(name)
        prefix = "mid_block" if kind == "mid_block" else f"{kind}.{block}"
        routing[name] = f"{prefix}.attentions.0.transformer_blocks.{tb}.attn1"
    return routing


def forward_order_key(name: str) -> tuple[int, int, int, int]:
    """Sort key giving the order in which a UNet forward pass visits its attn1 layers."""
    kind, block, attn, tb = parse_attn1_name(name)
    return _KIND_ORDER[kind], block, attn, tb


def sorted_in_forward_order(names) -> list[str]:
    return sorted(names, key=forward_order_key)


def mix_embeds(embeds: torch.Tensor, degree: float) -> torch.Tensor:
    """Eq. 1: ``Z' = (1-d)·Z`` (the unconditional embedding is zero)."""
    return (1.0 - degree) * embeds


def mix_states(cond: torch.Tensor, uncond: torch.Tensor, degree: float) -> torch.Tensor:
    """Eq. 2: ``S' = (1-d)·S_cond + d·S_uncond``; ``d > 1`` extrapolates past "no identity"."""
    return (1.0 - degree) * cond + degree * uncond


def expand_batch(tensor: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """Broadcast a batch of 1 to ``batch``; any other mismatch is an error naming both sizes."""
    if tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(batch, *tensor.shape[1:])
    raise ValueError(
        f"{what} has a batch of {tensor.shape[0]} but {batch} images are being processed: "
        "pass one image (it is used for every image) or exactly one per image"
    )


class CaptureComplete(Exception):
    """Raised inside a ReferenceNet forward once every needed state is recorded."""


class StateCapture:
    """The states of one ReferenceNet forward, recorded by whatever hook the host offers.

    Both backends feed it: the diffusers "write" processor and ComfyUI's ``attn1_patch`` call
    :meth:`record` with the layer's diffusers name. After the last wanted layer in forward order it
    raises :class:`CaptureComplete` (with ``stop_early``): the layers after it never influence the
    states, so they need not run.
    """

    def __init__(self, layer_names, stop_early: bool = True):
        names = sorted_in_forward_order(set(layer_names))
        if not names:
            raise ValueError("no reference layers to capture")
        self.wanted = frozenset(names)
        self.last = names[-1]
        self.stop_early = stop_early
        self.states: dict[str, torch.Tensor] = {}

    def record(self, name: str, state: torch.Tensor) -> None:
        if name not in self.wanted:
            return
        self.states[name] = state
        if self.stop_early and name == self.last:
            raise CaptureComplete

    def result(self) -> dict[str, torch.Tensor]:
        """The recorded states in forward order; an error if the forward missed a wanted layer."""
        missing = sorted(self.wanted - set(self.states))
        if missing:
            raise RuntimeError(f"the ReferenceNet forward did not reach the layer(s) {missing}")
        return {name: self.states[name] for name in sorted_in_forward_order(self.states)}


@dataclass(frozen=True)
class StatesMeta:
    """What a capture was made with; it travels with the states so that the nodes can check their wiring.

    ``role``: the ReferenceNet that captured them (``"source"``/``"driving"``; None when not known, e.g.
    states built by hand). ``routing``: the routing mode the layers were captured for (None: ``as_trained``).
    ``embed_degree``: the degree of Eq. 1 the ReferenceNet saw. ``degree``: the degree of Eq. 2 once
    :meth:`ReferenceStates.mixed` applied it (None: not mixed).
    """

    role: str | None = None
    routing: str | None = None
    embed_degree: float = 0.0
    degree: float | None = None

    @classmethod
    def from_dict(cls, data: Mapping) -> StatesMeta:
        """From a saved states file; files from 0.2 and earlier held the degrees as strings (``"0.5"``)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown reference-states metadata {unknown}; expected some of {sorted(known)}")
        values = dict(data)
        for name in ("embed_degree", "degree"):
            if values.get(name) is not None:
                values[name] = float(values[name])
        return cls(**values)


@dataclass
class ReferenceStates:
    """Per-layer states of one ReferenceNet for a batch of images.

    ``cond`` holds the states of the real images (for the source side possibly already
    mixed with Eq. 2); ``uncond`` the states of the unconditional branch (zero latents,
    zero embedding).  ``uncond`` is image independent, so it usually has a batch of 1.
    """

    cond: dict[str, torch.Tensor]
    uncond: dict[str, torch.Tensor] | None = None
    meta: StatesMeta = field(default_factory=StatesMeta)

    def __post_init__(self):
        if not isinstance(self.meta, StatesMeta):
            raise TypeError(f"meta must be a StatesMeta, not {type(self.meta).__name__}")
        order = sorted_in_forward_order(self.cond)
        self.cond = {name: self.cond[name] for name in order}
        if self.uncond is not None:
            if set(self.uncond) != set(self.cond):
                missing = sorted(set(self.cond) ^ set(self.uncond))
                raise ValueError(f"conditional and unconditional states cover different layers: {missing}")
            self.uncond = {name: self.uncond[name] for name in order}

    @property
    def layer_names(self) -> list[str]:
        return list(self.cond)

    def _comfy_cache_tensors(self) -> list[torch.Tensor]:
        """What ComfyUI's RAM-pressure output cache (newest ComfyUI) counts for a cached FACEANON_STATES."""
        return [*self.cond.values(), *(self.uncond or {}).values()]

    @property
    def batch_size(self) -> int:
        return next(iter(self.cond.values())).shape[0]

    def mixed(self, degree: float) -> ReferenceStates:
        """Apply Eq. 2 to the conditional states; the unconditional ones are kept for CFG."""
        if self.uncond is None:
            raise ValueError("these states have no unconditional branch, so the degree cannot be applied")
        cond = {name: mix_states(self.cond[name], self.uncond[name], degree) for name in self.cond}
        return ReferenceStates(cond=cond, uncond=self.uncond, meta=replace(self.meta, degree=float(degree)))

    def to(self, device=None, dtype=None) -> ReferenceStates:
        def move(states):
            if states is None:
                return None
            return {k: v.to(device=device, dtype=dtype) for k, v in states.items()}

        return ReferenceStates(cond=move(self.cond), uncond=move(self.uncond), meta=self.meta)

    def select(self, index) -> ReferenceStates:
        """A sub-batch of the conditional states (the unconditional ones are shared)."""
        cond = {k: v[index] for k, v in self.cond.items()}
        return ReferenceStates(cond=cond, uncond=self.uncond, meta=self.meta)

    def save(self, path: str | os.PathLike) -> None:
        """Write to a ``.safetensors`` file atomically (temporary file, then rename)."""
        from safetensors.torch import save_file

        tensors = {f"cond/{k}": v.contiguous().cpu() for k, v in self.cond.items()}
        if self.uncond is not None:
            tensors.update({f"uncond/{k}": v.contiguous().cpu() for k, v in self.uncond.items()})
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata={"faceanon_states": json.dumps(asdict(self.meta))})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReferenceStates:
        from safetensors import safe_open

        cond, uncond = {}, {}
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if "faceanon_states" not in metadata:
                raise ValueError(f"{path} is not a reference-states file written by faceanon (no metadata)")
            for key in handle.keys():  # noqa: SIM118 (safe_open is no dict)
                part, name = key.split("/", 1)
                (cond if part == "cond" else uncond)[name] = handle.get_tensor(key)
        meta = StatesMeta.from_dict(json.loads(metadata["faceanon_states"]))
        return cls(cond=cond, uncond=uncond or None, meta=meta)
