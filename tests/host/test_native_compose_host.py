"""The method composed with ComfyUI's own samplers and patches (COMFYUI_PATH; skipped without it).

On a real server: FaceAnon Apply References + stock KSampler / KSamplerAdvanced / SamplerCustomAdvanced
+ CFGGuider give the same image as the Dual-Reference KSampler for the same seed, and a missing model
folder is refused with a message that says where it goes. In-process: patches other nodes install
before or after ours keep working, ComfyUI's memory estimate sees the reference keys/values, and
the Verify node says how to install its extra.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.host.server import error_message, test_images

pytestmark = pytest.mark.host

STEPS, CFG, SAMPLER, SCHEDULER, DEGREE = 3, 4.0, "euler", "simple", 1.25


def references(count: int, seed: int = 0) -> dict:
    """Loader, test images, CLIP, source capture + mix, driving capture: nodes "1" to "6"."""
    return {
        "1": {"class_type": "FaceAnon_ModelLoader", "inputs": {"model_folder": "tiny"}},
        "2": {"class_type": "FaceAnonTest_Images", "inputs": {"count": count, "seed": seed, "size": 64}},
        "3": {"class_type": "FaceAnon_CLIPImageEncode", "inputs": {"clip_vision": ["1", 4], "image": ["2", 0]}},
        "4": {"class_type": "FaceAnon_CaptureStates", "inputs": {"refnet": ["1", 1], "vae": ["1", 3],
                                                                 "image": ["2", 0], "embeds": ["3", 0],
                                                                 "degree": DEGREE}},
        "5": {"class_type": "FaceAnon_MixStates", "inputs": {"states": ["4", 0], "embeds": ["3", 0],
                                                             "degree": DEGREE}},
        "6": {"class_type": "FaceAnon_CaptureStates", "inputs": {"refnet": ["1", 2], "vae": ["1", 3],
                                                                 "image": ["2", 0], "embeds": ["3", 0],
                                                                 "degree": 0.0}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": count}},
    }


def decoded(prompt: dict, latent: list, name: str) -> dict:
    prompt["90"] = {"class_type": "VAEDecode", "inputs": {"samples": latent, "vae": ["1", 3]}}
    prompt["91"] = {"class_type": "FaceAnonTest_SaveTensor", "inputs": {"image": ["90", 0], "name": name}}
    return prompt


def ours(count, seed, noise, name):
    prompt = references(count)
    prompt["8"] = {"class_type": "FaceAnon_DualReferenceSampler", "inputs": {
        "model": ["1", 0], "source_states": ["5", 0], "source_embeds": ["5", 1], "driving_states": ["6", 0],
        "driving_embeds": ["3", 0], "latent_image": ["7", 0], "seed": seed, "steps": STEPS, "cfg": CFG,
        "sampler_name": SAMPLER, "scheduler": SCHEDULER, "denoise": 1.0, "noise": noise}}
    return decoded(prompt, ["8", 0], name)


def patched(count, name, start=0.0, end=1.0):
    prompt = references(count)
    prompt["20"] = {"class_type": "FaceAnon_ApplyReferences", "inputs": {
        "model": ["1", 0], "source_states": ["5", 0], "source_embeds": ["5", 1], "driving_states": ["6", 0],
        "driving_embeds": ["3", 0], "start_percent": start, "end_percent": end}}
    return prompt


def stock_ksampler(count, seed, name, **percents):
    prompt = patched(count, name, **percents)
    prompt["21"] = {"class_type": "KSampler", "inputs": {
        "model": ["20", 0], "positive": ["20", 1], "negative": ["20", 2], "latent_image": ["7", 0], "seed": seed,
        "steps": STEPS, "cfg": CFG, "sampler_name": SAMPLER, "scheduler": SCHEDULER, "denoise": 1.0}}
    return decoded(prompt, ["21", 0], name)


def stock_ksampler_advanced(count, seed, name):
    prompt = patched(count, name)
    prompt["21"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["20", 0], "positive": ["20", 1], "negative": ["20", 2], "latent_image": ["7", 0],
        "add_noise": "enable", "noise_seed": seed, "steps": STEPS, "cfg": CFG, "sampler_name": SAMPLER,
        "scheduler": SCHEDULER, "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable"}}
    return decoded(prompt, ["21", 0], name)


def custom_advanced(count, seed, name):
    prompt = patched(count, name)
    prompt.update({
        "30": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "31": {"class_type": "CFGGuider", "inputs": {"model": ["20", 0], "positive": ["20", 1],
                                                     "negative": ["20", 2], "cfg": CFG}},
        "32": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": SAMPLER}},
        "33": {"class_type": "BasicScheduler", "inputs": {"model": ["20", 0], "scheduler": SCHEDULER,
                                                          "steps": STEPS, "denoise": 1.0}},
        "34": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["30", 0], "guider": ["31", 0],
                                                                 "sampler": ["32", 0], "sigmas": ["33", 0],
                                                                 "latent_image": ["7", 0]}},
    })
    return decoded(prompt, ["34", 0], name)


def image(server, prompt) -> torch.Tensor:
    entry = server.run(prompt, timeout=600)
    message = error_message(entry)
    assert message is None, message
    return torch.load(entry["outputs"]["91"]["text"][0])


# ------------------------------------------------------------------ stock samplers on a real server


def test_stock_ksampler_with_the_patch_equals_our_sampler(server):
    """Same seed, same noise (ComfyUI's per-index noise = our "per image"; batch 1 = our default), same
    sampling code: the same float operations in the same order, so the images are identical."""
    for count, noise in ((3, "per image"), (1, "same for every image")):
        reference = image(server, ours(count, 7, noise, f"ours_{count}"))
        stock = image(server, stock_ksampler(count, 7, f"stock_{count}"))
        assert stock.shape == (count, 64, 64, 3) and torch.isfinite(stock).all()
        assert torch.equal(stock, reference), float((stock - reference).abs().max())
    advanced = image(server, stock_ksampler_advanced(1, 7, "advanced"))
    assert torch.equal(advanced, reference)
    plain = image(server, decoded({**references(1), "21": {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["20", 1], "negative": ["20", 2], "latent_image": ["7", 0], "seed": 7,
        "steps": STEPS, "cfg": CFG, "sampler_name": SAMPLER, "scheduler": SCHEDULER, "denoise": 1.0}},
        "20": patched(1, "x")["20"]}, ["21", 0], "unpatched"))
    assert float((plain - reference).abs().max()) > 1e-3, "the patched MODEL must matter, not only the conditioning"


def test_sampler_custom_advanced_with_cfg_guider_runs_the_method(server):
    reference = image(server, ours(2, 5, "per image", "ours_custom"))
    custom = image(server, custom_advanced(2, 5, "custom"))
    assert custom.shape == (2, 64, 64, 3) and torch.isfinite(custom).all()
    assert torch.equal(custom, reference), float((custom - reference).abs().max())


def test_start_end_percent_limit_the_references_to_a_sigma_range(server):
    full = image(server, stock_ksampler(1, 9, "pct_full"))
    late = image(server, stock_ksampler(1, 9, "pct_late", start=0.5, end=1.0))
    assert float((late - full).abs().max()) > 1e-4
    again = image(server, stock_ksampler(1, 9, "pct_all", start=0.0, end=1.0))
    assert torch.equal(again, full)
    entry = server.run(stock_ksampler(1, 9, "pct_bad", start=0.8, end=0.2))
    message = error_message(entry)
    assert message is not None and "start_percent" in message, message


def test_latent_batch_that_does_not_match_the_references_is_a_clear_error(server):
    prompt = stock_ksampler(3, 1, "bad_batch")
    prompt["7"]["inputs"]["batch_size"] = 2
    message = error_message(server.run(prompt))
    assert message is not None and "batch of 2" in message and "3" in message, message


def test_missing_model_folder_says_where_it_goes_and_how_to_fetch_it(server):
    prompt = ours(1, 1, "per image", "no_weights")
    prompt["1"]["inputs"]["model_folder"] = "face-anon-simple"
    status, answer = server.post("/prompt", {"prompt": prompt})
    assert status == 400, answer
    text = str(answer)
    assert "Value not in list" not in text
    for needle in ("models/faceanon/<name>/", "extra_model_paths.yaml", "hf download hkung/face-anon-simple",
                   "--local-dir ComfyUI/models/faceanon/face-anon-simple", "stabilityai/sd-vae-ft-mse",
                   "openai/clip-vit-large-patch14"):
        assert needle in text, (needle, text[:2000])
    assert "faceanon models download" not in text and str(server.base) not in text


def test_object_info_lists_apply_references_with_tooltips(server):
    info = server.get("/object_info")["FaceAnon_ApplyReferences"]
    assert info["output"] == ["MODEL", "CONDITIONING", "CONDITIONING"]
    assert info["output_name"] == ["model", "positive", "negative"]
    required = info["input"]["required"]
    assert [required[k][0] for k in ("model", "source_states", "source_embeds", "driving_states",
                                     "driving_embeds")] == ["MODEL", "FACEANON_STATES", "FACEANON_EMBEDS",
                                                            "FACEANON_STATES", "FACEANON_EMBEDS"]
    assert all(spec[1].get("tooltip") for spec in required.values())


def test_every_input_of_every_node_has_a_tooltip_on_the_server(server):
    from helpers.workflows import missing_tooltips

    ours = {name: entry for name, entry in server.get("/object_info").items() if name.startswith("FaceAnon_")}
    assert len(ours) == 13
    assert missing_tooltips(ours) == []


@pytest.mark.parametrize("node, inputs, bad", [
    ("FaceAnon_RedactFaces", {"method": "smudge", "strength": 0.0, "threshold": 0.95}, "method: 'smudge' not in"),
    ("FaceAnon_DetectFaces", {"threshold": 0.95, "min_face_size": 10.0, "crop_size": 512, "if_no_face": "ignore"},
     "if_no_face: 'ignore' not in"),
])
def test_the_server_refuses_a_value_that_is_not_one_of_the_choices(server, node, inputs, bad):
    """ComfyUI 0.3.64 checks only V1 combos; the nodes' validate_inputs refuse the value before anything runs."""
    prompt = {"1": {"class_type": "FaceAnonTest_Images", "inputs": {"count": 1, "seed": 0, "size": 64}},
              "2": {"class_type": node, "inputs": {"image": ["1", 0], **inputs}},
              "3": {"class_type": "FaceAnonTest_SaveTensor", "inputs": {"image": ["2", 0], "name": "never"}}}
    status, answer = server.post("/prompt", {"prompt": prompt})
    assert status == 400 and bad in str(answer), answer


# ------------------------------------------------------------------ in-process: stacking, memory, messages


@pytest.fixture(scope="module")
def loaded(base):
    from helpers.host.comfy_inprocess import import_pack

    import_pack()
    import folder_paths

    folder_paths.add_model_folder_path("faceanon", str(base / "models" / "faceanon"))
    from faceanon_pack_under_test.nodes.backend import encoding, loading, mixing

    unet, src_refnet, drv_refnet, vae, clip = loading.load_model_folder("tiny")
    pixels = torch.from_numpy(test_images(2, 0).astype(np.float32) / 255)
    embeds = encoding.encode_embeds(clip, pixels)
    latents = encoding.encode_latents(src_refnet, vae, pixels)
    src = encoding.capture_from_latents(src_refnet, latents, embeds, DEGREE)
    src, src_embeds = mixing.mix_captured(src, embeds, DEGREE)
    drv = encoding.capture_from_latents(drv_refnet, latents, embeds, 0.0)
    return {"unet": unet, "refs": (src, src_embeds, drv, embeds)}


class Recorder:
    """A stand-in for another node's attn1 replace (e.g. SAG's attention recorder): ComfyUI's attention,
    recording how many keys it saw."""

    def __init__(self):
        self.keys = []

    def __deepcopy__(self, memo):  # shared by ModelPatcher.clone(), as closures are (SAG's recorder is one)
        return self

    def __call__(self, q, k, v, extra_options):
        import comfy.ldm.modules.attention as attention

        self.keys.append(k.shape[1])
        return attention.optimized_attention(q, k, v, extra_options["n_heads"])


def _sample(model, positive, negative, seed=3, steps=2):
    import comfy.sample

    latent = torch.zeros(2, 4, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(model, noise, steps, CFG, SAMPLER, SCHEDULER, positive, negative, latent,
                               disable_pbar=True, seed=seed)


def test_replaces_installed_before_or_after_ours_keep_working(loaded):
    from faceanon_pack_under_test.nodes.backend import patching

    unet, refs = loaded["unet"], loaded["refs"]
    model, positive, negative, _b, patch = patching.apply_references(unet, *refs)
    expected = _sample(model, positive, negative)
    key = next(iter(patch.layout))
    n_ref = (patch.source_cond[patch.routing[patch.layout[key]]].shape[1]
             + patch.driving[patch.routing[patch.layout[key]]].shape[1])

    before = unet.clone()
    first = Recorder()
    before.set_model_attn1_replace(first, *key)
    stacked, positive, negative, _b, _p = patching.apply_references(before, *refs)
    assert torch.equal(_sample(stacked, positive, negative), expected)
    assert first.keys and all(k > n_ref for k in first.keys), "the earlier replace must see the reference keys"

    for late_key in (key, key[:2]):  # per layer, and for the whole block
        after = model.clone()
        later = Recorder()
        after.set_model_attn1_replace(later, *late_key)
        assert torch.equal(_sample(after, positive, negative), expected), late_key
        assert later.keys and all(k > n_ref for k in later.keys), late_key
        replaces = after.model_options["transformer_options"]["patches_replace"]["attn1"]
        assert replaces[late_key] is later  # stacking happens in the run's copy: the MODEL itself is unchanged

    with pytest.raises(ValueError, match="already has FaceAnon references"):
        patching.apply_references(model, *refs)


def test_an_attn1_patch_before_ours_keeps_working(loaded):
    from faceanon_pack_under_test.nodes.backend import patching

    unet, refs = loaded["unet"], loaded["refs"]
    model, positive, negative, _b, _p = patching.apply_references(unet, *refs)
    expected = _sample(model, positive, negative)
    calls = []

    def identity_patch(n, context, value, extra_options):
        calls.append(n.shape)
        return n, context, value

    with_patch = unet.clone()
    with_patch.set_model_attn1_patch(identity_patch)
    model2, positive, negative, _b, _p = patching.apply_references(with_patch, *refs)
    assert torch.equal(_sample(model2, positive, negative), expected) and calls


def test_memory_estimate_includes_the_reference_cache_and_the_cache_lives_one_run(loaded, monkeypatch):
    import comfy.model_management as mm
    from faceanon_pack_under_test.nodes.backend import patching

    unet, refs = loaded["unet"], loaded["refs"]
    seen = []
    real = mm.load_models_gpu

    def spy(models, memory_required=0, **kwargs):
        seen.append(memory_required)
        return real(models, memory_required=memory_required, **kwargs)

    monkeypatch.setattr(mm, "load_models_gpu", spy)
    model, positive, negative, _b, patch = patching.apply_references(unet, *refs)
    _sample(unet.clone(), positive, negative)
    _sample(model, positive, negative)
    plain, with_refs = seen[-2], seen[-1]
    base = model.model
    size = mm.dtype_size(base.manual_cast_dtype or base.get_dtype())
    assert with_refs - plain == pytest.approx(patch.memory_bytes(4, size), rel=1e-9)  # CFG rows of 2 images
    assert patch.memory_bytes(4, size) > 0
    assert "memory_required" not in vars(base), "the estimate is ours only during our sampling run"
    assert not patch._kv, "the reference K/V are dropped after the run"
    calls_before = patch.projection_calls
    _sample(model, positive, negative, steps=3)
    assert patch.projection_calls - calls_before == len(patch.layout), "projected once per layer per run"


def test_verify_node_error_says_how_to_install_the_extra(loaded, monkeypatch):
    from faceanon_pack_under_test.faceanon_core.privacy import identity
    from faceanon_pack_under_test.nodes.backend import verify

    def unavailable():
        raise identity.RecognizerUnavailable("identity checks need dlib")

    monkeypatch.setattr(identity, "default_recognizer", unavailable)
    with pytest.raises(ImportError, match="requirements-verify.txt"):
        verify.node_recognizer()


def test_loader_message_when_no_weights_are_installed(loaded, monkeypatch, tmp_path):
    import folder_paths
    from faceanon_pack_under_test.nodes import loader
    from faceanon_pack_under_test.nodes.backend import loading

    empty = tmp_path / "models" / "faceanon"
    monkeypatch.setattr(folder_paths, "get_folder_paths", lambda name: [str(empty)])
    assert loading.list_model_folders() == []
    message = loader.FaceAnonModelLoader.validate_inputs(model_folder="face-anon-simple")
    assert isinstance(message, str)
    assert "installed under models/faceanon/: none" in message and "models/faceanon/<name>/" in message
    assert "hf download hkung/face-anon-simple" in message and "extra_model_paths.yaml" in message
    assert str(tmp_path) not in message and "faceanon models download" not in message
    assert loader.FaceAnonModelLoader.validate_inputs(model_folder="../../etc") != True  # noqa: E712  (a path)


def test_the_sampled_latent_drops_the_keys_core_drops(loaded):
    """As core's KSampler on the newest ComfyUI: the VAE's downscale ratios describe the input, not the result."""
    from faceanon_pack_under_test.nodes.backend import sampling

    latent = {"samples": torch.zeros(2, 4, 8, 8), "downscale_ratio_spacial": 8, "downscale_ratio_temporal": 1,
              "batch_index": [0, 1], "kept": "x"}
    settings = sampling.SamplingSettings.of("test", seed=1, steps=1, cfg=CFG, sampler_name=SAMPLER,
                                            scheduler=SCHEDULER)
    out = sampling.dual_reference_sample(loaded["unet"], *loaded["refs"], latent, settings)
    assert set(out) == {"samples", "kept"} and out["samples"].shape == (2, 4, 8, 8)


def test_a_model_cloned_for_several_gpus_is_refused_before_sampling(loaded):
    from faceanon_pack_under_test.nodes.backend import patching

    unet, refs = loaded["unet"], loaded["refs"]
    patched, positive, negative, _batch, _patch = patching.apply_references(unet, *refs)
    patched.set_additional_models("multigpu", [patched.clone()])  # what the newest ComfyUI's MultiGPU node adds
    with pytest.raises(ValueError, match="set up for sampling on 2 GPUs"):
        _sample(patched, positive, negative, steps=1)
    multi = unet.clone()
    multi.set_additional_models("multigpu", [unet.clone()])
    with pytest.raises(ValueError, match="MultiGPU node"):
        patching.apply_references(multi, *refs)
