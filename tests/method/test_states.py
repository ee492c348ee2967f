import pytest
import torch

from faceanon_core.method.states import (
    ReferenceStates,
    StatesMeta,
    expand_batch,
    forward_order_key,
    mix_embeds,
    mix_states,
    sorted_in_forward_order,
)

NAMES = [
    "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
    "mid_block.attentions.0.transformer_blocks.0.attn1",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1",
    "down_blocks.0.attentions.1.transformer_blocks.0.attn1",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
]


def test_eq1_embedding_degree():
    z = torch.randn(2, 1, 8)
    assert torch.equal(mix_embeds(z, 0.0), z)
    assert torch.equal(mix_embeds(z, 1.0), torch.zeros_like(z))
    torch.testing.assert_close(mix_embeds(z, 1.25), -0.25 * z)


def test_eq2_states_degree_keeps_removes_and_extrapolates():
    cond, uncond = torch.randn(2, 5, 8), torch.randn(1, 5, 8)
    torch.testing.assert_close(mix_states(cond, uncond, 0.0), cond)
    torch.testing.assert_close(mix_states(cond, uncond, 1.0), uncond.expand_as(cond))
    # d > 1 goes past the unconditional states, on the line through both.
    torch.testing.assert_close(mix_states(cond, uncond, 1.5), uncond + 0.5 * (uncond - cond))


def test_forward_order_is_down_mid_up():
    ordered = sorted_in_forward_order(NAMES)
    assert ordered[0].startswith("down_blocks.0.attentions.0")
    assert ordered[1].startswith("down_blocks.0.attentions.1")
    assert ordered[3].startswith("mid_block")
    assert ordered[-1].startswith("up_blocks")
    with pytest.raises(ValueError, match="not the name of a UNet self-attention layer"):
        forward_order_key("down_blocks.0.resnets.0")


def test_reference_states_mix_save_load(tmp_path):
    cond = {name: torch.randn(2, 4, 8) for name in NAMES}
    uncond = {name: torch.randn(1, 4, 8) for name in NAMES}
    states = ReferenceStates(cond=cond, uncond=uncond)
    assert states.layer_names == sorted_in_forward_order(NAMES)
    assert states.batch_size == 2
    mixed = states.mixed(1.0)
    for name in NAMES:
        torch.testing.assert_close(mixed.cond[name], uncond[name].expand(2, -1, -1))
    assert mixed.meta.degree == 1.0 and states.meta.degree is None  # mixing makes new states
    path = tmp_path / "states.safetensors"
    mixed.save(path)
    loaded = ReferenceStates.load(path)
    assert loaded.layer_names == mixed.layer_names
    for name in NAMES:
        assert torch.equal(loaded.cond[name], mixed.cond[name])
        assert torch.equal(loaded.uncond[name], mixed.uncond[name])
    assert not list(tmp_path.glob(".*.tmp"))


def test_reference_states_metadata_is_typed_and_saved_with_them(tmp_path):
    """The capture's facts (role, routing, the degrees) are a StatesMeta, saved and read back as such; a file
    written by 0.2 (degrees as strings) still loads; a dict or an unknown key is refused, not carried along."""
    cond, uncond = {NAMES[0]: torch.randn(2, 3, 4)}, {NAMES[0]: torch.randn(1, 3, 4)}
    states = ReferenceStates(cond=cond, uncond=uncond,
                             meta=StatesMeta(role="source", routing="per_layer", embed_degree=1.25))
    mixed = states.mixed(1.25)
    assert mixed.meta == StatesMeta(role="source", routing="per_layer", embed_degree=1.25, degree=1.25)
    assert mixed.select([1]).meta == mixed.meta and mixed.to(dtype=torch.float64).meta == mixed.meta
    mixed.save(tmp_path / "new.safetensors")
    assert ReferenceStates.load(tmp_path / "new.safetensors").meta == mixed.meta

    import json

    from safetensors.torch import save_file

    old = {"role": "source", "routing": "as_trained", "embed_degree": "0.5", "degree": "0.5"}
    save_file({f"cond/{NAMES[0]}": cond[NAMES[0]]}, str(tmp_path / "old.safetensors"),
              metadata={"faceanon_states": json.dumps(old)})
    loaded = ReferenceStates.load(tmp_path / "old.safetensors").meta
    assert loaded == StatesMeta(role="source", routing="as_trained", embed_degree=0.5, degree=0.5)
    with pytest.raises(ValueError, match="unknown reference-states metadata"):
        StatesMeta.from_dict({"embed_degre": 0.5})
    with pytest.raises(TypeError, match="StatesMeta"):
        ReferenceStates(cond=cond, meta={"embed_degree": "0.5"})


def test_reference_states_errors(tmp_path):
    with pytest.raises(ValueError, match="different layers"):
        ReferenceStates(cond={NAMES[0]: torch.zeros(1, 1, 1)}, uncond={NAMES[1]: torch.zeros(1, 1, 1)})
    with pytest.raises(ValueError, match="no unconditional branch"):
        ReferenceStates(cond={NAMES[0]: torch.zeros(1, 1, 1)}).mixed(1.0)
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(other))
    with pytest.raises(ValueError, match="not a reference-states file"):
        ReferenceStates.load(other)


def test_expand_batch_broadcasts_one_and_names_both_sizes():
    assert expand_batch(torch.zeros(1, 3), 4, "x").shape == (4, 3)
    assert expand_batch(torch.zeros(4, 3), 4, "x").shape == (4, 3)
    with pytest.raises(ValueError, match="batch of 2 but 3 images"):
        expand_batch(torch.zeros(2, 3), 3, "the source image")
