"""FaceAnonPipeline: the dual-reference method on stock diffusers.

Per call: CLIP pooled embeddings of source and driving images; Eq. 1 on the source
embedding; the source ReferenceNet on the source latents (conditional) and on zero
latents with a zero embedding (unconditional); Eq. 2 on the source states; the driving
ReferenceNet on the driving image; then a denoising loop in which every UNet
self-attention also attends to ``[source, driving]`` states, with classifier-free
guidance ``(1-g)·uncond + g·cond`` over the source side.  Any diffusers scheduler works.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from .attention import ReferenceContext, attn1_names, capture_states, install_readers
from .states import ReferenceStates, expand_batch, mix_embeds, route_states

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class FaceAnonPipelineOutput(BaseOutput):
    """What :class:`FaceAnonPipeline` returns (``return_dict=True``).

    ``images``: a list of PIL images, a float32 ``[B,H,W,3]`` array in 0..1 (``"np"``) or a float32
    ``[B,3,H,W]`` tensor in 0..1 (``"pt"``), one per driving image.
    """

    images: list[Image.Image] | np.ndarray | torch.Tensor


FaceAnonOutput = FaceAnonPipelineOutput  # the name before 0.3; kept for existing callers


@dataclass
class SourceIdentity:
    """The source branch, computed once: what every driving image is sampled against.

    ``embeds`` is the source CLIP embedding after Eq. 1 (``[B,1,C]``, the UNet's source context
    token), ``states`` the source ReferenceNet states after Eq. 2 (conditional and unconditional).
    A batch of 1 broadcasts over any driving batch, so one identity serves every frame of a video
    track: one source ReferenceNet pass per track instead of one per frame, and the same anonymous
    identity in every frame. Made by :meth:`FaceAnonPipeline.encode_source`.
    """

    embeds: torch.Tensor
    states: ReferenceStates
    degree: float

    @property
    def batch(self) -> int:
        return int(self.embeds.shape[0])


def to_image_batch(images, what: str = "images") -> torch.Tensor:
    """PIL / uint8 numpy / float tensors, single or lists -> float32 ``[B,3,H,W]`` in 0..1.

    Tensors are ``[3,H,W]`` or ``[B,3,H,W]`` (channels-last ``[...,H,W,3]`` is accepted too)
    in 0..1; numpy arrays are uint8 ``[H,W,3]``/``[B,H,W,3]`` or float in 0..1.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{what}: an empty list was given, pass at least one image")
        return torch.cat([to_image_batch(image, what) for image in images])
    if isinstance(images, Image.Image):
        return to_image_batch(np.asarray(images.convert("RGB")), what)
    if isinstance(images, np.ndarray):
        if images.dtype == np.uint8:
            array = images.astype(np.float32) / 255.0
        elif np.issubdtype(images.dtype, np.floating):
            array = images.astype(np.float32)
        else:
            raise ValueError(f"{what}: numpy images must be uint8 or float in 0..1, got {images.dtype}")
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        tensor = tensor.unsqueeze(0) if tensor.ndim == 3 else tensor
        return to_image_batch(tensor.permute(0, 3, 1, 2), what)
    if isinstance(images, torch.Tensor):
        tensor = images.detach().float().cpu()
        if tensor.ndim == 3:
            tensor = tensor.unsqueeze(0)
        if tensor.ndim != 4:
            raise ValueError(f"{what}: expected an image tensor [B,3,H,W], got shape {tuple(images.shape)}")
        if tensor.shape[1] not in (1, 3, 4) and tensor.shape[-1] in (1, 3, 4):
            tensor = tensor.permute(0, 3, 1, 2)
        if tensor.shape[1] == 1:
            tensor = tensor.expand(-1, 3, -1, -1)
        elif tensor.shape[1] == 4:
            tensor = tensor[:, :3]
        elif tensor.shape[1] != 3:
            raise ValueError(f"{what}: expected 1, 3 or 4 channels, got shape {tuple(images.shape)}")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{what}: the image holds NaN or infinite values")
        if tensor.min() < -1e-3 or tensor.max() > 1 + 1e-3:
            raise ValueError(
                f"{what}: float images must be in 0..1 (got {tensor.min():.3g}..{tensor.max():.3g}); "
                "pass uint8 arrays for 0..255 data"
            )
        return tensor.clamp(0, 1).contiguous()
    raise TypeError(f"{what}: unsupported image type {type(images).__name__}: pass PIL images, arrays or tensors")


