"""Loading the published folder layout: local paths first, the hub only when asked.

The published weights are a folder with ``unet/``, ``referencenet/`` and
``conditioning_referencenet/`` (each ``config.json`` + ``diffusion_pytorch_model.safetensors``;
the ReferenceNet configs name a class ``ReferenceNetModel`` but hold a stock
``UNet2DConditionModel``).  The SD 2.x VAE, the scheduler and the CLIP ViT-L/14 vision
encoder come from subfolders of the same folder (the all-in-one layout written by
``faceanon models download``) or from separate paths / hub ids.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

logger = logging.getLogger(__name__)

UNET_PARTS = ("unet", "referencenet", "conditioning_referencenet")
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

# Hub sources that exist (the official stabilityai/stable-diffusion-2-1 repository was
# deleted in November 2025; any copy of the SD 1.x/2.x kl-f8 autoencoder works).
DEFAULT_HUB_SOURCES = {
    "model": "hkung/face-anon-simple",
    "vae": "stabilityai/sd-vae-ft-mse",
    "image_encoder": "openai/clip-vit-large-patch14",
}
MODELS_ENV = "FACEANON_MODELS"


class ModelFolderError(FileNotFoundError):
    """A model folder is missing, incomplete or malformed."""


def default_scheduler_config() -> dict:
    """The SD 2.1 scheduler config (v-prediction), shipped with the package."""
    text = resources.files("faceanon_core").joinpath("data/scheduler_config.json").read_text()
    return json.loads(text)


def default_models_dir() -> Path | None:
    """``$FACEANON_MODELS`` when set: the folder the CLI uses when ``--models`` is not given."""
    value = os.environ.get(MODELS_ENV)
    return Path(value).expanduser() if value else None


@dataclass
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class FolderReport:
    root: Path
    problems: list[Problem] = field(default_factory=list)
    found: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_bad(self) -> None:
        if self.problems:
            lines = "\n  ".join(str(p) for p in self.problems)
            raise ModelFolderError(
                f"the model folder {self.root} is not usable:\n  {lines}\n"
                f"Run `faceanon models check {self.root}` for a full report, or "
                "`faceanon models download --to DIR` (online) to fetch a complete folder."
            )


def _read_config(path: Path, report: FolderReport) -> dict | None:
    config_path = path / "config.json"
    if not config_path.is_file():
        report.problems.append(Problem(str(config_path), "missing (expected the model's config.json)"))
        return None
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        report.problems.append(Problem(str(config_path), f"not valid JSON ({exc})"))
        return None
    if not isinstance(config, dict):
        report.problems.append(Problem(str(config_path), "must hold a JSON object"))
        return None
    return config


def _safetensors_shapes(weights: Path, report: FolderReport) -> dict[str, tuple] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118 (safe_open is no dict)
    except Exception as exc:  # safetensors raises several private error types
        report.problems.append(Problem(str(weights), f"not a readable safetensors file ({exc})"))
        return None


def _compare_keys(weights: Path, expected: dict[str, tuple], found: dict[str, tuple], report: FolderReport):
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    for label, keys in (("missing tensors", missing), ("unexpected tensors", unexpected)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            report.problems.append(Problem(str(weights), f"{label}: {', '.join(keys[:3])}{more}"))
    if wrong:
        key = wrong[0]
        report.problems.append(
            Problem(str(weights), f"{len(wrong)} tensors have the wrong shape, e.g. {key}: "
                    f"{found[key]} in the file, {tuple(expected[key])} from config.json")
        )


def _check_diffusers_model(path: Path, cls, report: FolderReport) -> dict | None:
    """Config parses into ``cls`` and the weights' names and shapes match it (no weights loaded)."""
    from accelerate import init_empty_weights

    config = _read_config(path, report)
    if config is None:
        return None
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        report.problems.append(Problem(str(weights), "missing (expected the weights as safetensors)"))
        return config
    try:
        with init_empty_weights():
            model = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    except Exception as exc:
        report.problems.append(Problem(str(path / "config.json"), f"not a valid {cls.__name__} config ({exc})"))
        return config
    found = _safetensors_shapes(weights, report)
    if found is not None:
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        _compare_keys(weights, expected, found, report)
    report.found.append(str(path))
    return config


