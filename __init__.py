"""ComfyUI-FaceAnon: ComfyUI entry point.

The repo root is a ComfyUI custom node folder. ComfyUI imports this file; the
standalone library lives in ``faceanon_core`` (no ComfyUI imports there).
"""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
