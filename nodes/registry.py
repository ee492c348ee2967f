"""The node table ComfyUI reads: node ids and display names (a public API: saved workflows name them).

Imported by the pack's root ``__init__.py`` only inside a running ComfyUI. Importing it registers the ``faceanon`` model folder with ``folder_paths`` (no folder is
created, nothing is downloaded) and imports nothing heavier than ComfyUI itself already has.
"""

from __future__ import annotations

from .faces_nodes import FaceAnonDetectFaces, FaceAnonPasteFaces, FaceAnonRedactFaces
from .models import FaceAnonModelLoader, register_model_folder
from .oneshot import FaceAnonAnonymize, FaceAnonSwap
from .patch_node import FaceAnonApplyReferences
from .verify_node import FaceAnonVerifyFaces
from .tracks_node import FaceAnonTrackFaces
from .reference import (
    FaceAnonCaptureStates,
    FaceAnonCLIPImageEncode,
    FaceAnonDualReferenceSampler,
    FaceAnonMixStates,
)

register_model_folder()

NODE_CLASS_MAPPINGS = {
    "FaceAnon_ModelLoader": FaceAnonModelLoader,
    "FaceAnon_CLIPImageEncode": FaceAnonCLIPImageEncode,
    "FaceAnon_CaptureStates": FaceAnonCaptureStates,
    "FaceAnon_MixStates": FaceAnonMixStates,
    "FaceAnon_DualReferenceSampler": FaceAnonDualReferenceSampler,
    "FaceAnon_ApplyReferences": FaceAnonApplyReferences,
    "FaceAnon_Anonymize": FaceAnonAnonymize,
    "FaceAnon_Swap": FaceAnonSwap,
    "FaceAnon_DetectFaces": FaceAnonDetectFaces,
    "FaceAnon_PasteFaces": FaceAnonPasteFaces,
    "FaceAnon_RedactFaces": FaceAnonRedactFaces,
    "FaceAnon_VerifyFaces": FaceAnonVerifyFaces,
    "FaceAnon_TrackFaces": FaceAnonTrackFaces,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "FaceAnon_ModelLoader": "FaceAnon Model Loader",
    "FaceAnon_CLIPImageEncode": "FaceAnon CLIP Image Encode",
    "FaceAnon_CaptureStates": "FaceAnon ReferenceNet Capture",
    "FaceAnon_MixStates": "FaceAnon Mix States (degree)",
    "FaceAnon_DualReferenceSampler": "FaceAnon Dual-Reference KSampler",
    "FaceAnon_ApplyReferences": "FaceAnon Apply References",
    "FaceAnon_Anonymize": "Face Anonymize",
    "FaceAnon_Swap": "Face Swap",
    "FaceAnon_DetectFaces": "Detect & Align Faces",
    "FaceAnon_PasteFaces": "Paste Faces Back",
    "FaceAnon_RedactFaces": "Redact Faces",
    "FaceAnon_VerifyFaces": "Verify Faces (identity-leak guard)",
    "FaceAnon_TrackFaces": "Track Faces (video)",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
