"""The leak matrix: every entry point x every scenario ends in one of two outcomes.

Either every detected face is changed (mean absolute difference inside its box above
:data:`CHANGED`), or the call fails and nothing is written. A new entry point or scenario is
one line in :data:`ENTRY_POINTS` / :data:`SCENARIOS`. The ComfyUI nodes and shipped workflows have
the same matrix in ``tests/host/test_leak_matrix_host.py``.

Real photos (scikit-image's astronaut, matplotlib's Grace Hopper), composed into multi-face
images; the diffusion model is the tiny random-weight model (its output is unrelated to the
input, so an anonymized face is far from the original); the guard's recognizer is a fake whose
verdict the scenario chooses. All files are PNG, so a face left untouched differs by exactly 0.

``CHANGED`` = 4 grey levels (of 255), mean over each detection box clipped to the image. An
untouched face gives exactly 0 (lossless PNG in and out, pixels outside the paste mask copied
bitwise); the 8-bit round trip of paste-back adds at most 0.5. The weakest intended change is
the default blur of a face of the scenarios: 26 to 39 levels measured, the least on the 6 px face
(boxes also hold unchanged corners outside the elliptic mask), 6x the threshold, see
``test_threshold_sits_between_untouched_and_the_weakest_redaction``.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from faces_helpers import astronaut, collage, grace_hopper
from PIL import Image

CHANGED = 4.0
FAST = ["--size", "64", "--steps", "2", "--scheduler", "ddim", "--no-verify"]


# ------------------------------------------------------------------ scenario images


def sky() -> np.ndarray:
    """No face: a smooth gradient."""
    y, x = np.mgrid[0:240, 0:320]
    return np.dstack([x * 255 // 320, y * 255 // 240, np.full_like(x, 180)]).astype(np.uint8)


def small_astronaut(canvas_side: int = 200) -> np.ndarray:
    """Only a tiny face: the astronaut scaled to 100 px (8 px between the eyes, below the model's 10; a
    15x19 px box, which the default detector finds although it looks for 20 px faces and up: an 80 px
    astronaut's 12x17 box is found only with a lower --min-face-size)."""
    canvas = np.full((canvas_side, canvas_side, 3), 200, np.uint8)
    canvas[50:150, 50:150] = cv2.resize(astronaut(), (100, 100), interpolation=cv2.INTER_AREA)
    return canvas


def border_cut() -> np.ndarray:
    """Grace Hopper cut by the left border (her face centre 65 px from it, the box reaches past it)."""
    return np.ascontiguousarray(grace_hopper()[:600, 212:512])


def mixed() -> np.ndarray:
    """Five faces: the 4 of the collage (41-81 px between the eyes, rotated, one cut by its tile) plus a 6 px one."""
    img = collage()[0].copy()
    img[600:680, 300:380] = cv2.resize(astronaut(), (80, 80), interpolation=cv2.INTER_AREA)
    return img


@dataclass(frozen=True)
class Scenario:
    images: tuple  # functions giving the photos, in folder order
    expect: str  # "changed" (every detected face changed) or "fail" (an error, nothing written)
    fault: str | None = None  # "raise" (the model), "guard" (the recognizer matches), "interrupt" (Ctrl-C)
    min_model_face: float | None = None  # eye distance below which the model skips a face (None: default)
    notes: str = ""


SCENARIOS = {
    "no_face": Scenario((sky, astronaut), "changed"),
    "only_small_face": Scenario((small_astronaut, astronaut), "changed"),
    "too_small_for_the_model": Scenario((astronaut, grace_hopper), "changed", min_model_face=10000.0),
    "cut_by_border": Scenario((border_cut, astronaut), "changed"),
    "mixed_sizes": Scenario((mixed,), "changed"),
    "model_raises": Scenario((astronaut, grace_hopper), "fail", fault="raise"),
    "guard_rejects": Scenario((astronaut, grace_hopper), "fail", fault="guard"),
    "interrupted": Scenario((astronaut, grace_hopper, border_cut), "fail", fault="interrupt"),
}


@functools.cache
def detections(func) -> tuple:
    from faceanon_core.faces import default_detector

    return tuple(default_detector().detect(func()))


def box_change(original: np.ndarray, output: np.ndarray, box) -> float:
    h, w = original.shape[:2]
    x0, y0, x1, y1 = box
    x0, y0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    x1, y1 = min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h)
    diff = np.abs(original[y0:y1, x0:x1].astype(np.float64) - output[y0:y1, x0:x1].astype(np.float64))
    return float(diff.mean())


