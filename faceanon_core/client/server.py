"""A ComfyUI server over HTTP and its websocket: upload, queue, follow, download (all or nothing).

Uploads the input images (``/upload/image``), posts the prompt (``/prompt``), follows the run over the
server's websocket (``websocket-client``, optional) or by polling ``/history``, shows a progress bar,
and downloads the outputs (``/view``): all files of a run are fetched into a hidden folder first and
moved into place only when every one arrived, so a failure leaves no partial files. Errors from the
server (validation or execution) are printed as the server words them. Needs ``requests``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

from .errors import EXIT_CONNECTION, EXIT_FAILED, EXIT_REFUSED, EXIT_USAGE, QueueError
from .workflows import node_id_key

logger = logging.getLogger("faceanon.queue")


# ------------------------------------------------------------------ the server


def _requests():
    try:
        import requests
    except ImportError:
        raise QueueError("faceanon queue needs the 'requests' package: pip install requests") from None
    return requests


class Client:
    """The few ComfyUI endpoints the command needs, with clear errors."""

    def __init__(self, server: str, timeout: float = 30.0, headers: dict | None = None):
        if "://" not in server:
            server = "http://" + server
        parts = urlsplit(server)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise QueueError(f"--server {server!r}: expected a URL like http://127.0.0.1:8188")
        self.base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.timeout = timeout
        self.requests = _requests()
        self.session = self.requests.Session()
        self.headers = dict(headers or {})  # e.g. Authorization for a server behind a proxy: HTTP and websocket
        self.session.headers.update(self.headers)
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

    def upload(self, name: str, path: Path, subfolder: str) -> str:
        """``path`` into the server's ``input/<subfolder>/<name>``; never replaces a file that is there."""
        with open(path, "rb") as handle:
            status, body, response = self.json(
                "POST", "/upload/image", files={"image": (name, handle, "application/octet-stream")},
                data={"overwrite": "false", "type": "input", "subfolder": subfolder})
        if status != 200 or not isinstance(body, dict) or "name" not in body:
            raise QueueError(f"uploading {path} as {name!r} failed: HTTP {status}: {response.text[:300]}",
                             EXIT_FAILED)
        if body.get("name") != name or (body.get("subfolder") or "") != subfolder:
            raise QueueError(f"uploading {path}: the server stored it as {body.get('subfolder')}/{body.get('name')} "
                             f"instead of {subfolder}/{name} (a name taken in a fresh random folder: refusing to "
                             f"run on a file that may not be ours)", EXIT_FAILED)
        return f"{subfolder}/{name}"

    def queue(self, prompt: dict, prompt_id: str | None = None) -> str:
        """Queue the prompt (under ``prompt_id`` when given: ComfyUI takes the client's id, so a record
        written before the POST finds the run again after a crash)."""
        request = {"prompt": prompt, "client_id": self.client_id}
        if prompt_id:
            request["prompt_id"] = prompt_id
        status, body, response = self.json("POST", "/prompt", json=request)
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

    def queued_ids(self) -> set:
        """Ids of the prompts running or waiting on the server (``/queue``)."""
        status, body, response = self.json("GET", "/queue")
        if status != 200 or not isinstance(body, dict):
            raise QueueError(f"GET /queue: HTTP {status}: {response.text[:300]}", EXIT_CONNECTION)
        ids = set()
        for key in ("queue_running", "queue_pending"):
            for item in body.get(key) or []:
                if isinstance(item, list) and len(item) > 1:
                    ids.add(str(item[1]))
        return ids

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
    for node_id, node_error in sorted((body.get("node_errors") or {}).items(), key=lambda kv: node_id_key(kv[0])):
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


def connect_websocket(client: Client, timeout: float):
    try:
        import websocket
    except ImportError:
        logger.warning("websocket-client is not installed (pip install websocket-client): following the run by "
                       "polling /history")
        return None
    try:
        return websocket.create_connection(client.ws_url(), timeout=timeout,
                                           header=[f"{k}: {v}" for k, v in client.headers.items()])
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
            if finished(client.history(prompt_id)):
                return True


def finished(entry) -> bool:
    if not entry:
        return False
    status = entry.get("status") or {}
    return bool(status.get("completed")) or status.get("status_str") in ("success", "error")


def wait_for(client: Client, prompt_id: str, deadline: float, poll_interval: float) -> dict:
    while True:
        entry = client.history(prompt_id)
        if finished(entry):
            return entry
        if time.monotonic() > deadline:
            raise QueueError(f"prompt {prompt_id} did not finish in time (--timeout); it may still be queued or "
                             f"running on the server", EXIT_CONNECTION)
        time.sleep(poll_interval)


# ------------------------------------------------------------------ outputs


def output_items(entry: dict, include_temp: bool) -> list[dict]:
    items = []
    for node_id, output in sorted((entry.get("outputs") or {}).items(), key=lambda kv: node_id_key(kv[0])):
        for values in output.values():
            if not isinstance(values, list):
                continue
            for value in values:
                if isinstance(value, dict) and "filename" in value:
                    kind = value.get("type", "output")
                    if kind == "output" or (include_temp and kind == "temp"):
                        items.append(dict(value, node=node_id))
    return items


RUN_ROOT = "faceanon-queue"  # every run's uploads and outputs on the server: <input|output>/faceanon-queue/<random>/


def new_run_folder() -> str:
    """A folder no other run can produce or guess (128 random bits)."""
    return f"{RUN_ROOT}/{secrets.token_hex(16)}"


def relative_target(item: dict) -> PurePosixPath:
    parts = [p for p in PurePosixPath(item.get("subfolder") or "").parts] + [item["filename"]]
    if len(parts) > 2 and parts[0] == RUN_ROOT:
        parts = parts[2:]  # our own random run folder is not part of the name the user sees
    if any(p in ("..", "") or "\\" in p or p.startswith("/") for p in parts):
        raise QueueError(f"the server named an output {item!r}, which is not a plain relative path", EXIT_FAILED)
    if item.get("type") == "temp":
        parts.insert(0, "temp")
    return PurePosixPath(*parts)


def download_outputs(client: Client, items: list[dict], out: Path, overwrite: bool) -> list[Path]:
    """Every file into a hidden staging folder under ``out``, then moved into place (no partial outputs)."""
    targets = [out / relative_target(item) for item in items]
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
        for path, target in zip(staged, targets, strict=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return targets
