"""The face nodes fail closed, without a ComfyUI host (stand-in ComfyUI modules, see node_stubs.py).

Redact Faces redacts the faces Detect set aside as too small for the model; a photo without faces goes
through Detect -> Face Anonymize -> Paste Faces Back unchanged, with a non-empty crop output for previews;
NaN/inf in any float input is refused naming the input; a 1x1 image is refused; non-finite results are
errors. The same paths on a real ComfyUI: tests/host/test_leak_matrix_host.py.
"""

from __future__ import annotations

import logging
import math
import types

import numpy as np
import pytest
import torch

from helpers.faces import astronaut
from helpers.leak import CHANGED, box_change, detections, mixed, sky
from helpers.node_stubs import load_node_modules, run_node

NODES = load_node_modules("faces", "oneshot", "states", "sampler", "verify", "backend.checks", "tracks",
                          "backend.patching", "backend.loading", "loader", "backend.anonymize", "backend.sampling",
                          "apply_references", "backend.faces", "backend.verify", "backend.tracks")
fn, oneshot, states, checks = NODES["faces"], NODES["oneshot"], NODES["states"], NODES["backend.checks"]


def as_image(*frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(frames).astype(np.float32) / 255.0)


def as_uint8(image: torch.Tensor) -> list[np.ndarray]:
    return [np.round(f.numpy() * 255).astype(np.uint8) for f in image]


def detect(image, min_face_size=10.0, **kw):
    return run_node(fn.FaceAnonDetectFaces, image=image, threshold=0.95, min_face_size=min_face_size, crop_size=512,
                    if_no_face=kw.pop("if_no_face", "continue"), **kw)


MODELS = dict(model=None, source_refnet=None, driving_refnet=None, vae=None, clip_vision=None)


def anonymize(image, degree=1.25, cfg=4.0):
    return run_node(oneshot.FaceAnonAnonymize, **MODELS, image=image, degree=degree, seed=0, steps=2, cfg=cfg,
                    sampler_name="euler", scheduler="normal")[0]


def swap(source_image, driving_image, degree=0.0, cfg=4.0):
    return run_node(oneshot.FaceAnonSwap, **MODELS, source_image=source_image, driving_image=driving_image,
                    degree=degree, seed=0, steps=2, cfg=cfg, sampler_name="euler", scheduler="normal")[0]


def paste(image, crops, faces, feather=0.025, erode=0.02):
    return run_node(fn.FaceAnonPasteFaces, image=image, crops=crops, faces=faces, feather=feather, erode=erode,
                    color_match=False)


def redact(image, strength=0.0, threshold=0.95, **kw):
    return run_node(fn.FaceAnonRedactFaces, image=image, method="blur", strength=strength, threshold=threshold, **kw)


def test_redact_with_detected_faces_redacts_the_small_ones_too():
    photo = mixed()
    crops, faces = detect(as_image(photo))
    assert len(faces) == 4 and len(faces.small) == 1  # the 6 px face is too small for the model
    out, mask = redact(as_image(photo), faces=faces)
    result = as_uint8(out)[0]
    for face in detections(mixed):
        assert box_change(photo, result, face.box) > CHANGED, face.box


def test_no_face_photo_comes_back_unchanged_through_detect_anonymize_paste(caplog):
    photo = sky()
    crops, faces = detect(as_image(photo))
    assert crops.shape == (1, 512, 512, 3) and not crops.any() and len(faces) == 0  # never an empty batch
    with caplog.at_level(logging.WARNING):
        anonymized = anonymize(crops)
    assert "no face" in caplog.text
    assert anonymized.shape[0] >= 1  # PreviewImage / SaveImage of the crops get an image, never an empty batch
    out, mask = paste(as_image(photo), anonymized, faces)
    np.testing.assert_array_equal(as_uint8(out)[0], photo)
    assert float(mask.max()) == 0.0
    with pytest.raises(ValueError, match="no face found"):
        detect(as_image(photo), if_no_face="error")


def test_paste_still_refuses_crops_that_do_not_belong_to_the_faces():
    photo = sky()
    crops, faces = detect(as_image(photo))
    with pytest.raises(ValueError, match="2 processed crops for 0 detected faces"):
        paste(as_image(photo), torch.rand(2, 64, 64, 3), faces)


