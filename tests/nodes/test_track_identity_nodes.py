"""Face Anonymize with the faces of Track Faces: per-track identity (nodes/backend/track_identity.py), without a host.

The method's steps (CLIP encode, VAE encode, ReferenceNet capture, sampling, VAE decode) are replaced by
fakes that record their calls and whose output says which source and noise each crop got; Eq. 1/2 (Mix)
and the node's own orchestration are the real code. What the real sampler gives on the tiny models runs in
tests/host/test_track_identity_host.py.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from faceanon_core.method.states import ReferenceStates, StatesMeta, expand_batch
from helpers.node_stubs import load_node_modules, run_node

NODES = load_node_modules("oneshot", "backend.encoding", "backend.sampling", "backend.mixing", "backend.batching",
                          "backend.images", "backend.track_identity", "backend.tracks", "faces", "backend.faces")
oneshot, encoding, sampling, mixing, bat, img, ti, tn = (NODES[k] for k in (
    "oneshot", "backend.encoding", "backend.sampling", "backend.mixing", "backend.batching", "backend.images",
    "backend.track_identity", "backend.tracks"))
LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
RES = 32  # the fake model's resolution; the crops are 48 px (resized to it and back)
SOURCE = types.SimpleNamespace(role="source", resolution=RES)
DRIVING = types.SimpleNamespace(role="driving", resolution=RES)
DEGREE, SEED = 1.25, 7


class Fakes:
    """Stand-ins for the method's steps. A latent is the image subsampled 4x; the sampled latent is
    driving latent + source state + noise, so the decoded crop tells which source and noise it got."""

    def __init__(self, monkeypatch):
        self.captures, self.samples, self.mixes = [], [], 0
        for name in ("encode_embeds", "encode_latents", "capture_from_latents"):
            monkeypatch.setattr(encoding, name, getattr(self, name))
        monkeypatch.setattr(sampling, "dual_reference_sample", self.dual_reference_sample)
        real_mix = mixing.mix_captured

        def mix(*args):
            self.mixes += 1
            return real_mix(*args)

        monkeypatch.setattr(mixing, "mix_captured", mix)
        self.vae = types.SimpleNamespace(decode=self.decode)

    @staticmethod
    def encode_embeds(clip_vision, px):
        return px.mean(dim=(1, 2))[:, None, :]

    @staticmethod
    def encode_latents(refnet, vae, px):
        assert px.shape[1:3] == (refnet.resolution, refnet.resolution)
        return px.permute(0, 3, 1, 2)[:, :, ::4, ::4].contiguous()

    def capture_from_latents(self, refnet, latents, embeds, degree):
        self.captures.append({"role": refnet.role, "latents": latents.clone(), "degree": degree})
        cond = {LAYER: latents.flatten(2).transpose(1, 2).contiguous()}
        uncond = {LAYER: torch.zeros_like(cond[LAYER][:1])}
        return ReferenceStates(cond=cond, uncond=uncond, meta=StatesMeta(role=refnet.role, embed_degree=degree))

    def dual_reference_sample(self, model, source, source_embeds, driving, driving_embeds, latent, settings):
        shape = latent["samples"].shape
        noise = bat.seeded_noise(shape, settings.seed, per_image=settings.noise_mode == "per image")
        self.samples.append({"source": source, "batch": shape[0], "noise": noise})
        src = expand_batch(source.cond[LAYER], shape[0], "the source states").transpose(1, 2).reshape(shape)
        drv = driving.cond[LAYER].transpose(1, 2).reshape(shape)
        return {"samples": drv + src + 0.01 * noise}

    @staticmethod
    def decode(samples):
        return samples.permute(0, 2, 3, 1).repeat_interleave(4, 1).repeat_interleave(4, 2)

    def anonymize(self, image, **kw):
        return run_node(oneshot.FaceAnonAnonymize, model=None, source_refnet=SOURCE, driving_refnet=DRIVING,
                        vae=self.vae, clip_vision=object(), image=image, degree=DEGREE, seed=SEED, steps=2, cfg=4.0,
                        sampler_name="euler", scheduler="normal", **kw)[0]

    @property
    def source_captures(self):
        return [c for c in self.captures if c["role"] == "source"]


def crops(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 48, 48, 3, generator=torch.Generator().manual_seed(seed))


def tracked(track_ids, keyframes, filled=None) -> object:
    """A TrackedFaceSet as Track Faces makes it (only what Face Anonymize reads is filled in)."""
    n = len(track_ids)
    return tn.TrackedFaceSet(faces=[object()] * n, frame_sizes=[(96, 96)] * n, crop_size=48,
                             track_ids=list(track_ids), keyframes=dict(keyframes),
                             filled=list(filled or [False] * n))


def latents_of(image: torch.Tensor) -> torch.Tensor:
    return Fakes.encode_latents(SOURCE, None, img.resize_images(image, RES, RES))


# two people, interleaved as Track Faces lists them (frame order): track 4 in frames 0-3, track 9 in 1-3
TRACK_IDS = [4, 4, 9, 4, 9, 4, 9]
KEYFRAMES = {4: 3, 9: 6}


def test_per_track_runs_the_source_branch_once_per_track_on_its_keyframe(monkeypatch):
    fakes = Fakes(monkeypatch)
    image = crops(len(TRACK_IDS))
    out = fakes.anonymize(image, faces=tracked(TRACK_IDS, KEYFRAMES))
    assert out.shape == image.shape  # order and count kept
    sources = fakes.source_captures
    assert len(sources) == 2 and fakes.mixes == 2  # the source branch: once per track, not once per frame
    for capture, key in zip(sources, (3, 6), strict=True):
        assert capture["latents"].shape[0] == 1 and capture["degree"] == DEGREE  # Eq. 1 before the ReferenceNet
        torch.testing.assert_close(capture["latents"], latents_of(image[key:key + 1]), rtol=0, atol=0)
    drivers = [c for c in fakes.captures if c["role"] == "driving"]
    assert [c["latents"].shape[0] for c in drivers] == [4, 3] and all(c["degree"] == 0.0 for c in drivers)
    # one sampling run per track, against one source state of batch 1 (broadcast, not copied per frame)
    assert [s["batch"] for s in fakes.samples] == [4, 3]
    assert all(s["source"].batch_size == 1 and s["source"].meta.degree == DEGREE for s in fakes.samples)
    # every crop of a track reads its track's keyframe source: out = decode(own + S'(key) + noise)
    for row, track in enumerate(TRACK_IDS):
        key = KEYFRAMES[track]
        s_key = (1 - DEGREE) * latents_of(image[key:key + 1])  # Eq. 2 with S_uncond = 0 in the fakes
        expected = latents_of(image[row:row + 1]) + s_key + 0.01 * fakes.samples[0]["noise"][:1]
        expected = img.resize_images(Fakes.decode(expected), 48, 48)
        torch.testing.assert_close(out[row:row + 1], expected, rtol=0, atol=1e-6, msg=f"row {row}")


def test_every_frame_of_every_track_starts_from_the_same_noise(monkeypatch):
    fakes = Fakes(monkeypatch)
    fakes.anonymize(crops(len(TRACK_IDS)), faces=tracked(TRACK_IDS, KEYFRAMES))
    first = fakes.samples[0]["noise"][0]
    for sample in fakes.samples:
        for row in sample["noise"]:
            assert torch.equal(row, first)


def test_per_frame_no_faces_and_detect_faces_are_todays_path(monkeypatch):
    fakes = Fakes(monkeypatch)
    image = crops(len(TRACK_IDS))
    today = fakes.anonymize(image)  # no faces: the node as it was, each crop its own source
    assert [c["latents"].shape[0] for c in fakes.captures] == [7, 7] and len(fakes.samples) == 1
    detect_faces = NODES["backend.faces"].FaceSet(faces=[object()] * 7, frame_sizes=[(96, 96)] * 7, crop_size=48)
    for faces, identity in ((None, "per-track"), (tracked(TRACK_IDS, KEYFRAMES), "per-frame"),
                            (detect_faces, "per-track")):
        fakes.captures.clear()
        assert torch.equal(fakes.anonymize(image, faces=faces, identity=identity), today)
        assert [c["latents"].shape[0] for c in fakes.captures] == [7, 7]
    # and it is the same-image path of Face Anonymize: the source of each crop is the crop itself
    for row in range(7):
        s_own = (1 - DEGREE) * latents_of(image[row:row + 1])
        expected = img.resize_images(Fakes.decode(latents_of(image[row:row + 1]) + s_own
                                                 + 0.01 * fakes.samples[0]["noise"][:1]), 48, 48)
        torch.testing.assert_close(today[row:row + 1], expected, rtol=0, atol=1e-6)


def test_tracks_without_faces_take_the_no_face_path(monkeypatch):
    fakes = Fakes(monkeypatch)
    empty = torch.zeros(0, 48, 48, 3)  # Track Faces on a clip without faces
    out = fakes.anonymize(empty, faces=tracked([], {}))
    assert out.shape == (1, 48, 48, 3) and not out.any() and fakes.captures == []


def test_a_track_whose_keyframe_is_a_filled_face_still_works(monkeypatch):
    """Track Faces on a clip where a grey box hides the face in frame 3 (the detector misses it, the track
    fills it in); the keyframe set to that filled face (as Track Faces does when the keyframe face was too
    small): the source is its crop, every face is anonymized and pasted back."""
    from helpers.faces import astronaut

    frames = []
    for i in range(6):
        x0 = 100 - 4 * i
        img = astronaut()[20:212, x0:x0 + 256].copy()
        if i == 3:
            img[30:164, 70 - 4 * i:178 - 4 * i] = 128
        frames.append(img)
    crops_np, _keys, faces = tn.track_frames(frames, 0.95, 8, True, 48, 10.0)
    assert len(set(faces.track_ids)) == 1 and faces.filled == [False, False, False, True, False, False]
    faces.keyframes = {faces.track_ids[0]: 3}
    fakes = Fakes(monkeypatch)
    image = torch.from_numpy(crops_np.astype(np.float32) / 255)
    out = fakes.anonymize(image, faces=faces)
    (source,) = fakes.source_captures
    torch.testing.assert_close(source["latents"], latents_of(image[3:4]), rtol=0, atol=0)
    assert out.shape == image.shape and torch.isfinite(out).all()
    video = torch.from_numpy(np.stack(frames).astype(np.float32) / 255)
    pasted, mask = run_node(NODES["faces"].FaceAnonPasteFaces, image=video, crops=out.clamp(0, 1), faces=faces,
                            feather=0.025, erode=0.02, color_match=False)
    for i in range(6):
        region = mask[i] > 0.5
        assert region.any(), f"frame {i}: no face pasted"
        assert float((pasted[i] - video[i]).abs()[region].mean()) > 4 / 255, f"frame {i}: face unchanged"


def test_mismatched_crops_and_bad_identity_are_clear_errors(monkeypatch):
    fakes = Fakes(monkeypatch)
    faces = tracked(TRACK_IDS, KEYFRAMES)
    with pytest.raises(ValueError, match="6 crops for 7 tracked faces: connect the crops and the faces"):
        fakes.anonymize(crops(6), faces=faces)
    with pytest.raises(ValueError, match="identity must be one of"):
        fakes.anonymize(crops(7), faces=faces, identity="per-person")
    with pytest.raises(ValueError, match="track 9 has no keyframe among its 3 crops"):
        fakes.anonymize(crops(7), faces=tracked(TRACK_IDS, {4: 3, 9: 0}))
    assert fakes.captures == []  # refused before any model ran


def test_identity_modes_are_the_librarys_and_the_inputs_are_optional():
    from faceanon_core.faces.video import IDENTITY_MODES

    assert ti.IDENTITY_MODES == IDENTITY_MODES and ti.DEFAULT_IDENTITY == "per-track"
    inputs = {i.id: i for i in oneshot.FaceAnonAnonymize.GET_SCHEMA().inputs}
    assert inputs["faces"].get_io_type() == "FACEANON_FACES"
    assert list(inputs["identity"].options) == list(IDENTITY_MODES) and inputs["identity"].default == "per-track"
    assert inputs["faces"].optional and inputs["identity"].optional
    assert list(inputs)[-2:] == ["faces", "identity"]  # after every input saved workflows have
    assert "faces" not in {i.id for i in oneshot.FaceAnonSwap.GET_SCHEMA().inputs}  # Face Swap unchanged


def test_a_workflow_saved_without_the_new_inputs_still_validates():
    import json

    from helpers.workflows import check_api, load_core, our_object_info

    core = load_core()
    info = {**core, **our_object_info(core)}
    old = {  # the Face Anonymize node of a graph saved before it had faces/identity
        "1": {"class_type": "FaceAnon_ModelLoader", "inputs": {"model_folder": "face-anon-simple"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
        "3": {"class_type": "FaceAnon_Anonymize", "inputs": {
            "model": ["1", 0], "source_refnet": ["1", 1], "driving_refnet": ["1", 2], "vae": ["1", 3],
            "clip_vision": ["1", 4], "image": ["2", 0], "degree": 1.25, "seed": 42, "steps": 30, "cfg": 4,
            "sampler_name": "euler", "scheduler": "normal"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "faceanon/crop"}},
    }
    assert check_api(json.loads(json.dumps(old)), info) == []
    bad = json.loads(json.dumps(old))
    bad["3"]["inputs"]["identity"] = "per-person"
    assert any("identity" in p for p in check_api(bad, info))
