"""The node backend's pure-torch pieces (nodes/backend/: layout, attention, capture, mixing, batching, images),
without ComfyUI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from faceanon_core.method.attention import attn1_names, project_reference, reference_attention, route_states
from faceanon_core.method.states import ReferenceStates, StatesMeta, mix_embeds, mix_states
from faceanon_core.testing.tiny_models import tiny_unet_config
from helpers.pack import pack_module
from helpers.reference_attn1_patch import cached_bytes, reference_patch, reference_rows, sdpa_attention

cl = pack_module("nodes.backend.layout")
att = pack_module("nodes.backend.attention")
cap = pack_module("nodes.backend.capture")
mixing = pack_module("nodes.backend.mixing")
bat = pack_module("nodes.backend.batching")
img = pack_module("nodes.backend.images")
chk = pack_module("nodes.backend.checks")

SD21_UNET = {
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True, "upcast_attention": True,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "sample_size": 96, "norm_num_groups": 32,
}


def _tiny_config():
    return json.loads(json.dumps(tiny_unet_config()))


# ------------------------------------------------------------------ configs and layer names


def test_sd21_config_and_layout_match_comfy_table():
    unet = cl.comfy_unet_config(SD21_UNET)
    assert unet["num_heads"] == -1 and unet["num_head_channels"] == 64
    assert unet["transformer_depth"] == [1, 1, 1, 1, 1, 1, 0, 0]
    assert unet["transformer_depth_output"] == [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert unet["channel_mult"] == [1, 2, 4, 4] and unet["context_dim"] == 1024
    layout = cl.attn1_layout(unet)
    assert layout[("input", 1, 0)] == "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    assert layout[("input", 8, 0)] == "down_blocks.2.attentions.1.transformer_blocks.0.attn1"
    assert layout[("middle", 0, 0)] == "mid_block.attentions.0.transformer_blocks.0.attn1"
    assert layout[("output", 3, 0)] == "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
    assert layout[("output", 11, 0)] == "up_blocks.3.attentions.2.transformer_blocks.0.attn1"
    assert sorted(k[1] for k in layout if k[0] == "input") == [1, 2, 4, 5, 7, 8]
    assert sorted(k[1] for k in layout if k[0] == "output") == list(range(3, 12))
    assert len(layout) == 16


@pytest.mark.parametrize("layers_per_block", [1, 2])
def test_layout_covers_the_diffusers_attn1_layers(layers_per_block):
    from diffusers import UNet2DConditionModel

    config = json.loads(json.dumps(tiny_unet_config(layers_per_block=layers_per_block)))
    unet = UNet2DConditionModel(**config)
    layout = cl.attn1_layout(cl.comfy_unet_config(config))
    assert sorted(layout.values()) == sorted(attn1_names(unet))
    assert list(layout.values()) == attn1_names(unet)  # forward order


def test_routing_reuses_core_route_states():
    layout = cl.attn1_layout(cl.comfy_unet_config(_tiny_config()))
    routing, refs = cl.routed_layers(layout, "as_trained")
    assert routing == route_states(list(layout.values()), "as_trained")
    assert all(".attentions.0." in r for r in refs)
    assert routing["up_blocks.1.attentions.2.transformer_blocks.0.attn1"] == \
        "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
    per_layer, refs_pl = cl.routed_layers(layout, "per_layer")
    assert all(k == v for k, v in per_layer.items()) and len(refs_pl) == len(layout)


def test_unsupported_configs_are_clear_errors():
    with pytest.raises(ValueError, match="multiples"):
        cl.comfy_unet_config(dict(SD21_UNET, block_out_channels=[320, 500, 1280, 1280]))
    with pytest.raises(ValueError, match="flip_sin_to_cos"):
        cl.comfy_unet_config(dict(SD21_UNET, flip_sin_to_cos=False))
    with pytest.raises(ValueError, match="norm_num_groups=8"):
        cl.comfy_vae_config({"block_out_channels": [8, 16, 16, 16], "norm_num_groups": 8})
    vae = cl.comfy_vae_config({"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2})
    assert vae["params"]["ddconfig"]["ch_mult"] == [1, 2, 4, 4] and vae["params"]["embed_dim"] == 4


# ------------------------------------------------------------------ per-row reference tokens


def _states(batch, tokens=4, channels=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, channels, generator=g)


@pytest.mark.parametrize("chunks", [[1, 0], [0, 1], [0], [1]])
def test_reference_rows_select_source_by_cond_or_uncond(chunks):
    batch = 3
    src, unc, drv = _states(batch, seed=1), _states(1, seed=2), _states(batch, seed=3)
    rows = reference_rows(att, chunks, batch * len(chunks), src, unc, drv)
    assert rows.shape == (batch * len(chunks), 8, 8)
    for chunk_index, flag in enumerate(chunks):
        for image in range(batch):
            row = rows[chunk_index * batch + image]
            expected_src = src[image] if flag == 0 else unc[0]
            assert torch.equal(row[:4], expected_src)
            assert torch.equal(row[4:], drv[image])


def test_reference_rows_broadcast_and_mismatch():
    rows = reference_rows(att, [1, 0], 6, _states(1), _states(1), _states(3))
    assert torch.equal(rows[3, :4], rows[5, :4])  # source batch 1 broadcasts
    with pytest.raises(ValueError, match="batch of 2 but 3"):
        reference_rows(att, [1, 0], 6, _states(2), _states(1), _states(3))
    with pytest.raises(ValueError, match="cannot be split"):
        reference_rows(att, [1, 0], 5, _states(1), _states(1), _states(1))


def _patch(batch=3, channels=8, mode="as_trained"):
    layout = cl.attn1_layout(cl.comfy_unet_config(_tiny_config()))
    routing, refs = cl.routed_layers(layout, mode)
    source = ReferenceStates(cond={r: _states(batch, channels=channels, seed=i) for i, r in enumerate(refs)},
                             uncond={r: _states(1, channels=channels, seed=50 + i) for i, r in enumerate(refs)},
                             meta=StatesMeta(role="source"))
    driving = ReferenceStates(cond={r: _states(batch, channels=channels, seed=90 + i) for i, r in enumerate(refs)})
    return reference_patch(att, layout, routing, source, driving), layout, routing, source, driving


def test_patch_extends_context_and_value_for_the_routed_block():
    patch, layout, routing, source, driving = _patch()
    n = torch.randn(6, 5, 8)
    opts = {"block": ("input", 2), "block_index": 0, "cond_or_uncond": [1, 0]}
    out_n, ctx, val = patch(n, n, n, opts)
    assert out_n is n and ctx.shape == (6, 5 + 8, 8) and torch.equal(ctx, val)
    ref = routing[layout[("input", 2, 0)]]
    assert ref == "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    assert torch.equal(ctx[:, :5], n)
    assert torch.equal(ctx[0, 5:9], source.uncond[ref][0]) and torch.equal(ctx[4, 5:9], source.cond[ref][1])
    assert torch.equal(ctx[4, 9:], driving.cond[ref][1])
    # an earlier patch's context is kept, not replaced
    earlier = torch.cat([n, torch.zeros(6, 2, 8)], 1)
    _, ctx2, _ = patch(n, earlier, earlier, opts)
    assert torch.equal(ctx2[:, :7], earlier) and ctx2.shape[1] == 15


def test_patch_low_memory_single_chunks_and_cfg1():
    patch, layout, routing, source, driving = _patch()
    n = torch.randn(3, 5, 8)
    ref = routing[layout[("output", 4, 0)]]
    for flags, expected in (([0], source.cond[ref]), ([1], source.uncond[ref].expand(3, -1, -1))):
        _, ctx, _ = patch(n, n, n, {"block": ("output", 4), "block_index": 0, "cond_or_uncond": flags})
        assert torch.equal(ctx[:, 5:9], expected)


def test_patch_survives_clone_deepcopies_and_moves():
    patch, *_ = _patch()
    options = {"transformer_options": {"patches": {"attn1_patch": [patch]}}}
    copied = copy.deepcopy(options)
    assert copied["transformer_options"]["patches"]["attn1_patch"][0] is patch
    assert patch.to(torch.device("cpu")) is patch


def test_patch_errors_are_clear():
    patch, *_ = _patch()
    n = torch.randn(3, 5, 8)
    with pytest.raises(ValueError, match="cond_or_uncond"):
        patch(n, n, n, {"block": ("input", 1), "block_index": 0})
    with pytest.raises(ValueError, match="not in this model's layout"):
        patch(n, n, n, {"block": ("input", 3), "block_index": 0, "cond_or_uncond": [0]})
    layout = cl.attn1_layout(cl.comfy_unet_config(_tiny_config()))
    routing, refs = cl.routed_layers(layout, "as_trained")
    partial = ReferenceStates(cond={refs[0]: _states(1)}, uncond={refs[0]: _states(1)})
    with pytest.raises(ValueError, match="lack the layer"):
        reference_patch(att, layout, routing, partial, partial)


def test_patched_comfy_style_attention_equals_core_reference_attention():
    """ComfyUI projects k/v of the extended context itself; that must equal the core's reader."""
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    own, src, drv = torch.randn(2, 6, 16), torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    with torch.no_grad():
        ref_k, ref_v = project_reference(attn, torch.cat([src, drv], 1))
        expected = reference_attention(attn, own, ref_k, ref_v)
        patch_ctx = reference_rows(att, [0], 2, src, torch.zeros(1, 4, 16), drv)
        context = torch.cat([own, patch_ctx], 1)
        q, k, v = attn.to_q(own), attn.to_k(context), attn.to_v(context)
        heads = lambda t: t.view(t.shape[0], t.shape[1], 2, 8).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2).reshape(2, 6, 16)
        out = attn.to_out[1](attn.to_out[0](out))
    assert torch.allclose(out, expected, atol=1e-6)


