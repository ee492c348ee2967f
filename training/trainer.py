"""The training loop on ``accelerate``: objective, accumulation, checkpoints, validation, export."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config
from .data import (
    DatasetError,
    StreamSampler,
    TripletDataset,
    check_dataset,
    default_images_dir,
    load_image,
    read_triplets,
)
from .model import FaceAnonTrainModel, apply_conditioning_dropout, configure_trainable, export_folder, load_models

logger = logging.getLogger(__name__)

STATE_FILE = "faceanon_state.json"
CHECKPOINTS = "checkpoints"


class ResumeError(RuntimeError):
    pass


class UnsupportedBackend(RuntimeError):
    """A distributed backend whose validation and export this trainer cannot vouch for."""


def check_backend(accelerator) -> str:
    """Refuse DeepSpeed up front; name the backend otherwise.

    Validation and export need the full weights. Under FSDP the trainer gathers them with
    ``accelerator.get_state_dict`` (the state-dict logic covered by tests/training/test_training_sharded.py);
    DeepSpeed ZeRO-3 needs its own gather settings and has not been tested here, so a run is
    stopped before training rather than exporting shards as a model.
    """
    backend = getattr(accelerator.distributed_type, "value", str(accelerator.distributed_type))
    if backend == "DEEPSPEED":
        raise UnsupportedBackend(
            "faceanon-train does not support DeepSpeed: its validation and export under ZeRO-3 (sharded "
            "parameters) are untested, and exporting shards would write wrong weights. Use FSDP "
            "(`accelerate config`: FSDP, full state dict) or plain multi-GPU DDP (`accelerate launch --multi_gpu`).")
    return backend


def checkpoints_dir(output_dir) -> Path:
    return Path(output_dir) / CHECKPOINTS


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints (their state file is written last), oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("checkpoint-*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: json.loads((p / STATE_FILE).read_text())["step"])


def resolve_resume(output_dir, resume: str | None) -> Path | None:
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.warning("--resume latest: no checkpoint in %s yet, starting from scratch",
                           checkpoints_dir(output_dir))
            return None
        return found[-1]
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise ResumeError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    return path


def _distributed_without_gpu() -> bool:
    """Several processes (torchrun / ``accelerate launch --multi_gpu``) but no GPU: gloo on the CPU."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return world > 1 and not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available())


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float, prediction_type: str):
    """Min-SNR-gamma loss weights (Hang et al. 2023) for the given target."""
    alpha = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alpha / (1 - alpha)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


@dataclass
class StepDraws:
    timesteps: torch.Tensor
    noise: torch.Tensor
    vae_noise: dict


@dataclass
class TrainResult:
    step: int
    losses: list[float] = field(default_factory=list)
    output_dir: Path | None = None
    export_dir: Path | None = None
    seconds: float = 0.0


