"""The node modules imported with stand-in ComfyUI modules, to unit-test the nodes' own checks and face logic
without a host (what needs a real sampler runs in tests/host/)."""

from __future__ import annotations

import importlib
import sys
import types

from workflow_checks import STUBBED, _StubFinder

PACK = "faceanon_pack_node_stubs"


def load_node_modules(*names: str) -> dict[str, types.ModuleType]:
    """``load_node_modules("faces_nodes", "oneshot")`` -> {name: module}. The stand-ins are removed from
    ``sys.modules`` again; the loaded modules keep theirs. ``intermediate_device`` is the CPU."""
    from pack import load_pack

    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in STUBBED}
    for key in saved:
        del sys.modules[key]
    finder = _StubFinder()
    sys.meta_path.insert(0, finder)
    try:
        load_pack(PACK)
        modules = {name: importlib.import_module(f"{PACK}.nodes.{name}") for name in names}
    finally:
        sys.meta_path.remove(finder)
        for key in [k for k in sys.modules if k.split(".")[0] in STUBBED]:
            del sys.modules[key]
        sys.modules.update(saved)
    cpu = types.SimpleNamespace(intermediate_device=lambda: "cpu")
    for module in modules.values():
        if hasattr(module, "mm"):
            module.mm = cpu
    return modules
