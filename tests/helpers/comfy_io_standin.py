"""A minimal stand-in for the parts of ComfyUI's V3 node API (``comfy_api.latest``) that the pack uses.

The main suite runs without ComfyUI; the node modules are imported with stand-in ComfyUI modules
(``helpers.workflows._StubFinder``), and ``comfy_api.latest`` is this module. It does what the real one
does for our nodes: the socket types and their ``Input``/``Output`` classes with the real keyword
arguments (an unknown or misspelt one is a ``TypeError`` here too), ``Schema`` (unique ids), the
``/object_info`` entry of a node (``GET_NODE_INFO_V1``, ``INPUT_TYPES``, ``RETURN_TYPES``...),
``NodeOutput`` and ``ComfyExtension``. Whether it is faithful is checked against a real server:
``tests/host/test_workflows_host.py::test_our_node_definitions_match_the_servers`` compares the
entries built here with the server's ``/object_info``, field by field.
"""

from __future__ import annotations

import types
from abc import ABC, abstractmethod


def _pruned(values: dict) -> dict:
    """Options left unset (None) are not written, as in ComfyUI's own node info."""
    return {key: value for key, value in values.items() if value is not None}


class _Input:
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, extra_dict=None):
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy
        self.extra_dict = extra_dict or {}

    def as_dict(self) -> dict:
        return {**_pruned({"display_name": self.display_name, "tooltip": self.tooltip, "lazy": self.lazy}),
                **_pruned(self.extra_dict)}

    def get_io_type(self):
        return self.parent_type


class _Widget(_Input):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 socketless=None, widget_type=None, force_input=None, extra_dict=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default, self.socketless = default, socketless
        self.widget_type, self.force_input = widget_type, force_input

    def as_dict(self) -> dict:
        return {**super().as_dict(), **_pruned({"default": self.default, "socketless": self.socketless,
                                                "widgetType": self.widget_type, "forceInput": self.force_input})}

    def get_io_type(self):
        return self.widget_type or self.parent_type