class Trainer:
    """Everything of one run.  ``Trainer(config).fit()``; tests drive the pieces directly."""

    def __init__(self, config: Config, *, resume: str | None = None, accelerator=None, check_data: bool = True,
                 parts: dict | None = None):
        """``parts``: already loaded models (as :func:`load_models` returns them) instead of
        ``config.model`` folders, e.g. for benchmarks with random weights."""
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.config = config.validate()
        cfg = self.config
        self.output_dir = Path(cfg.train.output_dir).expanduser()
        log_with = None
        if cfg.train.report_to == "tensorboard" or (cfg.train.report_to == "auto" and tensorboard_available()):
            log_with = "tensorboard"
        self.accelerator = accelerator or Accelerator(
            cpu=_distributed_without_gpu(),
            mixed_precision=cfg.train.mixed_precision,
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / "logs")),
        )
        acc = self.accelerator
        self.backend = check_backend(acc)
        self.images_dir = default_images_dir(cfg.data.train, cfg.data.images)
        if check_data and cfg.data.check != "off":
            self._check_data()
        self.triplets = read_triplets(cfg.data.train)

        from accelerate.utils import set_seed

        set_seed(cfg.train.seed)
        parts = parts if parts is not None else load_models(cfg.model)
        self.parts = parts
        self.scheduler_config = parts["scheduler_config"]
        from diffusers import DDIMScheduler, DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(self.scheduler_config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction type {self.prediction_type!r} is not supported (epsilon, v_prediction)")

        self.model = FaceAnonTrainModel(parts["unet"], parts["referencenet"], parts["conditioning_referencenet"],
                                        parts["routing"])
        self.trainable_counts = configure_trainable(self.model, cfg.model.refnet_trainable)
        if cfg.model.gradient_checkpointing:
            self.model.unet.enable_gradient_checkpointing()
        self.model.train()

        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.mixed_precision, torch.float32)
        if cfg.model.frozen_dtype:
            weight_dtype = getattr(torch, cfg.model.frozen_dtype)
        self.vae, self.image_encoder = parts["vae"], parts["image_encoder"]
        for frozen in (self.vae, self.image_encoder):
            frozen.requires_grad_(False)
            frozen.eval()
            frozen.to(acc.device, dtype=weight_dtype)

        from faceanon_core.method.pipeline import FaceAnonPipeline

        # The pipeline over the in-training modules: its encoders feed training, and it
        # samples the validation images.  Its readers are swapped in only while it samples.
        self.pipe = FaceAnonPipeline(
            unet=self.model.unet, referencenet=self.model.referencenet,
            conditioning_referencenet=self.model.conditioning_referencenet, vae=self.vae,
            image_encoder=self.image_encoder, feature_extractor=parts["feature_extractor"],
            scheduler=DDIMScheduler.from_config(self.scheduler_config), routing=self.model.routing_mode)
        self.pipe.set_progress_bar_config(disable=True)
        self.model.install_readers()

        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        optim = cfg.optim
        if optim.use_8bit_adam:
            try:
                import bitsandbytes as bnb
            except ImportError:
                raise ImportError("optim.use_8bit_adam needs bitsandbytes (pip install bitsandbytes); "
                                  "or set optim.use_8bit_adam=false") from None
            optimizer_cls = bnb.optim.AdamW8bit
        else:
            optimizer_cls = torch.optim.AdamW
        self.optimizer = optimizer_cls(self.trainable, lr=optim.learning_rate,
                                       betas=(optim.adam_beta1, optim.adam_beta2),
                                       weight_decay=optim.weight_decay, eps=optim.adam_epsilon)
        warmup = int(optim.lr_warmup_steps)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0)
        self.ddp_model, self.optimizer = acc.prepare(self.model, self.optimizer)
        acc.register_for_checkpointing(self.lr_scheduler)

        self.accumulation = int(cfg.train.gradient_accumulation_steps)
        self.samples_per_step = cfg.train.batch_size * acc.num_processes * self.accumulation
        self.dataset = TripletDataset(
            self.triplets, self.images_dir, resolution=cfg.data.resolution, resize=cfg.data.resize,
            random_flip=cfg.data.random_flip, conditioning_dropout=cfg.loss.conditioning_dropout,
            real_driving_schedule=cfg.curriculum.real_driving, samples_per_step=self.samples_per_step,
            seed=cfg.train.seed)
        self.step = 0
        self.resumed_from = None
        checkpoint = resolve_resume(self.output_dir, resume)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)

    # -- data ---------------------------------------------------------------------------

    def _check_data(self) -> None:
        from accelerate.utils import broadcast_object_list

        cfg, acc = self.config, self.accelerator
        report = None
        if acc.is_main_process:
            report = check_dataset(cfg.data.train, self.images_dir, resolution=cfg.data.resolution,
                                   resize=cfg.data.resize, mode=cfg.data.check)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "data_report.txt").write_text(report.format(limit=10_000) + "\n")
            for warning in report.warnings[:20]:
                logger.warning("dataset: %s", warning)
        shared = [report] if acc.num_processes == 1 else broadcast_object_list([report])
        if not shared[0].ok:
            raise DatasetError(shared[0])

    def loader(self, start_micro_batch: int):
        sampler = StreamSampler(self.config.train.batch_size, self.accelerator.process_index,
                                self.accelerator.num_processes, start_micro_batch)
        workers = int(self.config.data.num_workers)
        return torch.utils.data.DataLoader(self.dataset, batch_size=self.config.train.batch_size, sampler=sampler,
                                           num_workers=workers, persistent_workers=workers > 0,
                                           pin_memory=self.accelerator.device.type == "cuda")

    # -- the objective ------------------------------------------------------------------

    def draws(self, batch: dict, latent_shape) -> StepDraws:
        """Timestep and noises of each sample, from that sample's own seed (resume-exact)."""
        timesteps, noises, vae_noise = [], [], {role: [] for role in ("source", "driving", "target")}
        T = self.noise_scheduler.config.num_train_timesteps
        offset = float(self.config.loss.noise_offset)
        for seed in batch["noise_seed"].tolist():
            g = torch.Generator().manual_seed(int(seed))
            timesteps.append(torch.randint(0, T, (1,), generator=g))
            noise = torch.randn(latent_shape, generator=g)
            if offset:
                noise = noise + offset * torch.randn(latent_shape[0], 1, 1, generator=g)
            noises.append(noise)
            for role in vae_noise:
                vae_noise[role].append(torch.randn(latent_shape, generator=g))
        device = self.accelerator.device
        return StepDraws(torch.cat(timesteps).to(device), torch.stack(noises).to(device),
                         {k: torch.stack(v).to(device) for k, v in vae_noise.items()})

    @torch.no_grad()
    def encode(self, images: torch.Tensor, vae_noise: torch.Tensor | None) -> torch.Tensor:
        """VAE latents (posterior sample with the given noise, or mean) x scaling factor, float32."""
        pixels = (images * 2 - 1).to(self.accelerator.device, dtype=self.vae.dtype)
        dist = self.vae.encode(pixels).latent_dist
        latents = dist.mean if vae_noise is None else dist.mean + dist.std * vae_noise.to(dist.mean.dtype)
        return latents.float() * self.vae.config.scaling_factor

    def prepare_inputs(self, batch: dict) -> dict:
        """Everything the model and the loss need for one micro-batch (frozen encoders run here)."""
        cfg = self.config
        pipe = self.pipe
        size = cfg.data.resolution // pipe.vae_scale_factor
        draws = self.draws(batch, (self.model.unet.config.in_channels, size, size))
        sample = cfg.model.vae_latents == "sample"
        source_latents = self.encode(batch["source_image"], draws.vae_noise["source"] if sample else None)
        driving_latents = self.encode(batch["conditioning_image"], draws.vae_noise["driving"] if sample else None)
        target_latents = self.encode(batch["ground_truth"], draws.vae_noise["target"] if sample else None)
        count = batch["source_image"].shape[0]
        embeds = pipe.encode_image_embeds(torch.cat([batch["source_image"], batch["conditioning_image"]])).float()
        source_embeds, driving_embeds = embeds[:count], embeds[count:]
        source_latents, source_embeds = apply_conditioning_dropout(source_latents, source_embeds,
                                                                   batch["drop_source"])
        noisy = self.noise_scheduler.add_noise(target_latents, draws.noise, draws.timesteps)
        if self.prediction_type == "epsilon":
            target = draws.noise
        else:
            target = self.noise_scheduler.get_velocity(target_latents, draws.noise, draws.timesteps)
        return {"noisy_latents": noisy, "timesteps": draws.timesteps, "source_latents": source_latents,
                "source_embeds": source_embeds, "driving_latents": driving_latents,
                "driving_embeds": driving_embeds, "target": target}

    def loss(self, inputs: dict, model=None) -> torch.Tensor:
        model = model or self.ddp_model
        target = inputs["target"]
        pred = model(inputs["noisy_latents"], inputs["timesteps"], inputs["source_latents"],
                     inputs["source_embeds"], inputs["driving_latents"], inputs["driving_embeds"])
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        gamma = self.config.loss.snr_gamma
        if gamma:
            per_sample = per_sample * min_snr_weights(self.noise_scheduler.alphas_cumprod, inputs["timesteps"],
                                                      float(gamma), self.prediction_type)
        return per_sample.mean()

    @torch.no_grad()
    def evaluate(self, indices) -> float:
        """Mean loss on fixed global sample indices (fixed images, timesteps and noise)."""
        losses = []
        for index in indices:
            batch = torch.utils.data.default_collate([self.dataset[int(index)]])
            losses.append(float(self.loss(self.prepare_inputs(batch), model=self.model)))
            self.model.release()
        return float(np.mean(losses))

    # -- one optimizer step -------------------------------------------------------------

    def train_step(self, batches) -> float:
        """Accumulate over ``batches`` (one per micro-step), clip, step. Returns the mean loss."""
        acc = self.accelerator
        losses = []
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1
            with (nullcontext() if sync else acc.no_sync(self.ddp_model)):
                inputs = self.prepare_inputs(batch)
                loss = self.loss(inputs)
                acc.backward(loss / len(batches))
            self.model.release()
            losses.append(loss.detach())
        if self.config.optim.max_grad_norm:
            acc.clip_grad_norm_(self.trainable, float(self.config.optim.max_grad_norm))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        mean = torch.stack(losses).mean()
        return float(acc.reduce(mean, reduction="mean")) if acc.num_processes > 1 else float(mean)

    # -- checkpoints --------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        path = checkpoints_dir(self.output_dir) / f"checkpoint-{self.step:08d}"
        if acc.is_main_process and path.exists():
            shutil.rmtree(path)
        acc.wait_for_everyone()
        acc.save_state(str(path))
        if acc.is_main_process:
            state = {"step": self.step, "micro_batches": self.step * self.accumulation,
                     "samples_per_step": self.samples_per_step, "num_processes": acc.num_processes,
                     "seed": self.config.train.seed, "routing": self.model.routing_mode,
                     "config": self.config.to_dict()}
            (path / STATE_FILE).write_text(json.dumps(state, indent=2))
            limit = self.config.train.checkpoints_total_limit
            if limit:
                for old in list_checkpoints(self.output_dir)[:-int(limit)]:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = json.loads((Path(path) / STATE_FILE).read_text())
        if state.get("routing") and state["routing"] != self.model.routing_mode:
            raise ResumeError(f"{path} was trained with routing {state['routing']!r}, "
                              f"this run uses {self.model.routing_mode!r}")
        if state.get("samples_per_step") != self.samples_per_step or state.get("seed") != self.config.train.seed:
            logger.warning("resuming %s with a different seed, batch size, accumulation or process count: the "
                           "run continues, but not with the samples an uninterrupted run would have seen", path)
        self.accelerator.load_state(str(path))
        self.step = int(state["step"])
        self.resumed_from = Path(path)

    # -- validation and export ----------------------------------------------------------

    @property
    def sharded(self) -> bool:
        """FSDP: each process's modules hold only shards of the weights."""
        return self.backend == "FSDP"

    def full_state_dict(self) -> dict | None:
        """The whole model's weights, gathered as accelerate provides for the backend.

        Call it on every process (under FSDP it is a collective); the result is used on the main
        process only (None elsewhere).
        """
        state = self.accelerator.get_state_dict(self.ddp_model)
        return state if self.accelerator.is_main_process else None

    def _full_pipeline(self, weights: dict):
        """A pipeline over full copies of the three networks, loaded from gathered weights."""
        from diffusers import DDIMScheduler, UNet2DConditionModel

        from faceanon_core.method.pipeline import FaceAnonPipeline

        from .model import part_state_dicts

        nets = {}
        for part, state in part_state_dicts(self.model, weights).items():
            net = UNet2DConditionModel.from_config(getattr(self.model, part).config)
            net.load_state_dict(state, strict=True)
            nets[part] = net.to(self.accelerator.device).eval()
        pipe = FaceAnonPipeline(
            unet=nets["unet"], referencenet=nets["referencenet"],
            conditioning_referencenet=nets["conditioning_referencenet"], vae=self.vae,
            image_encoder=self.image_encoder, feature_extractor=self.parts["feature_extractor"],
            scheduler=DDIMScheduler.from_config(self.scheduler_config), routing=self.model.routing_mode)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def validate(self) -> Path | None:
        """Anonymize and swap held-out images; a grid per step on disk (and TensorBoard).

        Sharded (FSDP): every process joins the gather, the main process samples from full copies.
        """
        cfg = self.config.validation
        if not cfg.data:
            return None
        weights = self.full_state_dict() if self.sharded else None
        if not self.accelerator.is_main_process:
            return None
        root = default_images_dir(cfg.data, cfg.images)
        triplets = read_triplets(cfg.data)[: cfg.num_images]
        size = cfg.resolution or self.config.data.resolution
        kwargs = dict(guidance_scale=cfg.guidance_scale, num_inference_steps=cfg.steps, height=size, width=size,
                      output_type="np")
        rows = []
        self.model.eval()
        pipe = self._full_pipeline(weights) if weights is not None else self.pipe
        try:
            with (nullcontext() if weights is not None else self.model.inference_readers(pipe)):
                for t in triplets:
                    paths = t.paths(root)
                    source = load_image(paths["source_image"], size, True)
                    driving = load_image(paths["conditioning_image"], size, True)
                    truth = load_image(paths["ground_truth"], size, True)
                    anon = pipe.anonymize(driving, degree=cfg.degree,
                                               generator=torch.Generator().manual_seed(cfg.seed), **kwargs).images[0]
                    swap = pipe.swap(source, driving, generator=torch.Generator().manual_seed(cfg.seed),
                                          **kwargs).images[0]
                    to_np = lambda x: x.permute(1, 2, 0).numpy()  # noqa: E731
                    rows.append(np.concatenate([to_np(driving), anon, to_np(source), swap, to_np(truth)], axis=1))
        finally:
            self.model.train()
        if not rows:
            return None
        grid = (np.concatenate(rows, axis=0).clip(0, 1) * 255).round().astype(np.uint8)
        out = self.output_dir / "validation" / f"step-{self.step:08d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        Image.fromarray(grid).save(out)
        if self.accelerator.trackers:
            try:
                writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
                writer.add_image("validation/driving|anonymized|source|swapped|truth", grid, self.step,
                                 dataformats="HWC")
            except Exception as exc:  # another tracker, or none
                logger.debug("validation image not logged: %s", exc)
        return out

    def export(self, out: Path | None = None) -> Path | None:
        """The published layout from the gathered full weights: call on every process, the main one writes."""
        out = Path(out) if out is not None else self.output_dir / "final"
        weights = self.full_state_dict()
        if not self.accelerator.is_main_process:
            return None
        return export_folder(self.model, out, part_dirs=self.parts["part_dirs"],
                             scheduler_config=self.scheduler_config, state_dict=weights)

    # -- the run ------------------------------------------------------------------------

    def fit(self, max_steps: int | None = None) -> TrainResult:
        cfg, acc = self.config, self.accelerator
        max_steps = int(max_steps or cfg.train.max_steps)
        result = TrainResult(step=self.step, output_dir=self.output_dir)
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        if not acc.trackers and getattr(acc, "log_with", None):
            acc.init_trackers("faceanon-train", config=_flat_config(cfg.to_dict()))
        logger.info("trainable parameters: %s; %d samples per optimizer step (%d process(es) x batch %d x "
                    "accumulation %d)", self.trainable_counts, self.samples_per_step, acc.num_processes,
                    cfg.train.batch_size, self.accumulation)
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, initial=self.step, desc="faceanon-train", unit="step",
                   disable=not (acc.is_main_process and cfg.train.progress_bar), dynamic_ncols=True)
        data = iter(self.loader(self.step * self.accumulation))
        started = time.perf_counter()
        window_start, window_steps = started, 0
        while self.step < max_steps:
            batches = [next(data) for _ in range(self.accumulation)]
            loss = self.train_step(batches)
            result.losses.append(loss)
            window_steps += 1
            now = time.perf_counter()
            steps_per_s = window_steps / max(now - window_start, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", steps_s=f"{steps_per_s:.2f}",
                            samples_s=f"{steps_per_s * self.samples_per_step:.1f}")
            if now - window_start > 30:
                window_start, window_steps = now, 0
            if self.step % cfg.train.log_every == 0 and acc.trackers:
                acc.log({"train/loss": loss, "train/lr": self.lr_scheduler.get_last_lr()[0],
                         "train/steps_per_s": steps_per_s}, step=self.step)
            if self.step % cfg.train.checkpoint_every == 0 or self.step == max_steps:
                self.save_checkpoint()
            if cfg.validation.every and self.step % cfg.validation.every == 0:
                self.validate()
                acc.wait_for_everyone()
        bar.close()
        result.step = self.step
        result.seconds = time.perf_counter() - started
        if cfg.train.export_at_end and self.step >= max_steps:
            result.export_dir = self.export()  # every process joins the gather; the main one writes
            if result.export_dir is not None:
                logger.info("exported the model to %s", result.export_dir)
        acc.wait_for_everyone()
        acc.end_training()
        return result


def _flat_config(config: dict) -> dict:
    flat = {}
    for section, values in config.items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return flat


def train(config: Config, resume: str | None = None) -> TrainResult:
    return Trainer(config, resume=resume).fit()


def export_checkpoint(config: Config, checkpoint: str, out: str) -> Path:
    """Export the weights of a checkpoint (``latest`` or a path) without training."""
    from safetensors.torch import load_file

    path = resolve_resume(config.train.output_dir, checkpoint)
    if path is None:
        raise ResumeError(f"no checkpoint found in {checkpoints_dir(config.train.output_dir)}")
    parts = load_models(config.model)
    state = json.loads((path / STATE_FILE).read_text())
    model = FaceAnonTrainModel(parts["unet"], parts["referencenet"], parts["conditioning_referencenet"],
                               state.get("routing") or parts["routing"])
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ResumeError(f"{weights} not found (DeepSpeed/FSDP checkpoints: export from the training run)")
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    if missing or unexpected:
        raise ResumeError(f"{weights} does not match the model: {len(missing)} missing, "
                          f"{len(unexpected)} unexpected tensors")
    return export_folder(model, out, part_dirs=parts["part_dirs"], scheduler_config=parts["scheduler_config"])
