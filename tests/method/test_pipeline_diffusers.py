"""FaceAnonPipeline behaves as a diffusers user expects: config round trip, hooks, callbacks, output type."""

import inspect
import json
import re

import numpy as np
import pytest
import torch
from diffusers.callbacks import PipelineCallback
from diffusers.utils import BaseOutput

from faceanon_core.method.loading import ModelFolderError
from faceanon_core.method.pipeline import FaceAnonOutput, FaceAnonPipeline, FaceAnonPipelineOutput, to_image_batch


def initial_noise(batch: int = 1) -> torch.Tensor:
    return torch.randn((batch, 4, 8, 8), generator=torch.Generator().manual_seed(11))


def test_routing_is_a_config_entry_that_save_pretrained_round_trips(tiny_model_dir, tmp_path):
    pipe = FaceAnonPipeline.from_pretrained(tiny_model_dir, routing="per_layer")
    assert pipe.config.routing == "per_layer"
    pipe.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "model_index.json").read_text())["routing"] == "per_layer"
    loaded = FaceAnonPipeline.from_pretrained(tmp_path / "saved")
    assert loaded.routing_mode == "per_layer" and loaded.config.routing == "per_layer"
    assert loaded.routing == pipe.routing
    # An explicit argument still wins over what the folder records.
    assert FaceAnonPipeline.from_pretrained(tmp_path / "saved", routing="as_trained").routing_mode == "as_trained"


def test_a_folder_whose_two_routing_records_disagree_is_refused(tiny_model_dir, tmp_path):
    import shutil

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    config_path = folder / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["faceanon_routing"] = "as_trained"
    config_path.write_text(json.dumps(config))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FaceAnonPipeline", "routing": "per_layer"}))
    with pytest.raises(ModelFolderError, match="per_layer.*as_trained"):
        FaceAnonPipeline.from_pretrained(folder)


def test_from_pretrained_names_a_misspelt_keyword_instead_of_ignoring_it(tiny_model_dir):
    with pytest.raises(TypeError, match=r"'routnig' \(did you mean 'routing'\?\)"):
        FaceAnonPipeline.from_pretrained(tiny_model_dir, routnig="per_layer")
    with pytest.raises(TypeError, match="'cache_dir'"):
        FaceAnonPipeline.from_pretrained(tiny_model_dir, cache_dir="/tmp")


def test_encode_latents_is_the_posterior_mean_and_takes_no_generator(tiny_pipe, face_images):
    # The method (and the ComfyUI backend) uses the mean: a generator there would suggest sampling.
    assert "generator" not in inspect.signature(tiny_pipe.encode_latents).parameters
    pixels = to_image_batch(face_images)
    posterior = tiny_pipe.vae.encode(pixels * 2 - 1).latent_dist
    torch.testing.assert_close(tiny_pipe.encode_latents(pixels), posterior.mean * tiny_pipe.vae.config.scaling_factor,
                               rtol=0, atol=0)


def test_call_docstring_documents_every_parameter():
    doc = FaceAnonPipeline.__call__.__doc__ or ""
    for name in list(inspect.signature(FaceAnonPipeline.__call__).parameters)[1:]:
        assert re.search(rf"^\s+{name} \(", doc, re.MULTILINE), f"__call__ does not document {name!r}"


def test_model_hooks_are_freed_at_the_end_of_a_call(tiny_pipe, face_images, run_kwargs, monkeypatch):
    events = []
    decode = tiny_pipe.decode_latents
    monkeypatch.setattr(tiny_pipe, "decode_latents", lambda latents: events.append("decode") or decode(latents))
    monkeypatch.setattr(tiny_pipe, "maybe_free_model_hooks", lambda: events.append("free"))
    tiny_pipe.anonymize(face_images[:1], latents=initial_noise(), **run_kwargs)
    assert events == ["decode", "free"]


def test_callback_on_step_end_sees_every_step_and_can_replace_the_latents(tiny_pipe, face_images, run_kwargs):
    run_kwargs = dict(run_kwargs, num_inference_steps=3)
    plain = tiny_pipe.anonymize(face_images[:1], latents=initial_noise(), **run_kwargs).images
    seen = []

    def record(pipe, step, timestep, tensors):
        seen.append((step, int(timestep), tuple(tensors)))
        return {}

    recorded = tiny_pipe.anonymize(face_images[:1], latents=initial_noise(), callback_on_step_end=record,
                                   **run_kwargs).images
    np.testing.assert_array_equal(recorded, plain)  # a callback that changes nothing changes nothing
    assert [s for s, _, _ in seen] == [0, 1, 2]
    assert [t for _, t, _ in seen] == [int(t) for t in tiny_pipe.scheduler.timesteps]
    assert all(names == ("latents",) for _, _, names in seen)

    def zero_at_end(pipe, step, timestep, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if step == 2 else {}

    replaced = tiny_pipe.anonymize(face_images[:1], latents=initial_noise(), callback_on_step_end=zero_at_end,
                                   **run_kwargs).images
    expected = tiny_pipe.decode_latents(torch.zeros(1, 4, 8, 8)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(replaced, expected)


def test_a_callback_can_interrupt_and_pipeline_callbacks_are_accepted(tiny_pipe, face_images, run_kwargs):
    calls = []

    def stop(pipe, step, timestep, tensors):
        calls.append(step)
        pipe._interrupt = True
        return {}

    tiny_pipe.anonymize(face_images[:1], latents=initial_noise(), callback_on_step_end=stop,
                        **dict(run_kwargs, num_inference_steps=3))
    assert calls == [0] and tiny_pipe.num_timesteps == 3

    class Halve(PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            return {"latents": callback_kwargs["latents"] * 0.5}

    halved = tiny_pipe.anonymize(face_images[:1], latents=initial_noise(), callback_on_step_end=Halve(),
                                 **run_kwargs).images
    plain = tiny_pipe.anonymize(face_images[:1], latents=initial_noise(), **run_kwargs).images
    assert np.abs(halved - plain).max() > 1e-3
    with pytest.raises(ValueError, match="'context'"):
        tiny_pipe.anonymize(face_images[:1], callback_on_step_end=stop,
                            callback_on_step_end_tensor_inputs=["context"], **run_kwargs)


def test_output_is_a_diffusers_base_output(tiny_pipe, face_images, run_kwargs):
    out = tiny_pipe.anonymize(face_images[:1], latents=initial_noise(), **run_kwargs)
    assert isinstance(out, FaceAnonPipelineOutput) and isinstance(out, BaseOutput)
    assert FaceAnonOutput is FaceAnonPipelineOutput
    assert out[0] is out.images and out["images"] is out.images and out.to_tuple()[0] is out.images
    as_tuple = tiny_pipe.anonymize(face_images[:1], latents=initial_noise(), return_dict=False, **run_kwargs)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    np.testing.assert_array_equal(as_tuple[0], out.images)
