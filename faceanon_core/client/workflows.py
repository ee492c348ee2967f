"""ComfyUI workflow files: the UI and API formats, exact UI -> API conversion, ``--set`` edits, uploads.

Two workflow formats exist. The *UI format* is what ComfyUI's Save / Export writes (``nodes``,
``links``, ``widgets_values``: positions and widget values, no input names); only the frontend
knows how widgets map to inputs. The *API format* (Workflow > Export (API); older frontends:
enable the dev mode options, then "Save (API Format)") maps node ids to ``class_type`` and named
``inputs``: it is what ``/prompt`` accepts. A UI file is converted here when it can be done
exactly (links plus ``widgets_values`` in the widget order that the server's ``/object_info``
gives); anything the conversion cannot do exactly (subgraphs, bypassed nodes, primitive nodes)
is refused with that explanation.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from .errors import (
    CONTROL_VALUES,
    FORMATS_HELP,
    VIRTUAL_NODES,
    WIDGET_TYPES,
    ConversionError,
    QueueError,
)

logger = logging.getLogger("faceanon.queue")


# ------------------------------------------------------------------ workflow files


def is_ui_workflow(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def is_api_prompt(data) -> bool:
    return (isinstance(data, dict) and bool(data) and all(
        isinstance(v, dict) and isinstance(v.get("class_type"), str) and isinstance(v.get("inputs", {}), dict)
        for v in data.values()))


def load_workflow(path: str) -> tuple[dict, str]:
    """-> (data, "api" | "ui"). Also accepts a saved /prompt request body ({"prompt": {...}})."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QueueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QueueError(f"{path}: cannot read it ({exc})") from None
    except ValueError as exc:
        raise QueueError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and is_api_prompt(data.get("prompt")):
        data = data["prompt"]
    if is_api_prompt(data):
        return data, "api"
    if is_ui_workflow(data):
        return data, "ui"
    raise QueueError(f"{path}: not a ComfyUI workflow in either format. {FORMATS_HELP}")


def _input_specs(info: dict) -> dict:
    specs = {}
    for section in ("required", "optional"):
        specs.update(info.get("input", {}).get(section, {}) or {})
    return specs


def _input_order(info: dict) -> list[str]:
    order = info.get("input_order")
    if order:
        return list(order.get("required", [])) + list(order.get("optional", []))
    return list(_input_specs(info))


def _is_widget(spec) -> bool:
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _spec_options(spec) -> dict:
    return spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}


