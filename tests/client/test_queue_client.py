"""``faceanon queue`` against a small fake ComfyUI server (http.server on 127.0.0.1, a free port).

The fake speaks the parts of ComfyUI's API the client uses: /object_info, /upload/image, /prompt,
/history/<id>, /view and the /ws websocket (a hand-written RFC 6455 handshake and text frames).
Scenarios: success (websocket and polling), validation error, execution error, server down, a
connection dropped mid-run and mid-download, a timeout, UI-format files, --set errors.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import importlib.util
import json
import re
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from faceanon_core import client as queue_client
from faceanon_core.cli import main
from helpers.workflows import WORKFLOWS, WORKFLOWS_API, load_core, our_object_info

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
        self.uploads: dict[str, bytes] = {}  # "subfolder/name" -> bytes
        self.upload_fields: list[dict] = []
        self.queued_at: dict[str, float] = {}
        self.client_ids: list[str] = []
        self.headers_seen: list[tuple[str, dict]] = []
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
                fake.headers_seen.append((path, dict(self.headers)))
                if path == "/object_info":
                    return self._send(200, fake.object_info)
                if path == "/ws":
                    return fake.websocket(self, query)
                if path == "/queue":
                    return self._send(200, {"queue_running": [], "queue_pending": [
                        [0, pid, {}, {}, []] for pid in fake.queued_at if not fake.finished(pid)]})
                if path.startswith("/history/"):
                    return fake.history(self, path.split("/")[-1])
                if path == "/view":
                    return fake.view(self, query)
                return self._send(404, {"error": "not found"})

            def do_POST(self):  # noqa: N802
                fake.requests.append(("POST", self.path))
                fake.headers_seen.append((self.path, dict(self.headers)))
                body = self._body()
                if self.path == "/upload/image":
                    return fake.upload(self, body)
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

    def upload(self, handler, body):
        """multipart/form-data as ComfyUI reads it: image, overwrite, type, subfolder; a taken name gets ' (1)'."""
        boundary = handler.headers["Content-Type"].split("boundary=")[1].encode()
        fields, content, name = {}, b"", ""
        for part in body.split(b"--" + boundary)[1:-1]:
            head, _, data = part.partition(b"\r\n\r\n")
            data = data[:-2]
            field = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
            if b'filename="' in head:
                name, content = head.split(b'filename="', 1)[1].split(b'"', 1)[0].decode(), data
            else:
                fields[field] = data.decode()
        self.upload_fields.append(fields)
        subfolder = fields.get("subfolder", "")
        stored, number = name, 1
        while f"{subfolder}/{stored}" in self.uploads and fields.get("overwrite") not in ("true", "1"):
            stem, dot, ext = name.rpartition(".")
            stored = f"{stem} ({number}).{ext}"
            number += 1
        self.uploads[f"{subfolder}/{stored}"] = content
        return handler._send(200, {"name": stored, "subfolder": subfolder, "type": "input"})

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
        prompt_id = body.get("prompt_id") or str(uuid.uuid4())
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
    [stored] = server.uploads
    assert server.uploads[stored] == PNG
    run_folder, _, name = stored.rpartition("/")
    assert name == "face.png" and re.fullmatch(r"faceanon-queue/[0-9a-f]{32}", run_folder)  # random, per run
    assert server.upload_fields[0]["overwrite"] == "false"  # never over a file on the server
    posted = server.prompts[0]
    assert posted["3"]["inputs"]["seed"] == 7 and posted["3"]["inputs"]["degree"] == 1.5
    assert posted["4"]["inputs"]["filename_prefix"] == f"{run_folder}/run1"
    assert posted["2"]["inputs"]["image"] == stored
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
    assert code == queue_client.EXIT_USAGE  # before any work: 2 in the table of every subcommand
    assert "cannot reach the ComfyUI server" in stderr and str(port) in stderr
    assert not (tmp_path / "out").exists()


def test_connection_dropped_mid_run(fake, capsys, tmp_path):
    server = fake("drop_history", run_seconds=5)
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--out", tmp_path / "out", "--no-websocket",
                            "--request-timeout", "3")
    assert code == queue_client.EXIT_FAILED
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
    assert code == queue_client.EXIT_FAILED, stderr
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
    run_folder = server.prompts[0]["6"]["inputs"]["filename_prefix"].split("/faceanon/")[0]
    for node in ("6", "8"):  # the outputs are written in the run's own random folder
        expected[node]["inputs"]["filename_prefix"] = f"{run_folder}/{expected[node]['inputs']['filename_prefix']}"
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
    ("FaceAnon_Nope.seed=1", "no node 'FaceAnon_Nope'"),
])
def test_set_errors_are_reported_before_anything_is_sent(fake, capsys, tmp_path, setting, message):
    server = fake("ok")
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--out", tmp_path / "out",
                            "--set", setting)
    assert code == queue_client.EXIT_USAGE
    assert message in stderr, stderr
    assert server.requests == []


@pytest.mark.parametrize("setting, message", [
    ("3.seed=abc", "Failed to convert an input value to a INT value: seed, abc, could not convert string to float"),
    ("3.seed=4.5", "Failed to convert an input value to a INT value: seed, 4.5"),
    ("3.degree=high", "Failed to convert an input value to a FLOAT value: degree, high"),
    ("3.degree=-1", "Value -1.0 smaller than min of 0.0: degree"),
    ("3.steps=0", "Value 0 smaller than min of 1: steps"),
])
def test_bad_values_are_refused_in_the_servers_words_before_queueing(fake, capsys, tmp_path, object_info,
                                                                     setting, message):
    server = fake("ok", object_info=object_info)
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--out", tmp_path / "out",
                            "--set", setting)
    assert code == queue_client.EXIT_USAGE
    assert message in stderr, stderr
    assert server.requests == [("GET", "/object_info")]  # nothing uploaded, nothing queued


def test_set_is_typed_by_the_server_not_by_the_json_value(object_info):
    prompt = json.loads(api_file().read_text())
    prompt["3"]["inputs"]["degree"] = 1  # a float input written as a whole number, as 31 shipped inputs are
    changed = queue_client.apply_sets(prompt, ["3.degree=1.3", "3.seed=7"], object_info)
    assert changed["3"]["inputs"]["degree"] == 1.3 and changed["3"]["inputs"]["seed"] == 7
    assert isinstance(changed["3"]["inputs"]["seed"], int)
    with pytest.raises(queue_client.QueueError, match="expected an integer"):  # offline: typed by the JSON value
        queue_client.apply_sets(prompt, ["3.degree=1.3"])
    combo = {"X": {"input": {"required": {"mode": [["blur", "pixelate"], {}], "on": ["BOOLEAN", {}]}}}}
    graph = {"1": {"class_type": "X", "inputs": {"mode": "blur", "on": False}}}
    assert queue_client.apply_sets(graph, ["1.mode=pixelate", "1.on=true"], combo)["1"]["inputs"] == {
        "mode": "pixelate", "on": True}
    refused = r"Value not in list: mode: 'solid' not in \['blur', 'pixelate'\]"
    with pytest.raises(queue_client.QueueError, match=refused):
        queue_client.apply_sets(graph, ["1.mode=solid"], combo)


def test_set_may_name_a_file_this_run_uploads(object_info):
    """--image NAME=PATH uploads NAME; --set LOADER.image=NAME must not be refused for not being on the
    server's list yet (the loader is rewritten to the uploaded file), but other names still are."""
    prompt = json.loads(api_file().read_text())
    changed = queue_client.apply_sets(prompt, ["2.image=queue_face.png"], object_info,
                                      uploading=frozenset({"queue_face.png"}))
    assert changed["2"]["inputs"]["image"] == "queue_face.png"
    with pytest.raises(queue_client.QueueError, match="Value not in list: image: 'other.png'"):
        queue_client.apply_sets(prompt, ["2.image=other.png"], object_info, uploading=frozenset({"queue_face.png"}))


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


