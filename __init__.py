"""ComfyUI-FaceAnon: ComfyUI entry point.

The repo root is a ComfyUI custom node folder. ComfyUI imports this file as a package; the
nodes live in ``nodes/`` and the standalone library in ``faceanon_core`` (no ComfyUI imports
there). Imported anywhere else (pytest collects the repo root as a package, tools that walk
the tree) it defines empty mappings and imports nothing from ComfyUI: the nodes are loaded
only when ComfyUI itself is running (its model management is already imported by then).
"""

import sys

if "comfy.model_management" in sys.modules:
    from .nodes.registry import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