class _Output:
    def __init__(self, id=None, display_name=None, tooltip=None, is_output_list=False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list


def _socket(io_type: str, input_base=_Input, extra: dict | None = None):
    """A socket type: ``.io_type``, ``.Input`` and ``.Output`` (the shape of ``io.Image``, ``io.Custom(...)``)."""
    namespace = {"io_type": io_type}
    namespace["Input"] = type("Input", (input_base,), {"parent_type": io_type})
    namespace["Output"] = type("Output", (_Output,), {"parent_type": io_type})
    namespace.update(extra or {})
    return type(io_type, (), namespace)


class _IntInput(_Widget):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, control_after_generate=None, display_mode=None, socketless=None,
                 force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.numbers = {"min": min, "max": max, "step": step, "control_after_generate": control_after_generate,
                        "display": getattr(display_mode, "value", display_mode)}

    def as_dict(self) -> dict:
        return {**super().as_dict(), **_pruned(self.numbers)}


class _FloatInput(_Widget):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, round=None, display_mode=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.numbers = {"min": min, "max": max, "step": step, "round": round, "display": display_mode}

    def as_dict(self) -> dict:
        return {**super().as_dict(), **_pruned(self.numbers)}


class _BooleanInput(_Widget):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, label_on=None,
                 label_off=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.labels = {"label_on": label_on, "label_off": label_off}

    def as_dict(self) -> dict:
        return {**super().as_dict(), **_pruned(self.labels)}


class _ComboInput(_Widget):
    def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 control_after_generate=None, upload=None, image_folder=None, remote=None, socketless=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
        self.options, self.control_after_generate = options, control_after_generate
        if upload is not None or image_folder is not None or remote is not None:
            raise NotImplementedError("the stand-in has no upload/image_folder/remote combos (the pack uses none)")

    def as_dict(self) -> dict:
        # ``multiselect`` is False, not None: ComfyUI writes it for every combo
        return {**super().as_dict(), **_pruned({"multiselect": False, "options": self.options,
                                                "control_after_generate": self.control_after_generate})}


def Custom(io_type: str):  # noqa: N802  (ComfyUI's name)
    """``io.Custom("FACEANON_FACES")``: a socket type of our own."""
    return _socket(io_type)


Int = _socket("INT", _IntInput)
Float = _socket("FLOAT", _FloatInput)
Boolean = _socket("BOOLEAN", _BooleanInput)
Combo = _socket("COMBO", _ComboInput)
String = _socket("STRING", _Widget)
Image, Mask, Latent, Conditioning = (_socket(t) for t in ("IMAGE", "MASK", "LATENT", "CONDITIONING"))
Model, Vae, ClipVision = (_socket(t) for t in ("MODEL", "VAE", "CLIP_VISION"))


class Schema:
    def __init__(self, node_id, display_name=None, category="sd", inputs=None, outputs=None, hidden=None,
                 description="", is_input_list=False, is_output_node=False, is_deprecated=False,
                 is_experimental=False, is_api_node=False, not_idempotent=False, enable_expand=False):
        if hidden or is_input_list or is_api_node or enable_expand:
            raise NotImplementedError("the stand-in covers what the pack's nodes use")
        self.node_id, self.display_name, self.category, self.description = node_id, display_name, category, description
        self.inputs, self.outputs = list(inputs or []), list(outputs or [])
        self.is_output_node, self.is_deprecated, self.is_experimental = is_output_node, is_deprecated, is_experimental
        self.not_idempotent = not_idempotent

    def validate(self) -> None:
        inputs, outputs = [i.id for i in self.inputs], [o.id for o in self.outputs if o.id is not None]
        for what, ids in (("Input", inputs), ("Output", outputs)):
            if len(set(ids)) != len(ids):
                raise ValueError(f"{what} ids must be unique: {ids}")
        if set(inputs) & set(outputs):
            raise ValueError(f"Ids must be unique between inputs and outputs: {set(inputs) & set(outputs)}")

    def v1_inputs(self) -> dict:
        sections: dict = {"required": {}}
        for i in self.inputs:
            sections.setdefault("optional" if i.optional else "required", {})[i.id] = (i.get_io_type(), i.as_dict())
        return sections

    def v1_info(self, python_module) -> dict:
        inputs = self.v1_inputs()
        return {
            "input": inputs,
            "input_order": {section: list(specs) for section, specs in inputs.items()},
            "output": [o.parent_type for o in self.outputs],
            "output_is_list": [o.is_output_list for o in self.outputs],
            "output_name": [o.display_name or o.parent_type for o in self.outputs],
            "output_tooltips": [o.tooltip or None for o in self.outputs],
            "name": self.node_id, "display_name": self.display_name, "description": self.description,
            "python_module": python_module, "category": self.category, "output_node": self.is_output_node,
            "deprecated": self.is_deprecated, "experimental": self.is_experimental, "api_node": False,
        }


class _ClassProperty:
    def __init__(self, getter):
        self.getter = getter

    def __get__(self, instance, owner):
        return self.getter(owner)


class ComfyNode(ABC):
    """The V3 node base: classmethods only; ComfyUI reads the node's table from ``define_schema``."""

    RELATIVE_PYTHON_MODULE = None

    @classmethod
    @abstractmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    @abstractmethod
    def execute(cls, **kwargs):
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:  # noqa: N802
        schema = cls.define_schema()
        schema.validate()
        return schema

    @classmethod
    def GET_NODE_INFO_V1(cls) -> dict:  # noqa: N802
        return cls.GET_SCHEMA().v1_info(cls.RELATIVE_PYTHON_MODULE or "nodes")

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        return cls.GET_SCHEMA().v1_inputs()

    FUNCTION = "EXECUTE_NORMALIZED"
    RETURN_TYPES = _ClassProperty(lambda cls: [o.parent_type for o in cls.GET_SCHEMA().outputs])
    RETURN_NAMES = _ClassProperty(lambda cls: cls.GET_NODE_INFO_V1()["output_name"])
    CATEGORY = _ClassProperty(lambda cls: cls.GET_SCHEMA().category)
    DESCRIPTION = _ClassProperty(lambda cls: cls.GET_SCHEMA().description)
    OUTPUT_NODE = _ClassProperty(lambda cls: cls.GET_SCHEMA().is_output_node)


class NodeOutput:
    """What ``execute`` returns: the outputs in order (``.args``, indexable)."""

    def __init__(self, *args, ui=None, expand=None, block_execution=None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args or None

    def __getitem__(self, index):
        return self.args[index]


class ComfyExtension(ABC):
    async def on_load(self) -> None:  # noqa: B027 - optional hook, a no-op unless overridden (as in comfy_api)
        """Nothing to do by default."""

    @abstractmethod
    async def get_node_list(self) -> list:
        raise NotImplementedError


def latest_module(name: str = "comfy_api.latest") -> types.ModuleType:
    """``comfy_api.latest`` as a module: ``io`` is this module, plus ``ComfyExtension``."""
    import sys

    module = types.ModuleType(name)
    module.__path__ = []
    module.io = sys.modules[__name__]
    module.ComfyExtension = ComfyExtension
    return module
