"""faceanon_core: "Face Anonymization Made Simple" (WACV 2025) as a library, no ComfyUI imports.

The rooms, and the one direction of imports between them::

    cli/, client/                 the `faceanon` command; the headless ComfyUI queue client
        -> privacy/               identity embeddings, the leak guard, the evaluation protocol
        -> faces/                 detect -> align -> paste back; redaction
        -> media/                 robust image I/O, run plans, the resumable manifest
    method/                       the paper: states, Eq. 1/2, attention + routing, loading, the pipeline
    testing/                      tiny random-weight models in the published layouts

The public API is listed once, here (``__all__``), and loads lazily so that ``faceanon redact`` and
ComfyUI's start stay fast: ``from faceanon_core import FaceAnonPipeline, process_faces, redact_image``.
"""

from ._moved import install as _install_moved_modules

__version__ = "0.2.0"

_LAZY = {
    # method: the paper
    "FaceAnonPipeline": "faceanon_core.method.pipeline",
    "FaceAnonOutput": "faceanon_core.method.pipeline",
    "FaceAnonPipelineOutput": "faceanon_core.method.pipeline",
    "ReferenceStates": "faceanon_core.method.states",
    "StatesMeta": "faceanon_core.method.states",
    "mix_embeds": "faceanon_core.method.states",
    "mix_states": "faceanon_core.method.states",
    "check_model_folder": "faceanon_core.method.loading",
    "download_models": "faceanon_core.method.loading",
    "load_components": "faceanon_core.method.loading",
    "ModelFolderError": "faceanon_core.method.loading",
    # faces in the wild
    "AlignedFace": "faceanon_core.faces",
    "DetectedFace": "faceanon_core.faces",
    "FaceDetectorError": "faceanon_core.faces",
    "FaceLoopOptions": "faceanon_core.faces",
    "FaceProcessingError": "faceanon_core.faces",
    "FacesResult": "faceanon_core.faces",
    "MTCNNDetector": "faceanon_core.faces",
    "align_faces": "faceanon_core.faces",
    "default_detector": "faceanon_core.faces",
    "extract_crops": "faceanon_core.faces",
    "faces_from_boxes": "faceanon_core.faces",
    "faces_from_landmarks": "faceanon_core.faces",
    "paste_back": "faceanon_core.faces",
    "process_faces": "faceanon_core.faces",
    "process_faces_batch": "faceanon_core.faces",
    "redact_image": "faceanon_core.faces",
    # privacy
    "GuardConfig": "faceanon_core.privacy.guard",
    "IdentityLeakError": "faceanon_core.privacy.guard",
    "check_faces": "faceanon_core.privacy.guard",
    "guarded_process_faces": "faceanon_core.privacy.guard",
    "default_recognizer": "faceanon_core.privacy.identity",
    "RecognizerUnavailable": "faceanon_core.privacy.identity",
    "evaluate_folders": "faceanon_core.privacy.evaluate",
    "write_report": "faceanon_core.privacy.evaluate",
    # media
    "load_image": "faceanon_core.media.images",
    "save_image": "faceanon_core.media.images",
    "ImageReadError": "faceanon_core.media.images",
}

__all__ = sorted(_LAZY) + ["__version__"]

_install_moved_modules()


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'faceanon_core' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