def reference_tokens(reference_layers, source: ReferenceStates, driving: dict, source_embeds, driving_embeds,
                     batch: int, cfg: bool, dtype, device):
    """Per reference layer ``[rows, N_src + N_drv, C]`` and the UNet context; rows = [uncond; cond] with CFG.

    Shared by inference and the trainer, so a trained model sees exactly what it will see at inference.
    """
    tokens = {}
    for name in reference_layers:
        src = expand_batch(source.cond[name], batch, "the source states")
        drv = expand_batch(driving[name], batch, "the driving states")
        rows = [torch.cat([src, drv], dim=1)]
        if cfg:
            src_uncond = expand_batch(source.uncond[name], batch, "the unconditional states")
            rows.insert(0, torch.cat([src_uncond, drv], dim=1))
        tokens[name] = torch.cat(rows).to(dtype)
    source_embeds = expand_batch(source_embeds, batch, "the source embedding")
    driving_embeds = expand_batch(driving_embeds, batch, "the driving embedding")
    context = [torch.cat([source_embeds, driving_embeds], dim=1)]
    if cfg:
        context.insert(0, torch.cat([torch.zeros_like(source_embeds), driving_embeds], dim=1))
    return tokens, torch.cat(context).to(device=device, dtype=dtype)


class FaceAnonPipeline(DiffusionPipeline):
    """Anonymize (same image as source and driving, degree d) or swap faces (d = 0)."""

    model_cpu_offload_seq = "image_encoder->referencenet->conditioning_referencenet->unet->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet, referencenet, conditioning_referencenet, vae, image_encoder, feature_extractor,
                 scheduler, routing: str = "as_trained"):
        super().__init__()
        self.register_modules(
            unet=unet,
            referencenet=referencenet,
            conditioning_referencenet=conditioning_referencenet,
            vae=vae,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            scheduler=scheduler,
        )
        # The mode is a config entry, so save_pretrained writes it to model_index.json and
        # from_pretrained reads it back; ``self.routing`` is the name map it gives.
        self.register_to_config(routing=routing)
        self.routing_mode = routing
        self.routing = route_states(attn1_names(unet), routing)
        self.reference_layers = sorted(set(self.routing.values()))
        self.reference_context = ReferenceContext()
        self._interrupt = False
        self._num_timesteps = 0
        install_readers(unet, self.routing, self.reference_context)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def from_pretrained(cls, model, *, vae=None, image_encoder=None, feature_extractor=None, scheduler=None,
                        torch_dtype=None, routing: str | None = None, allow_download: bool = False, **kwargs):
        """Load the published layout from a local folder (or the hub when ``allow_download``).

        ``routing`` defaults to the one the folder records (``model_index.json`` written by
        :meth:`save_pretrained`, or ``faceanon_routing`` in ``unet/config.json`` written by our
        trainer), else ``as_trained`` (the published weights). Any other keyword is an error, not
        silently ignored: a misspelt argument would otherwise load a different model than asked for.
        """
        if kwargs:
            raise TypeError(_unexpected_keywords(cls.from_pretrained, kwargs))
        from .loading import UNET_PARTS, load_components, recorded_routing, resolve_source

        root = resolve_source(model, "the face-anon model", allow_download,
                              allow_patterns=[f"{p}/*" for p in UNET_PARTS] + ["model_index.json"])
        parts = load_components(root, vae=vae, image_encoder=image_encoder, feature_extractor=feature_extractor,
                                scheduler=scheduler, torch_dtype=torch_dtype, allow_download=allow_download)
        if routing is None:
            routing = recorded_routing(root, parts["unet"].config) or "as_trained"
        return cls(**parts, routing=routing)

    # -- inputs -------------------------------------------------------------------------

    def _prepare_images(self, images, height: int, width: int, what: str) -> torch.Tensor:
        batch = to_image_batch(images, what)
        if batch.shape[-2:] != (height, width):
            logger.info("resizing %s from %dx%d to %dx%d", what, batch.shape[-1], batch.shape[-2], width, height)
            batch = F.interpolate(batch, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
            batch = batch.clamp(0, 1)
        return batch

    def check_inputs(self, height, width, degree, guidance_scale, num_inference_steps, output_type,
                     callback_on_step_end_tensor_inputs=None):
        multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        if height % multiple or width % multiple or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of {multiple}, got {height}x{width}")
        if not np.isfinite(degree):
            raise ValueError(f"degree must be a finite number, got {degree}")
        if not np.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale}")
        if int(num_inference_steps) < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        unknown = [k for k in callback_on_step_end_tensor_inputs or () if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs: {unknown} cannot be passed to a step callback; "
                             f"choose from {self._callback_tensor_inputs}")

    # -- the method's pieces (also used by the trainer and the nodes' reference tests) ----

    @torch.no_grad()
    def encode_image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP pooled output (post-layernorm CLS, before the projection), one token: ``[B,1,C]``."""
        pixels = self.feature_extractor(images=images, return_tensors="pt", do_rescale=False).pixel_values
        encoder = self.image_encoder
        out = encoder(pixels.to(device=self._execution_device, dtype=encoder.dtype))
        return out.pooler_output.unsqueeze(1)

    @torch.no_grad()
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """VAE posterior mean scaled by the VAE scaling factor.

        The mean, not a sample: deterministic, and what the ComfyUI backend's VAE encode gives, so both
        backends see the same latents (the trainer can sample the posterior: ``model.vae_latents``).
        """
        pixels = (images * 2 - 1).to(device=self._execution_device, dtype=self.vae.dtype)
        return self.vae.encode(pixels).latent_dist.mean * self.vae.config.scaling_factor

    @torch.no_grad()
    def reference_states(self, refnet, latents: torch.Tensor, embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        latents = latents.to(device=self._execution_device, dtype=refnet.dtype)
        return capture_states(refnet, latents, embeds.to(self._execution_device, refnet.dtype), self.reference_layers)

    @torch.no_grad()
    def source_states(self, latents: torch.Tensor, embeds: torch.Tensor, degree: float) -> ReferenceStates:
        """Eq. 1 before the source ReferenceNet, its unconditional branch, then Eq. 2."""
        cond = self.reference_states(self.referencenet, latents, mix_embeds(embeds, degree))
        uncond = self.reference_states(self.referencenet, torch.zeros_like(latents[:1]),
                                       torch.zeros_like(embeds[:1]))
        return ReferenceStates(cond=cond, uncond=uncond).mixed(degree)

    @torch.no_grad()
    def encode_source(self, images, degree: float = 1.25, height: int = 512, width: int = 512) -> SourceIdentity:
        """The source branch (CLIP embedding, Eq. 1, source ReferenceNet, Eq. 2) of ``images``, once.

        Pass the result as ``source`` to :meth:`anonymize` or :meth:`swap` to sample any number of
        driving images against it; the result equals a call that computes it per driving image.
        """
        if not np.isfinite(degree):
            raise ValueError(f"degree must be a finite number, got {degree}")
        pixels = self._prepare_images(images, height, width, "source image")
        embeds = self.encode_image_embeds(pixels)
        states = self.source_states(self.encode_latents(pixels), embeds, degree)
        return SourceIdentity(embeds=mix_embeds(embeds, degree), states=states, degree=float(degree))

    # -- sampling -----------------------------------------------------------------------

    def prepare_latents(self, batch, height, width, dtype, generator, latents):
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
            latents = latents.to(device=self._execution_device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @torch.no_grad()
    def __call__(
        self,
        source,
        driving,
        degree: float = 0.0,
        guidance_scale: float = 4.0,
        num_inference_steps: int = 50,
        generator=None,
        latents: torch.Tensor | None = None,
        height: int = 512,
        width: int = 512,
        output_type: str = "pil",
        return_dict: bool = True,
        same_image: bool = False,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ):
        r"""Sample the driving images with the identity of the source images.

        :meth:`anonymize` (same image as source and driving) and :meth:`swap` call this.

        Args:
            source (PIL images, arrays, tensors, or `SourceIdentity`):
                The identity. Images as :func:`to_image_batch` takes them (a batch of 1 broadcasts over the
                driving batch), or a :class:`SourceIdentity` from :meth:`encode_source`, whose states and
                embedding are used as they are (then `degree` is the one it was made with).
            driving (PIL images, arrays or tensors):
                The pose, expression and background: one output per driving image.
            degree (`float`, *optional*, defaults to 0.0):
                Anonymization degree d of Eq. 1 and 2: 0 keeps the source identity (face swap), 1 removes it,
                above 1 goes past it (paper default 1.25 for anonymization).
            guidance_scale (`float`, *optional*, defaults to 4.0):
                Classifier-free guidance g over the source side, `(1-g)·uncond + g·cond`; 1.0 runs no
                unconditional batch.
            num_inference_steps (`int`, *optional*, defaults to 50):
                Number of denoising steps of the scheduler.
            generator (`torch.Generator` or list of them, *optional*):
                Makes the initial noise (when `latents` is not given) and a stochastic scheduler's noise
                reproducible.
            latents (`torch.Tensor`, *optional*):
                Initial noise `[B, 4, height/8, width/8]`, scaled by the scheduler's `init_noise_sigma` here;
                drawn from `generator` when not given.
            height (`int`, *optional*, defaults to 512):
                Working height, a multiple of the model's size step; images of another size are resized to
                it (bicubic, antialiased).
            width (`int`, *optional*, defaults to 512):
                Working width, as `height`.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"` (list of PIL images), `"np"` (float32 `[B,H,W,3]` in 0..1) or `"pt"` (float32
                `[B,3,H,W]` in 0..1).
            return_dict (`bool`, *optional*, defaults to `True`):
                Return a :class:`FaceAnonPipelineOutput`; `False` returns the tuple `(images,)`.
            same_image (`bool`, *optional*, defaults to `False`):
                The source images are the driving images: their CLIP embeddings and latents are computed
                once (what :meth:`anonymize` passes).
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                Called after every denoising step as `callback_on_step_end(self, step, timestep,
                callback_kwargs)` with the tensors named in `callback_on_step_end_tensor_inputs`; it returns a
                dict, and a `"latents"` entry in it replaces the latents. Setting `pipe._interrupt = True`
                skips the remaining steps.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*, defaults to `["latents"]`):
                Which tensors the callback receives, from `FaceAnonPipeline._callback_tensor_inputs`.

        Returns:
            :class:`FaceAnonPipelineOutput` with `images`, or the tuple `(images,)` when `return_dict` is
            False.
        """
        if callback_on_step_end_tensor_inputs is None:
            callback_on_step_end_tensor_inputs = ["latents"]
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if isinstance(source, SourceIdentity):
            degree = source.degree
        self.check_inputs(height, width, degree, guidance_scale, num_inference_steps, output_type,
                          callback_on_step_end_tensor_inputs)
        self._interrupt = False
        driving_px = self._prepare_images(driving, height, width, "driving image")
        batch = driving_px.shape[0]

        dtype = self.unet.dtype
        driving_embeds = self.encode_image_embeds(driving_px)
        driving_latents = self.encode_latents(driving_px)
        if isinstance(source, SourceIdentity):
            if source.batch not in (1, batch):
                raise ValueError(f"the source identity has batch {source.batch}; expected 1 or {batch} "
                                 "(the driving batch)")
            identity = source
        else:
            if same_image:
                source_embeds, source_latents = driving_embeds, driving_latents
            else:
                source_px = expand_batch(self._prepare_images(source, height, width, "source image"), batch,
                                         "the source image")
                source_embeds = self.encode_image_embeds(source_px)
                source_latents = self.encode_latents(source_px)
            identity = SourceIdentity(embeds=mix_embeds(source_embeds, degree),
                                      states=self.source_states(source_latents, source_embeds, degree),
                                      degree=float(degree))
        driving_states = self.reference_states(self.conditioning_referencenet, driving_latents, driving_embeds)

        cfg = guidance_scale != 1.0
        tokens, context = self._reference_tokens(identity.states, driving_states, identity.embeds,
                                                 driving_embeds, batch, cfg, dtype)
        latents = self.prepare_latents(batch, height, width, dtype, generator, latents)
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        self._num_timesteps = len(self.scheduler.timesteps)
        extra_step = {"generator": generator} if "generator" in _step_params(self.scheduler) else {}

        self.reference_context.begin(tokens)
        try:
            for step, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                if self.interrupt:
                    continue
                model_input = torch.cat([latents] * 2) if cfg else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                noise_pred = self.unet(model_input, t, encoder_hidden_states=context, return_dict=False)[0]
                if cfg:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = (1 - guidance_scale) * uncond + guidance_scale * cond
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step, return_dict=False)[0]
                if callback_on_step_end is not None:
                    tensors = {"latents": latents}
                    callback_outputs = callback_on_step_end(
                        self, step, t, {name: tensors[name] for name in callback_on_step_end_tensor_inputs})
                    latents = callback_outputs.pop("latents", latents)
        finally:
            self.reference_context.end()

        images = self.decode_latents(latents)
        output = self._to_output(images, output_type)
        self.maybe_free_model_hooks()
        return FaceAnonPipelineOutput(images=output) if return_dict else (output,)

    def _reference_tokens(self, source: ReferenceStates, driving: dict, source_embeds, driving_embeds, batch, cfg,
                          dtype):
        return reference_tokens(self.reference_layers, source, driving, source_embeds, driving_embeds, batch, cfg,
                                dtype, self._execution_device)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        return (self.vae.decode(latents, return_dict=False)[0] / 2 + 0.5).clamp(0, 1).float()

    @staticmethod
    def _to_output(images: torch.Tensor, output_type: str):
        if output_type == "pt":
            return images.cpu()
        array = images.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
        if output_type == "np":
            return array
        return [Image.fromarray((image * 255).round().astype(np.uint8)) for image in array]

    # -- the two tasks ------------------------------------------------------------------

    def anonymize(self, images, degree: float = 1.25, source: SourceIdentity | None = None, **kwargs):
        """Same image as source and driving; ``degree`` 1 removes the identity, > 1 goes past it.

        With ``source`` (an :meth:`encode_source` result, e.g. of a video track's keyframe) every
        image is a driving image against that one identity, and ``degree`` is the identity's.
        """
        if source is not None:
            if not isinstance(source, SourceIdentity):
                raise TypeError(f"source must be a SourceIdentity from encode_source, got {type(source).__name__}")
            return self(source, images, **kwargs)
        return self(images, images, degree=degree, same_image=True, **kwargs)

    def swap(self, source, driving, degree: float = 0.0, **kwargs):
        """The identity of ``source`` (images, or a :class:`SourceIdentity`) with the pose, expression
        and background of ``driving``."""
        return self(source, driving, degree=degree, **kwargs)


def _step_params(scheduler) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)


def _unexpected_keywords(function, given: dict) -> str:
    """The TypeError message for keywords ``function`` does not take, with the closest valid name."""
    import difflib
    import inspect

    valid = [name for name, p in inspect.signature(function).parameters.items()
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    parts = []
    for name in given:
        close = difflib.get_close_matches(name, valid, n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (f"{function.__qualname__}() got unexpected keyword argument(s) {', '.join(parts)}; "
            f"it takes {', '.join(valid)}")
