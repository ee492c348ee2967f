"""``faceanon queue`` against a small fake ComfyUI server (http.server on 127.0.0.1, a free port).

The fake speaks the parts of ComfyUI's API the client uses: /object_info, /upload/image, /prompt,
/history/<id>, /view and the /ws websocket (a hand-written RFC 6455 handshake and text frames).
Scenarios: success (websocket and polling), validation error, execution error, server down, a
connection dropped mid-run and mid-download, a timeout, UI-format files, --set errors.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import http.server
import json
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from faceanon_core import client as queue_client
from faceanon_core.cli import main
from workflow_checks import WORKFLOWS, WORKFLOWS_API, load_core, our_object_info

pytest.importorskip("requests")
HAS_WEBSOCKET = importlib.util.find_spec("websocket") is not None
PNG = b"\x89PNG\r\n\x1a\n" + b"fake image bytes " * 20
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class FakeComfy:
    """A ComfyUI stand-in; ``scenario`` picks its behaviour, ``requests`` records what it was sent."""

    def __init__(self, scenario: str = "ok", object_info: dict | None = None, run_seconds: float = 0.3):
        self.scenario = scenario
        self.object_info = object_info or {}
        self.run_seconds = run_seconds
        self.requests: list[tuple[str, str]] = []
        self.prompts: list[dict] = []
        self.uploads: dict[str, bytes] = {}
        self.queued_at: dict[str, float] = {}
        self.client_ids: list[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, body, content_type="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_GET(self):  # noqa: N802
                path, _, query = self.path.partition("?")
                fake.requests.append(("GET", path))
                if path == "/object_info":
                    return self._send(200, fake.object_info)
                if path == "/ws":
                    return fake.websocket(self, query)
                if path.startswith("/history/"):
                    return fake.history(self, path.split("/")[-1])
                if path == "/view":
                    return fake.view(self, query)
                return self._send(404, {"error": "not found"})

            def do_POST(self):  # noqa: N802
                fake.requests.append(("POST", self.path))
                body = self._body()
                if self.path == "/upload/image":
                    name = body.split(b'filename="', 1)[1].split(b'"', 1)[0].decode()
                    fake.uploads[name] = body
                    return self._send(200, {"name": name, "subfolder": "", "type": "input"})
                if self.path == "/prompt":
                    return fake.prompt(self, json.loads(body))
                return self._send(404, {"error": "not found"})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    # --- endpoints

    def prompt(self, handler, body):
        self.prompts.append(body["prompt"])
        self.client_ids.append(body.get("client_id"))
        if self.scenario == "invalid":
            return handler._send(400, {
                "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                          "details": "", "extra_info": {}},
                "node_errors": {"3": {"errors": [{
                    "type": "value_bigger_than_max", "message": "Value bigger than max",
                    "details": "degree: 7.0 > 3.0", "extra_info": {"input_name": "degree"}}],
                    "dependent_outputs": ["4"], "class_type": "FaceAnon_Anonymize"}}})
        prompt_id = str(uuid.uuid4())
        self.queued_at[prompt_id] = time.monotonic()
        return handler._send(200, {"prompt_id": prompt_id, "number": 1, "node_errors": {}})

    def finished(self, prompt_id) -> bool:
        return time.monotonic() - self.queued_at[prompt_id] >= self.run_seconds and self.scenario != "never_ends"

    def history(self, handler, prompt_id):
        if self.scenario == "drop_history" and prompt_id in self.queued_at:
            handler.close_connection = True  # the server went away mid-run: no answer at all
            handler.connection.shutdown(socket.SHUT_RDWR)
            return None
        if prompt_id not in self.queued_at or not self.finished(prompt_id):
            return handler._send(200, {})
        if self.scenario == "exec_error":
            status = {"status_str": "error", "completed": False, "messages": [
                ["execution_start", {"prompt_id": prompt_id}],
                ["execution_error", {"prompt_id": prompt_id, "node_id": "3", "node_type": "FaceAnon_Anonymize",
                                     "exception_type": "ValueError",
                                     "exception_message": "image: the batch is empty (no images or no faces)"}]]}
            return handler._send(200, {prompt_id: {"outputs": {}, "status": status}})
        outputs = {"4": {"images": [{"filename": "anon_00001_.png", "subfolder": "faceanon", "type": "output"},
                                    {"filename": "anon_00002_.png", "subfolder": "faceanon", "type": "output"}]},
                   "9": {"images": [{"filename": "ComfyUI_temp_00001_.png", "subfolder": "", "type": "temp"}]}}
        status = {"status_str": "success", "completed": True, "messages": []}
        return handler._send(200, {prompt_id: {"outputs": outputs, "status": status}})

    def view(self, handler, query):
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        if self.scenario == "drop_view" and params.get("filename") == "anon_00002_.png":
            handler.send_response(200)
            handler.send_header("Content-Type", "image/png")
            handler.send_header("Content-Length", "100000")
            handler.end_headers()
            handler.wfile.write(PNG[:20])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return None
        return handler._send(200, PNG + params.get("filename", "").encode(), "image/png")

    def websocket(self, handler, query):
        key = handler.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        handler.send_response(101)
        handler.send_header("Upgrade", "websocket")
        handler.send_header("Connection", "Upgrade")
        handler.send_header("Sec-WebSocket-Accept", accept)
        handler.end_headers()
        handler.wfile.flush()
        handler.close_connection = True

        def send(kind, data):
            payload = json.dumps({"type": kind, "data": data}).encode()
            header = bytes([0x81, len(payload)]) if len(payload) < 126 else (
                bytes([0x81, 126]) + len(payload).to_bytes(2, "big"))
            handler.wfile.write(header + payload)
            handler.wfile.flush()

        send("status", {"status": {"exec_info": {"queue_remaining": 0}}, "sid": query.split("=")[-1]})
        deadline = time.monotonic() + 10
        while not self.queued_at and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.queued_at:
            return None
        prompt_id = list(self.queued_at)[-1]
        send("execution_start", {"prompt_id": prompt_id})
        send("execution_cached", {"nodes": ["1"], "prompt_id": prompt_id})
        if self.scenario == "drop_ws":
            handler.connection.shutdown(socket.SHUT_RDWR)  # the socket dies; /history still answers
            return None
        for node in ("2", "3"):
            send("executing", {"node": node, "display_node": node, "prompt_id": prompt_id})
        for step in range(1, 4):
            send("progress", {"value": step, "max": 3, "prompt_id": prompt_id, "node": "3"})
        while not self.finished(prompt_id) and time.monotonic() < deadline:
            time.sleep(0.01)
        send("executing", {"node": "4", "display_node": "4", "prompt_id": prompt_id})
        send("execution_success", {"prompt_id": prompt_id})
        send("executing", {"node": None, "prompt_id": prompt_id})
        time.sleep(0.05)
        return None


@pytest.fixture
def fake(request):
    servers = []

    def start(scenario="ok", **kwargs):
        server = FakeComfy(scenario, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def object_info():
    return {**load_core(), **our_object_info()}


def queue(capsys, *args) -> tuple[int, str, str]:
    code = main(["queue", *map(str, args), "--poll-interval", "0.05", "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def api_file() -> Path:
    return WORKFLOWS_API / "anonymize_crop_api.json"


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("websocket", [
    pytest.param(True, marks=pytest.mark.skipif(not HAS_WEBSOCKET, reason="websocket-client is not installed")),
    False])
def test_success_uploads_sets_queues_follows_and_downloads(fake, capsys, tmp_path, websocket):
    server = fake("ok")
    image = tmp_path / "mine.png"
    image.write_bytes(PNG)
    out = tmp_path / "out"
    code, stdout, stderr = queue(capsys, api_file(), "--server", server.url, "--out", out,
                                 "--image", f"face.png={image}", "--set", "3.seed=7", "--set", "3.degree=1.5",
                                 "--set", "SaveImage.filename_prefix=run1",
                                 *([] if websocket else ["--no-websocket"]))
    assert code == 0, stderr
    assert files_under(out) == ["faceanon/anon_00001_.png", "faceanon/anon_00002_.png"]
    assert (out / "faceanon" / "anon_00002_.png").read_bytes() == PNG + b"anon_00002_.png"
    assert stdout.split() == [str(out / "faceanon" / "anon_00001_.png"), str(out / "faceanon" / "anon_00002_.png")]
    assert list(server.uploads) == ["face.png"] and PNG in server.uploads["face.png"]
    posted = server.prompts[0]
    assert posted["3"]["inputs"]["seed"] == 7 and posted["3"]["inputs"]["degree"] == 1.5
    assert posted["4"]["inputs"]["filename_prefix"] == "run1"
    assert posted["2"]["inputs"]["image"] == "face.png"
    assert (("GET", "/ws") in server.requests) == websocket
    assert server.client_ids[0]


def test_include_temp_downloads_previews_too(fake, capsys, tmp_path):
    server = fake("ok")
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--out", tmp_path / "o", "--include-temp",
                            "--no-websocket")
    assert code == 0, stderr
    assert "temp/ComfyUI_temp_00001_.png" in files_under(tmp_path / "o")


def test_existing_outputs_are_not_overwritten(fake, capsys, tmp_path):
    server = fake("ok")
    out = tmp_path / "out"
    (out / "faceanon").mkdir(parents=True)
    (out / "faceanon" / "anon_00002_.png").write_bytes(b"mine")
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--out", out, "--no-websocket")
    assert code == queue_client.EXIT_USAGE and "--overwrite" in stderr
    assert files_under(out) == ["faceanon/anon_00002_.png"]
    assert (out / "faceanon" / "anon_00002_.png").read_bytes() == b"mine"
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--out", out, "--no-websocket",
                            "--overwrite")
    assert code == 0, stderr
    assert (out / "faceanon" / "anon_00002_.png").read_bytes() != b"mine"


def test_validation_error_is_the_servers_message(fake, capsys, tmp_path):
    server = fake("invalid")
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--out", tmp_path / "out")
    assert code == queue_client.EXIT_REFUSED
    assert "refused" in stderr and "Prompt outputs failed validation" in stderr
    assert "node 3 (FaceAnon_Anonymize" in stderr and "'degree'" in stderr and "7.0 > 3.0" in stderr
    assert not (tmp_path / "out").exists()


def test_execution_error_is_the_servers_message(fake, capsys, tmp_path):
    server = fake("exec_error")
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--out", tmp_path / "out")
    assert code == queue_client.EXIT_FAILED
    assert "node 3 (FaceAnon_Anonymize) failed: ValueError: image: the batch is empty" in stderr
    assert not (tmp_path / "out").exists()


def test_server_down_is_a_clear_error(capsys, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    code, _, stderr = queue(capsys, api_file(), "--server", f"127.0.0.1:{port}", "--out", tmp_path / "out",
                            "--request-timeout", "3")
    assert code == queue_client.EXIT_CONNECTION
    assert "cannot reach the ComfyUI server" in stderr and str(port) in stderr
    assert not (tmp_path / "out").exists()


def test_connection_dropped_mid_run(fake, capsys, tmp_path):
    server = fake("drop_history", run_seconds=5)
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--out", tmp_path / "out", "--no-websocket",
                            "--request-timeout", "3")
    assert code == queue_client.EXIT_CONNECTION
    assert "lost the server while prompt" in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not HAS_WEBSOCKET, reason="websocket-client is not installed")
def test_websocket_dropped_falls_back_to_polling(fake, capsys, tmp_path):
    server = fake("drop_ws")
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--out", tmp_path / "out")
    assert code == 0, stderr
    assert len(files_under(tmp_path / "out")) == 2
    assert sum(1 for r in server.requests if r[1].startswith("/history/")) >= 1


def test_connection_dropped_mid_download_leaves_no_partial_files(fake, capsys, tmp_path):
    server = fake("drop_view")
    out = tmp_path / "out"
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--out", out, "--no-websocket",
                            "--request-timeout", "3")
    assert code == queue_client.EXIT_CONNECTION, stderr
    assert "anon_00002_.png" in stderr
    assert files_under(out) == []  # the first file was complete but is not kept either: all or nothing


def test_timeout_is_a_clear_error(fake, capsys, tmp_path):
    server = fake("never_ends")
    start = time.monotonic()
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--out", tmp_path / "out",
                            "--no-websocket", "--timeout", "0.5")
    assert code == queue_client.EXIT_CONNECTION and "did not finish in time" in stderr
    assert time.monotonic() - start < 10


def test_ui_format_is_refused_with_no_convert(fake, capsys, tmp_path):
    server = fake("ok")
    code, _, stderr = queue(capsys, WORKFLOWS / "anonymize_crop.json", "--server", server.url, "--out",
                            tmp_path / "out", "--no-convert")
    assert code == queue_client.EXIT_USAGE
    assert "UI-format" in stderr and "Export (API)" in stderr and "API format" in stderr
    assert server.requests == []


def test_ui_format_is_converted_exactly(fake, capsys, tmp_path, object_info):
    server = fake("ok", object_info=object_info)
    code, _, stderr = queue(capsys, WORKFLOWS / "anonymize_group_photo.json", "--server", server.url, "--out",
                            tmp_path / "out", "--no-websocket", "--set", "4.steps=5")
    assert code == 0, stderr
    expected = json.loads((WORKFLOWS_API / "anonymize_group_photo_api.json").read_text())
    expected["4"]["inputs"]["steps"] = 5
    assert server.prompts[0] == expected


def test_ui_format_that_cannot_be_converted_is_refused(fake, capsys, tmp_path, object_info):
    server = fake("ok", object_info=object_info)
    ui = json.loads((WORKFLOWS / "anonymize_crop.json").read_text())
    next(n for n in reversed(ui["nodes"]) if n["type"] != "Note")["mode"] = 4  # bypassed (a node, not the note)
    path = tmp_path / "bypassed.json"
    path.write_text(json.dumps(ui))
    code, _, stderr = queue(capsys, path, "--server", server.url, "--out", tmp_path / "out")
    assert code == queue_client.EXIT_USAGE
    assert "bypassed" in stderr and "Export (API)" in stderr
    assert server.prompts == []


def test_not_a_workflow(capsys, tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    code, _, stderr = queue(capsys, path, "--out", tmp_path / "out")
    assert code == queue_client.EXIT_USAGE and "not a ComfyUI workflow" in stderr
    path.write_text("{not json")
    code, _, stderr = queue(capsys, path, "--out", tmp_path / "out")
    assert code == queue_client.EXIT_USAGE and "not valid JSON" in stderr


@pytest.mark.parametrize("setting, message", [
    ("3.seed", "expected NODE.INPUT=VALUE"),
    ("seed=3", "expected NODE.INPUT before '='"),
    ("99.seed=1", "no node '99'"),
    ("3.nope=1", "has no input 'nope'"),
    ("3.image=x.png", "is connected to node 2"),
    ("3.seed=abc", "expected an integer"),
    ("3.degree=high", "expected a number"),
    ("FaceAnon_Nope.seed=1", "no node 'FaceAnon_Nope'"),
])
def test_set_errors_are_reported_before_anything_is_sent(fake, capsys, tmp_path, setting, message):
    server = fake("ok")
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--out", tmp_path / "out",
                            "--set", setting)
    assert code == queue_client.EXIT_USAGE
    assert message in stderr, stderr
    assert server.requests == []


def test_set_by_title_and_ambiguous_class_type():
    prompt = json.loads((WORKFLOWS_API / "degree_sweep_api.json").read_text())
    changed = queue_client.apply_sets(prompt, ["Face Anonymize d = 1.5.degree=1.75", "SaveImage.filename_prefix=x"])
    assert changed["7"]["inputs"]["degree"] == 1.75 and changed["12"]["inputs"]["filename_prefix"] == "x"
    assert prompt["7"]["inputs"]["degree"] == 1.5  # the original is untouched
    with pytest.raises(queue_client.QueueError, match="5 nodes have the class_type"):
        queue_client.apply_sets(prompt, ["FaceAnon_Anonymize.seed=1"])


def test_image_argument_errors(capsys, tmp_path):
    code, _, stderr = queue(capsys, api_file(), "--out", tmp_path / "out", "--image", f"face.png={tmp_path}/none")
    assert code == queue_client.EXIT_USAGE and "is not a file" in stderr
    code, _, stderr = queue(capsys, api_file(), "--out", tmp_path / "out", "--image", f"a/b.png={api_file()}")
    assert code == queue_client.EXIT_USAGE and "no folders" in stderr
