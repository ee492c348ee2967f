"""Face Anonymize's per-track identity on ComfyUI itself, in-process, with the tiny models (COMFYUI_PATH).

Per track, the result of every crop is Face Swap's with the track's keyframe crop as the source at the same
degree (the same source branch, the same noise image from the seed): that is what "one source per track,
every frame a driving image against it, one initial noise" means, checked against the node that already
did it. The source ReferenceNet runs once per track; per-frame mode and no faces are the per-crop path.
The fakes-based checks of the orchestration are in tests/nodes/test_track_identity_nodes.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.host.server import test_images

pytestmark = pytest.mark.host

DEGREE, SEED, STEPS = 1.25, 3, 2
TRACK_IDS = [0, 0, 1, 0, 1]  # two people, in frame order
KEYFRAMES = {0: 3, 1: 2}


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    from helpers.host.comfy_inprocess import import_pack
    from helpers.host.tiny_folder import write_host_model_folder

    root = tmp_path_factory.mktemp("track_identity_models")
    write_host_model_folder(root / "tiny", seed=0)
    import_pack()
    import folder_paths

    folder_paths.add_model_folder_path("faceanon", str(root))
    from faceanon_pack_under_test.nodes import oneshot
    from faceanon_pack_under_test.nodes.backend import anonymize, encoding, loading, sampling, tracks

    loaded = loading.load_model_folder("tiny")
    image = torch.from_numpy(test_images(len(TRACK_IDS), 1).astype(np.float32) / 255)
    return {"models": loaded, "oneshot": oneshot, "encoding": encoding, "sampling": sampling,
            "anonymize": anonymize, "tracks": tracks, "image": image}


def faces(pack):
    n = len(TRACK_IDS)
    return pack["tracks"].TrackedFaceSet(faces=[object()] * n, frame_sizes=[(64, 64)] * n, crop_size=64,
                                              track_ids=list(TRACK_IDS), keyframes=dict(KEYFRAMES),
                                              filled=[False] * n)


def anonymize(pack, image, **kw):
    return pack["oneshot"].FaceAnonAnonymize.execute(*pack["models"], image, DEGREE, SEED, STEPS, 4.0, "euler",
                                                     "normal", **kw).args[0]


def test_every_crop_of_a_track_is_face_swapped_from_its_keyframe(pack):
    image = pack["image"]
    per_track = anonymize(pack, image, faces=faces(pack))
    assert per_track.shape == image.shape and torch.isfinite(per_track).all()
    for track, key in KEYFRAMES.items():
        rows = [i for i, t in enumerate(TRACK_IDS) if t == track]
        swapped = pack["oneshot"].FaceAnonSwap.execute(*pack["models"], image[key:key + 1], image[rows], DEGREE, SEED,
                                                       STEPS, 4.0, "euler", "normal").args[0]
        # the same operations on the same tensors: equal up to float reassociation in batched kernels
        torch.testing.assert_close(per_track[rows], swapped, rtol=0, atol=1e-5)
    per_frame = anonymize(pack, image)
    for row, track in enumerate(TRACK_IDS):
        gap = float((per_track[row] - per_frame[row]).abs().max())
        if row == KEYFRAMES[track]:
            # the keyframe is its own source either way; batches of 5 and 2 round differently (float32,
            # ~1e-5 after 2 steps), far below one 8-bit level (4e-3)
            assert gap < 1e-4, (row, gap)
        else:
            assert gap > 16 / 255, (row, gap)  # another frame's source: in the tiny model it shows


def test_the_source_referencenet_runs_once_per_track_and_every_frame_reads_its_states(pack, monkeypatch):
    encoding, sampling = pack["encoding"], pack["sampling"]
    captures, sampled = [], []
    real_capture, real_sample = encoding.capture_from_latents, sampling.dual_reference_sample

    def capture(refnet, latents, embeds, degree):
        states = real_capture(refnet, latents, embeds, degree)
        captures.append((refnet.role, latents.shape[0], states))
        return states

    def sample(model, source, source_embeds, driving, driving_embeds, latent, settings):
        sampled.append((source, driving.batch_size, settings.noise_mode))
        return real_sample(model, source, source_embeds, driving, driving_embeds, latent, settings)

    monkeypatch.setattr(encoding, "capture_from_latents", capture)
    monkeypatch.setattr(sampling, "dual_reference_sample", sample)
    anonymize(pack, pack["image"], faces=faces(pack))
    assert [(role, n) for role, n, _ in captures if role == "source"] == [("source", 1), ("source", 1)]
    assert sorted(n for role, n, _ in captures if role == "driving") == [2, 3]
    assert [(s.batch_size, n, mode) for s, n, mode in sampled] == [(1, 3, "same for every image"),
                                                                   (1, 2, "same for every image")]
    # the states each track samples against are the keyframe's capture, mixed (Eq. 2)
    sources = [states for role, _, states in captures if role == "source"]
    for (used, _, _), raw in zip(sampled, sources, strict=True):
        mixed = raw.mixed(DEGREE)
        assert all(torch.equal(used.cond[k], mixed.cond[k]) for k in mixed.cond)


def test_per_frame_and_without_faces_are_the_per_crop_path(pack):
    image = pack["image"]
    sampling = pack["sampling"]
    settings = sampling.SamplingSettings.of("Face Anonymize", SEED, STEPS, 4.0, "euler", "normal")
    today = pack["anonymize"].anonymize(sampling.Models(*pack["models"]), image, image, DEGREE, settings, True)
    assert torch.equal(anonymize(pack, image), today)
    assert torch.equal(anonymize(pack, image, faces=faces(pack), identity="per-frame"), today)
