"""The node list ComfyUI reads (V3: ``comfy_entrypoint`` -> a ``ComfyExtension``; node ids and display names live
in each node's ``define_schema``, a public API: saved workflows name them).

Imported by the pack's root ``__init__.py`` only inside a running ComfyUI. Importing it registers the ``faceanon`` model folder with ``folder_paths`` (no folder is
created, nothing is downloaded) and imports nothing heavier than ComfyUI itself already has.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

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

#: Every node of the pack, in the order of the "Add Node" menu.
NODES: list[type[io.ComfyNode]] = [
    FaceAnonModelLoader,
    FaceAnonCLIPImageEncode,
    FaceAnonCaptureStates,
    FaceAnonMixStates,
    FaceAnonDualReferenceSampler,
    FaceAnonApplyReferences,
    FaceAnonAnonymize,
    FaceAnonSwap,
    FaceAnonDetectFaces,
    FaceAnonPasteFaces,
    FaceAnonRedactFaces,
    FaceAnonVerifyFaces,
    FaceAnonTrackFaces,
]


class FaceAnonExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> FaceAnonExtension:
    """What ComfyUI's loader calls (``nodes.load_custom_node``) for a pack without NODE_CLASS_MAPPINGS."""
    return FaceAnonExtension()


__all__ = ["NODES", "FaceAnonExtension", "comfy_entrypoint"]
