import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from faceanon_core.method.attention import (
    NaiveReferenceReader,
    ReferenceContext,
    attn1_names,
    capture_states,
    install_readers,
    project_reference,
    reference_attention,
    reference_attention_naive,
    route_states,
)
from faceanon_core.testing.tiny_models import tiny_unet_config


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(1)
    return UNet2DConditionModel(**tiny_unet_config()).eval()


def test_own_queries_equal_all_token_queries():
    """Queries from the own tokens only == the authors' 3N-token queries, first third kept."""
    torch.manual_seed(0)
    attn = Attention(query_dim=64, heads=4, dim_head=16)
    own, src, drv = (torch.randn(3, 50, 64) for _ in range(3))
    naive = reference_attention_naive(attn, own, src, drv)
    key, value = project_reference(attn, torch.cat([src, drv], dim=1))
    fast = reference_attention(attn, own, key, value)
    assert fast.shape == own.shape
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=1e-5)
    # ... and it really depends on the references: other driving states change the output.
    key2, value2 = project_reference(attn, torch.cat([src, drv.flip(1) * 2], dim=1))
    assert not torch.allclose(reference_attention(attn, own, key2, value2), fast, atol=1e-4)


def test_as_trained_routing_reads_first_attention_of_block(tiny_unet):
    names = attn1_names(tiny_unet)
    # SD 2.1-like: 2 attentions per down block, 1 in the middle, 3 per up block.
    assert len(names) == 2 * 2 + 1 + 2 * 3
    routing = route_states(names, "as_trained")
    assert routing["down_blocks.0.attentions.1.transformer_blocks.0.attn1"] == \
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    assert routing["up_blocks.1.attentions.2.transformer_blocks.0.attn1"] == \
        "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
    assert routing["mid_block.attentions.0.transformer_blocks.0.attn1"] == \
        "mid_block.attentions.0.transformer_blocks.0.attn1"
    assert all(".attentions.0." in ref for ref in routing.values())
    per_layer = route_states(names, "per_layer")
    assert per_layer == {name: name for name in names}
    with pytest.raises(ValueError, match="unknown state routing"):
        route_states(names, "sideways")


def test_capture_records_norm1_output_and_stops_early(tiny_unet):
    names = attn1_names(tiny_unet)
    wanted = sorted(set(route_states(names).values()))
    latents, context = torch.randn(2, 4, 8, 8), torch.randn(2, 1, 32)
    hooked, calls = {}, []

    def keep(name):
        def hook(_module, _inputs, output):
            hooked[name] = output
        return hook

    handles = []
    for name in names:
        block = tiny_unet.get_submodule(name.rsplit(".", 1)[0])
        handles.append(block.norm1.register_forward_hook(keep(name)))
    # The last up block's last resnet runs only after the last needed state: it must not run.
    handles.append(tiny_unet.up_blocks[1].resnets[2].register_forward_hook(lambda *a: calls.append(1)))
    before = dict(tiny_unet.attn_processors)
    try:
        states = capture_states(tiny_unet, latents, context, wanted)
    finally:
        for handle in handles:
            handle.remove()
    assert list(states) == [n for n in names if n in wanted]
    for name, state in states.items():
        assert torch.equal(state, hooked[name]), name
    assert calls == []
    assert {k: type(v) for k, v in tiny_unet.attn_processors.items()} == {k: type(v) for k, v in before.items()}
    with pytest.raises(ValueError, match="has no self-attention layer"):
        capture_states(tiny_unet, latents, context, ["down_blocks.7.attentions.0.transformer_blocks.0.attn1"])


@pytest.mark.parametrize("mode", ["as_trained", "per_layer"])
def test_unet_with_readers_equals_authors_formulation(mode):
    torch.manual_seed(2)
    unet = UNet2DConditionModel(**tiny_unet_config()).eval()
    routing = route_states(attn1_names(unet), mode)
    # Reference tokens per layer: [source, driving], each as many as the layer's own tokens.
    tokens = {ref: torch.randn(2, 2 * _tokens(ref), unet.get_submodule(ref).to_q.in_features)
              for ref in set(routing.values())}
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor(500), torch.randn(2, 2, 32)
    outputs = {}
    for reader in (None, NaiveReferenceReader):
        context = ReferenceContext()
        install_readers(unet, routing, context, reader_cls=reader)
        context.begin(tokens)
        with torch.no_grad():
            outputs[reader] = unet(x, t, encoder_hidden_states=ctx).sample
        context.end()
    torch.testing.assert_close(outputs[None], outputs[NaiveReferenceReader], atol=1e-5, rtol=1e-4)


def _tokens(ref: str) -> int:
    # 8x8 latents: 64 tokens in the first down block and the last up block, 16 elsewhere.
    return 64 if ref.startswith(("down_blocks.0", "up_blocks.1")) else 16


def test_reference_keys_values_projected_once_per_run():
    torch.manual_seed(3)
    unet = UNet2DConditionModel(**tiny_unet_config()).eval()
    routing = route_states(attn1_names(unet))
    context = ReferenceContext()
    install_readers(unet, routing, context)
    tokens = {ref: torch.randn(1, 2 * _tokens(ref), unet.get_submodule(ref).to_q.in_features)
              for ref in set(routing.values())}
    projected = []
    layer = "down_blocks.0.attentions.1.transformer_blocks.0.attn1"
    hook = unet.get_submodule(layer).to_k.register_forward_hook(lambda m, i, o: projected.append(i[0].shape[1]))
    context.begin(tokens)
    with torch.no_grad():
        for step in range(3):
            unet(torch.randn(1, 4, 8, 8), torch.tensor(900 - 300 * step), encoder_hidden_states=torch.randn(1, 2, 32))
    context.end()
    hook.remove()
    # Own tokens every step (64), reference tokens (128) only once.
    assert projected.count(128) == 1
    assert projected.count(64) == 3
    with pytest.raises(RuntimeError, match="without reference states"), torch.no_grad():
        unet(torch.randn(1, 4, 8, 8), 10, encoder_hidden_states=torch.randn(1, 2, 32))
