"""Capture of the ReferenceNet states through ComfyUI's ``attn1_patch`` hook (pure torch, imports no ComfyUI).

:class:`StateRecorder` hands ``n = norm1(x)`` (the state) of the needed layers to the same
:class:`~faceanon_core.method.states.StateCapture` the diffusers backend uses, stopping the ReferenceNet forward
at t = 0 after the last state that is used; :func:`capture_inputs` and :func:`split_capture` are the rows around
that forward (the images plus one unconditional row).
"""

from __future__ import annotations

import torch

from ...faceanon_core.method.states import CaptureComplete, StateCapture, mix_embeds
from .layout import LayerKey, layer_key

#: The name the nodes catch; the same exception the diffusers backend stops a capture with.
CaptureDone = CaptureComplete


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
