"""``faceanon queue WORKFLOW_api.json --server URL``: run a workflow on a (headless) ComfyUI server.

Uploads the input images (``/upload/image``), posts the prompt (``/prompt``), follows the run over the
server's websocket (``websocket-client``, optional) or by polling ``/history``, shows a progress bar,
and downloads the outputs (``/view``) into ``--out``: all files of a run are fetched into a hidden
folder first and moved into place only when every one arrived, so a failure leaves no partial files.
Errors from the server (validation or execution) are printed as the server words them.

Two workflow formats exist. The *UI format* is what ComfyUI's Save / Export writes (``nodes``,
``links``, ``widgets_values``: positions and widget values, no input names); only the frontend
knows how widgets map to inputs. The *API format* (Workflow > Export (API); older frontends:
enable the dev mode options, then "Save (API Format)") maps node ids to ``class_type`` and named
``inputs``: it is what ``/prompt`` accepts. A UI file is converted here when it can be done
exactly (links plus ``widgets_values`` in the widget order that the server's ``/object_info``
gives); anything the conversion cannot do exactly (subgraphs, bypassed nodes, primitive nodes)
is refused with that explanation.

``register(subparsers)`` adds the command to the ``faceanon`` parser. Needs ``requests``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

logger = logging.getLogger("faceanon.queue")

__all__ = ["register", "run_queue", "QueueError", "ConversionError", "ui_to_api", "parse_set",
           "apply_sets", "is_ui_workflow", "FORMATS_HELP"]

# exit codes
EXIT_USAGE = 2  # bad arguments or workflow file (nothing was sent)
EXIT_REFUSED = 3  # the server refused the prompt (validation errors)
EXIT_FAILED = 4  # the prompt ran and failed (execution error or interrupted)
EXIT_CONNECTION = 5  # server unreachable, timeout, connection lost

CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
VIRTUAL_NODES = ("Note", "MarkdownNote", "Reroute")  # frontend-only nodes: never sent to the server

FORMATS_HELP = (
    "ComfyUI has two workflow formats. The UI format (what Save / Export writes: 'nodes', 'links', "
    "'widgets_values') describes the canvas; the API format (node id -> 'class_type' + named 'inputs') is "
    "what the server's /prompt accepts. To get the API format, open the workflow in ComfyUI and use "
    "Workflow > Export (API) (older frontends: enable 'Dev mode options' in the settings, then "
    "'Save (API Format)'). The example workflows ship both: use the *_api.json file."
)


class QueueError(Exception):
    """A user-facing error with its exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


class ConversionError(QueueError):
    """A UI-format workflow that cannot be converted exactly."""

    def __init__(self, message: str):
        super().__init__(f"{message}. {FORMATS_HELP}", EXIT_USAGE)


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
    raise QueueError(f"--set: no node {ref!r} in the workflow (ids: {', '.join(sorted(prompt, key=_id_key))})")


def _id_key(value: str):
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


def apply_sets(prompt: dict, sets: list[str]) -> dict:
    """A copy of the prompt with each ``NODE.INPUT=VALUE`` applied (typed like the current value)."""
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
        if name not in inputs:
            names = ", ".join(sorted(k for k, v in inputs.items() if not isinstance(v, list))) or "none"
            raise QueueError(f"--set {where}: node {node_id} ({prompt[node_id]['class_type']}) has no input "
                             f"{name!r} (settable: {names})")
        current = inputs[name]
        if isinstance(current, list):
            raise QueueError(f"--set {where}: this input is connected to node {current[0]}, not a value")
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


# ------------------------------------------------------------------ the server


def _requests():
    try:
        import requests
    except ImportError:
        raise QueueError("faceanon queue needs the 'requests' package: pip install requests") from None
    return requests