BAD = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("name", ["degree", "cfg"])
def test_face_anonymize_refuses_non_finite_floats_naming_the_input(name, value):
    kw = dict(degree=1.25, cfg=4.0)
    kw[name] = value
    with pytest.raises(ValueError, match=f"input '{name}'"):
        anonymize(torch.rand(1, 64, 64, 3), kw["degree"], kw["cfg"])
    with pytest.raises(ValueError, match=f"input '{name}'"):
        swap(torch.rand(1, 64, 64, 3), torch.rand(1, 64, 64, 3), kw["degree"], kw["cfg"])


@pytest.mark.parametrize("value", BAD)
def test_granular_nodes_refuse_non_finite_floats(value):
    with pytest.raises(ValueError, match="input 'degree'"):
        run_node(states.FaceAnonMixStates, states=None, embeds=torch.zeros(1, 1, 8), degree=value)
    with pytest.raises(ValueError, match="input 'degree'"):
        run_node(states.FaceAnonCaptureStates, refnet=None, vae=None, image=torch.rand(1, 8, 8, 3),
                 embeds=torch.zeros(1, 1, 8), degree=value)
    for name in ("cfg", "denoise"):
        kw = dict(cfg=4.0, denoise=1.0)
        kw[name] = value
        with pytest.raises(ValueError, match=f"input '{name}'"):
            run_node(NODES["sampler"].FaceAnonDualReferenceSampler, model=None, source_states=None,
                     source_embeds=None, driving_states=None, driving_embeds=None, latent_image={}, seed=0, steps=2,
                     sampler_name="euler", scheduler="normal", noise="per image", **kw)


@pytest.mark.parametrize("value", BAD)
def test_face_nodes_refuse_non_finite_floats(value):
    img = as_image(sky())
    for name in ("threshold", "min_face_size", "detector_min_face"):
        kw = dict(threshold=0.95, min_face_size=10.0, detector_min_face=20.0)
        kw[name] = value
        with pytest.raises(ValueError, match=f"input '{name}'"):
            run_node(fn.FaceAnonDetectFaces, image=img, threshold=kw["threshold"], min_face_size=kw["min_face_size"],
                     crop_size=512, if_no_face="continue", detector_min_face=kw["detector_min_face"])
    crops, faces = detect(img)
    for name in ("feather", "erode"):
        kw = dict(feather=0.025, erode=0.02)
        kw[name] = value
        with pytest.raises(ValueError, match=f"input '{name}'"):
            paste(img, crops, faces, kw["feather"], kw["erode"])
    for name in ("strength", "threshold"):
        kw = dict(strength=0.0, threshold=0.95)
        kw[name] = value
        with pytest.raises(ValueError, match=f"input '{name}'"):
            redact(img, kw["strength"], kw["threshold"])
    with pytest.raises(ValueError, match="input 'threshold'"):
        run_node(NODES["verify"].FaceAnonVerifyFaces, original=img, anonymized=img, faces=faces,
                 threshold=value, on_leak="fail")
    for name in ("threshold", "min_face_size"):
        kw = dict(threshold=0.95, min_face_size=10.0)
        kw[name] = value
        with pytest.raises(ValueError, match=f"input '{name}'"):
            run_node(NODES["tracks"].FaceAnonTrackFaces, frames=img, max_gap=8, smoothing=True, crop_size=512,
                     **kw)
    for name in ("start_percent", "end_percent"):
        kw = dict(start_percent=0.0, end_percent=1.0)
        kw[name] = value
        with pytest.raises(ValueError, match=f"{name} must be between 0 and 1"):
            NODES["backend.patching"].sigma_range_of(None, kw["start_percent"], kw["end_percent"])