class _Counting(torch.nn.Linear):
    """A projection that counts how many tokens it was called on."""

    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


def _kv_patch(channels=8, heads=2, batch=3):
    patch, layout, routing, source, driving = _patch(batch=batch, channels=channels)
    torch.manual_seed(1)
    modules = {key: tuple(_Counting(channels, channels, bias=False) for _ in range(3)) for key in layout}
    projections = {key: (m[1], m[2]) for key, m in modules.items()}
    kv = att.ReferenceKVPatch(layout, routing, source, driving, projections, sdpa_attention)
    return kv, patch, layout, modules


@pytest.mark.parametrize("chunks", [[1, 0], [0, 1], [0], [1]])
def test_replace_path_equals_the_attn1_patch_path(chunks):
    """Cached reference K/V appended to ComfyUI's own q/k/v == ComfyUI projecting the extended context."""
    kv, patch, layout, modules = _kv_patch()
    heads, batch = 2, 3
    for step in range(2):
        for key in layout:
            to_q, to_k, to_v = modules[key]
            n = torch.randn(batch * len(chunks), 5, 8)
            opts = {"block": key[:2], "block_index": key[2], "cond_or_uncond": chunks, "n_heads": heads}
            with torch.no_grad():
                _, ctx, val = patch(n, n, n, opts)  # the attn1_patch path
                expected = sdpa_attention(to_q(n), to_k(ctx), to_v(val), heads)
                got = kv(to_q(n), to_k(n), to_v(n), opts)  # the replace path
            assert got.shape == expected.shape == (batch * len(chunks), 5, 8)
            assert torch.allclose(got, expected, atol=1e-6), (key, step, float((got - expected).abs().max()))