def _widget_names(node: dict, info: dict) -> list[str]:
    """The node's widgets in the frontend's order (each consumes one widgets_values entry)."""
    listed = [i["widget"]["name"] for i in node.get("inputs") or [] if isinstance(i.get("widget"), dict)]
    if listed:
        return listed
    specs = _input_specs(info)
    names = []
    for name in _input_order(info):
        if _is_widget(specs.get(name)):
            names.append(name)
            if _spec_options(specs[name]).get("image_upload") or _spec_options(specs[name]).get("video_upload"):
                names.append("upload")
    return names


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Exact conversion of a plain UI-format workflow to an API prompt, or :class:`ConversionError`.

    Widget values are matched to inputs by the frontend's widget order (``inputs[].widget`` in
    current files, else the server's ``input_order``); a "control after generate" value follows an
    input that declares it. Links become ``[origin id, slot]``; reroutes are followed; notes dropped.
    """
    if workflow.get("definitions", {}).get("subgraphs"):
        raise ConversionError("this UI workflow contains subgraphs, which only the frontend can flatten")
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"])
        else:
            links[link[0]] = (link[1], link[2])

    def source(link_id):
        seen = set()
        while True:
            if link_id not in links:
                return None
            origin, slot = links[link_id]
            node = nodes.get(origin)
            if node is None:
                raise ConversionError(f"a link comes from node {origin}, which is not in the workflow")
            if node.get("type") != "Reroute":
                return [str(origin), slot]
            if origin in seen:
                raise ConversionError("a loop of reroute nodes")
            seen.add(origin)
            upstream = (node.get("inputs") or [{}])[0].get("link")
            if upstream is None:
                return None
            link_id = upstream

    prompt = {}
    for node_id, node in sorted(nodes.items(), key=lambda item: str(item[0])):
        kind = node.get("type")
        mode = node.get("mode", 0)
        if kind in VIRTUAL_NODES or mode == 2:  # 2 = muted ("never")
            continue
        if mode == 4:
            raise ConversionError(f"node {node_id} ({kind}) is bypassed, which only the frontend can rewire")
        if kind == "PrimitiveNode" or kind not in object_info:
            detail = ("a primitive node, whose value only the frontend copies into its targets"
                      if kind == "PrimitiveNode" else "a node type the server does not have")
            raise ConversionError(f"node {node_id} ({kind}) is {detail}")
        info = object_info[kind]
        specs = _input_specs(info)
        inputs = {}
        values = node.get("widgets_values")
        if isinstance(values, dict):  # some nodes save their widgets by name
            for name, value in values.items():
                if name in specs:
                    inputs[name] = value
        else:
            values = list(values or [])
            position = 0
            for name in _widget_names(node, info):
                if position >= len(values):
                    raise ConversionError(f"node {node_id} ({kind}) has fewer widget values than widgets")
                value = values[position]
                position += 1
                if name in specs:
                    inputs[name] = value
                    opts = _spec_options(specs[name])
                    control = opts.get("control_after_generate") or name in ("seed", "noise_seed")
                    if control and position < len(values) and values[position] in CONTROL_VALUES:
                        position += 1
        for slot in node.get("inputs") or []:
            if slot.get("link") is None:
                continue
            origin = source(slot["link"])
            if origin is not None:
                inputs[slot["name"]] = origin
        title = node.get("title")
        entry = {"inputs": inputs, "class_type": kind}
        entry["_meta"] = {"title": title or info.get("display_name") or kind}
        prompt[str(node_id)] = entry
    # inputs linked to muted or virtual nodes are dropped, as the frontend does
    for entry in prompt.values():
        for name, value in list(entry["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and value[0] not in prompt:
                del entry["inputs"][name]
    if not prompt:
        raise ConversionError("the workflow has no node the server could run")
    return prompt


# ------------------------------------------------------------------ --set and --image


def parse_set(text: str) -> list[tuple[str, str, str]]:
    """``NODE.INPUT=VALUE`` -> candidate (node, input, raw value) splits, leftmost first.

    NODE is an id, a title or a class type; a title may itself hold '.' or '=', so every
    ``.INPUT=`` position is a candidate and :func:`apply_sets` takes the first whose node exists.
    """
    if "=" not in text:
        raise QueueError(f"--set {text!r}: expected NODE.INPUT=VALUE (e.g. --set 3.seed=7)")
    candidates = []
    for match in re.finditer(r"\.([A-Za-z_][A-Za-z0-9_]*)=", text):
        node, name, value = text[:match.start()].strip(), match.group(1), text[match.end():]
        if node:
            candidates.append((node, name, value))
    if not candidates:
        raise QueueError(f"--set {text!r}: expected NODE.INPUT before '=' (e.g. 3.seed or KSampler.steps)")
    return candidates


def _find_node(prompt: dict, ref: str) -> str:
    if ref in prompt:
        return ref
    for what in ("title", "class_type"):
        hits = [k for k, v in prompt.items()
                if (v.get("_meta", {}).get("title") if what == "title" else v.get("class_type")) == ref]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise QueueError(f"--set: {len(hits)} nodes have the {what} {ref!r} ({', '.join(sorted(hits))}): "
                             f"use the node id")
    raise QueueError(f"--set: no node {ref!r} in the workflow (ids: {', '.join(sorted(prompt, key=node_id_key))})")


def node_id_key(value: str):
    return (0, int(value), "") if str(value).isdigit() else (1, 0, str(value))


def _convert(raw: str, current, where: str):
    if isinstance(current, bool):
        if raw.lower() in ("true", "1", "yes", "on"):
            return True
        if raw.lower() in ("false", "0", "no", "off"):
            return False
        raise QueueError(f"--set {where}: expected true or false, got {raw!r}")
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            raise QueueError(f"--set {where}: expected an integer, got {raw!r}") from None
    if isinstance(current, float):
        try:
            return float(raw)
        except ValueError:
            raise QueueError(f"--set {where}: expected a number, got {raw!r}") from None
    if isinstance(current, str):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def server_spec(object_info: dict | None, class_type: str, name: str):
    """The input's spec in the server's /object_info (``[TYPE, {options}]``), or None when it does not say."""
    if not object_info or class_type not in object_info:
        return None
    return _input_specs(object_info[class_type]).get(name)


def _spec_kind(spec) -> tuple[str, dict, list | None]:
    """-> (INT | FLOAT | BOOLEAN | STRING | COMBO | other, options dict, combo choices)."""
    first = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(first, list):
        return "COMBO", opts, first
    if first == "COMBO":
        return "COMBO", opts, list(opts.get("options") or [])
    return str(first), opts, None


def typed_value(raw: str, spec, name: str, where: str, uploading: frozenset = frozenset()):
    """``raw`` typed and checked as the server would (its /object_info spec), or a QueueError in the words
    ComfyUI's own validation uses (execution.validate_inputs), before anything is queued. A COMBO value
    in ``uploading`` (the names this run uploads with --image) is accepted: the loader is rewritten to
    the uploaded file, which the server's list cannot know yet."""
    kind, opts, choices = _spec_kind(spec)
    refused = f"--set {where}: the server would refuse this value ({kind} input): "
    if kind == "COMBO":
        if raw in uploading:
            return raw
        for choice in choices:
            if str(choice) == raw:
                return choice
        listed = f"(list of length {len(choices)})" if len(choices) > 20 else str(choices)
        raise QueueError(refused + f"Value not in list: {name}: '{raw}' not in {listed}")
    try:
        if kind == "INT":
            try:
                value = int(raw)
            except ValueError:
                number = float(raw)
                if not number.is_integer():
                    raise
                value = int(number)
        elif kind == "FLOAT":
            value = float(raw)
        elif kind == "BOOLEAN":
            if raw.lower() in ("true", "1", "yes", "on"):
                value = True
            elif raw.lower() in ("false", "0", "no", "off"):
                value = False
            else:
                raise ValueError(f"expected true or false, got {raw!r}")
        elif kind == "STRING":
            value = raw
        else:
            raise QueueError(f"--set {where}: a {kind} input takes a connection from another node, not a value")
    except ValueError as exc:
        message = f"Failed to convert an input value to a {kind} value: {name}, {raw}, {exc}"
        raise QueueError(refused + message) from None
    if kind in ("INT", "FLOAT"):
        if "min" in opts and value < opts["min"]:
            raise QueueError(refused + "Value {} smaller than min of {}: {}".format(value, opts["min"], name))
        if "max" in opts and value > opts["max"]:
            raise QueueError(refused + "Value {} bigger than max of {}: {}".format(value, opts["max"], name))
    return value