def test_every_float_input_of_every_node_is_checked():
    """Each FLOAT input of each node class is named in a check_floats call of its module or of the backend module
    its node runs (a new float input without a check fails here)."""
    import inspect

    backend = {oneshot: [NODES["backend.anonymize"], NODES["backend.sampling"]],
               NODES["sampler"]: [NODES["backend.sampling"]], fn: [NODES["backend.faces"]],
               NODES["verify"]: [NODES["backend.verify"]], NODES["tracks"]: [NODES["backend.tracks"]]}
    for module in (fn, oneshot, states, NODES["sampler"], NODES["verify"], NODES["tracks"]):
        source = "".join(inspect.getsource(m) for m in [module, *backend.get(module, [])])
        for cls in [c for c in vars(module).values() if isinstance(c, type) and hasattr(c, "INPUT_TYPES")]:
            types = cls.INPUT_TYPES()
            for section in types.values():
                for name, spec in section.items():
                    if spec[0] == "FLOAT":
                        assert f"{name}={name}" in source, (cls.__name__, name)


def node_classes() -> list:
    from helpers.comfy_io_standin import ComfyNode

    return [cls for module in NODES.values() for cls in vars(module).values()
            if isinstance(cls, type) and issubclass(cls, ComfyNode) and cls.__module__ == module.__name__]


def test_every_node_class_is_found():
    assert len(node_classes()) == 13
    assert len(with_choices()) == 7  # loader, sampler, anonymize, swap, detect, redact, verify


@pytest.mark.parametrize("cls", node_classes(), ids=lambda c: c.__name__)
def test_execute_takes_exactly_the_schema_inputs(cls):
    """ComfyUI calls ``execute`` with the inputs by name (optional ones only when connected): its parameters are
    the schema's inputs, and every optional input has a default."""
    import inspect

    schema = cls.GET_SCHEMA()
    params = inspect.signature(cls.execute).parameters
    assert list(params) == [i.id for i in schema.inputs], schema.node_id
    for spec in schema.inputs:
        has_default = params[spec.id].default is not inspect.Parameter.empty
        assert has_default == spec.optional, (schema.node_id, spec.id)


def with_choices() -> list:
    from helpers.comfy_io_standin import Combo

    return [cls for cls in node_classes() if any(isinstance(i, Combo.Input) for i in cls.GET_SCHEMA().inputs)]


@pytest.mark.parametrize("cls", with_choices(), ids=lambda c: c.__name__)
def test_every_choice_input_is_validated(cls):
    """ComfyUI (0.3.64) lets any value through a V3 combo: each node's validate_inputs checks its choice inputs."""
    import inspect

    from helpers.comfy_io_standin import Combo

    schema = cls.GET_SCHEMA()
    combos = [i.id for i in schema.inputs if isinstance(i, Combo.Input)]
    params = list(inspect.signature(cls.validate_inputs).parameters)
    assert params == combos, (schema.node_id, params, combos)  # exactly these: ComfyUI skips its checks for them
    if schema.node_id == "FaceAnon_ModelLoader":
        return  # validate_model_folder: test_the_loader_says_where_the_weights_go_when_none_are_installed
    good = {i.id: i.options[0] for i in schema.inputs if i.id in combos}
    assert cls.validate_inputs(**good) is True
    assert cls.validate_inputs(**{name: None for name in combos}) is True  # linked: known only when it runs
    for name in combos:
        message = cls.validate_inputs(**{**good, name: "no_such_choice"})
        assert isinstance(message, str) and f"{name}: 'no_such_choice' not in" in message, message


HUB_REPOS = ("hkung/face-anon-simple", "stabilityai/sd-vae-ft-mse", "openai/clip-vit-large-patch14")


def assert_says_how_to_install(message):
    """A ComfyUI user's instructions: the folder relative to models/, the three hub repositories, commands of the
    `hf` CLI (huggingface_hub, in ComfyUI's environment); not the CLI a Manager install lacks."""
    assert isinstance(message, str) and "models/faceanon/<name>/" in message and "extra_model_paths.yaml" in message
    assert all(repo in message for repo in HUB_REPOS), message
    assert "hf download hkung/face-anon-simple" in message
    assert "--local-dir ComfyUI/models/faceanon/face-anon-simple/vae" in message
    assert "faceanon models download" not in message


