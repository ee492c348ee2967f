import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from PIL import Image

from faceanon_core.method.attention import capture_states
from faceanon_core.method.pipeline import to_image_batch
from faceanon_core.method.states import mix_embeds
from helpers.tiny import noise


def test_anonymize_batch_gives_one_distinct_result_per_image(tiny_pipe, face_images, run_kwargs):
    three = np.concatenate([face_images, face_images[:1, ::-1]])
    out = tiny_pipe.anonymize(three, latents=noise(3), **run_kwargs).images
    assert out.shape == (3, 64, 64, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not np.allclose(out[0], out[1]) and not np.allclose(out[0], out[2])


def test_batch_equals_one_image_at_a_time(tiny_pipe, face_images, run_kwargs):
    latents = noise(2)
    together = tiny_pipe.anonymize(face_images, latents=latents, **run_kwargs).images
    for i in range(2):
        alone = tiny_pipe.anonymize(face_images[i], latents=latents[i:i + 1], **run_kwargs).images
        np.testing.assert_allclose(alone[0], together[i], atol=1e-4)


def test_given_latents_are_the_initial_noise(tiny_pipe, face_images, run_kwargs):
    from_generator = tiny_pipe.anonymize(face_images[:1], generator=torch.Generator().manual_seed(7), **run_kwargs)
    generator_noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(7))
    from_latents = tiny_pipe.anonymize(face_images[:1], latents=generator_noise, **run_kwargs)
    np.testing.assert_array_equal(from_generator.images, from_latents.images)
    other = tiny_pipe.anonymize(face_images[:1], latents=noise(1, seed=8), **run_kwargs)
    assert not np.allclose(other.images, from_latents.images)


def test_degree_changes_the_result_and_swap_at_zero_matches(tiny_pipe, face_images, run_kwargs):
    image, latents = face_images[:1], noise(1)
    kept = tiny_pipe.anonymize(image, degree=0.0, latents=latents, **run_kwargs).images
    swapped_self = tiny_pipe.swap(image, image, degree=0.0, latents=latents, **run_kwargs).images
    np.testing.assert_allclose(kept, swapped_self, atol=1e-6)
    removed = tiny_pipe.anonymize(image, degree=1.25, latents=latents, **run_kwargs).images
    assert np.abs(removed - kept).max() > 1e-3


def test_source_states_apply_eq1_before_and_eq2_after_the_referencenet(tiny_pipe, face_images):
    pixels = to_image_batch(face_images)
    embeds = tiny_pipe.encode_image_embeds(pixels)
    latents = tiny_pipe.encode_latents(pixels)
    assert embeds.shape == (2, 1, tiny_pipe.image_encoder.config.hidden_size)
    # d = 0 keeps the conditional states exactly.
    kept = tiny_pipe.source_states(latents, embeds, 0.0)
    plain = capture_states(tiny_pipe.referencenet, latents, embeds, tiny_pipe.reference_layers)
    for name in plain:
        torch.testing.assert_close(kept.cond[name], plain[name])
    # d = 1 gives the unconditional states (zero latents, zero embedding) for every image.
    removed = tiny_pipe.source_states(latents, embeds, 1.0)
    uncond = capture_states(tiny_pipe.referencenet, torch.zeros_like(latents[:1]), torch.zeros_like(embeds[:1]),
                            tiny_pipe.reference_layers)
    for name in uncond:
        torch.testing.assert_close(removed.cond[name], uncond[name].expand_as(removed.cond[name]))
    # d = 0.5: the ReferenceNet sees Z' = 0.5 Z (Eq. 1), then Eq. 2 mixes.
    half = tiny_pipe.source_states(latents, embeds, 0.5)
    seen = capture_states(tiny_pipe.referencenet, latents, mix_embeds(embeds, 0.5), tiny_pipe.reference_layers)
    for name in seen:
        torch.testing.assert_close(half.cond[name], 0.5 * seen[name] + 0.5 * uncond[name])


def test_source_of_one_broadcasts_over_driving_batch(tiny_pipe, face_images, run_kwargs):
    latents = noise(2)
    out = tiny_pipe.swap(face_images[:1], face_images, latents=latents, **run_kwargs).images
    assert out.shape[0] == 2
    pair = tiny_pipe.swap(np.repeat(face_images[:1], 2, 0), face_images, latents=latents, **run_kwargs).images
    np.testing.assert_allclose(out, pair, atol=1e-5)
    with pytest.raises(ValueError, match="batch of 2 but 3 images"):
        tiny_pipe.swap(face_images, np.concatenate([face_images, face_images[:1]]), **run_kwargs)


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, EulerDiscreteScheduler])
def test_any_diffusers_scheduler(tiny_model_dir, face_images, run_kwargs, scheduler_cls):
    from faceanon_core import FaceAnonPipeline

    pipe = FaceAnonPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    out = pipe.anonymize(face_images, latents=noise(2), **run_kwargs).images
    assert out.shape == (2, 64, 64, 3) and np.isfinite(out).all()


def test_output_types_and_input_types(tiny_pipe, face_images, run_kwargs):
    kwargs = dict(run_kwargs, latents=noise(1))
    as_np = tiny_pipe.anonymize(face_images[0], **kwargs).images
    kwargs.pop("output_type")
    as_pt = tiny_pipe.anonymize(torch.from_numpy(face_images[0]).permute(2, 0, 1) / 255.0,
                                output_type="pt", **kwargs).images
    as_pil = tiny_pipe.anonymize([Image.fromarray(face_images[0])], output_type="pil", **kwargs).images
    assert as_pt.shape == (1, 3, 64, 64)
    np.testing.assert_allclose(as_pt.permute(0, 2, 3, 1).numpy(), as_np, atol=1e-5)
    assert isinstance(as_pil[0], Image.Image) and as_pil[0].size == (64, 64)
    np.testing.assert_allclose(np.asarray(as_pil[0]) / 255.0, as_np[0], atol=1 / 255 + 1e-6)


def test_images_of_another_size_are_resized(tiny_pipe, face_images, run_kwargs):
    big = np.kron(face_images[0], np.ones((2, 2, 1), dtype=np.uint8))
    out = tiny_pipe.anonymize(big, latents=noise(1), **run_kwargs).images
    assert out.shape == (1, 64, 64, 3)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p, img, kw: p.anonymize(img.astype(np.float32), **kw), "must be in 0..1"),
        (lambda p, img, kw: p.anonymize([], **kw), "empty list"),
        (lambda p, img, kw: p.anonymize(img, **dict(kw, height=60)), "multiples of"),
        (lambda p, img, kw: p.anonymize(img, **dict(kw, output_type="jpg")), "output_type"),
        (lambda p, img, kw: p.anonymize(img, **dict(kw, num_inference_steps=0)), "at least 1"),
        (lambda p, img, kw: p.anonymize(img, latents=torch.zeros(1, 4, 4, 4), **kw), "latents must have shape"),
        (lambda p, img, kw: p.anonymize(img, degree=float("nan"), **kw), "degree must be a finite"),
        (lambda p, img, kw: p.anonymize("face.png", **kw), "unsupported image type"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny_pipe, face_images, run_kwargs, call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call(tiny_pipe, face_images[:1], run_kwargs)


def test_greyscale_and_rgba_inputs_are_converted():
    grey = np.full((4, 4), 128, dtype=np.uint8)
    assert to_image_batch(grey).shape == (1, 3, 4, 4)
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 10))
    batch = to_image_batch(rgba)
    assert batch.shape == (1, 3, 4, 4) and batch[0, 0].min() == 1.0