def apply_sets(prompt: dict, sets: list[str], object_info: dict | None = None, values: bool = True,
               uploading: frozenset = frozenset()) -> dict:
    """A copy of the prompt with each ``NODE.INPUT=VALUE`` applied (``uploading``: see typed_value).

    With the server's ``object_info`` each value is typed and range-checked by the input's spec there
    (INT, FLOAT, BOOLEAN, STRING, COMBO and its options); without it (offline, or a node the server
    does not know) it is typed like the value the workflow holds. ``values=False`` checks only that
    each node and input exists (the raw text is set).
    """
    prompt = json.loads(json.dumps(prompt))
    for text in sets:
        candidates = parse_set(text)
        for ref, name, raw in candidates:
            try:
                node_id = _find_node(prompt, ref)
                break
            except QueueError:
                if (ref, name, raw) == candidates[-1]:
                    ref, name, raw = candidates[0]
                    node_id = _find_node(prompt, ref)
        inputs = prompt[node_id].setdefault("inputs", {})
        where = f"{node_id}.{name}"
        spec = server_spec(object_info, prompt[node_id]["class_type"], name)
        if name not in inputs and spec is None:
            names = ", ".join(sorted(k for k, v in inputs.items() if not isinstance(v, list))) or "none"
            raise QueueError(f"--set {where}: node {node_id} ({prompt[node_id]['class_type']}) has no input "
                             f"{name!r} (settable: {names})")
        current = inputs.get(name)
        if isinstance(current, list):
            raise QueueError(f"--set {where}: this input is connected to node {current[0]}, not a value")
        if not values:
            inputs[name] = raw
        elif spec is not None:
            inputs[name] = typed_value(raw, spec, name, where, uploading)
        else:
            inputs[name] = _convert(raw, current, where)
    return prompt


def parse_images(items: list[str]) -> list[tuple[str, Path]]:
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name, item
        if not name or not path:
            raise QueueError(f"--image {item!r}: expected NAME=PATH")
        if "/" in name or "\\" in name or name in (".", ".."):
            raise QueueError(f"--image {item!r}: NAME is a file name in the server's input folder, no folders")
        file = Path(path).expanduser()
        if not file.is_file():
            raise QueueError(f"--image {item!r}: {file} is not a file")
        out.append((name, file))
    return out


def find_node(prompt: dict, ref: str, what: str = "--image-node") -> str:
    """A node by id, title or (unique) class type."""
    try:
        return _find_node(prompt, ref)
    except QueueError as exc:
        raise QueueError(str(exc).replace("--set", what, 1)) from None


LOADER_INPUTS = ("image", "file", "video")  # the file-name input of ComfyUI's and our loader nodes


def loader_input(prompt: dict, node_id: str) -> str:
    """The input of a loader node that holds the file name (``image`` of Load Image, ``file`` of ours)."""
    inputs = prompt[node_id].get("inputs", {})
    for name in LOADER_INPUTS:
        if isinstance(inputs.get(name), str):
            return name
    raise QueueError(f"--image-node {node_id} ({prompt[node_id]['class_type']}) has no file-name input "
                     f"({' / '.join(LOADER_INPUTS)}): name the workflow's Load Image (or video loader) node")


def in_run_folder(prompt: dict, run_folder: str, uploads: dict[str, str] | None = None,
                  node_files: dict[tuple[str, str], str] | None = None) -> dict:
    """A copy of the prompt for one run: the loaders read the files uploaded into ``run_folder``
    (``uploads``: workflow file name -> stored name; ``node_files``: (node, input) -> stored name) and
    every ``filename_prefix`` writes under ``run_folder`` too, so no other run can overwrite, read or
    guess this run's files."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        inputs = node.get("inputs", {})
        for key, value in list(inputs.items()):
            if uploads and isinstance(value, str) and value in uploads:
                inputs[key] = uploads[value]
            elif key == "filename_prefix" and isinstance(value, str):
                inputs[key] = f"{run_folder}/{value.lstrip('/')}"
    for (node_id, key), stored in (node_files or {}).items():
        prompt[node_id]["inputs"][key] = stored
    return prompt
