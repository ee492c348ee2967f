"""Model loading for the node pack: a FaceAnon model folder -> ComfyUI MODEL, ReferenceNets, VAE, CLIP vision.

Each UNet-shaped part (unet/, referencenet/, conditioning_referencenet/) loads through ComfyUI's own UNet loader
(``comfy.sd.load_diffusion_model_state_dict``, as core's UNETLoader) when its shapes are the stock SD 2.x ones
that ComfyUI detects (the published weights), so its dtype choice, patcher class and Dynamic VRAM apply. Shapes
its detection does not know (the tiny test models, trainer exports of other sizes, GroupNorm groups other than
32) go through the same steps with the model config read from config.json. v-prediction is set the way core's
ModelSamplingDiscrete node sets it. The VAE is ``comfy.sd.VAE`` and the image encoder ComfyUI's
``ClipVisionModel`` (its ``load_sd`` reports missing tensors). Missing or foreign tensors are refused before
anything is built; messages name files relative to ``models/faceanon/``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import comfy.clip_vision
import comfy.diffusers_convert
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import comfy.utils
import folder_paths
import torch

from ...faceanon_core.method.loading import WEIGHTS_NAME
from . import layout as comfy_layout

logger = logging.getLogger(__name__)

FOLDER_NAME = "faceanon"


def register_model_folder() -> None:
    """``models/faceanon`` (plus any ``faceanon:`` entries of extra_model_paths.yaml). Creates nothing."""
    folder_paths.add_model_folder_path(FOLDER_NAME, os.path.join(folder_paths.models_dir, FOLDER_NAME))


def list_model_folders() -> list[str]:
    """Model folders (relative names) under every registered ``faceanon`` root: those holding ``unet/config.json``."""
    found = []
    for root in folder_paths.get_folder_paths(FOLDER_NAME):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, _filenames in os.walk(root, followlinks=True):
            if os.path.isfile(os.path.join(dirpath, "unet", "config.json")):
                rel = os.path.relpath(dirpath, root)
                if rel != "." and rel not in found:
                    found.append(rel.replace(os.sep, "/"))
                dirnames[:] = []  # do not descend into a model folder
            else:
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return sorted(found)


DOWNLOAD_NAME = "face-anon-simple"  # the folder name the README uses
FOLDER_LABEL = f"models/{FOLDER_NAME}"  # how messages name the folder: never the server's absolute path
#: The hub repositories and the subfolder each goes to (huggingface_hub's `hf` CLI comes with ComfyUI's deps).
HUB_DOWNLOADS = (
    ("hkung/face-anon-simple", "", '--include "*/config.json" "*/diffusion_pytorch_model.safetensors"'),
    ("stabilityai/sd-vae-ft-mse", "/vae", "config.json diffusion_pytorch_model.safetensors"),
    ("openai/clip-vit-large-patch14", "/image_encoder", "config.json preprocessor_config.json model.safetensors"),
)


def download_commands() -> str:
    target = f"ComfyUI/{FOLDER_LABEL}/{DOWNLOAD_NAME}"
    return "; ".join(f"hf download {repo} {files} --local-dir {target}{sub}" for repo, sub, files in HUB_DOWNLOADS)


def missing_folder_message(name: str | None) -> str:
    """What a user with no (or another) model folder reads: where the folder goes and how to fetch it."""
    found = list_model_folders()
    what = (f"the FaceAnon model folder {name!r} is not one of the installed folders" if name
            else "no FaceAnon model folder was chosen")
    return (f"{what} (installed under {FOLDER_LABEL}/: {', '.join(found) if found else 'none'}). A model folder "
            f"is {FOLDER_LABEL}/<name>/ with unet/, referencenet/, conditioning_referencenet/ (each config.json + "
            "diffusion_pytorch_model.safetensors) and optionally vae/ and image_encoder/ (or a 'faceanon:' entry of "
            "extra_model_paths.yaml). The published weights are the hub repositories "
            f"{', '.join(repo for repo, _, _ in HUB_DOWNLOADS)}; fetch them from the folder that holds ComfyUI "
            f"with: {download_commands()}. Then refresh the node list (R) or restart ComfyUI.")


def resolve_model_folder(name: str) -> Path:
    """The folder of an installed model name, exactly as the list offers it (no paths, no other spellings)."""
    if not isinstance(name, str) or not name or name not in list_model_folders():
        raise FileNotFoundError(missing_folder_message(name or None))
    for root in folder_paths.get_folder_paths(FOLDER_NAME):
        path = Path(root) / name
        if (path / "unet" / "config.json").is_file():
            return path
    raise FileNotFoundError(missing_folder_message(name))


class FaceAnonSD2Config(comfy.supported_models.SD20):
    """SD 2.x settings (fp32 attention, SD latent format) without SD20's forced 64-channel heads, for UNet-shaped
    parts whose shapes ComfyUI's detection does not know (only the stock SD 2.x shapes are detected)."""

    unet_extra_config = {"attn_precision": torch.float32}  # noqa: RUF012 (ComfyUI's class attribute)
    prediction = comfy.model_base.ModelType.V_PREDICTION

    def model_type(self, state_dict, prefix=""):
        return self.prediction  # from the folder's scheduler config, not guessed from the weights


