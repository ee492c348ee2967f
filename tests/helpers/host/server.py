"""Host-test helpers: a real ComfyUI server process, its base directory, test images."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np

HOST_DIR = Path(__file__).resolve().parent
REPO = HOST_DIR.parents[2]
# A test-only node pack: deterministic images in, float tensors out (no 8-bit PNG rounding). Its source is a
# .txt file, written into the test server's custom_nodes/ as __init__.py: ComfyUI-Manager's scanner reads every
# .py file of the repository for node ids, and these test nodes are not part of the pack
# (tests/nodes/test_front_door.py).
PROBE_PACK = (HOST_DIR / "probe_pack.txt").read_text(encoding="utf-8")


def test_images(count: int, seed: int, size: int = 64) -> np.ndarray:
    """Same images as the probe node (uint8), for the core pipeline."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(count, size // 8, size // 8, 3), dtype=np.uint8)
    return np.stack([np.kron(im, np.ones((8, 8, 1), dtype=np.uint8)) for im in small])


test_images.__test__ = False  # not a test


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    """``main.py`` started as a user would: ``--cpu``, loopback only, a throwaway ``--base-directory``,
    an in-memory database. Its own process group, so ``stop`` ends it and anything it started; ``stop``
    runs also when the start fails, and at interpreter exit as a backstop (fixtures call it on teardown,
    whatever the tests did). Usable as a context manager."""

    def __init__(self, base: Path, extra_args=(), name="server", cpu: bool = True, python: str | None = None,
                 env: dict | None = None):
        self.base = base
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / f"{name}.log"
        python = python or os.environ.get("COMFYUI_PYTHON", sys.executable)  # python=: another environment
        cmd = [python, "main.py", *(["--cpu"] if cpu else []), "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(base), "--database-url", "sqlite:///:memory:", *extra_args]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - the server writes it until stop() closes it
        self.proc = subprocess.Popen(cmd, cwd=os.environ["COMFYUI_PATH"], stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        atexit.register(self.stop)
        try:
            self._wait_ready(180)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, seconds: float) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not start in {seconds:.0f} s:\n{self.log()[-4000:]}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue an API-format prompt, wait for it, return its /history entry."""
        status, answer = self.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
        if status != 200:
            raise AssertionError(f"/prompt refused the prompt ({status}): {json.dumps(answer)[:2000]}")
        pid = answer["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{pid}")
            state = history[pid].get("status", {}) if pid in history else {}
            if state.get("completed") is not None and state.get("status_str") in ("success", "error"):
                return history[pid]
            time.sleep(0.25)
        raise AssertionError(f"prompt {pid} did not finish in {timeout} s:\n{self.log()[-3000:]}")

    def stop(self):
        """SIGTERM to the server's process group, SIGKILL after 30 s; fails if a process of it survives."""
        atexit.unregister(self.stop)
        stop_process_group(self.proc, grace=30)
        if not self._log.closed:
            self._log.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """End a child started with ``start_new_session=True`` and every process in its group; raise if any stays."""
    pgid = proc.pid  # a new session's leader: its pid is the group id
    if proc.poll() is None or _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        deadline = time.time() + 5
        while _group_alive(pgid) and time.time() < deadline:
            time.sleep(0.1)
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while _group_alive(pgid) and time.time() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        raise RuntimeError(f"process group {pgid} ({proc.args[0]}) still has processes after SIGKILL")


def error_message(entry: dict) -> str | None:
    for event, data in entry.get("status", {}).get("messages", []):
        if event == "execution_error":
            return f"{data.get('exception_type')}: {data.get('exception_message')}"
    return None


def make_base(root: Path) -> Path:
    """A ComfyUI base directory: this pack and the probe pack in custom_nodes/, tiny models in models/."""
    from helpers.host.tiny_folder import write_host_model_folder

    (root / "custom_nodes").mkdir(parents=True)
    (root / "custom_nodes" / "ComfyUI-FaceAnon").symlink_to(REPO, target_is_directory=True)
    probe = root / "custom_nodes" / "faceanon_test_probe"
    probe.mkdir()
    (probe / "__init__.py").write_text(PROBE_PACK)
    for sub in ("checkpoints", "vae", "clip_vision", "faceanon"):
        (root / "models" / sub).mkdir(parents=True, exist_ok=True)
    write_host_model_folder(root / "models" / "faceanon" / "tiny", seed=0)
    broken = root / "models" / "faceanon" / "broken"
    (broken / "unet").mkdir(parents=True)
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (broken / "unet" / name).write_bytes((root / "models" / "faceanon" / "tiny" / "unet" / name).read_bytes())
    return root
