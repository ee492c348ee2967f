"""Training configuration: dataclasses, YAML/TOML files, ``section.key=value`` overrides."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration file or override is invalid."""


@dataclass
class ModelConfig:
    # A local folder: the published face-anon layout (fine-tuning), an SD 2.x pipeline folder
    # (its unet/ initialises all three nets) or a bare UNet folder (config.json + weights).
    init_from: str = ""
    vae: str | None = None                # default: <init_from>/vae
    image_encoder: str | None = None      # default: <init_from>/image_encoder (CLIP ViT-L/14 vision)
    feature_extractor: str | None = None  # default: <init_from>/feature_extractor or the encoder folder
    scheduler: str | None = None          # folder with scheduler_config.json; default SD 2.1's
    prediction_type: str | None = None    # override the scheduler's: v_prediction | epsilon
    routing: str | None = None            # as_trained | per_layer; default: recorded in init, else as_trained
    refnet_trainable: str = "transformer_blocks"  # attention | transformer_blocks | attentions | all
    gradient_checkpointing: bool = False  # on the UNet
    vae_latents: str = "sample"           # sample | mean (of the VAE posterior)
    frozen_dtype: str | None = None       # VAE/CLIP dtype; default: the mixed-precision dtype


@dataclass
class DataConfig:
    train: str = ""                 # JSON-lines triplets
    images: str | None = None       # folder the paths are relative to; default: the file's folder
    resolution: int = 512
    resize: bool = False            # resize square images of another size (else they are an error)
    random_flip: float = 0.5        # probability of flipping the whole triplet horizontally
    check: str = "quick"            # quick | full | off: the check run before training
    num_workers: int = 0


@dataclass
class LossConfig:
    conditioning_dropout: float = 0.1   # source latents and source embedding set to zero together
    snr_gamma: float | None = None      # min-SNR weighting (e.g. 5.0); None: plain MSE
    noise_offset: float = 0.0


@dataclass
class CurriculumConfig:
    # Probability of drawing a triplet whose driving image is real (lines with
    # "driving": "real") as a function of the optimizer step: [[step, p], ...], linear in
    # between, constant outside.  Empty: every line is drawn alike.
    real_driving: list = field(default_factory=list)


@dataclass
class OptimConfig:
    learning_rate: float = 1e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    use_8bit_adam: bool = False
    max_grad_norm: float | None = 1.0
    lr_warmup_steps: int = 0


@dataclass
class TrainConfig:
    output_dir: str = "faceanon-train-output"
    seed: int = 0
    max_steps: int = 100_000            # optimizer steps
    batch_size: int = 1                 # per process
    gradient_accumulation_steps: int = 8
    mixed_precision: str | None = None  # no | fp16 | bf16; default: accelerate's (launch flag / config)
    checkpoint_every: int = 1000
    checkpoints_total_limit: int | None = 3
    log_every: int = 10
    report_to: str = "auto"             # auto (TensorBoard when installed) | tensorboard | none
    progress_bar: bool = True
    export_at_end: bool = True          # write <output_dir>/final in the published layout


@dataclass
class ValidationConfig:
    data: str | None = None             # held-out JSON-lines triplets
    images: str | None = None
    every: int = 1000                   # optimizer steps; 0: never
    num_images: int = 2
    resolution: int | None = None       # default: data.resolution
    steps: int = 25
    guidance_scale: float = 4.0
    degree: float = 1.25
    seed: int = 0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        problems = []
        if not self.model.init_from:
            problems.append("model.init_from is required (a local SD 2.x or face-anon folder)")
        if not self.data.train:
            problems.append("data.train is required (a JSON-lines file of triplets)")
        if self.model.routing not in (None, "as_trained", "per_layer"):
            problems.append(f"model.routing must be as_trained or per_layer, got {self.model.routing!r}")
        if self.model.refnet_trainable not in ("attention", "transformer_blocks", "attentions", "all"):
            problems.append("model.refnet_trainable must be attention, transformer_blocks, attentions or all")
        if self.model.prediction_type not in (None, "v_prediction", "epsilon"):
            problems.append("model.prediction_type must be v_prediction or epsilon, "
                            f"got {self.model.prediction_type!r}")
        if self.model.vae_latents not in ("sample", "mean"):
            problems.append("model.vae_latents must be sample or mean")
        if self.data.check not in ("quick", "full", "off"):
            problems.append("data.check must be quick, full or off")
        if self.data.resolution % 64:
            problems.append(f"data.resolution must be a multiple of 64, got {self.data.resolution}")
        if not 0 <= self.data.random_flip <= 1:
            problems.append("data.random_flip is a probability (0..1)")
        if not 0 <= self.loss.conditioning_dropout <= 1:
            problems.append("loss.conditioning_dropout is a probability (0..1)")
        if self.train.mixed_precision not in (None, "no", "fp16", "bf16"):
            problems.append("train.mixed_precision must be no, fp16 or bf16")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every", "log_every"):
            if int(getattr(self.train, name)) < 1:
                problems.append(f"train.{name} must be at least 1")
        if self.train.report_to not in ("auto", "tensorboard", "none"):
            problems.append("train.report_to must be auto, tensorboard or none")
        try:
            parse_schedule(self.curriculum.real_driving)
        except ConfigError as exc:
            problems.append(str(exc))
        if problems:
            raise ConfigError("invalid training configuration:\n  " + "\n  ".join(problems))
        return self