# ------------------------------------------------------------------ faults


class Interrupt:
    """Raises KeyboardInterrupt at the ``at``-th call (1-based), as Ctrl-C in the middle of a folder."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def tick(self):
        self.calls += 1
        if self.calls >= self.at:
            raise KeyboardInterrupt


class FakeRecognizer:
    """Distance ``d`` between any two faces: 1.0 passes the guard, 0.0 is a face it still recognizes."""

    name = "fake"
    threshold = 0.6

    def __init__(self, d: float):
        self.d = d

    def embed(self, rgb, landmarks):
        return np.zeros((len(landmarks), 4), np.float32)

    def distance(self, a, b):
        return np.full(np.broadcast_shapes(np.shape(a)[:-1], np.shape(b)[:-1]), self.d)


def model_args():
    return types.SimpleNamespace(size=64, guidance=4.0, steps=2, seed=0, degree=1.25)


def faulty(func, fault: str | None, interrupt: Interrupt | None):
    """``func`` (a model or redaction call) with the scenario's fault injected."""
    if fault not in ("raise", "interrupt"):
        return func

    def call(*args, **kwargs):
        if fault == "raise":
            raise RuntimeError("the model broke (injected)")
        interrupt.tick()
        return func(*args, **kwargs)

    return call


# ------------------------------------------------------------------ entry points


@dataclass
class Outcome:
    originals: list  # input photos
    outputs: list  # output photo per input, None where nothing was written
    failed: bool
    leftovers: list = field(default_factory=list)  # files in the output folder that are not finished photos


