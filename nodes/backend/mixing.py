"""The anonymization degree's bookkeeping on captured states (pure torch, imports no ComfyUI).

The degree is entered once, on the source capture (Eq. 1 comes before the source ReferenceNet runs); the states
carry it, :func:`mix_captured` applies Eq. 2 with it, and the checks refuse states that were never mixed or a
driving side that was given a degree. The maths (Eq. 1, Eq. 2) is :mod:`faceanon_core.method.states`'.
"""

from __future__ import annotations

import torch

from ...faceanon_core.method.states import ReferenceStates, mix_embeds
from .batching import resolve_batch

#: The Mix node's ``degree`` meaning "the degree the states were captured with" (its default).
FROM_CAPTURE = -1.0


def captured_degree(states: ReferenceStates) -> float:
    """The degree a capture was made with (Eq. 1 before the ReferenceNet): a property of the states."""
    return states.meta.embed_degree


def mix_captured(states: ReferenceStates, embeds: torch.Tensor, degree: float | None = None):
    """The mixing node: Eq. 2 on captured states, Eq. 1 on the embeddings, with the states' own degree.

    The source ReferenceNet saw ``Z' = (1-d)·Z`` already (Eq. 1 comes before it), so the degree is
    the capture's. ``degree`` (the Mix node's input, kept for saved workflows) is checked:
    ``None`` or :data:`FROM_CAPTURE` take the capture's, any other value must equal it.
    """
    # Duck-typed: the pack's faceanon_core and an installed one are different modules with equal classes.
    if not callable(getattr(states, "mixed", None)) or not hasattr(getattr(states, "meta", None), "embed_degree"):
        raise ValueError("states must come from the FaceAnon ReferenceNet capture node")
    if states.meta.degree is not None:
        raise ValueError(f"these states are already mixed (degree {states.meta.degree:g}); mix captured states once")
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
    if captured != 0.0 and states.meta.degree is None:
        raise ValueError(f"the source states were captured with degree {captured:g} but never mixed: connect them "
                         "through FaceAnon Mix States (Eq. 2) and use its states and embeds outputs")


def check_driving_degree(states: ReferenceStates) -> None:
    """The driving ReferenceNet always sees the real image (degree 0)."""
    captured = captured_degree(states)
    mixed = states.meta.degree
    if captured != 0.0 or mixed is not None:
        raise ValueError(f"the driving states were captured or mixed with degree "
                         f"{captured if mixed is None else mixed:g}: the driving side keeps the real image, use "
                         "degree 0 on its capture node and no Mix States")
