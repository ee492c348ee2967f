"""ComfyUI-FaceAnon: ComfyUI entry point.

The repo root is a ComfyUI custom node folder. ComfyUI imports this file as a package; the
nodes live in ``nodes/`` and the standalone library in ``faceanon_core`` (no ComfyUI imports
there). Outside ComfyUI (e.g. ``pip install`` of the library, CI) nothing here is imported.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