# ------------------------------------------------------------------ headers, folders


def test_headers_go_with_every_request_and_the_websocket(fake, capsys, tmp_path, monkeypatch):
    server = fake("ok")
    monkeypatch.setenv("FACEANON_QUEUE_HEADERS", "Authorization: Bearer from-env\n")
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--out", tmp_path / "out",
                            "--header", "X-Team: faces", *([] if HAS_WEBSOCKET else ["--no-websocket"]))
    assert code == 0, stderr
    paths = {path for path, _ in server.headers_seen}
    assert {"/object_info", "/prompt", "/view"} <= paths and (not HAS_WEBSOCKET or "/ws" in paths)
    for path, headers in server.headers_seen:
        assert headers.get("Authorization") == "Bearer from-env" and headers.get("X-Team") == "faces", path
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--out", tmp_path / "o2",
                            "--header", "no colon here")
    assert code == queue_client.EXIT_USAGE and "expected 'Name: value'" in stderr


def photos(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for index in range(count):
        (folder / f"p{index}.png").write_bytes(PNG + bytes([index]))
    return folder


def manifest_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_folder_runs_each_input_once_and_writes_one_manifest_line_each(fake, capsys, tmp_path):
    server = fake("ok", run_seconds=0.1)
    out = tmp_path / "out"
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--inputs", photos(tmp_path / "in", 3),
                            "--image-node", "2", "--out", out, "--max-in-flight", "2")
    assert code == 0, stderr
    records = manifest_records(out)
    assert [r["input"] for r in records] == ["p0.png", "p1.png", "p2.png"]
    assert all(r["status"] == "done" and r["error"] is None for r in records)
    assert records[0]["outputs"] == ["p0/faceanon/anon_00001_.png", "p0/faceanon/anon_00002_.png"]
    assert files_under(out) == sorted(["manifest.jsonl"] + [o for r in records for o in r["outputs"]])
    assert sorted(server.queued_at) == sorted(r["prompt_id"] for r in records)  # the ids chosen here were used
    for record in records:  # each run read its own upload, from its own random folder
        posted = server.prompts[list(server.queued_at).index(record["prompt_id"])]
        assert server.uploads[posted["2"]["inputs"]["image"]] == PNG + bytes([int(record["input"][1])])
    assert len({p["2"]["inputs"]["image"].rsplit("/", 1)[0] for p in server.prompts}) == 3
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--inputs", tmp_path / "in",
                            "--image-node", "2", "--out", out)
    assert code == 0 and len(server.prompts) == 3  # a second run skips what is done


