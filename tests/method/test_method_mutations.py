"""Tests that fail when the method is broken in the ways a refactor plausibly breaks it.

Each test names the mutation(s) it is there to catch; the note of the session that added it lists
which test went red for each mutation applied by hand. They check the method's own definitions
(DESIGN.md, "The method, precisely") on what the pipeline actually feeds its networks, recorded
with forward hooks on the tiny model, not recorded numbers: tests/method/test_authors_parity.py holds those.

Applied once each by hand (2026-12-01), the mutation -> the tests here that went red (other modules too):
- CFG halves swapped (pipeline.py ``uncond, cond = chunk``): test_guidance_is_uncond_plus_g_times_cond_minus_uncond
  (+ test_authors_parity x2)
- the real source embedding in the unconditional context: test_unconditional_context_has_a_zero_source_embedding,
  test_guidance_... (+ parity x2)
- Eq. 2 weights swapped (states.py): test_eq2_and_eq1_weights, test_reference_tokens_are_eq2_states_and_driving_states,
  test_nodes_eq1_is_applied_before_... (+ parity x2, test_states x2)
- Eq. 1 after the source ReferenceNet: test_eq1_reaches_the_source_referencenet_before_it_runs,
  test_reference_tokens_... (+ parity anonymize)
- per-layer routing as the default of route_states / FaceAnonPipeline.__init__ / from_pretrained / the node loader:
  test_as_trained_routing_is_the_default_everywhere (each; + test_attention for route_states, parity for
  from_pretrained; nothing else caught the __init__ and node-loader defaults)
- driving states dropped (reference_tokens): test_driving_states_change_the_result (+ parity x2)
- reference K/V kept across calls (ReferenceContext.begin/end): test_reference_keys_values_are_never_reused_across_calls
  (+ parity swap)
- nodes: positive/negative source rows swapped -> test_nodes_rows_get_s_prime_...; negative context with the real
  embedding -> test_nodes_negative_conditioning_...; Eq. 1 after capture -> test_nodes_eq1_...; driving states
  dropped -> test_nodes_rows_...; a K/V cache shared across patches -> test_nodes_reference_keys_values_...
  (test_nodes_math also caught all but the loader default).

Exact comparisons (``torch.equal``) where the code must route the very same tensor; ``assert_close``
at float32 rounding (1e-6 relative) where a value is recomputed with the same operations.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceanon_core.method.attention import attn1_names, route_states
from faceanon_core.method.states import ReferenceStates, StatesMeta, mix_embeds, mix_states
from faceanon_core.testing.tiny_models import TINY_IMAGE_SIZE
from helpers.pack import pack_module
from helpers.reference_attn1_patch import reference_rows, sdpa_attention

cl = pack_module("nodes.backend.layout")
att = pack_module("nodes.backend.attention")
cap = pack_module("nodes.backend.capture")
mixing = pack_module("nodes.backend.mixing")
bat = pack_module("nodes.backend.batching")
img = pack_module("nodes.backend.images")

D = 1.25
G = 4.0


def run_kw(steps: int = 2):
    return dict(num_inference_steps=steps, guidance_scale=G, height=TINY_IMAGE_SIZE, width=TINY_IMAGE_SIZE,
                output_type="np")


def _noise(seed=0, batch=1):
    return torch.randn((batch, 4, TINY_IMAGE_SIZE // 8, TINY_IMAGE_SIZE // 8), generator=torch.manual_seed(seed))


@pytest.fixture
def recorded(tiny_pipe, face_images, monkeypatch):
    """One anonymize call (d = 1.25, g = 4) with everything the networks received recorded."""
    pipe = tiny_pipe
    log = {"unet": [], "refnet": [], "steps": [], "tokens": None}

    def unet_hook(module, args, kwargs, out):
        log["unet"].append((kwargs["encoder_hidden_states"].detach().clone(), out[0].detach().clone()))

    def refnet_hook(module, args, kwargs):
        log["refnet"].append((args[0].detach().clone(), kwargs["encoder_hidden_states"].detach().clone()))

    step = pipe.scheduler.step

    def recording_step(model_output, *args, **kwargs):
        log["steps"].append(model_output.detach().clone())
        return step(model_output, *args, **kwargs)

    begin = pipe.reference_context.begin

    def recording_begin(tokens):
        log["tokens"] = {k: v.detach().clone() for k, v in tokens.items()}
        return begin(tokens)

    monkeypatch.setattr(pipe.scheduler, "step", recording_step)
    monkeypatch.setattr(pipe.reference_context, "begin", recording_begin)
    handles = [pipe.unet.register_forward_hook(unet_hook, with_kwargs=True),
               pipe.referencenet.register_forward_pre_hook(refnet_hook, with_kwargs=True)]
    try:
        image = face_images[0]
        out = pipe.anonymize(image, degree=D, latents=_noise(0), **run_kw()).images
    finally:
        for h in handles:
            h.remove()
    px = pipe._prepare_images(image, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, "image")
    log["embeds"] = pipe.encode_image_embeds(px)
    log["latents"] = pipe.encode_latents(px)
    log["out"] = out
    return pipe, log


# ------------------------------------------------------------------ diffusers pipeline


def test_guidance_is_uncond_plus_g_times_cond_minus_uncond(recorded):
    """Mutation: the unconditional and conditional halves swapped in ``eps = (1-g)·uncond + g·cond``."""
    pipe, log = recorded
    assert len(log["steps"]) == len(log["unet"]) == 2
    for (context, eps), combined in zip(log["unet"], log["steps"], strict=True):
        uncond_rows = (context[:, 0] == 0).all(dim=-1)  # the row whose source embedding is zero
        assert uncond_rows.tolist() == [True, False]
        expected = (1 - G) * eps[uncond_rows] + G * eps[~uncond_rows]
        torch.testing.assert_close(combined, expected, rtol=1e-6, atol=1e-6)
        swapped = (1 - G) * eps[~uncond_rows] + G * eps[uncond_rows]
        assert (combined - swapped).abs().max() > 1e-3  # the halves differ enough to tell


def test_unconditional_context_has_a_zero_source_embedding(recorded):
    """Mutations: the real (or mixed) source embedding in the unconditional context; Eq. 1 not applied to
    the conditional source embedding; the driving embedding missing from either half."""
    pipe, log = recorded
    z = log["embeds"][:, 0]
    for context, _ in log["unet"]:
        assert context.shape[:2] == (2, 2)  # [uncond; cond] x [source, driving]
        assert torch.equal(context[0, 0], torch.zeros_like(z[0]))
        torch.testing.assert_close(context[1, 0], (1 - D) * z[0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(context[0, 1], z[0], rtol=0, atol=0)
        torch.testing.assert_close(context[1, 1], z[0], rtol=0, atol=0)


def test_eq1_reaches_the_source_referencenet_before_it_runs(recorded):
    """Mutation: Eq. 1 applied after the source ReferenceNet (it would see the real embedding Z)."""
    pipe, log = recorded
    z = log["embeds"]
    (x_cond, c_cond), (x_unc, c_unc) = log["refnet"]  # the source ReferenceNet: images, then the uncond row
    torch.testing.assert_close(c_cond, (1 - D) * z, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(c_cond, z)
    torch.testing.assert_close(x_cond, log["latents"], rtol=1e-6, atol=1e-6)
    assert torch.equal(c_unc, torch.zeros_like(c_unc)) and torch.equal(x_unc, torch.zeros_like(x_unc))


def test_reference_tokens_are_eq2_states_and_driving_states(recorded):
    """Mutations: Eq. 2 weights swapped; S' in the unconditional rows or S_uncond in the conditional ones;
    the driving states dropped (or the source ones)."""
    pipe, log = recorded
    z, lat = log["embeds"], log["latents"]
    s_cond = pipe.reference_states(pipe.referencenet, lat, (1 - D) * z)
    s_unc = pipe.reference_states(pipe.referencenet, torch.zeros_like(lat), torch.zeros_like(z))
    s_drv = pipe.reference_states(pipe.conditioning_referencenet, lat, z)
    assert set(log["tokens"]) == set(pipe.reference_layers)
    for name, tokens in log["tokens"].items():
        n_src, n_drv = s_cond[name].shape[1], s_drv[name].shape[1]
        assert tokens.shape[:2] == (2, n_src + n_drv), name
        mixed = (1 - D) * s_cond[name] + D * s_unc[name]
        torch.testing.assert_close(tokens[1:, :n_src], mixed, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(tokens[:1, :n_src], s_unc[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(tokens[:, n_src:], s_drv[name].expand(2, -1, -1), rtol=1e-5, atol=1e-6)
        swapped = (1 - D) * s_unc[name] + D * s_cond[name]
        assert (mixed - swapped).abs().max() > 1e-3


def test_eq2_and_eq1_weights():
    """Mutation: Eq. 2 written as ``(1-d)·S_uncond + d·S_cond`` (or Eq. 1 as ``d·Z``)."""
    cond, uncond = torch.ones(1, 2, 3), torch.zeros(1, 2, 3)
    assert torch.equal(mix_states(cond, uncond, 0.25), torch.full((1, 2, 3), 0.75))
    assert torch.equal(mix_states(cond, uncond, 0.0), cond) and torch.equal(mix_states(cond, uncond, 1.0), uncond)
    mixed = ReferenceStates(cond={"down_blocks.0.attentions.0.transformer_blocks.0.attn1": cond},
                            uncond={"down_blocks.0.attentions.0.transformer_blocks.0.attn1": uncond}).mixed(0.25)
    assert torch.equal(next(iter(mixed.cond.values())), torch.full((1, 2, 3), 0.75))
    assert torch.equal(mix_embeds(torch.ones(1, 1, 4), 0.25), torch.full((1, 1, 4), 0.75))


def test_as_trained_routing_is_the_default_everywhere(tiny_model_dir, tiny_pipe):
    """Mutation: the per-layer routing used where the as-trained one is the default (route_states, the
    pipeline, its loader, the node loader's default)."""
    names = attn1_names(tiny_pipe.unet)
    second = [n for n in names if ".attentions.1." in n]
    assert second, "the tiny UNet must have blocks with several attentions for this test to mean anything"
    for routing in (route_states(names), tiny_pipe.routing, cl.routed_layers(
            {("x", i, 0): n for i, n in enumerate(names)}, "as_trained")[0]):
        for name in second:
            assert routing[name] == name.replace(".attentions.1.", ".attentions.0."), name
    assert tiny_pipe.routing_mode == "as_trained"
    from faceanon_core.method.loading import load_components
    from faceanon_core.method.pipeline import FaceAnonPipeline

    built = FaceAnonPipeline(**load_components(tiny_model_dir))
    assert built.routing_mode == "as_trained" and built.routing == tiny_pipe.routing
    import re

    from helpers.pack import REPO

    # the node loader needs ComfyUI to import: its two defaults are read from the source
    source = (REPO / "nodes" / "backend" / "loading.py").read_text()
    assert re.search(r'routing_mode: str = "as_trained"', source)
    assert re.search(r'get\("faceanon_routing"\) or "as_trained"', source)


def test_driving_states_change_the_result(tiny_pipe, face_images, monkeypatch):
    """Mutation: the driving states dropped (keys/values from own + source tokens only). Zeroing what the
    driving ReferenceNet returns must change the output."""
    pipe = tiny_pipe
    base = pipe.anonymize(face_images[0], degree=D, latents=_noise(0), **run_kw()).images
    states = pipe.reference_states

    def zero_driving(refnet, latents, embeds):
        out = states(refnet, latents, embeds)
        if refnet is pipe.conditioning_referencenet:
            out = {k: torch.zeros_like(v) for k, v in out.items()}
        return out

    monkeypatch.setattr(pipe, "reference_states", zero_driving)
    changed = pipe.anonymize(face_images[0], degree=D, latents=_noise(0), **run_kw()).images
    assert np.abs(changed - base).max() > 1e-3


def test_reference_keys_values_are_never_reused_across_calls(tiny_model_dir, face_images):
    """Mutation: reference keys/values cached across sampling runs (a second call with other images
    reuses the first call's). The second call must equal the same call on a fresh pipeline."""
    from diffusers import DDIMScheduler

    from faceanon_core.method.pipeline import FaceAnonPipeline

    def fresh():
        pipe = FaceAnonPipeline.from_pretrained(tiny_model_dir)
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        return pipe

    a, b = face_images
    used = fresh()
    first = used.anonymize(a, degree=D, latents=_noise(0), **run_kw()).images
    second = used.anonymize(b, degree=D, latents=_noise(0), **run_kw()).images
    alone = fresh().anonymize(b, degree=D, latents=_noise(0), **run_kw()).images
    np.testing.assert_allclose(second, alone, rtol=0, atol=1e-6)
    assert np.abs(first - second).max() > 1e-3
    assert used.reference_context.tokens is None and not used.reference_context._cache  # dropped after the run


# ------------------------------------------------------------------ the nodes' pure-torch path


def _states(seed: int, batch: int = 1, layers=("down_blocks.0.attentions.0.transformer_blocks.0.attn1",)):
    g = torch.Generator().manual_seed(seed)
    cond = {n: torch.randn(batch, 4, 8, generator=g) for n in layers}
    uncond = {n: torch.randn(1, 4, 8, generator=g) for n in layers}
    return ReferenceStates(cond=cond, uncond=uncond)


def test_nodes_negative_conditioning_has_a_zero_source_embedding():
    """Mutations (nodes): the real source embedding in the negative (unconditional) context; positive and
    negative swapped; the driving embedding dropped."""
    src, drv = torch.randn(2, 1, 8), torch.randn(2, 1, 8)
    positive, negative = bat.sampler_conditioning(src, drv, 2)
    assert torch.equal(positive, torch.cat([src, drv], dim=1))
    assert torch.equal(negative, torch.cat([torch.zeros_like(src), drv], dim=1))


def test_nodes_rows_get_s_prime_when_positive_and_s_uncond_when_negative():
    """Mutations (nodes): the CFG halves swapped (positive rows reading S_uncond, negative rows S'); the
    driving states dropped."""
    s_prime, s_unc, drv = torch.randn(2, 4, 8), torch.randn(1, 4, 8), torch.randn(2, 5, 8)
    for pattern in ([0, 1], [1, 0], [0], [1]):
        rows = reference_rows(att, pattern, 2 * len(pattern), s_prime, s_unc, drv)
        assert rows.shape == (2 * len(pattern), 9, 8)
        for i, c in enumerate(pattern):
            chunk = rows[2 * i:2 * i + 2]
            assert torch.equal(chunk[:, :4], s_prime if c == 0 else s_unc.expand(2, -1, -1)), pattern
            assert torch.equal(chunk[:, 4:], drv), pattern


def test_nodes_eq1_is_applied_before_the_referencenet_and_eq2_after():
    """Mutations (nodes): Eq. 1 after the source ReferenceNet (capture sees Z); Eq. 2 weights swapped."""
    latents, embeds = torch.randn(2, 4, 8, 8), torch.randn(2, 1, 8)
    x, c = cap.capture_inputs(latents, embeds, D)
    torch.testing.assert_close(c[:2], (1 - D) * embeds)
    assert torch.equal(c[2:], torch.zeros_like(c[2:])) and torch.equal(x[2:], torch.zeros_like(x[2:]))
    assert torch.equal(x[:2], latents)
    states = _states(0, batch=2)
    states.meta = StatesMeta(role="source", embed_degree=0.25)
    mixed, z = mixing.mix_captured(states, embeds, 0.25)
    name = states.layer_names[0]
    torch.testing.assert_close(mixed.cond[name], 0.75 * states.cond[name] + 0.25 * states.uncond[name])
    assert torch.equal(mixed.uncond[name], states.uncond[name])
    torch.testing.assert_close(z, 0.75 * embeds)


def _kv_patch(source, driving, layer):
    key = ("input", 1, 0)
    torch.manual_seed(0)
    to_k, to_v = torch.nn.Linear(8, 8, bias=False), torch.nn.Linear(8, 8, bias=False)
    patch = att.ReferenceKVPatch({key: layer}, {layer: layer}, source, driving, {key: (to_k, to_v)}, sdpa_attention)
    return patch, key, to_k, to_v


def test_nodes_reference_keys_values_belong_to_their_own_states():
    """Mutation (nodes): reference keys/values reused from a previous sampling run with other images (a
    cache outliving its patch, or surviving ``clear``)."""
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    opts = {"block": ("input", 1), "block_index": 0, "cond_or_uncond": [1, 0], "n_heads": 2}
    q = torch.randn(2, 6, 8)
    results = []
    for seed in (0, 1):
        source, driving = _states(seed), _states(seed + 10)
        patch, key, to_k, to_v = _kv_patch(source, driving, layer)
        seen = {}
        empty = q.new_empty((2, 0, 8))  # no own tokens: what the patch hands on is the reference K/V alone
        patch(q, empty, empty, opts, inner=lambda q_, k_, v_, o_, seen=seen: seen.update(k=k_, v=v_))
        k, v = seen["k"], seen["v"]
        tokens = reference_rows(att, [1, 0], 2, source.cond[layer], source.uncond[layer], driving.cond[layer])
        torch.testing.assert_close(k, to_k(tokens))
        torch.testing.assert_close(v, to_v(tokens))
        results.append(k)
        patch.clear()
        assert not patch._kv
    assert (results[0] - results[1]).abs().max() > 1e-3