class Client:
    """The few ComfyUI endpoints the command needs, with clear errors."""

    def __init__(self, server: str, timeout: float = 30.0):
        if "://" not in server:
            server = "http://" + server
        parts = urlsplit(server)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise QueueError(f"--server {server!r}: expected a URL like http://127.0.0.1:8188")
        self.base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.timeout = timeout
        self.requests = _requests()
        self.session = self.requests.Session()
        self.client_id = str(uuid.uuid4())

    def _call(self, method: str, path: str, **kwargs):
        exc_types = self.requests.exceptions
        try:
            return self.session.request(method, self.base + path, timeout=kwargs.pop("timeout", self.timeout),
                                        **kwargs)
        except exc_types.ConnectTimeout:
            raise QueueError(f"the ComfyUI server at {self.base} did not answer within {self.timeout:g} s",
                             EXIT_CONNECTION) from None
        except exc_types.ReadTimeout:
            raise QueueError(f"{method} {path}: the server at {self.base} sent no answer within "
                             f"{self.timeout:g} s", EXIT_CONNECTION) from None
        except exc_types.ConnectionError as exc:
            reason = _reason(exc)
            raise QueueError(f"cannot reach the ComfyUI server at {self.base} ({reason}): is it running "
                             f"and is --server right?", EXIT_CONNECTION) from None
        except exc_types.RequestException as exc:
            raise QueueError(f"{method} {path} failed: {exc}", EXIT_CONNECTION) from None

    def json(self, method: str, path: str, **kwargs):
        response = self._call(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        return response.status_code, body, response

    def object_info(self) -> dict:
        status, body, response = self.json("GET", "/object_info")
        if status != 200 or not isinstance(body, dict):
            raise QueueError(f"GET /object_info: HTTP {status}: {response.text[:300]}", EXIT_CONNECTION)
        return body

    def upload(self, name: str, path: Path) -> str:
        with open(path, "rb") as handle:
            status, body, response = self.json(
                "POST", "/upload/image", files={"image": (name, handle, "application/octet-stream")},
                data={"overwrite": "true", "type": "input"})
        if status != 200 or not isinstance(body, dict) or "name" not in body:
            raise QueueError(f"uploading {path} as {name!r} failed: HTTP {status}: {response.text[:300]}",
                             EXIT_FAILED)
        return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]

    def queue(self, prompt: dict) -> str:
        status, body, response = self.json("POST", "/prompt", json={"prompt": prompt, "client_id": self.client_id})
        if status == 200 and isinstance(body, dict) and body.get("prompt_id"):
            return body["prompt_id"]
        if isinstance(body, dict) and ("error" in body or "node_errors" in body):
            raise QueueError("the server refused the workflow:\n" + format_prompt_error(body, prompt), EXIT_REFUSED)
        raise QueueError(f"POST /prompt: HTTP {status}: {response.text[:500]}", EXIT_REFUSED)

    def history(self, prompt_id: str) -> dict | None:
        status, body, response = self.json("GET", f"/history/{prompt_id}")
        if status != 200 or not isinstance(body, dict):
            raise QueueError(f"GET /history/{prompt_id}: HTTP {status}: {response.text[:300]}", EXIT_CONNECTION)
        return body.get(prompt_id)

    def download(self, item: dict, target: Path) -> None:
        params = {"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                  "type": item.get("type", "output")}
        response = self._call("GET", "/view", params=params, stream=True)
        if response.status_code != 200:
            raise QueueError(f"GET /view {item['filename']}: HTTP {response.status_code}", EXIT_CONNECTION)
        expected = response.headers.get("Content-Length")
        written = 0
        try:
            with open(target, "wb") as handle:
                for chunk in response.iter_content(1 << 16):
                    handle.write(chunk)
                    written += len(chunk)
        except self.requests.exceptions.RequestException as exc:
            raise QueueError(f"the connection dropped while downloading {item['filename']} ({_reason(exc)})",
                             EXIT_CONNECTION) from None
        if expected is not None and int(expected) != written:
            raise QueueError(f"{item['filename']}: got {written} of {expected} bytes (connection dropped)",
                             EXIT_CONNECTION)

    def ws_url(self) -> str:
        parts = urlsplit(self.base)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path + "/ws", f"clientId={self.client_id}", ""))


def _reason(exc) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "Remote end closed connection",
                   "Connection reset", "Connection aborted", "timed out", "IncompleteRead"):
        if marker in text:
            return marker.lower()
    return text[:200]


def format_prompt_error(body: dict, prompt: dict) -> str:
    """The server's validation error, node by node, in its own words."""
    lines = []
    error = body.get("error")
    if isinstance(error, dict):
        message = error.get("message", "")
        details = error.get("details", "")
        lines.append(f"{message}{': ' + details if details else ''}")
    elif error:
        lines.append(str(error))
    for node_id, node_error in sorted((body.get("node_errors") or {}).items(), key=lambda kv: _id_key(kv[0])):
        kind = node_error.get("class_type") or prompt.get(node_id, {}).get("class_type", "?")
        title = prompt.get(node_id, {}).get("_meta", {}).get("title")
        label = f"node {node_id} ({kind}{', ' + repr(title) if title and title != kind else ''})"
        for item in node_error.get("errors", []):
            name = (item.get("extra_info") or {}).get("input_name")
            text = item.get("details") or item.get("message", "")
            if item.get("message") and item.get("details") and item["message"] not in item["details"]:
                text = f"{item['message']}: {item['details']}"
            lines.append(f"  {label}{' input ' + repr(name) if name else ''}: {text}")
    return "\n".join(lines) or json.dumps(body)[:1000]


