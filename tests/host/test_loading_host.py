"""The Model Loader on ComfyUI itself, in-process (COMFYUI_PATH; skipped without it).

Weight files in another dtype than the inference dtype (fp16 files on the CPU host, fp32 files forced to bf16),
and files with a missing or a foreign tensor: refused before anything runs, the file named relative to
models/faceanon/ (never the server's absolute path).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.host

PARTS = ("unet", "referencenet", "conditioning_referencenet")
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """models/faceanon with the tiny model as written ("tiny"), registered with ComfyUI's folder_paths."""
    from helpers.host.comfy_inprocess import import_pack
    from helpers.host.tiny_folder import write_host_model_folder

    import_pack()
    import folder_paths

    base = tmp_path_factory.mktemp("loading") / "models" / "faceanon"
    write_host_model_folder(base / "tiny", seed=0)
    folder_paths.add_model_folder_path("faceanon", str(base))
    return base


def variant(root: Path, name: str, change) -> str:
    """A copy of the tiny folder whose UNet-shaped weight files went through ``change(part, state_dict)``."""
    import shutil

    from safetensors.torch import load_file, save_file

    target = root / name
    if not target.exists():
        shutil.copytree(root / "tiny", target)
        for part in PARTS:
            save_file(change(part, load_file(target / part / WEIGHTS)), target / part / WEIGHTS)
    return name


def models():
    from faceanon_pack_under_test.nodes.backend import loading

    return loading


def weights_of(patcher) -> dict:
    return {k: v.detach().float().clone() for k, v in patcher.model.diffusion_model.state_dict().items()}


def forward(patcher) -> torch.Tensor:
    """One noise prediction of the UNet at t = 0.5 in the dtype ComfyUI chose for it."""
    import comfy.model_management as mm

    mm.load_models_gpu([patcher])
    model = patcher.model
    dtype = model.manual_cast_dtype or model.get_dtype()
    device = patcher.load_device
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=gen).to(device, dtype)
    context = torch.randn(1, 2, model.model_config.unet_config["context_dim"], generator=gen).to(device, dtype)
    with torch.no_grad():
        out = model.diffusion_model(x, timesteps=torch.full((1,), 500.0, device=device), context=context,
                                    transformer_options={})
    return out.float().cpu()


def test_fp16_files_load_in_the_dtype_comfyui_chooses(root):
    import comfy.model_management as mm

    half = variant(root, "half", lambda part, sd: {k: v.half() for k, v in sd.items()})
    ref = models().load_model_folder("tiny")
    got = models().load_model_folder(half)
    for a, b in zip(ref[:3], got[:3], strict=True):
        pa, pb = getattr(a, "patcher", a), getattr(b, "patcher", b)
        chosen = mm.unet_dtype(model_params=0, supported_dtypes=list(pb.model.model_config.supported_inference_dtypes),
                               weight_dtype=torch.float16)
        assert pb.model.get_dtype() == chosen  # ComfyUI's choice for fp16 files on this device
        wa, wb = weights_of(pa), weights_of(pb)
        assert set(wa) == set(wb)
        # fp16 files hold the fp32 weights rounded to fp16, nothing else
        assert all(torch.equal(wb[k], wa[k].half().float()) for k in wa)
    out_ref, out_half = forward(ref[0]), forward(got[0])
    assert torch.isfinite(out_half).all()
    # fp16-rounded weights (relative error <= 2**-11 each) move a unit-scale output by far less than 0.05
    assert float((out_ref - out_half).abs().max()) < 0.05


def test_fp32_files_forced_to_bf16(root):
    m = models()
    folder = root / "tiny"
    patcher, _cfg, _unet_config = m.load_unet_part(folder / "unet",
                                                   model_options={"dtype": torch.bfloat16})
    assert patcher.model.get_dtype() == torch.bfloat16
    assert next(patcher.model.diffusion_model.parameters()).dtype == torch.bfloat16
    out = forward(patcher)
    ref = forward(m.load_unet_part(folder / "unet")[0])
    assert torch.isfinite(out).all()
    # bf16 keeps 8 mantissa bits (relative error 2**-8 per weight and activation)
    assert float((out - ref).abs().max()) < 0.25 * float(ref.abs().max()) + 0.05


def test_a_missing_tensor_is_refused_naming_the_file_in_the_model_folder(root):
    def drop(part, sd):
        if part == "referencenet":
            sd.pop(sorted(k for k in sd if k.endswith("attn1.to_k.weight"))[0])
        return sd

    name = variant(root, "incomplete", drop)
    with pytest.raises(ValueError) as caught:
        models().load_model_folder(name)
    text = str(caught.value)
    assert type(caught.value) is ValueError
    assert "models/faceanon/incomplete/referencenet/diffusion_pytorch_model.safetensors" in text
    assert "missing" in text and "attn1.to_k.weight" in text
    assert str(root) not in text


def test_a_foreign_tensor_is_refused(root):
    def add(part, sd):
        if part == "unet":
            sd["lora_unet_extra.weight"] = torch.zeros(2)
        return sd

    with pytest.raises(ValueError, match=r"models/faceanon/foreign/unet/diffusion_pytorch_model\.safetensors: "
                                         r".*lora_unet_extra\.weight"):
        models().load_model_folder(variant(root, "foreign", add))


def test_the_part_loader_refuses_a_missing_tensor_itself(root):
    """load_unet_part checks the file against the architecture of its config.json (not the built model)."""
    folder = root / variant(root, "incomplete2", lambda part, sd: {k: v for k, v in sd.items()
                                                                    if not k.endswith("attn2.to_v.weight")})
    with pytest.raises(ValueError, match=r"tensors of the UNet described by config.json are missing.*attn2\.to_v"):
        models().load_unet_part(folder / "unet")


def test_the_unets_are_v_prediction_models(root):
    import comfy.model_sampling

    unet = models().load_model_folder("tiny")[0]
    assert isinstance(unet.get_model_object("model_sampling"), comfy.model_sampling.V_PREDICTION)