def test_reference_projection_happens_once_per_run():
    kv, _patch_obj, layout, modules = _kv_patch()
    _Counting.calls = 0

    def step(chunks):
        for key in layout:
            to_q, to_k, to_v = modules[key]
            n = torch.randn(3 * len(chunks), 5, 8)
            opts = {"block": key[:2], "block_index": key[2], "cond_or_uncond": chunks, "n_heads": 2}
            with torch.no_grad():
                kv(to_q(n), to_k(n), to_v(n), opts)

    own = 3 * len(layout)  # to_q, to_k, to_v of the own tokens per layer and step
    for _ in range(4):
        step([1, 0])
    assert kv.projection_calls == len(layout)
    assert _Counting.calls == 4 * own + 2 * len(layout)  # reference: one to_k + one to_v per layer, once
    # low-memory single-chunk calls and cfg = 1 reuse the same distinct tensors: nothing is projected again
    for _ in range(3):
        step([0])
        step([1])
    assert kv.projection_calls == len(layout)
    # the next run starts empty; clone deep copies share the object
    kv.clear()
    step([1, 0])
    assert kv.projection_calls == 2 * len(layout)
    options = {"transformer_options": {"patches_replace": {"attn1": {("input", 1, 0): kv}}}}
    assert copy.deepcopy(options)["transformer_options"]["patches_replace"]["attn1"][("input", 1, 0)] is kv
    assert kv.to(torch.device("cpu")) is kv and not kv._kv