def parse_schedule(points) -> list[tuple[float, float]]:
    """``[[step, p], ...]`` sorted by step with 0 <= p <= 1."""
    if not points:
        return []
    try:
        parsed = [(float(s), float(p)) for s, p in points]
    except (TypeError, ValueError):
        raise ConfigError("curriculum.real_driving must be a list of [step, probability] pairs") from None
    if any(not 0 <= p <= 1 for _, p in parsed):
        raise ConfigError("curriculum.real_driving probabilities must be within 0..1")
    if any(b[0] < a[0] for a, b in pairwise(parsed)):
        raise ConfigError("curriculum.real_driving steps must be in increasing order")
    return parsed


def schedule_value(points: list[tuple[float, float]], step: float) -> float | None:
    """Piecewise linear in the step, constant before the first and after the last point."""
    if not points:
        return None
    if step <= points[0][0]:
        return points[0][1]
    for (s0, p0), (s1, p1) in pairwise(points):
        if step <= s1:
            return p1 if s1 == s0 else p0 + (p1 - p0) * (step - s0) / (s1 - s0)
    return points[-1][1]


def read_config_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError("YAML configs need pyyaml: pip install 'comfyui-faceanon[train]', "
                                  "or write the config as TOML") from None
            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: use a .yaml, .yml, .toml or .json config file")
    except ConfigError:
        raise
    except Exception as exc:  # parser errors of three libraries
        raise ConfigError(f"{path} is not valid {suffix[1:].upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (model, data, loss, ...)")
    return data


def parse_value(text: str) -> Any:
    """An override value: YAML/JSON scalars and lists (``1e-5``, ``true``, ``null``, ``[[0, 1]]``)."""
    try:
        import yaml

        return yaml.safe_load(text)
    except ImportError:
        pass
    except Exception:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return {"True": True, "False": False, "None": None}.get(text, text)


def apply_overrides(data: dict, overrides) -> dict:
    """``section.key=value`` strings merged into a nested dict (a copy)."""
    data = json.loads(json.dumps(data))
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.max_steps=100)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2:
            raise ConfigError(f"override {item!r}: the key must be section.key (e.g. optim.learning_rate)")
        data.setdefault(parts[0], {})
        if not isinstance(data[parts[0]], dict):
            raise ConfigError(f"override {item!r}: {parts[0]} is not a section")
        data[parts[0]][parts[1]] = parse_value(value)
    return data


def config_from_dict(data: dict) -> Config:
    config = Config()
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for name, values in data.items():
        if name not in sections:
            raise ConfigError(f"unknown config section {name!r}; sections: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"config section {name!r} must be a mapping")
        section = getattr(config, name)
        known = {f.name: f for f in dataclasses.fields(section)}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"unknown key {name}.{key}; {name} has: {', '.join(sorted(known))}")
            setattr(section, key, _coerce(f"{name}.{key}", value, str(known[key].type)))
    return config


def _coerce(key: str, value, annotation: str):
    """Values as their field's type (YAML reads ``2e-5`` as a string, TOML has no null)."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and "None" in annotation):
        if "None" not in annotation:
            raise ConfigError(f"{key} cannot be empty")
        return None
    base = annotation.replace("| None", "").strip()
    try:
        if base == "bool":
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if base == "int":
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base == "str":
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be {'a' if base != 'int' else 'an'} {base}, got {value!r}") from None
    return value


def load_config(path: str | os.PathLike | None = None, overrides=None) -> Config:
    data = read_config_file(path) if path else {}
    return config_from_dict(apply_overrides(data, overrides)).validate()


def default_config_text() -> str:
    """The defaults as YAML-like text (for ``faceanon-train print-config``)."""
    lines = ["# faceanon-train configuration (defaults); every key can be overridden as section.key=value"]
    for name, values in Config().to_dict().items():
        lines.append(f"{name}:")
        for key, value in values.items():
            lines.append(f"  {key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"