def execution_error(entry: dict) -> str | None:
    for event, data in (entry.get("status") or {}).get("messages") or []:
        if event == "execution_error":
            node = data.get("node_id")
            kind = data.get("node_type")
            return (f"node {node} ({kind}) failed: {data.get('exception_type', 'error')}: "
                    f"{data.get('exception_message', '').strip()}")
        if event == "execution_interrupted":
            return f"the run was interrupted on the server (node {data.get('node_id')})"
    if (entry.get("status") or {}).get("status_str") == "error":
        return "the run failed on the server (no error message in its history)"
    return None


# ------------------------------------------------------------------ following a run


class Progress:
    """One tqdm bar over the nodes; the sampler's steps as its postfix."""

    def __init__(self, total_nodes: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total_nodes, unit="node", desc="queued", disable=not enabled or None,
                        file=sys.stderr, leave=False)
        self.done: set = set()

    def node(self, node_id, label: str = "running"):
        if node_id is not None and node_id not in self.done:
            self.done.add(node_id)
            self.bar.update(1)
        self.bar.set_description(label)

    def steps(self, node_id, value, maximum):
        self.bar.set_postfix_str(f"node {node_id}: {value}/{maximum}")

    def close(self):
        self.bar.close()


def _ws_connect(client: Client, timeout: float):
    try:
        import websocket
    except ImportError:
        logger.info("websocket-client is not installed: following the run by polling /history")
        return None
    try:
        return websocket.create_connection(client.ws_url(), timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any websocket failure falls back to polling
        logger.info("no websocket (%s): following the run by polling /history", exc)
        return None


def follow_websocket(ws, client: Client, prompt_id: str, deadline: float, progress: Progress,
                     poll_interval: float) -> bool:
    """Read messages until the run ends (True) or the socket fails (False: fall back to polling)."""
    import websocket

    last_check = time.monotonic()
    while True:
        now = time.monotonic()
        if now > deadline:
            return True  # the caller's history check reports the timeout
        ws.settimeout(max(0.05, min(poll_interval * 5, deadline - now)))
        try:
            message = ws.recv()
        except websocket.WebSocketTimeoutException:
            message = None
        except (websocket.WebSocketException, OSError) as exc:
            logger.warning("the websocket closed (%s): polling /history instead", exc or type(exc).__name__)
            return False
        if isinstance(message, str):
            try:
                event = json.loads(message)
            except ValueError:
                event = {}
            kind, data = event.get("type"), event.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if kind == "executing":
                if data.get("node") is None and data.get("prompt_id") == prompt_id:
                    return True
                progress.node(data.get("node"), f"node {data.get('node')}")
            elif kind == "execution_cached":
                for node in data.get("nodes") or []:
                    progress.node(node, "cached")
            elif kind == "progress":
                progress.steps(data.get("node"), data.get("value"), data.get("max"))
            elif kind in ("execution_error", "execution_interrupted", "execution_success"):
                return True
        # a finished run whose last message was missed is found by a history check now and then
        if time.monotonic() - last_check > max(5.0, poll_interval * 10):
            last_check = time.monotonic()
            if _finished(client.history(prompt_id)):
                return True


def _finished(entry) -> bool:
    if not entry:
        return False
    status = entry.get("status") or {}
    return bool(status.get("completed")) or status.get("status_str") in ("success", "error")


def wait_for(client: Client, prompt_id: str, deadline: float, poll_interval: float) -> dict:
    while True:
        entry = client.history(prompt_id)
        if _finished(entry):
            return entry
        if time.monotonic() > deadline:
            raise QueueError(f"prompt {prompt_id} did not finish in time (--timeout); it may still be queued or "
                             f"running on the server", EXIT_CONNECTION)
        time.sleep(poll_interval)


# ------------------------------------------------------------------ outputs


def output_items(entry: dict, include_temp: bool) -> list[dict]:
    items = []
    for node_id, output in sorted((entry.get("outputs") or {}).items(), key=lambda kv: _id_key(kv[0])):
        for key, values in output.items():
            if not isinstance(values, list):
                continue
            for value in values:
                if isinstance(value, dict) and "filename" in value:
                    kind = value.get("type", "output")
                    if kind == "output" or (include_temp and kind == "temp"):
                        items.append(dict(value, node=node_id))
    return items


def _relative_target(item: dict) -> PurePosixPath:
    parts = [p for p in PurePosixPath(item.get("subfolder") or "").parts] + [item["filename"]]
    if any(p in ("..", "") or "\\" in p or p.startswith("/") for p in parts):
        raise QueueError(f"the server named an output {item!r}, which is not a plain relative path", EXIT_FAILED)
    if item.get("type") == "temp":
        parts.insert(0, "temp")
    return PurePosixPath(*parts)


def download_outputs(client: Client, items: list[dict], out: Path, overwrite: bool) -> list[Path]:
    """Every file into a hidden staging folder under ``out``, then moved into place (no partial outputs)."""
    targets = [out / _relative_target(item) for item in items]
    if len(set(targets)) != len(targets):
        raise QueueError("the server returned two outputs with the same name", EXIT_FAILED)
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise QueueError(f"{existing[0]} exists ({len(existing)} output(s) would be replaced): use --overwrite "
                         f"or another --out", EXIT_USAGE)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".faceanon-queue-", dir=out))
    try:
        staged = []
        for index, item in enumerate(items):
            path = staging / f"{index:05d}"
            client.download(item, path)
            staged.append(path)
        for path, target in zip(staged, targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return targets


# ------------------------------------------------------------------ the command


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "queue", help="run an API-format workflow on a ComfyUI server and download its outputs",
        description="Run a workflow on a (headless) ComfyUI server: upload --image files, apply --set changes, "
                    "queue it, follow its progress and download every output into --out (all or nothing). "
                    + FORMATS_HELP,
    )
    p.add_argument("workflow", metavar="WORKFLOW_api.json", help="workflow in API format (a UI-format file is "
                                                                  "converted when that can be done exactly)")
    p.add_argument("--server", default=os.environ.get("COMFYUI_SERVER", "http://127.0.0.1:8188"),
                   help="ComfyUI server URL (default: $COMFYUI_SERVER or http://127.0.0.1:8188)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="change an input value; NODE is a node id, title or (unique) class type; repeatable")
    p.add_argument("--image", dest="images", action="append", default=[], metavar="NAME=PATH",
                   help="upload PATH into the server's input folder as NAME (the file name the workflow's "
                        "Load Image uses); repeatable")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="folder for the downloaded outputs")
    p.add_argument("--overwrite", action="store_true", help="replace existing files in --out")
    p.add_argument("--include-temp", action="store_true", help="also download preview (temp) images")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                   help="seconds to wait for the run to finish (default 3600)")
    p.add_argument("--request-timeout", type=float, default=30.0, metavar="S",
                   help="seconds for each HTTP request (default 30)")
    p.add_argument("--poll-interval", type=float, default=1.0, metavar="S", help="seconds between /history polls")
    p.add_argument("--no-websocket", action="store_true", help="poll /history instead of using the websocket")
    p.add_argument("--no-convert", action="store_true", help="refuse UI-format files instead of converting them")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_queue)