@dataclass
class FaceAnonRefNet:
    """``FACEANON_REFNET``: a ReferenceNet as a ComfyUI ModelPatcher plus what the capture needs."""

    patcher: comfy.model_patcher.ModelPatcher
    role: str  # "source" or "driving"
    folder: str
    layout: dict = field(repr=False)
    routing_mode: str = "as_trained"
    resolution: int = 512

    @property
    def latent_format(self):
        return self.patcher.model.latent_format

    def _comfy_cache_tensors(self) -> list:
        """For ComfyUI's RAM-pressure output cache: none (the weights belong to ComfyUI's model management, as a
        MODEL's do)."""
        return []


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from exc


def _prediction_type(root: Path) -> comfy.model_base.ModelType:
    config = root / "scheduler" / "scheduler_config.json"
    prediction = _read_json(config).get("prediction_type", "v_prediction") if config.is_file() else "v_prediction"
    if prediction == "v_prediction":
        return comfy.model_base.ModelType.V_PREDICTION
    if prediction == "epsilon":
        return comfy.model_base.ModelType.EPS
    raise ValueError(f"{config}: prediction_type {prediction!r} is not supported (v_prediction or epsilon)")


def expected_tensors(cfg: dict) -> set[str]:
    """Every tensor name of the diffusers UNet that config.json describes, from a model built on the meta device
    (no memory, no weights): independent of how a ComfyUI version builds its own model (the newest one creates
    Linear weights lazily, so its ``state_dict()`` would not list them; its loader only logs what it could not
    place). ComfyUI's key map cannot serve: it also lists optional modules the architecture lacks."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in cfg.items() if not k.startswith("_") and not k.startswith("faceanon")}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    return set(unet.state_dict())


def check_tensors(sd: dict, expected: set, where: str) -> None:
    """Refuse a weights file whose tensor names differ from the UNet its config.json describes."""
    unknown = sorted(set(sd) - expected)
    missing = sorted(expected - set(sd))
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors of the UNet described by config.json are missing, e.g. {missing[:3]}")
    if unknown:
        problems.append(f"{len(unknown)} tensors do not belong to the UNet described by config.json, "
                        f"e.g. {unknown[:3]}")
    if problems:
        raise ValueError(f"{where}: {'; '.join(problems)}. The file is incomplete or belongs to another model: "
                         "download the model folder again.")


def _core_load(sd: dict, unet_config: dict, model_options: dict):
    """ComfyUI's UNETLoader path (``comfy.sd.load_diffusion_model_state_dict``: diffusers names, weight-dtype aware
    dtype choice, its own patcher class, Dynamic VRAM on the newest ComfyUI), or None where its detection does
    not know these shapes (only the stock SD 2.x sizes are detected) or detects another layout than config.json."""
    patcher = comfy.sd.load_diffusion_model_state_dict(dict(sd), model_options=dict(model_options))
    if patcher is None:
        return None
    if comfy_layout.attn1_layout(patcher.model.model_config.unet_config) != comfy_layout.attn1_layout(unet_config):
        return None
    return patcher


def _config_load(sd: dict, keymap: dict, model_config, groups: int, model_options: dict):
    """The same steps as ComfyUI's loader for shapes its detection does not know (test models, trainer exports of
    other sizes, GroupNorm groups other than 32): the model config comes from config.json instead of detection;
    dtype choice (with the file's weight dtype), the patcher class (``CoreModelPatcher`` where this ComfyUI has
    it) and weight assignment are ComfyUI's."""
    new_sd = {keymap[k]: v for k, v in sd.items()}
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    dtype = model_options.get("dtype") or mm.unet_dtype(
        model_params=comfy.utils.calculate_parameters(new_sd),
        supported_dtypes=list(model_config.supported_inference_dtypes), weight_dtype=comfy.utils.weight_dtype(new_sd))
    manual_cast = mm.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    model = model_config.get_model(new_sd, "").to(offload_device)
    if groups != comfy_layout.COMFY_GROUPS:  # ComfyUI builds GroupNorm(32, ...); honour the config
        for module in model.diffusion_model.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.num_groups = groups
    patcher_class = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    patcher = patcher_class(model, load_device=load_device, offload_device=offload_device)
    if getattr(patcher, "is_dynamic", lambda: False)():
        model.load_model_weights(new_sd, "", assign=True)
    else:
        model.load_model_weights(new_sd, "")
    return patcher