def test_resume_collects_finished_runs_and_requeues_only_those_the_server_never_got(fake, capsys, tmp_path):
    server = fake("ok", run_seconds=0.1)
    out = tmp_path / "out"
    args = [api_file(), "--server", server.url, "--inputs", photos(tmp_path / "in", 3), "--image-node", "2",
            "--out", out]
    assert queue(capsys, *args)[0] == 0
    records = manifest_records(out)
    # as a kill -9 leaves it: p1 queued and finished on the server, p2 queued but never sent, no outputs
    records[1].update(status="queued", outputs=[])
    records[2].update(status="queued", outputs=[], prompt_id="never-sent")
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for name in ("p1", "p2"):
        for file in (out / name).rglob("*"):
            file.unlink() if file.is_file() else None
    kept = records[1]["prompt_id"]
    code, _, stderr = queue(capsys, *args)
    assert code == 0, stderr
    after = manifest_records(out)
    assert len(after) == 3 and all(r["status"] == "done" for r in after)
    assert after[1]["prompt_id"] == kept and after[2]["prompt_id"] != "never-sent"
    assert len(server.prompts) == 4  # 3 + only the one the server never got
    assert (out / "p1" / "faceanon" / "anon_00001_.png").exists()


def test_folder_failures_are_recorded_with_the_servers_text_and_exit_1(fake, capsys, tmp_path):
    server = fake("exec_error", run_seconds=0.05)
    out = tmp_path / "out"
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--inputs", photos(tmp_path / "in", 2),
                            "--image-node", "Load aligned face crop (512x512)", "--out", out)
    assert code == queue_client.EXIT_FAILED
    records = manifest_records(out)
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert "the batch is empty (no images or no faces)" in records[0]["error"]
    assert files_under(out) == ["manifest.jsonl"]


def test_folder_refused_workflow_is_exit_2_and_usage_errors_before_any_request(fake, capsys, tmp_path):
    server = fake("invalid")
    code, _, stderr = queue(capsys, api_file(), "--server", server.url, "--inputs", photos(tmp_path / "in", 2),
                            "--image-node", "2", "--out", tmp_path / "out")
    assert code == queue_client.EXIT_USAGE and "Value bigger than max" in stderr
    assert len(server.prompts) == 1  # stopped at the first refusal
    other = fake("ok")
    code, _, stderr = queue(capsys, api_file(), "--server", other.url, "--inputs", tmp_path / "in",
                            "--out", tmp_path / "o2")
    assert code == queue_client.EXIT_USAGE and "--image-node" in stderr and other.requests == []
    code, _, stderr = queue(capsys, api_file(), "--server", other.url, "--inputs", tmp_path / "in",
                            "--image-node", "3", "--out", tmp_path / "o2")
    assert code == queue_client.EXIT_USAGE and "no file-name input" in stderr


def test_several_servers_share_a_folder(fake, capsys, tmp_path):
    first, second = fake("ok", run_seconds=0.2), fake("ok", run_seconds=0.2)
    out = tmp_path / "out"
    code, _, stderr = queue(capsys, api_file(), "--server", first.url, "--server", second.url, "--inputs",
                            photos(tmp_path / "in", 4), "--image-node", "2", "--out", out, "--max-in-flight", "1")
    assert code == 0, stderr
    assert len(first.prompts) == 2 and len(second.prompts) == 2
    assert {r["server"] for r in manifest_records(out)} == {first.url, second.url}


def test_sigterm_ends_a_folder_with_130_and_the_same_command_resumes_it(fake, capsys, tmp_path):
    import os
    import signal

    server = fake("never_ends")
    out = tmp_path / "out"
    args = [api_file(), "--server", server.url, "--inputs", photos(tmp_path / "in", 3), "--image-node", "2",
            "--out", out, "--max-in-flight", "2"]
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    code, _, stderr = queue(capsys, *args)
    timer.join()
    assert code == queue_client.EXIT_INTERRUPTED, stderr
    assert [r["status"] for r in manifest_records(out)] == ["queued", "queued", "pending"]
    server.scenario = "ok"  # the server finishes the two runs it has
    code, _, stderr = queue(capsys, *args)
    assert code == 0, stderr
    assert len(server.prompts) == 3 and all(r["status"] == "done" for r in manifest_records(out))