def test_the_loader_says_where_the_weights_go_when_none_are_installed():
    loader = NODES["loader"].FaceAnonModelLoader
    assert loader.INPUT_TYPES()["required"]["model_folder"][1]["options"] == []  # no folder installed
    message = loader.validate_inputs(model_folder="face-anon-simple")
    assert_says_how_to_install(message)
    assert "installed under models/faceanon/: none" in message
    assert_says_how_to_install(loader.validate_inputs(model_folder="../../etc"))


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A models/faceanon root holding one model folder, face-anon-simple (only the file the listing reads)."""
    loading = NODES["backend.loading"]
    root = tmp_path / "server" / "models" / "faceanon"
    (root / "face-anon-simple" / "unet").mkdir(parents=True)
    (root / "face-anon-simple" / "unet" / "config.json").write_text("{}")
    monkeypatch.setattr(loading.folder_paths, "get_folder_paths", lambda name: [str(root)])
    return types.SimpleNamespace(FaceAnonModelLoader=NODES["loader"].FaceAnonModelLoader,
                                 public_error=loading.public_error)


def test_only_the_listed_model_folder_names_pass_validation(installed):
    loader = installed.FaceAnonModelLoader
    assert loader.validate_inputs(model_folder="face-anon-simple") is True
    for bad in ("", "face-anon-simple/unet", "./face-anon-simple", "face-anon-simple/", "../faceanon/face-anon-simple"):
        message = loader.validate_inputs(model_folder=bad)
        assert isinstance(message, str), bad
        assert "installed under models/faceanon/: face-anon-simple" in message, (bad, message)
    assert "no FaceAnon model folder was chosen" in loader.validate_inputs(model_folder="")


def test_loader_messages_name_no_server_path(installed, tmp_path):
    message = installed.FaceAnonModelLoader.validate_inputs(model_folder="other")
    assert str(tmp_path) not in message and "/server/" not in message
    missing = FileNotFoundError(f"{tmp_path}/server/models/faceanon/face-anon-simple/unet/x is missing")
    error = installed.public_error(missing, tmp_path / "server/models/faceanon/face-anon-simple", "face-anon-simple")
    assert type(error) is FileNotFoundError and str(error) == "models/faceanon/face-anon-simple/unet/x is missing"


@pytest.mark.parametrize("side", [1, 8, 15])
def test_images_too_small_for_a_face_are_refused(side):
    with pytest.raises(ValueError, match=f"{side}x{side}: too small to hold a face"):
        anonymize(torch.rand(1, side, side, 3))


def test_a_1x1_photo_takes_the_no_face_path_through_detect_and_redact():
    tiny = np.full((1, 1, 3), 120, np.uint8)
    crops, faces = detect(as_image(tiny))
    assert len(faces) == 0
    out, _ = redact(as_image(tiny))
    np.testing.assert_array_equal(as_uint8(out)[0], tiny)


def test_non_finite_results_are_errors():
    with pytest.raises(ValueError, match="sampled latent holds 1 NaN"):
        checks.check_finite_tensor("Dual-Reference Sampler: the sampled latent",
                                   torch.tensor([0.0, math.nan]))
    checks.check_finite_tensor("ok", torch.zeros(3))


def test_near_limit_detections_are_logged(caplog):
    photo = mixed()
    with caplog.at_level(logging.INFO):
        detect(as_image(photo), detector_min_face=20.0)
    # the 6 px face has a 12x17 px box: within 1.5x of the 20 px limit
    assert "1 of 5 detection(s) are within 1.5x of the smallest face" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        detect(as_image(astronaut()), detector_min_face=20.0)
    assert "none within 1.5x" in caplog.text


def test_detector_min_face_reaches_the_detector():
    assert NODES["backend.faces"].mtcnn(0.95, 40.0).min_face_size == 40.0
    spec = fn.FaceAnonDetectFaces.INPUT_TYPES()["optional"]["detector_min_face"]
    assert spec[1]["default"] == 20.0  # the CLI's --min-face-size default
    assert fn.FaceAnonRedactFaces.INPUT_TYPES()["optional"]["detector_min_face"][1]["default"] == 20.0


def test_a_nan_pixel_is_blamed_on_the_image_not_on_a_setting():
    image = torch.rand(1, 64, 64, 3)
    image[0, 3, 3, 0] = math.nan
    with pytest.raises(ValueError, match="Face Anonymize: the image holds 1 NaN"):
        anonymize(image)


def test_face_swap_without_a_source_face_fails_and_without_a_driving_face_passes_through():
    photo = sky()
    crops, faces = detect(as_image(photo))
    face = torch.rand(1, 64, 64, 3)
    with pytest.raises(ValueError, match="source image holds no face"):
        swap(crops, face)
    out = swap(face, crops)
    assert out.shape[0] == 1 and not out.any()


def test_a_1x1_photo_takes_the_no_face_path_in_the_library():
    from faceanon_core.faces import process_faces, redact_image

    tiny = np.full((1, 1, 3), 120, np.uint8)
    calls = []
    res = process_faces(tiny, lambda crops: calls.append(crops) or crops)
    assert calls == [] and res.faces == [] and np.array_equal(res.image, tiny)
    assert np.array_equal(redact_image(tiny).image, tiny)


def test_redact_refuses_faces_detected_on_a_different_size_copy():
    """Faces found on a half-size copy would be redacted at the wrong place, leaving the real faces untouched."""
    import cv2

    full = astronaut()
    half = cv2.resize(full, (full.shape[1] // 2, full.shape[0] // 2), interpolation=cv2.INTER_AREA)
    _crops, faces = detect(as_image(half))
    assert len(faces) >= 1
    with pytest.raises(ValueError, match="frame 0 is 512x512 but the faces were detected on a 256x256 frame"):
        redact(as_image(full), faces=faces)


def test_track_faces_on_a_clip_without_faces_gives_a_placeholder_crop_that_paste_ignores():
    """Like Detect: one black crop (a Preview downstream needs one image), and Paste returns the frames as they are."""
    frames = as_image(sky(), sky())
    crops, faces, keyframes = run_node(NODES["tracks"].FaceAnonTrackFaces, frames=frames, threshold=0.95,
                                       max_gap=5, smoothing=True, min_face_size=10.0, crop_size=64)
    assert len(faces) == 0
    for batch in (crops, keyframes):
        assert batch.shape == (1, 64, 64, 3) and not batch.any()
    image, mask = paste(frames, anonymize(crops), faces)
    assert all(np.array_equal(a, b) for a, b in zip(as_uint8(image), as_uint8(frames), strict=True))
    assert not mask.any()


def test_cached_outputs_tell_comfyui_their_tensors():
    """The newest ComfyUI's RAM-pressure cache sizes an output through _comfy_cache_tensors()."""
    from faceanon_core.method.states import ReferenceStates

    cond = {"down_blocks.0.attentions.0.transformer_blocks.0.attn1": torch.zeros(2, 16, 32)}
    uncond = {"down_blocks.0.attentions.0.transformer_blocks.0.attn1": torch.zeros(1, 16, 32)}
    tensors = ReferenceStates(cond=cond, uncond=uncond)._comfy_cache_tensors()
    assert sum(t.numel() for t in tensors) == 3 * 16 * 32
    assert NODES["backend.faces"].FaceSet()._comfy_cache_tensors() == []


def test_newer_schema_fields_are_used_only_where_comfyui_has_them(monkeypatch):
    """0.3.64 raises TypeError on an unknown Schema field or Input argument; the newest ComfyUI has
    search_aliases and advanced inputs. Feature-detected from the signatures, not from a version number."""
    sockets = NODES["faces"].sockets
    io = sockets.io
    redact = fn.FaceAnonRedactFaces
    plain = redact.define_schema()  # the stand-in is 0.3.64's API: no search_aliases, no advanced
    assert not hasattr(plain, "search_aliases")
    seen = {}

    class NewerSchema(io.Schema):
        def __init__(self, *args, search_aliases=None, **kwargs):
            seen["aliases"] = search_aliases
            super().__init__(*args, **kwargs)

    class NewerFloat(io.Float.Input):
        def __init__(self, *args, advanced=False, **kwargs):
            seen.setdefault("advanced", []).append((args[0], advanced))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(io, "Schema", NewerSchema)
    monkeypatch.setattr(io.Float, "Input", NewerFloat)
    redact.define_schema()
    assert "blur faces" in seen["aliases"]
    assert ("detector_min_face", True) in seen["advanced"]
