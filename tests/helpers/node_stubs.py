"""The node modules imported with stand-in ComfyUI modules, to unit-test the nodes' own checks and face logic
without a host (what needs a real sampler runs in tests/host/)."""

from __future__ import annotations

import importlib
import sys
import types

from helpers.workflows import STUBBED, _StubFinder, load_core

PACK = "faceanon_pack_node_stubs"


def load_node_modules(*names: str) -> dict[str, types.ModuleType]:
    """``load_node_modules("faces", "oneshot")`` -> {name: module}. The stand-ins are removed from
    ``sys.modules`` again; the loaded modules keep theirs. ``intermediate_device`` is the CPU, and
    ``folder_paths`` knows no model folder. ``comfy_api.latest`` is the stand-in V3 API (comfy_io_standin)."""
    from helpers.pack import load_pack

    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in STUBBED}
    for key in saved:
        del sys.modules[key]
    finder = _StubFinder()
    sys.meta_path.insert(0, finder)
    try:
        import comfy.samplers  # the stand-in: KSampler's lists as the checked-in core data has them

        samplers = load_core()["KSampler"]["input"]["required"]
        comfy.samplers.KSampler = types.SimpleNamespace(SAMPLERS=list(samplers["sampler_name"][0]),
                                                        SCHEDULERS=list(samplers["scheduler"][0]))
        load_pack(PACK)
        modules = {name: importlib.import_module(f"{PACK}.nodes.{name}") for name in names}
    finally:
        sys.meta_path.remove(finder)
        for key in [k for k in sys.modules if k.split(".")[0] in STUBBED]:
            del sys.modules[key]
        sys.modules.update(saved)
    cpu = types.SimpleNamespace(intermediate_device=lambda: "cpu")
    no_models = types.SimpleNamespace(models_dir="models", get_folder_paths=lambda name: [],
                                      add_model_folder_path=lambda *a, **k: None)
    pack_modules = [m for k, m in sys.modules.items() if k.startswith(f"{PACK}.nodes")]  # the backend's too
    for module in pack_modules:
        if hasattr(module, "mm"):
            module.mm = cpu
        if hasattr(module, "folder_paths"):
            module.folder_paths = no_models  # a ComfyUI without any model folder
    return modules


def run_node(cls, **inputs) -> tuple:
    """``cls.execute`` called the way ComfyUI calls a V3 node: by input name, with every required input and
    only inputs of its schema; -> the outputs, one per output of the schema."""
    from helpers.comfy_io_standin import NodeOutput

    schema = cls.GET_SCHEMA()
    names = [i.id for i in schema.inputs]
    unknown = sorted(set(inputs) - set(names))
    missing = sorted(i.id for i in schema.inputs if not i.optional and i.id not in inputs)
    assert not unknown and not missing, f"{schema.node_id}: unknown inputs {unknown}, missing {missing}"
    out = cls.execute(**inputs)
    assert isinstance(out, NodeOutput), f"{schema.node_id}.execute returned {type(out).__name__}, not NodeOutput"
    assert len(out.args) == len(schema.outputs), (schema.node_id, len(out.args), len(schema.outputs))
    return out.args