@pytest.mark.parametrize("source_batch", [3, 1])
def test_kv_cache_holds_each_distinct_tensor_once(source_batch):
    """CFG rows [uncond; cond] of B images: S' (B or 1), S_uncond (1) and the driving states (B) once each,
    not the driving half twice nor S_uncond B times; memory_bytes tells ComfyUI exactly that plus one call."""
    patch, layout, routing, source, driving = _patch(batch=3)
    if source_batch == 1:
        source = ReferenceStates(cond={k: v[:1] for k, v in source.cond.items()}, uncond=source.uncond,
                                 meta=source.meta)
    modules = {key: tuple(torch.nn.Linear(8, 8, bias=False) for _ in range(3)) for key in layout}
    kv = att.ReferenceKVPatch(layout, routing, source, driving, {k: (m[1], m[2]) for k, m in modules.items()},
                           sdpa_attention)
    tokens = {routing[layer]: source.cond[routing[layer]].shape[1] for layer in layout.values()}
    with torch.no_grad():
        for chunks in ([1, 0], [0], [1]):
            for key, _layer in layout.items():
                q = torch.randn(3 * len(chunks), 5, 8)
                opts = {"block": key[:2], "block_index": key[2], "cond_or_uncond": chunks, "n_heads": 2}
                kv(q, q, q, opts)
    per_layer = {key: 2 * (source_batch + 1 + 3) * tokens[routing[layer]] * 8 * 4 for key, layer in layout.items()}
    assert cached_bytes(kv) == sum(per_layer.values())
    rows_copy = sum(2 * 6 * 2 * tokens[routing[layer]] * 8 * 4 for layer in layout.values())
    assert cached_bytes(kv) < rows_copy  # what one entry per CFG row pattern held before
    per_call = max(2 * 6 * 2 * tokens[routing[layer]] * 8 for layer in layout.values()) * 4
    assert kv.memory_bytes(rows=6, element_size=4) == sum(per_layer.values()) + per_call


def test_stacked_replace_hands_the_extended_keys_to_the_replace_installed_before():
    kv, patch, layout, modules = _kv_patch()
    seen = []

    def recorder(q, k, v, extra_options):  # e.g. an attention-recording replace of another node
        seen.append((k.shape, v.shape))
        return sdpa_attention(q, k, v, extra_options["n_heads"])

    stacked = att.StackedReplace(kv, recorder)
    key = ("input", 1, 0)
    to_q, to_k, to_v = modules[key]
    n = torch.randn(6, 5, 8)
    opts = {"block": key[:2], "block_index": key[2], "cond_or_uncond": [1, 0], "n_heads": 2}
    with torch.no_grad():
        got = stacked(to_q(n), to_k(n), to_v(n), opts)
        expected = kv(to_q(n), to_k(n), to_v(n), opts)
    assert torch.equal(got, expected)
    n_ref = kv.source_cond[kv.routing[layout[key]]].shape[1] + kv.driving[kv.routing[layout[key]]].shape[1]
    assert seen == [((6, 5 + n_ref, 8), (6, 5 + n_ref, 8))]
    assert att.owner_of(stacked) is kv and att.owner_of(kv) is kv and att.owner_of(recorder) is None
    assert copy.deepcopy(stacked) is stacked and stacked.to(torch.device("cpu")) is stacked
    with pytest.raises(ValueError, match="not callable"):
        att.StackedReplace(kv, object())


def test_sigma_range_switches_the_references_on_and_off():
    patch, layout, routing, source, driving = _patch()
    modules = {key: tuple(torch.nn.Linear(8, 8, bias=False) for _ in range(3)) for key in layout}
    projections = {k: (m[1], m[2]) for k, m in modules.items()}
    ranged = att.ReferenceKVPatch(layout, routing, source, driving, projections, sdpa_attention,
                                  sigma_range=(5.0, 1.0))
    always = att.ReferenceKVPatch(layout, routing, source, driving, projections, sdpa_attention)
    key = ("output", 4, 0)
    to_q, to_k, to_v = modules[key]
    n = torch.randn(6, 5, 8)
    with torch.no_grad():
        q, k, v = to_q(n), to_k(n), to_v(n)
        for sigma, refs in ((5.0, True), (2.0, True), (1.0, True), (7.0, False), (0.5, False)):
            opts = {"block": key[:2], "block_index": key[2], "cond_or_uncond": [1, 0], "n_heads": 2,
                    "sigmas": torch.full((6,), sigma)}
            expected = always(q, k, v, opts) if refs else sdpa_attention(q, k, v, 2)
            assert torch.equal(ranged(q, k, v, opts), expected), sigma
    assert not torch.equal(always(q, k, v, opts), sdpa_attention(q, k, v, 2))  # the references matter
    with pytest.raises(ValueError, match="start_percent"):
        att.ReferenceKVPatch(layout, routing, source, driving, projections, sdpa_attention,
                             sigma_range=(1.0, 5.0))


