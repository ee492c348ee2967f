"""stop_process_group: what the host tests start (ComfyUI, Chromium) ends with every process it started,
even one that ignores SIGTERM (no ComfyUI needed: a shell stands in for the server)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from helpers.host.server import stop_process_group


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its new parent) is gone for our purpose
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_the_whole_group_is_stopped_even_when_it_ignores_sigterm(tmp_path):
    pids = tmp_path / "pids"
    script = f'trap "" TERM; sleep 300 & echo $! > {pids}; sleep 300 & wait'
    proc = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    deadline = time.time() + 10
    while not (pids.exists() and pids.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    child = int(pids.read_text())
    assert _alive(child)
    stop_process_group(proc, grace=1)
    assert proc.returncode is not None
    assert not _alive(child), "a process the server started outlived stop()"