def _write_inputs(folder: Path, scenario: Scenario, count: int | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, func in enumerate(scenario.images[:count]):
        path = folder / f"{i}_{func.__name__}.png"
        Image.fromarray(func()).save(path)
        paths.append(path)
    return paths


def _read_outputs(paths: list[Path], out: Path, code: int, single: Path | None = None) -> Outcome:
    originals = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    targets = [single] if single is not None else [out / p.name for p in paths]
    outputs = [np.asarray(Image.open(t).convert("RGB")) if t.is_file() else None for t in targets]
    folder = out if single is None else single.parent
    leftovers = sorted(p.name for p in folder.rglob("*") if p.is_file() and p not in targets
                       and not p.name.endswith(".jsonl")) if folder.exists() else []
    return Outcome(originals, outputs, code != 0, leftovers)


def _patch_cli_faults(monkeypatch, scenario: Scenario, command: str, interrupt):
    if command == "anonymize":
        from faceanon_core.method.pipeline import FaceAnonPipeline

        monkeypatch.setattr(FaceAnonPipeline, "anonymize",
                            faulty(FaceAnonPipeline.anonymize, scenario.fault, interrupt))
    else:
        import faceanon_core.faces.redact as redact

        monkeypatch.setattr(redact, "redact_region", faulty(redact.redact_region, scenario.fault, interrupt))
    if scenario.fault == "guard":
        import faceanon_core.privacy.identity as identity

        monkeypatch.setattr(identity, "default_recognizer", lambda: FakeRecognizer(0.0))
        monkeypatch.setattr(identity, "recognizer_available", lambda: True)


def _cli_args(command: str, scenario: Scenario, tiny_model_dir) -> list[str]:
    if command == "redact":
        return ["redact"]
    args = ["anonymize", "--models", str(tiny_model_dir)] + FAST
    if scenario.fault == "guard":
        args = [a for a in args if a != "--no-verify"] + ["--verify", "--verify-retries", "0"]
    if scenario.min_model_face is not None:
        args += ["--min-model-face", str(scenario.min_model_face)]
    return args


def cli(command: str, folder: bool):
    def run(scenario: Scenario, tmp_path: Path, monkeypatch, tiny_model_dir) -> Outcome:
        from faceanon_core.cli import main

        interrupt = Interrupt(at=2 if folder else 1) if scenario.fault == "interrupt" else None
        _patch_cli_faults(monkeypatch, scenario, command, interrupt)
        paths = _write_inputs(tmp_path / "in", scenario, None if folder else 1)
        out = tmp_path / "out"
        base = _cli_args(command, scenario, tiny_model_dir)
        if folder or command == "redact":
            code = main(base + [str(tmp_path / "in" if folder else paths[0]), "-o", str(out)])
            return _read_outputs(paths, out, code)
        target = out / "photo.png"
        code = main(base + [str(paths[0]), "-o", str(target)])
        return _read_outputs(paths, out, code, single=target)

    return run


def library(kind: str):
    """``process_faces`` / ``redact_image`` / ``guarded_process_faces`` on each photo of the scenario; an
    exception is a failure (the library writes nothing: a failing call returns nothing)."""

    def run(scenario: Scenario, tmp_path: Path, monkeypatch, tiny_model_dir) -> Outcome:
        from faceanon_core.cli.anonymize import crop_anonymizer
        from faceanon_core.faces import FaceProcessingError, process_faces, redact_image
        from faceanon_core.privacy.guard import guarded_process_faces

        interrupt = Interrupt(at=1) if scenario.fault == "interrupt" else None
        photo = scenario.images[0]()
        sizes = {} if scenario.min_model_face is None else {"min_face_size": scenario.min_model_face}
        try:
            if kind == "redact_image":
                import faceanon_core.faces.redact as redact

                monkeypatch.setattr(redact, "redact_region", faulty(redact.redact_region, scenario.fault, interrupt))
                out = redact_image(photo, "blur").image
            else:
                anonymize = faulty(crop_anonymizer(_tiny_pipe(tiny_model_dir), model_args()), scenario.fault,
                                   interrupt)
                if kind == "process_faces":
                    out = process_faces(photo, lambda crops: anonymize(crops, 0, 1.25), **sizes).image
                else:
                    rec = FakeRecognizer(0.0 if scenario.fault == "guard" else 1.0)
                    out = guarded_process_faces(photo, anonymize, rec, **sizes).image
            failed = False
        except (FaceProcessingError, KeyboardInterrupt, RuntimeError):
            out, failed = None, True
        return Outcome([photo], [out], failed)

    return run


@functools.lru_cache(maxsize=1)
def _tiny_pipe(model_dir):
    from diffusers import DDIMScheduler

    from faceanon_core import FaceAnonPipeline

    pipe = FaceAnonPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


# entry point -> (runner, scenarios that do not apply and why)
ENTRY_POINTS = {
    "cli_anonymize_photo": (cli("anonymize", folder=False), {}),
    "cli_anonymize_folder": (cli("anonymize", folder=True), {}),
    "cli_redact_photo": (cli("redact", folder=False), {"guard_rejects": "redact has no guard",
                                                       "too_small_for_the_model": "redact uses no model"}),
    "cli_redact_folder": (cli("redact", folder=True), {"guard_rejects": "redact has no guard",
                                                       "too_small_for_the_model": "redact uses no model"}),
    "process_faces": (library("process_faces"), {"guard_rejects": "process_faces has no guard"}),
    "redact_image": (library("redact_image"), {"guard_rejects": "redact has no guard",
                                               "too_small_for_the_model": "redact uses no model"}),
    "guarded_process_faces": (library("guarded_process_faces"), {}),
}

CELLS = [pytest.param(entry, scen, id=f"{entry}-{scen}")
         for entry, (_, skip) in ENTRY_POINTS.items() for scen in SCENARIOS if scen not in skip]


def check_outcome(outcome: Outcome, scenario: Scenario, funcs) -> list[float]:
    """The matrix's rule; returns the per-face changes measured (for the threshold test)."""
    assert outcome.leftovers == [], f"half-written or stray files: {outcome.leftovers}"
    changes = []
    for original, output, func in zip(outcome.originals, outcome.outputs, funcs, strict=True):
        if output is None:
            continue
        assert output.shape == original.shape
        faces = detections(func)
        if not faces:
            np.testing.assert_array_equal(output, original)  # a photo without faces comes back unchanged
        for face in faces:
            change = box_change(original, output, face.box)
            assert change > CHANGED, f"{func.__name__}: face at {np.round(face.box)} changed by only {change:.2f}"
            changes.append(change)
    if scenario.expect == "fail":
        assert outcome.failed, "the call succeeded where it must fail"
        if scenario.fault != "interrupt":
            assert all(o is None for o in outcome.outputs), "a failing call wrote an output"
        else:  # photos finished before Ctrl-C are kept (checked above); the interrupted one and later: nothing
            first_missing = next((i for i, o in enumerate(outcome.outputs) if o is None), None)
            assert first_missing is not None, "the interrupted photo was written"
            assert all(o is None for o in outcome.outputs[first_missing:])
    else:
        assert not outcome.failed and all(o is not None for o in outcome.outputs), "the call failed"
    return changes


@pytest.mark.parametrize("entry,scenario_name", CELLS)
def test_leak_matrix(entry, scenario_name, tmp_path, monkeypatch, tiny_model_dir):
    scenario = SCENARIOS[scenario_name]
    runner, _ = ENTRY_POINTS[entry]
    outcome = runner(scenario, tmp_path, monkeypatch, tiny_model_dir)
    check_outcome(outcome, scenario, scenario.images[:len(outcome.originals)])


def test_scenarios_find_what_they_claim():
    """The photos hold the faces the scenario names: none, one tiny, one cut by the border, five of mixed sizes."""
    from faceanon_core.faces import align_faces

    assert detections(sky) == ()
    small = align_faces(list(detections(small_astronaut)), min_face_size=0)[0]
    assert len(small) == 1 and small[0].face_size < 10  # below the model's default minimum
    (cut,) = detections(border_cut)
    assert cut.box[0] < 0
    sizes = sorted(f.face_size for f in align_faces(list(detections(mixed)), min_face_size=0)[0])
    assert len(sizes) == 5 and sizes[0] < 10 < sizes[1] and sizes[-1] > 60


def test_threshold_sits_between_untouched_and_the_weakest_redaction():
    from faceanon_core.faces import redact_image

    img = mixed()
    out = redact_image(img, "blur").image
    changes = [box_change(img, out, f.box) for f in detections(mixed)]
    assert min(changes) > 5 * CHANGED, changes  # the weakest intended change (26 measured) is far above it
    assert box_change(img, img, detections(mixed)[0].box) == 0.0


@pytest.mark.parametrize("policy", ["fail", "keep"])
def test_small_face_policy_is_honoured_by_the_guard_too(policy):
    """``small_faces`` of guarded_process_faces: "fail" raises before the model runs, "keep" leaves the face."""
    from faceanon_core.faces import FaceProcessingError
    from faceanon_core.privacy.guard import guarded_process_faces

    photo, calls = small_astronaut(), []

    def model(crops, seed, degree):
        calls.append(crops)
        return crops

    faces = list(detections(small_astronaut))
    if policy == "fail":
        with pytest.raises(FaceProcessingError, match="too small for the model"):
            guarded_process_faces(photo, model, FakeRecognizer(1.0), faces=faces, small_faces="fail")
    else:
        out = guarded_process_faces(photo, model, FakeRecognizer(1.0), faces=faces, small_faces="keep")
        assert np.array_equal(out.image, photo) and len(out.skipped) == 1
    assert calls == []