def test_kv_patch_errors_and_comfy_paths():
    kv, _p, layout, modules = _kv_patch()
    q = torch.randn(3, 5, 8)
    with pytest.raises(ValueError, match="cond_or_uncond"):
        kv(q, q, q, {"block": ("input", 1), "block_index": 0, "n_heads": 2})
    _patch_obj, layout, routing, source, driving = _patch()
    with pytest.raises(ValueError, match="no to_k/to_v"):
        att.ReferenceKVPatch(layout, routing, source, driving, {}, sdpa_attention)
    assert cl.comfy_attn1_path(("input", 4, 0)) == "input_blocks.4.1.transformer_blocks.0.attn1"
    assert cl.comfy_attn1_path(("middle", 0, 1)) == "middle_block.1.transformer_blocks.1.attn1"
    assert cl.comfy_attn1_path(("output", 9, 0)) == "output_blocks.9.1.transformer_blocks.0.attn1"


# ------------------------------------------------------------------ capture and mixing


def test_state_recorder_records_wanted_layers_and_stops_after_the_last():
    layout = cl.attn1_layout(cl.comfy_unet_config(_tiny_config()))
    _, refs = cl.routed_layers(layout, "as_trained")
    wanted = {k: v for k, v in layout.items() if v in refs}
    recorder = cap.StateRecorder(wanted)
    visited = []
    with pytest.raises(cap.CaptureDone):
        for key in layout:  # forward order
            visited.append(key)
            n = torch.full((2, 3, 4), float(len(visited)))
            assert recorder(n, n, n, {"block": key[:2], "block_index": key[2]})[0] is n
    assert visited[-1] == ("output", 3, 0)  # up_blocks.1.attentions.0: later layers are never run
    states = recorder.result()
    assert list(states) == refs


def test_capture_inputs_split_and_mixing_via_the_node_path():
    latents, embeds = torch.randn(3, 4, 8, 8), torch.randn(3, 1, 32)
    x, c = cap.capture_inputs(latents, embeds, 1.25)
    assert x.shape[0] == 4 and torch.equal(x[3], torch.zeros(4, 8, 8)) and torch.equal(c[3], torch.zeros(1, 32))
    assert torch.allclose(c[:3], mix_embeds(embeds, 1.25))
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    rows = torch.randn(4, 5, 6)
    cond, uncond = cap.split_capture({name: rows}, 3)
    assert torch.equal(cond[name], rows[:3]) and torch.equal(uncond[name], rows[3:])
    states = ReferenceStates(cond=cond, uncond=uncond, meta=StatesMeta(role="source", embed_degree=1.25))
    mixed, mixed_embeds = mixing.mix_captured(states, embeds, 1.25)
    assert torch.allclose(mixed.cond[name], mix_states(rows[:3], rows[3:], 1.25))
    assert torch.allclose(mixed_embeds, -0.25 * embeds)
    with pytest.raises(ValueError, match="captured with degree 1.25 but Mix States says 1"):
        mixing.mix_captured(states, embeds, 1.0)
    with pytest.raises(ValueError, match="already mixed"):
        mixing.mix_captured(mixed, embeds, 1.25)
    with pytest.raises(ValueError, match="batch of 2 but"):
        mixing.mix_captured(states, embeds[:2], 1.25)


