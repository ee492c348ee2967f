"""ComfyUI-FaceAnon: ComfyUI entry point.

The repo root is a ComfyUI custom node folder. ComfyUI imports this file as a package; the
nodes live in ``nodes/`` and the standalone library in ``faceanon_core`` (no ComfyUI imports
there). Imported anywhere else (pytest collects the repo root as a package, tools that walk
the tree) it defines no entry point and imports nothing from ComfyUI: the nodes are loaded
only when ComfyUI itself is running (its model management is already imported by then).

Inside ComfyUI the host version is checked first: the sampler passes ``transformer_options=`` to
``optimized_attention``, which ComfyUI accepts from 0.3.60 on; an older one would raise
``TypeError`` deep in sampling, so the nodes are not registered there (one log line says why).

The nodes are V3 nodes (``comfy_api.latest.io.ComfyNode``), registered the V3 way: this module exports
``comfy_entrypoint`` (-> a ``ComfyExtension`` listing them) and deliberately no ``NODE_CLASS_MAPPINGS``.
ComfyUI's loader would take a ``NODE_CLASS_MAPPINGS`` first, and for V3 classes it ignores
``NODE_DISPLAY_NAME_MAPPINGS`` anyway (``/object_info`` reads the display name from the schema), so a
second table could only disagree with the schemas; with the entry point, each node's id and display
name are written once, in its ``define_schema``. When the version gate refuses, neither is exported:
ComfyUI then lists the pack as not loaded, next to our log line saying why.
"""

import logging
import re
import sys
from pathlib import Path

REQUIRED_COMFYUI = (0, 3, 60)
REQUIRED_COMFYUI_TEXT = ">=0.3.60"  # also pyproject.toml [tool.comfy] requires-comfyui
_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")

logger = logging.getLogger("ComfyUI-FaceAnon")


def parse_comfyui_version(text):
    """``"0.3.64"`` -> ``(0, 3, 64)``; ``"v0.4"`` -> ``(0, 4, 0)``; anything unreadable -> None."""
    match = _VERSION.match(text) if isinstance(text, str) else None
    if match is None:
        return None
    return tuple(int(part or 0) for part in match.groups())


def comfyui_version_text():
    """The running ComfyUI's ``__version__`` (its ``comfyui_version.py``), or None when it has none.

    main.py imports ``comfyui_version`` before it loads custom nodes; otherwise the file beside the
    ``comfy`` package is read (not imported: its folder need not be on sys.path).
    """
    module = sys.modules.get("comfyui_version")
    if isinstance(getattr(module, "__version__", None), str):
        return module.__version__
    comfy = sys.modules.get("comfy")
    for folder in (Path(p).parent for p in getattr(comfy, "__path__", None) or ()):
        try:
            source = (folder / "comfyui_version.py").read_text(encoding="utf-8")
        except OSError:
            continue
        match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", source, re.MULTILINE)
        if match:
            return match.group(1)
    return None


def comfyui_version_decision(text):
    """(register?, log level, message) for a ComfyUI version string (None: unknown)."""
    found = parse_comfyui_version(text)
    if found is None:
        return True, logging.WARNING, (
            f"ComfyUI-FaceAnon: could not read the ComfyUI version ({text!r}); registering the nodes anyway. "
            f"They need ComfyUI {REQUIRED_COMFYUI_TEXT}: an older one fails with TypeError while sampling.")
    if found < REQUIRED_COMFYUI:
        return False, logging.ERROR, (
            f"ComfyUI-FaceAnon: nodes NOT loaded: this is ComfyUI {text.strip()}, the pack needs ComfyUI "
            f"{REQUIRED_COMFYUI_TEXT} (it passes transformer_options= to optimized_attention). Update ComfyUI.")
    return True, logging.DEBUG, f"ComfyUI-FaceAnon: ComfyUI {text.strip()} is supported ({REQUIRED_COMFYUI_TEXT})"


V3_API = ("ComfyExtension", "io.ComfyNode", "io.Schema", "io.Custom", "io.NodeOutput")


def missing_v3_api() -> list[str]:
    """The parts of ComfyUI's V3 node API (``comfy_api.latest``) the nodes use that this ComfyUI lacks."""
    try:
        import comfy_api.latest as latest
    except ImportError:
        return ["comfy_api.latest"]
    missing = []
    for name in V3_API:
        owner = latest
        for part in name.split("."):
            owner = getattr(owner, part, None)
        if owner is None:
            missing.append(f"comfy_api.latest.{name}")
    return missing


if "comfy.model_management" in sys.modules:
    _register, _level, _message = comfyui_version_decision(comfyui_version_text())
    _missing = missing_v3_api() if _register else []
    if _missing:
        _register, _level, _message = False, logging.ERROR, (
            f"ComfyUI-FaceAnon: nodes NOT loaded: this ComfyUI lacks the V3 node API the nodes use "
            f"({', '.join(_missing)}). Update ComfyUI ({REQUIRED_COMFYUI_TEXT}).")
    logger.log(_level, _message)
    if _register:
        from .nodes.registry import comfy_entrypoint  # noqa: F401

# The frontend's node help: web/docs/<node id>.md (served from the pack's web directory).
WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"] if "comfy_entrypoint" in globals() else ["WEB_DIRECTORY"]
