"""The repository root imported as a package, the way ComfyUI loads a custom node folder.

``nodes/`` imports the library relatively (``..faceanon_core``), so its pure-torch modules are
imported through the pack: ``load_pack().nodes.backend.attention``. Nothing ComfyUI is imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "faceanon_pack"


def load_pack(name: str = PACK_NAME):
    """The pack under ``name`` (imported once). Inside an in-process ComfyUI the root ``__init__``
    also registers the nodes, as ComfyUI's own loader would."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def pack_module(module: str, name: str = PACK_NAME):
    """``pack_module("nodes.backend.attention")``: a submodule of the pack."""
    load_pack(name)
    return importlib.import_module(f"{name}.{module}")