def check_model_folder(root: str | os.PathLike, *, require_extras: bool = False) -> FolderReport:
    """Validate a model folder without loading any weights.

    The three UNet-shaped parts are required.  ``vae/``, ``image_encoder/``,
    ``feature_extractor/`` and ``scheduler/`` are checked when present, and reported
    missing when ``require_extras`` (the all-in-one layout).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    root = Path(root).expanduser()
    report = FolderReport(root)
    if not root.is_dir():
        report.problems.append(Problem(str(root), "is not a folder (expected a model folder with unet/, "
                                                  "referencenet/ and conditioning_referencenet/)"))
        return report
    configs = {}
    for part in UNET_PARTS:
        if not (root / part).is_dir():
            report.problems.append(Problem(str(root / part), "missing folder (config.json + " + WEIGHTS_NAME + ")"))
            continue
        configs[part] = _check_diffusers_model(root / part, UNet2DConditionModel, report)
    shape_keys = ("block_out_channels", "layers_per_block", "cross_attention_dim", "down_block_types")
    if configs.get("unet"):
        for part in UNET_PARTS[1:]:
            other = configs.get(part)
            if other and any(other.get(k) != configs["unet"].get(k) for k in shape_keys):
                report.problems.append(Problem(str(root / part / "config.json"),
                                               "architecture differs from unet/config.json"))
    extras = {"vae": root / "vae", "image_encoder": root / "image_encoder",
              "feature_extractor": root / "feature_extractor", "scheduler": root / "scheduler"}
    if (extras["vae"]).is_dir():
        _check_diffusers_model(extras["vae"], AutoencoderKL, report)
    if extras["image_encoder"].is_dir():
        config = _read_config(extras["image_encoder"], report)
        if config is not None:
            has_weights = any((extras["image_encoder"] / n).is_file()
                              for n in ("model.safetensors", "model.safetensors.index.json"))
            if not has_weights:
                report.problems.append(Problem(str(extras["image_encoder"] / "model.safetensors"), "missing"))
            hidden = config.get("hidden_size") or config.get("vision_config", {}).get("hidden_size")
            unet_ctx = (configs.get("unet") or {}).get("cross_attention_dim")
            if hidden and unet_ctx and hidden != unet_ctx:
                report.problems.append(Problem(str(extras["image_encoder"] / "config.json"),
                                               f"hidden size {hidden} does not match the UNet's "
                                               f"cross_attention_dim {unet_ctx}"))
            report.found.append(str(extras["image_encoder"]))
    if extras["feature_extractor"].is_dir():
        if not (extras["feature_extractor"] / "preprocessor_config.json").is_file():
            report.problems.append(Problem(str(extras["feature_extractor"] / "preprocessor_config.json"), "missing"))
        else:
            report.found.append(str(extras["feature_extractor"]))
    if extras["scheduler"].is_dir():
        if not (extras["scheduler"] / "scheduler_config.json").is_file():
            report.problems.append(Problem(str(extras["scheduler"] / "scheduler_config.json"), "missing"))
        else:
            report.found.append(str(extras["scheduler"]))
    if require_extras:
        for name in ("vae", "image_encoder", "feature_extractor"):
            if not extras[name].is_dir():
                report.problems.append(Problem(str(extras[name]), "missing folder (needed unless given separately)"))
    return report


def _is_local(source) -> bool:
    return source is not None and Path(str(source)).expanduser().exists()


def _offline_message(what: str, source: str) -> str:
    return (
        f"{what} not found: {source!r} is not a local folder. Nothing is downloaded unless you ask: "
        "run `faceanon models download --to DIR` once while online and pass --models DIR "
        f"(or set ${MODELS_ENV}), or pass allow_download=True."
    )


def resolve_source(source: str | os.PathLike, what: str, allow_download: bool, allow_patterns=None) -> Path:
    """A local folder as is; a hub id only when downloads are allowed (into the hub cache)."""
    if _is_local(source):
        return Path(str(source)).expanduser()
    if not allow_download:
        raise ModelFolderError(_offline_message(what, str(source)))
    from huggingface_hub import snapshot_download

    logger.info("downloading %s from the hub: %s", what, source)
    return Path(snapshot_download(str(source), allow_patterns=allow_patterns))


def recorded_routing(root: str | os.PathLike, unet_config) -> str | None:
    """The state routing a model folder records, or None when it records none.

    ``routing`` in ``model_index.json`` (written by ``FaceAnonPipeline.save_pretrained``) and
    ``faceanon_routing`` in ``unet/config.json`` (written by the trainer's export); a folder in
    which the two disagree is malformed.
    """
    from_unet = getattr(unet_config, "faceanon_routing", None)
    index_path = Path(root) / "model_index.json"
    from_index = None
    if index_path.is_file():
        try:
            from_index = json.loads(index_path.read_text()).get("routing")
        except (OSError, ValueError) as exc:
            raise ModelFolderError(f"{index_path}: unreadable model_index.json ({exc})") from exc
    if from_index and from_unet and from_index != from_unet:
        raise ModelFolderError(
            f"{root}: model_index.json records routing {from_index!r} but unet/config.json records "
            f"faceanon_routing {from_unet!r}; fix one of them, or pass routing= explicitly"
        )
    return from_index or from_unet or None


def load_components(
    model: str | os.PathLike,
    *,
    vae: str | os.PathLike | None = None,
    image_encoder: str | os.PathLike | None = None,
    feature_extractor: str | os.PathLike | None = None,
    scheduler=None,
    torch_dtype=None,
    allow_download: bool = False,
) -> dict:
    """Load every part of the model; each may come from the model folder or its own source."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPVisionModel

    root = resolve_source(model, "the face-anon model", allow_download,
                          allow_patterns=[f"{p}/*" for p in UNET_PARTS])
    report = check_model_folder(root)
    report.raise_if_bad()
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    parts = {p: UNet2DConditionModel.from_pretrained(root / p, **kwargs) for p in UNET_PARTS}

    def pick(given, subfolder: str, default_hub: str, what: str) -> Path:
        if given is not None:
            return resolve_source(given, what, allow_download)
        if (root / subfolder).is_dir():
            return root / subfolder
        if allow_download:
            return resolve_source(default_hub, what, True)
        raise ModelFolderError(
            f"{what} not found: {root / subfolder} does not exist and no separate path was given. "
            f"Pass a local folder for it, or run `faceanon models download --to DIR` while online."
        )

    vae_path = pick(vae, "vae", DEFAULT_HUB_SOURCES["vae"], "the VAE")
    encoder_path = pick(image_encoder, "image_encoder", DEFAULT_HUB_SOURCES["image_encoder"],
                        "the CLIP vision encoder")
    if feature_extractor is None and not (root / "feature_extractor").is_dir():
        # The hub's CLIP repository holds the processor config beside the weights.
        feature_extractor = encoder_path if (encoder_path / "preprocessor_config.json").is_file() else None
    extractor_path = pick(feature_extractor, "feature_extractor", DEFAULT_HUB_SOURCES["image_encoder"],
                          "the CLIP image processor")
    if vae_path != root / "vae":
        vae_report = FolderReport(vae_path)
        _check_diffusers_model(vae_path, AutoencoderKL, vae_report)
        vae_report.raise_if_bad()
    try:
        vae_model = AutoencoderKL.from_pretrained(vae_path, **kwargs)
        encoder = CLIPVisionModel.from_pretrained(encoder_path, **kwargs)
        extractor = image_processor_class().from_pretrained(extractor_path)
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"could not load a model part: {exc}") from exc

    if scheduler is None:
        scheduler_dir = root / "scheduler"
        if (scheduler_dir / "scheduler_config.json").is_file():
            config = json.loads((scheduler_dir / "scheduler_config.json").read_text())
        else:
            config = default_scheduler_config()
        scheduler = DDPMScheduler.from_config(config)
    return {
        "unet": parts["unet"],
        "referencenet": parts["referencenet"],
        "conditioning_referencenet": parts["conditioning_referencenet"],
        "vae": vae_model,
        "image_encoder": encoder,
        "feature_extractor": extractor,
        "scheduler": scheduler,
    }