def run_queue(args) -> int:
    try:
        written = queue_workflow(args)
    except QueueError as exc:
        print(f"faceanon queue: error: {exc}", file=sys.stderr)
        return exc.code
    for path in written:
        print(path)
    return 0


def queue_workflow(args) -> list[Path]:
    data, kind = load_workflow(args.workflow)
    if kind == "ui" and args.no_convert:
        raise QueueError(f"{args.workflow} is a UI-format workflow. {FORMATS_HELP}")
    images = parse_images(args.images)
    if kind == "api":
        apply_sets(data, args.sets)  # --set errors before anything is sent
    if args.timeout <= 0 or args.request_timeout <= 0 or args.poll_interval <= 0:
        raise QueueError("--timeout, --request-timeout and --poll-interval must be positive")
    client = Client(args.server, timeout=args.request_timeout)
    if kind == "ui":
        logger.warning("%s is a UI-format workflow: converting it with the server's node definitions "
                       "(ComfyUI's /prompt takes the API format; Workflow > Export (API) saves it)", args.workflow)
        data = ui_to_api(data, client.object_info())
    prompt = apply_sets(data, args.sets)
    for name, path in images:
        stored = client.upload(name, path)
        used = False
        for node in prompt.values():
            for key, value in node.get("inputs", {}).items():
                if value == name:
                    node["inputs"][key] = stored
                    used = True
        if not used:
            logger.warning("--image %s: no input of the workflow names %r (uploaded anyway)", name, name)
    deadline = time.monotonic() + args.timeout
    ws = None if args.no_websocket else _ws_connect(client, args.request_timeout)
    progress = Progress(len(prompt), enabled=not args.no_progress)
    try:
        prompt_id = client.queue(prompt)
        logger.info("queued prompt %s on %s", prompt_id, client.base)
        try:
            if ws is not None:
                follow_websocket(ws, client, prompt_id, deadline, progress, args.poll_interval)
            entry = wait_for(client, prompt_id, deadline, args.poll_interval)
        except QueueError as exc:
            if exc.code != EXIT_CONNECTION:
                raise
            raise QueueError(f"lost the server while prompt {prompt_id} was running: {exc}", exc.code) from None
    finally:
        progress.close()
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - closing a broken socket
                pass
    message = execution_error(entry)
    if message:
        raise QueueError(f"prompt {prompt_id}: {message}", EXIT_FAILED)
    items = output_items(entry, args.include_temp)
    if not items:
        logger.warning("prompt %s finished without output files", prompt_id)
        return []
    return download_outputs(client, items, Path(args.out), args.overwrite)
