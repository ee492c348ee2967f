"""Import ComfyUI (COMFYUI_PATH) and this pack in-process, for the host parity tests.

Must run before anything imports ``comfy.model_management`` (CPU mode is set first).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
PACK_NAME = "faceanon_pack_under_test"


def import_comfy():
    comfy_path = os.environ["COMFYUI_PATH"]
    # ComfyUI's root first (the one sys.path change in tests/): ComfyUI imports its top-level
    # modules (nodes, server, utils...) by name, and this checkout's nodes/ package must not win.
    if comfy_path not in sys.path:
        sys.path.insert(0, comfy_path)
    from comfy.cli_args import args

    if not torch.cuda.is_available():
        args.cpu = True  # before comfy.model_management is imported
    import comfy.model_management  # noqa: F401

    return args


def import_pack():
    """The repo root imported as a package, the way ComfyUI imports a custom node folder."""
    from helpers.pack import load_pack

    import_comfy()
    return load_pack(PACK_NAME)
