"""The trained model: three UNet-shaped nets, the frozen encoders, trainable sets, export.

The state routing, the state capture and the reference attention are those of
inference (``faceanon_core.method.attention``), and the reference tokens are assembled by the
pipeline's own ``faceanon_core.method.pipeline.reference_tokens``, so a trained model behaves
identically when loaded by ``FaceAnonPipeline.from_pretrained``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention

from faceanon_core.method.attention import ReferenceContext, attn1_names, capture_states, install_readers
from faceanon_core.method.loading import (
    UNET_PARTS,
    WEIGHTS_NAME,
    ModelFolderError,
    check_model_folder,
    default_scheduler_config,
    image_processor_class,
)
from faceanon_core.method.states import ReferenceStates, route_states, sorted_in_forward_order

from .config import ModelConfig

logger = logging.getLogger(__name__)

REFNET_TRAINABLE = ("attention", "transformer_blocks", "attentions", "all")


@dataclass
class InitSource:
    kind: str                   # faceanon | sd | unet
    root: Path
    unet_dirs: dict[str, Path]  # part -> folder
    routing: str | None = None  # recorded in a face-anon unet/config.json


def inspect_init(init_from: str | os.PathLike) -> InitSource:
    """What ``model.init_from`` points at: face-anon weights, an SD 2.x folder or a UNet folder."""
    root = Path(init_from).expanduser()
    if not root.is_dir():
        raise ModelFolderError(f"model.init_from: {root} is not a local folder (face-anon weights, an SD 2.x "
                               "pipeline folder with unet/, or a UNet folder)")
    if all((root / part / "config.json").is_file() for part in UNET_PARTS):
        check_model_folder(root).raise_if_bad()
        routing = json.loads((root / "unet" / "config.json").read_text()).get("faceanon_routing")
        return InitSource("faceanon", root, {p: root / p for p in UNET_PARTS}, routing)
    for folder, kind in ((root / "unet", "sd"), (root, "unet")):
        config = folder / "config.json"
        if config.is_file():
            try:
                name = json.loads(config.read_text()).get("_class_name")
            except ValueError as exc:
                raise ModelFolderError(f"{config} is not valid JSON ({exc})") from exc
            if name not in ("UNet2DConditionModel", "ReferenceNetModel"):
                raise ModelFolderError(f"{config} describes a {name}, not a UNet2DConditionModel")
            return InitSource(kind, root, {p: folder for p in UNET_PARTS})
    raise ModelFolderError(f"model.init_from: {root} holds neither unet/, referencenet/, conditioning_referencenet/ "
                           "(face-anon weights) nor unet/config.json (SD 2.x) nor config.json (a UNet)")


def _first_dir(*candidates) -> Path | None:
    for candidate in candidates:
        if candidate is not None and Path(candidate).expanduser().is_dir():
            return Path(candidate).expanduser()
    return None


def resolve_parts(cfg: ModelConfig, init: InitSource) -> dict[str, Path | None]:
    """Folders of the frozen parts and the scheduler (explicit config first, then the init folder)."""
    def given(value, what):
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_dir():
            raise ModelFolderError(f"model.{what}: {path} is not a local folder")
        return path

    vae = given(cfg.vae, "vae") or _first_dir(init.root / "vae")
    encoder = given(cfg.image_encoder, "image_encoder") or _first_dir(init.root / "image_encoder")
    extractor = given(cfg.feature_extractor, "feature_extractor") or _first_dir(init.root / "feature_extractor")
    if extractor is None and encoder is not None and (encoder / "preprocessor_config.json").is_file():
        extractor = encoder
    scheduler = given(cfg.scheduler, "scheduler") or _first_dir(init.root / "scheduler")
    missing = [name for name, path in (("vae", vae), ("image_encoder", encoder),
                                       ("feature_extractor", extractor)) if path is None]
    if missing:
        raise ModelFolderError(
            f"model.{', model.'.join(missing)} not found: {init.root} has no such subfolder; give local folders "
            "(the SD 2.x VAE, the CLIP ViT-L/14 vision encoder and its preprocessor config)")
    return {"vae": vae, "image_encoder": encoder, "feature_extractor": extractor, "scheduler": scheduler}


def scheduler_config(cfg: ModelConfig, scheduler_dir: Path | None) -> dict:
    config = default_scheduler_config()
    if scheduler_dir is not None and (scheduler_dir / "scheduler_config.json").is_file():
        config = json.loads((scheduler_dir / "scheduler_config.json").read_text())
    config = dict(config)
    if cfg.prediction_type:
        config["prediction_type"] = cfg.prediction_type
    return config


def load_models(cfg: ModelConfig) -> dict:
    """All parts for training: the three nets in float32, the frozen encoders, the scheduler config."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModel

    init = inspect_init(cfg.init_from)
    parts = resolve_parts(cfg, init)
    nets = {part: UNet2DConditionModel.from_pretrained(init.unet_dirs[part], torch_dtype=torch.float32)
            for part in UNET_PARTS}
    try:
        vae = AutoencoderKL.from_pretrained(parts["vae"])
        encoder = CLIPVisionModel.from_pretrained(parts["image_encoder"])
        extractor = image_processor_class().from_pretrained(parts["feature_extractor"])
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"could not load a frozen part: {exc}") from exc
    hidden = encoder.config.hidden_size
    if nets["unet"].config.cross_attention_dim != hidden:
        raise ModelFolderError(f"the UNet's cross_attention_dim ({nets['unet'].config.cross_attention_dim}) does "
                               f"not match the image encoder's hidden size ({hidden})")
    routing = cfg.routing or init.routing or "as_trained"
    return {**nets, "vae": vae, "image_encoder": encoder, "feature_extractor": extractor,
            "scheduler_config": scheduler_config(cfg, parts["scheduler"]), "routing": routing,
            "init": init, "part_dirs": parts}