def test_the_degree_is_a_property_of_the_captured_states():
    """Entered once (on the capture): Mix takes it from the states; a saved workflow's Mix degree is checked."""
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    rows, embeds = torch.randn(3, 5, 6), torch.randn(2, 1, 32)
    states = ReferenceStates(cond={name: rows[:2]}, uncond={name: rows[2:]},
                             meta=StatesMeta(role="source", embed_degree=0.75))
    for degree in (None, mixing.FROM_CAPTURE, 0.75):  # new graphs, the Mix default, a saved workflow's value
        mixed, mixed_embeds = mixing.mix_captured(states, embeds, degree)
        assert mixed.meta.degree == 0.75 and torch.allclose(mixed_embeds, 0.25 * embeds)
        assert torch.allclose(mixed.cond[name], mix_states(rows[:2], rows[2:], 0.75))
    assert mixing.captured_degree(states) == 0.75
    # a sampler given states captured with a degree but never mixed would use half the method
    with pytest.raises(ValueError, match="never mixed"):
        mixing.check_source_degree(states)
    mixing.check_source_degree(mixed)
    mixing.check_source_degree(ReferenceStates(cond={name: rows[:2]}, uncond={name: rows[2:]}))  # a swap: degree 0
    with pytest.raises(ValueError, match="driving side keeps the real image"):
        mixing.check_driving_degree(states)
    with pytest.raises(ValueError, match="driving side keeps the real image"):
        mixing.check_driving_degree(mixed)
    mixing.check_driving_degree(ReferenceStates(cond={name: rows[:2]}, meta=StatesMeta(embed_degree=0.0)))


# ------------------------------------------------------------------ sampler inputs


def test_conditioning_noise_and_batches():
    src, drv = torch.randn(1, 1, 8), torch.randn(3, 1, 8)
    pos, neg = bat.sampler_conditioning(src, drv, 3)
    assert pos.shape == neg.shape == (3, 2, 8)
    assert torch.equal(pos[2, 0], src[0, 0]) and torch.equal(neg[:, 0], torch.zeros(3, 8))
    assert torch.equal(pos[:, 1], drv[:, 0]) and torch.equal(neg[:, 1], drv[:, 0])
    shared = bat.seeded_noise((3, 4, 8, 8), 7)
    assert torch.equal(shared[0], shared[2])
    assert torch.equal(bat.seeded_noise((5, 4, 8, 8), 7)[4], shared[0])  # any batch, same frame noise
    per = bat.seeded_noise((3, 4, 8, 8), 7, per_image=True)
    assert torch.equal(per, torch.randn((3, 4, 8, 8), generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(per[0], per[1])
    assert bat.resolve_batch({"the latent": 1, "the driving states": 3}) == 3
    with pytest.raises(ValueError, match="batch of 2 but the driving states has 3"):
        bat.resolve_batch({"the latent": 2, "the driving states": 3})


def test_pooled_clip_equals_transformers_pooler_output():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                             num_attention_heads=4, image_size=32, patch_size=8)).eval()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values=pixels)
        ln = getattr(model, "vision_model", model).post_layernorm
        pooled = img.pooled_clip(out.last_hidden_state, ln.weight, ln.bias, ln.eps)
    assert pooled.shape == (3, 1, 32)
    # transformers' last_hidden_state is before post_layernorm, like ComfyUI's
    assert torch.allclose(pooled[:, 0], out.pooler_output, atol=1e-6)


def test_resize_images():
    images = torch.rand(2, 40, 50, 4)
    out = img.resize_images(images, 64, 64)
    assert out.shape == (2, 64, 64, 3) and out.min() >= 0 and out.max() <= 1
    same = torch.rand(1, 64, 64, 3)
    assert torch.equal(img.resize_images(same, 64, 64), same)


def test_images_are_checked_where_they_enter_a_node():
    """One check of an IMAGE input (the functions behind the nodes convert, they do not check again)."""
    assert chk.check_images(torch.rand(2, 8, 8, 3)).shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match="image: the batch is empty"):
        chk.check_images(torch.zeros(0, 8, 8, 3))
    with pytest.raises(ValueError, match="Face Swap: the source image holds 1 NaN"):
        chk.check_face_images("Face Swap", "the source image", torch.rand(1, 16, 16, 3).index_put_(
            (torch.tensor([0]), torch.tensor([2]), torch.tensor([2]), torch.tensor([0])), torch.tensor(float("nan"))))
    with pytest.raises(ValueError, match="expected an IMAGE batch"):
        chk.check_images(torch.rand(2, 8, 8, 2))
    with pytest.raises(ValueError, match="15x16: too small to hold a face"):
        chk.check_face_images("Face Anonymize", "the image", torch.rand(1, 16, 15, 3))