def load_unet_part(folder: Path, model_type=comfy.model_base.ModelType.V_PREDICTION, *,
                   model_options: dict | None = None):
    """One UNet-shaped part (config.json + safetensors) -> (ModelPatcher, diffusers config, unet_config).

    Stock shapes load through ComfyUI's own UNet loader; the prediction type it cannot detect reliably is set
    the way core's ModelSamplingDiscrete node sets it (an object patch of ``model_sampling``).
    """
    cfg = _read_json(folder / "config.json")
    try:
        unet_config = comfy_layout.comfy_unet_config(cfg)
    except ValueError as exc:
        raise ValueError(f"{folder / 'config.json'}: {exc}") from exc
    model_config = FaceAnonSD2Config(unet_config)
    model_config.prediction = model_type
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing")
    sd = comfy.utils.load_torch_file(str(weights), safe_load=True)
    keymap = comfy.utils.unet_to_diffusers(model_config.unet_config)  # diffusers name -> ComfyUI name
    check_tensors(sd, expected_tensors(cfg), str(weights))
    options = dict(model_options or {})
    groups = int(cfg.get("norm_num_groups", comfy_layout.COMFY_GROUPS))
    patcher = _core_load(sd, unet_config, options) if groups == comfy_layout.COMFY_GROUPS else None
    if patcher is None:
        patcher = _config_load(sd, keymap, model_config, groups, options)
    if patcher.model.model_type != model_type:
        patcher.add_object_patch("model_sampling",
                                 comfy.model_base.model_sampling(patcher.model.model_config, model_type))
    return patcher, cfg, unet_config


def load_vae(folder: Path):
    cfg = _read_json(folder / "config.json")
    try:
        config = comfy_layout.comfy_vae_config(cfg)
    except ValueError as exc:
        raise ValueError(f"{folder / 'config.json'}: {exc}") from exc
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing")
    sd = comfy.utils.load_torch_file(str(weights), safe_load=True)
    converted = set(comfy.diffusers_convert.convert_vae_state_dict(dict(sd))) if any(
        k.startswith("decoder.up_blocks.") for k in sd) else set(sd)
    vae = comfy.sd.VAE(sd=sd, config=config)
    missing = sorted(set(vae.first_stage_model.state_dict()) - converted)
    if missing:
        raise ValueError(f"{weights}: {len(missing)} VAE tensors are missing for config.json, e.g. {missing[:3]}")
    return vae