def apply_conditioning_dropout(latents: torch.Tensor, embeds: torch.Tensor, drop: torch.Tensor):
    """The unconditional source branch of inference: latents and embedding exactly zero, together."""
    drop = drop.to(device=latents.device, dtype=torch.bool)
    zeros_l, zeros_e = torch.zeros_like(latents), torch.zeros_like(embeds)
    latents = torch.where(drop.view(-1, *([1] * (latents.ndim - 1))), zeros_l, latents)
    embeds = torch.where(drop.view(-1, *([1] * (embeds.ndim - 1))).to(embeds.device), zeros_e, embeds)
    return latents, embeds


class FaceAnonTrainModel(torch.nn.Module):
    """UNet + source ReferenceNet + driving ReferenceNet as one module (one DDP wrapper).

    ``forward`` runs both ReferenceNets at t = 0 (gradients flow into them), hands their
    states to the UNet's reference attention and returns the UNet's prediction.  The
    reference tokens stay attached until :meth:`release` (call it after ``backward``:
    gradient checkpointing recomputes the attention during the backward pass).
    """

    def __init__(self, unet, referencenet, conditioning_referencenet, routing: str = "as_trained"):
        super().__init__()
        self.unet, self.referencenet, self.conditioning_referencenet = unet, referencenet, conditioning_referencenet
        self.routing_mode = routing
        self.routing = route_states(attn1_names(unet), routing)
        self.reference_layers = sorted_in_forward_order(set(self.routing.values()))
        self.context = ReferenceContext()
        self.context.cache_projections = False
        self.install_readers()

    def install_readers(self) -> None:
        install_readers(self.unet, self.routing, self.context)

    def forward(self, noisy_latents, timesteps, source_latents, source_embeds, driving_latents, driving_embeds):
        from faceanon_core.method.pipeline import reference_tokens

        source = capture_states(self.referencenet, source_latents, source_embeds, self.reference_layers, timestep=0)
        driving = capture_states(self.conditioning_referencenet, driving_latents, driving_embeds,
                                 self.reference_layers, timestep=0)
        dtype = next(iter(source.values())).dtype
        tokens, context = reference_tokens(
            self.reference_layers, ReferenceStates(cond=source), driving, source_embeds, driving_embeds,
            noisy_latents.shape[0], False, dtype, noisy_latents.device)
        self.context.begin(tokens)
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=context.to(noisy_latents.dtype),
                         return_dict=False)[0]

    def release(self) -> None:
        self.context.end()

    @contextmanager
    def inference_readers(self, pipe):
        """Let ``pipe`` (built on these modules) sample; training readers come back afterwards."""
        install_readers(self.unet, pipe.routing, pipe.reference_context)
        try:
            yield pipe
        finally:
            self.install_readers()


def _select(refnet: torch.nn.Module, mode: str) -> list[torch.nn.Module]:
    if mode == "attention":
        return [m for n, m in refnet.named_modules() if isinstance(m, Attention) and ".transformer_blocks." in n]
    if mode == "transformer_blocks":
        return [m for m in refnet.modules() if isinstance(m, BasicTransformerBlock)]
    if mode == "attentions":
        return [m for n, m in refnet.named_modules() if re.search(r"\.attentions\.\d+$", n)]
    if mode == "all":
        return [refnet]
    raise ValueError(f"refnet_trainable must be one of {REFNET_TRAINABLE}, got {mode!r}")