def save_clip_vision(encoder, folder: str | os.PathLike) -> None:
    """Save a CLIPVisionModel with the hub's key names (``vision_model.*``).

    transformers 5 writes the keys without that prefix, which transformers 4.x and
    ComfyUI's CLIP vision loader do not recognise; the published checkpoints have it.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder.config.save_pretrained(folder)
    state = {k if k.startswith("vision_model.") else f"vision_model.{k}": v.contiguous()
             for k, v in encoder.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def image_processor_class():
    """The PIL-based CLIP processor: the same pixels whether or not torchvision is installed.

    transformers 5 switches ``CLIPImageProcessor`` to a torchvision backend when it can,
    whose resizing differs slightly from PIL's; the authors' pipeline used PIL.
    """
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def download_models(
    to: str | os.PathLike,
    *,
    model_repo: str = DEFAULT_HUB_SOURCES["model"],
    vae_repo: str = DEFAULT_HUB_SOURCES["vae"],
    image_encoder_repo: str = DEFAULT_HUB_SOURCES["image_encoder"],
    snapshot_download=None,
) -> Path:
    """Fetch everything into one folder in the all-in-one layout (resumable: reruns continue).

    Only the files that are used are fetched: the three UNets, the VAE's safetensors, and
    the vision half of CLIP (the text tower is dropped when the encoder is re-saved).
    """
    if snapshot_download is None:
        from huggingface_hub import snapshot_download
    to = Path(to).expanduser()
    to.mkdir(parents=True, exist_ok=True)
    patterns = [f"{p}/config.json" for p in UNET_PARTS] + [f"{p}/{WEIGHTS_NAME}" for p in UNET_PARTS]
    snapshot_download(model_repo, local_dir=str(to), allow_patterns=patterns)
    snapshot_download(vae_repo, local_dir=str(to / "vae"), allow_patterns=["config.json", WEIGHTS_NAME])

    if not (to / "image_encoder" / "model.safetensors").is_file():
        from transformers import CLIPImageProcessor, CLIPVisionModel

        staging = to / ".staging_clip"
        snapshot_download(image_encoder_repo, local_dir=str(staging),
                          allow_patterns=["config.json", "preprocessor_config.json", "model.safetensors"])
        encoder = CLIPVisionModel.from_pretrained(staging)
        tmp = to / ".image_encoder.tmp"
        save_clip_vision(encoder, tmp)
        CLIPImageProcessor.from_pretrained(staging).save_pretrained(to / "feature_extractor")
        if (to / "image_encoder").exists():
            shutil.rmtree(to / "image_encoder")
        os.replace(tmp, to / "image_encoder")
        shutil.rmtree(staging, ignore_errors=True)

    scheduler_dir = to / "scheduler"
    scheduler_dir.mkdir(exist_ok=True)
    (scheduler_dir / "scheduler_config.json").write_text(json.dumps(default_scheduler_config(), indent=2))
    check_model_folder(to, require_extras=True).raise_if_bad()
    return to
