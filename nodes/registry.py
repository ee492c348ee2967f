"""The node list ComfyUI reads (V3: ``comfy_entrypoint`` -> a ``ComfyExtension``; node ids and display names live
in each node's ``define_schema``, a public API: saved workflows name them).

Imported by the pack's root ``__init__.py`` only inside a running ComfyUI. Importing it registers the ``faceanon``
model folder with ``folder_paths`` (no folder is created, nothing is downloaded) and imports nothing heavier than
ComfyUI itself already has.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .apply_references import FaceAnonApplyReferences
from .backend.loading import register_model_folder
from .faces import FaceAnonDetectFaces, FaceAnonPasteFaces, FaceAnonRedactFaces
from .loader import FaceAnonModelLoader
from .oneshot import FaceAnonAnonymize, FaceAnonSwap
from .sampler import FaceAnonDualReferenceSampler
from .states import FaceAnonCaptureStates, FaceAnonCLIPImageEncode, FaceAnonMixStates
from .tracks import FaceAnonTrackFaces
from .verify import FaceAnonVerifyFaces

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