def reachable_parameters(refnet: torch.nn.Module, layers: list[str]) -> set[int]:
    """ids of the ReferenceNet parameters that influence the captured states (a tiny probe).

    Layers after the last needed state never run (and the last one's attention beyond
    its input neither): they would receive no gradient, which DDP rejects.
    """
    config = refnet.config
    side = 2 ** (len(config.block_out_channels) - 1) * 2
    was = {p: p.requires_grad for p in refnet.parameters()}
    refnet.requires_grad_(True)
    try:
        generator = torch.Generator().manual_seed(0)
        param = next(refnet.parameters())
        latents = torch.randn(1, config.in_channels, side, side, generator=generator).to(param)
        embeds = torch.randn(1, 1, config.cross_attention_dim, generator=generator).to(param)
        with torch.enable_grad():
            states = capture_states(refnet, latents, embeds, layers)
            total = sum(s.float().square().mean() for s in states.values())
            params = [p for p in refnet.parameters()]
            grads = torch.autograd.grad(total, params, allow_unused=True)
        return {id(p) for p, g in zip(params, grads, strict=True) if g is not None}
    finally:
        for p, flag in was.items():
            p.requires_grad_(flag)


def configure_trainable(model: FaceAnonTrainModel, refnet_mode: str = "transformer_blocks") -> dict[str, int]:
    """The whole UNet; in each ReferenceNet the selected modules, minus those that cannot
    influence the result.  Returns the trainable parameter counts per part."""
    model.requires_grad_(False)
    model.unet.requires_grad_(True)
    counts = {"unet": sum(p.numel() for p in model.unet.parameters())}
    for part in ("referencenet", "conditioning_referencenet"):
        refnet = getattr(model, part)
        reachable = reachable_parameters(refnet, model.reference_layers)
        for module in _select(refnet, refnet_mode):
            for param in module.parameters():
                if id(param) in reachable:
                    param.requires_grad_(True)
        counts[part] = sum(p.numel() for p in refnet.parameters() if p.requires_grad)
    return counts


def part_state_dicts(model: FaceAnonTrainModel, state_dict: dict | None = None) -> dict[str, dict]:
    """Per part (``unet``, ``referencenet``, ``conditioning_referencenet``), its weights.

    ``state_dict``: the whole model's weights gathered by accelerate (keys ``part.name``), as the
    sharded backends need; else the modules' own. A gathered dict whose keys are not exactly
    the modules' is refused: exporting or validating wrong weights is worse than stopping.
    """
    if state_dict is None:
        return {part: getattr(model, part).state_dict() for part in UNET_PARTS}
    parts = {}
    for part in UNET_PARTS:
        prefix = part + "."
        got = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        want = set(getattr(model, part).state_dict())
        missing, unexpected = sorted(want - set(got)), sorted(set(got) - want)
        if missing or unexpected:
            raise ValueError(f"the gathered state dict does not match {part}: {len(missing)} missing "
                             f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
                             "nothing exported")
        parts[part] = got
    return parts


def export_folder(model: FaceAnonTrainModel, out: str | os.PathLike, *, part_dirs: dict | None = None,
                  scheduler_config: dict | None = None, dtype: torch.dtype | None = None,
                  state_dict: dict | None = None) -> Path:
    """Write the published layout: ``unet/``, ``referencenet/``, ``conditioning_referencenet/``
    (ReferenceNet configs named ``ReferenceNetModel``, the routing recorded in
    ``unet/config.json`` as ``faceanon_routing``) plus copies of ``vae/``,
    ``image_encoder/``, ``feature_extractor/`` and ``scheduler/`` when known.

    Written to a temporary folder first, then moved into place (an existing ``out`` is replaced).
    ``state_dict``: the full weights gathered by ``accelerator.get_state_dict`` (FSDP shards
    the modules themselves); see :func:`part_state_dicts`.
    """
    from safetensors.torch import save_file

    weights = part_state_dicts(model, state_dict)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for part in UNET_PARTS:
        net = getattr(model, part)
        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
                 for k, v in weights[part].items()}
        (tmp / part).mkdir()
        net.save_config(tmp / part)
        save_file(state, str(tmp / part / WEIGHTS_NAME), metadata={"format": "pt"})
        config_path = tmp / part / "config.json"
        config = json.loads(config_path.read_text())
        if part == "unet":
            config["_class_name"] = "UNet2DConditionModel"
            config["faceanon_routing"] = model.routing_mode
        else:
            config["_class_name"] = "ReferenceNetModel"  # as the published weights
            config.pop("faceanon_routing", None)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    for name, source in (part_dirs or {}).items():
        if name == "scheduler" or source is None:
            continue
        shutil.copytree(source, tmp / name, ignore=shutil.ignore_patterns(".*"))
    if scheduler_config is not None:
        (tmp / "scheduler").mkdir(exist_ok=True)
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2))
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
    return out