def load_clip_vision(encoder: Path, extractor: Path | None):
    cfg = _read_json(encoder / "config.json")
    if "vision_config" in cfg:  # a full CLIPConfig
        cfg = dict(cfg["vision_config"], projection_dim=cfg.get("projection_dim", cfg["vision_config"].get(
            "projection_dim", 768)))
    cfg.setdefault("model_type", "clip_vision_model")
    if extractor is not None and (extractor / "preprocessor_config.json").is_file():
        pre = _read_json(extractor / "preprocessor_config.json")
        cfg["image_mean"] = pre.get("image_mean", cfg.get("image_mean"))
        cfg["image_std"] = pre.get("image_std", cfg.get("image_std"))
    weights = encoder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing")
    sd = comfy.utils.load_torch_file(str(weights), safe_load=True)
    if not any(k.startswith("vision_model.") for k in sd):
        sd = {f"vision_model.{k}": v for k, v in sd.items()}
    with tempfile.TemporaryDirectory(prefix="faceanon_clip_") as tmp:
        path = os.path.join(tmp, "config.json")
        with open(path, "w") as handle:
            json.dump({k: v for k, v in cfg.items() if v is not None}, handle)
        clip = comfy.clip_vision.ClipVisionModel(path)
    missing, _unexpected = clip.load_sd(sd)
    missing = [k for k in missing if not k.startswith("visual_projection")]  # the projection is not used
    if missing:
        raise ValueError(f"{weights}: {len(missing)} CLIP vision tensors are missing, e.g. {missing[:3]}")
    return clip


def check_folder(root: Path) -> None:
    """Validate the layout with the core's checker (every problem at once, with the expected paths)."""
    from ...faceanon_core.method.loading import check_model_folder  # noqa: PLC0415 (imports diffusers lazily)

    report = check_model_folder(root)
    if not report.ok:
        lines = "; ".join(str(problem) for problem in report.problems)
        raise ValueError(f"the model folder is not usable: {lines}. Download the missing parts again "
                         f"({download_commands()}).")


def public_error(exc: Exception, root: Path, name: str) -> Exception:
    """A built-in exception whose text names files relative to ``models/faceanon/`` (the pack's exception classes
    live in a module ComfyUI imports under the pack's absolute path, which would show in the type name)."""
    text = str(exc).replace(str(root), f"{FOLDER_LABEL}/{name}")
    for folder in folder_paths.get_folder_paths(FOLDER_NAME):
        text = text.replace(str(Path(folder)), FOLDER_LABEL)
    kind = FileNotFoundError if isinstance(exc, FileNotFoundError) else ValueError
    return kind(text)


def load_model_folder(name: str):
    """-> (MODEL, source REFNET, driving REFNET, VAE or None, CLIP_VISION or None)."""
    root = resolve_model_folder(name)
    try:
        return _load_model_folder(root)
    except (OSError, ValueError, RuntimeError) as exc:
        raise public_error(exc, root, name) from None


def _load_model_folder(root: Path):
    check_folder(root)
    model_type = _prediction_type(root)
    unet, cfg, unet_config = load_unet_part(root / "unet", model_type)
    layout = comfy_layout.attn1_layout(unet_config)
    routing_mode = cfg.get("faceanon_routing") or "as_trained"
    resolution = int(cfg.get("sample_size", 64)) * 8
    refnets = []
    for part, role in (("referencenet", "source"), ("conditioning_referencenet", "driving")):
        patcher, part_cfg, part_unet_config = load_unet_part(root / part, model_type)
        if comfy_layout.attn1_layout(part_unet_config) != layout:
            raise ValueError(f"{part}/config.json: the ReferenceNet's layers differ from the UNet's")
        refnets.append(FaceAnonRefNet(patcher=patcher, role=role, folder=str(root), layout=layout,
                                      routing_mode=routing_mode, resolution=resolution))
    vae = load_vae(root / "vae") if (root / "vae").is_dir() else None
    clip = None
    if (root / "image_encoder").is_dir():
        extractor = root / "feature_extractor"
        clip = load_clip_vision(root / "image_encoder", extractor if extractor.is_dir() else None)
    if vae is None or clip is None:
        logger.info("FaceAnon: %s has no %s; connect ComfyUI's own loaders for them", root.name,
                    " and ".join(n for n, v in (("vae/", vae), ("image_encoder/", clip)) if v is None))
    return unet, refnets[0], refnets[1], vae, clip


def validate_model_folder(model_folder) -> bool | str:
    """True, or the message that says where the folder goes and which command fetches it."""
    try:
        resolve_model_folder(model_folder)
    except (FileNotFoundError, ValueError) as exc:
        return str(exc)
    return True
