import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from faceanon_core.method.loading import (
    ModelFolderError,
    check_model_folder,
    default_scheduler_config,
    download_models,
    load_components,
)


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_model_dir, target)
    return target


def test_published_layout_loads_into_stock_unets(tiny_model_dir):
    config = json.loads((tiny_model_dir / "referencenet" / "config.json").read_text())
    assert config["_class_name"] == "ReferenceNetModel"
    parts = load_components(tiny_model_dir)
    assert type(parts["referencenet"]).__name__ == "UNet2DConditionModel"
    weights = load_file(str(tiny_model_dir / "referencenet" / "diffusion_pytorch_model.safetensors"))
    for key, value in parts["referencenet"].state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert parts["scheduler"].config.prediction_type == "v_prediction"


def test_scheduler_config_ships_with_the_package():
    config = default_scheduler_config()
    assert config["prediction_type"] == "v_prediction" and config["beta_schedule"] == "scaled_linear"


def test_vae_and_encoder_from_separate_paths(model_copy, tmp_path):
    for part in ("vae", "image_encoder", "feature_extractor"):
        shutil.move(model_copy / part, tmp_path / part)
    with pytest.raises(ModelFolderError, match="vae"):
        load_components(model_copy)
    parts = load_components(model_copy, vae=tmp_path / "vae", image_encoder=tmp_path / "image_encoder",
                            feature_extractor=tmp_path / "feature_extractor")
    assert parts["vae"].config.latent_channels == 4


def test_missing_and_malformed_files_are_named(model_copy):
    (model_copy / "referencenet" / "diffusion_pytorch_model.safetensors").unlink()
    (model_copy / "unet" / "config.json").write_text("{not json")
    report = check_model_folder(model_copy)
    text = "\n".join(map(str, report.problems))
    assert "referencenet/diffusion_pytorch_model.safetensors: missing" in text
    assert "unet/config.json: not valid JSON" in text
    with pytest.raises(ModelFolderError, match="faceanon models check"):
        load_components(model_copy)


def test_weights_that_do_not_match_the_config_are_reported(model_copy):
    path = model_copy / "conditioning_referencenet" / "diffusion_pytorch_model.safetensors"
    weights = load_file(str(path))
    key = next(k for k in weights if k.endswith("to_q.weight"))
    weights[key] = torch.zeros(3, 3)
    weights.pop(next(k for k in weights if k.endswith("to_k.weight")))
    save_file(weights, str(path))
    problems = "\n".join(map(str, check_model_folder(model_copy).problems))
    assert "missing tensors" in problems and "wrong shape" in problems and key in problems


def test_truncated_safetensors_is_reported(model_copy):
    path = model_copy / "vae" / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    assert "not a readable safetensors file" in "\n".join(map(str, check_model_folder(model_copy).problems))


def test_no_download_unless_asked(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("downloaded"))
    with pytest.raises(ModelFolderError, match="Nothing is downloaded unless you ask"):
        load_components("someone/some-model")


def test_download_writes_the_all_in_one_layout(tiny_model_dir, tmp_path):
    """The download logic with a stand-in for the hub that serves the tiny model's files."""
    calls = []

    def fake_snapshot_download(repo_id, local_dir, allow_patterns):
        calls.append(repo_id)
        source = {"face/anon": tiny_model_dir, "vae/repo": tiny_model_dir / "vae"}.get(repo_id)
        if repo_id == "clip/repo":
            shutil.copytree(tiny_model_dir / "image_encoder", local_dir, dirs_exist_ok=True)
            shutil.copy(tiny_model_dir / "feature_extractor" / "preprocessor_config.json", local_dir)
            return local_dir
        import fnmatch

        for file in source.rglob("*"):
            rel = file.relative_to(source).as_posix()
            if file.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                target = type(source)(local_dir) / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(file, target)
        return local_dir

    target = tmp_path / "downloaded"
    download_models(target, model_repo="face/anon", vae_repo="vae/repo", image_encoder_repo="clip/repo",
                    snapshot_download=fake_snapshot_download)
    assert calls == ["face/anon", "vae/repo", "clip/repo"]
    assert check_model_folder(target, require_extras=True).ok
    assert not (target / ".staging_clip").exists()
    # Only the used files came along (the fake repo also holds vae/, image_encoder/, ...).
    assert sorted(p.name for p in (target / "unet").iterdir()) == ["config.json",
                                                                   "diffusion_pytorch_model.safetensors"]
