"""faceanon_core: the method of "Face Anonymization Made Simple" (WACV 2025), no ComfyUI imports.

Heavy modules load lazily so that ``faceanon redact`` and the ComfyUI import stay fast.
"""

__version__ = "0.1.0"

_LAZY = {
    "FaceAnonPipeline": "faceanon_core.pipeline",
    "FaceAnonOutput": "faceanon_core.pipeline",
    "ReferenceStates": "faceanon_core.states",
    "mix_embeds": "faceanon_core.states",
    "mix_states": "faceanon_core.states",
    "check_model_folder": "faceanon_core.loading",
    "load_components": "faceanon_core.loading",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'faceanon_core' has no attribute {name!r}")
