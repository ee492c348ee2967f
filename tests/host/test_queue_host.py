"""``faceanon queue`` against a real ComfyUI server: shared-server safety, typed ``--set``, folders with resume.

Set COMFYUI_PATH to a ComfyUI checkout and COMFYUI_PYTHON to the interpreter of its environment
(default: this interpreter); without COMFYUI_PATH every test here is skipped (in CI, where
``ci_policy`` allows only GPU skips, that is a failure). The command runs as a user runs it: a
separate process (``python -m faceanon_core.cli queue``), against ``main.py --cpu``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceanon_core.client import apply_sets
from helpers.host.server import REPO

pytestmark = pytest.mark.host

# the shipped API-format files (*_api.json): the one place that names their folder
API_WORKFLOWS = REPO / "workflows" / "api"


def api_workflow(name: str) -> Path:
    return API_WORKFLOWS / f"{name}_api.json"


def faceanon_queue(*args, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "faceanon_core.cli", "queue", *map(str, args), "--no-progress"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def photo(seed: int, size: tuple[int, int]) -> np.ndarray:
    """A real face photo (public domain), shifted and resized so that each seed gives different pixels."""
    from skimage import data

    image = np.roll(data.astronaut(), seed * 7, axis=1)
    return np.asarray(Image.fromarray(image).resize(size))


def busy(server, size: int = 2400) -> None:
    """Queue a slow redact run (a large photo) so that the next prompts wait in the server's queue."""
    big = server.base / "input" / "busy.png"
    big.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo(0, (size, size))).save(big)
    prompt = json.loads(api_workflow("redact_faces").read_text())
    prompt["1"]["inputs"]["image"] = "busy.png"
    status, answer = server.post("/prompt", {"prompt": prompt})
    assert status == 200, answer


def history_ids(server) -> set:
    return set(server.get("/history?max_items=100000"))


def test_two_clients_at_once_each_get_their_own_photo_and_no_photo_stays_under_a_guessable_name(server, tmp_path):
    photos = {"a": photo(1, (320, 256)), "b": photo(2, (256, 352))}  # different sizes: a mix-up cannot hide
    for key, pixels in photos.items():
        Image.fromarray(pixels).save(tmp_path / f"{key}.png")
    busy(server)
    procs = {key: faceanon_queue(api_workflow("redact_faces"), "--server", server.url, "--image",
                                 f"group.jpg={tmp_path / f'{key}.png'}", "--out", tmp_path / f"out_{key}",
                                 "--poll-interval", "0.2")
             for key in photos}
    for key, proc in procs.items():
        code, _, err = finish(proc)
        assert code == 0, err
        files = sorted((tmp_path / f"out_{key}").rglob("*.png"))
        assert len(files) == 1, files
        got = np.asarray(Image.open(files[0]).convert("RGB"))
        assert got.shape == photos[key].shape, (key, got.shape)  # its own photo, not the other client's
    input_dir = server.base / "input"
    assert not (input_dir / "group.jpg").exists()  # no upload under the workflow's fixed name
    assert sorted(p.name for p in input_dir.iterdir() if p.is_file()) == ["busy.png"]
    listed = server.get("/object_info/LoadImage")["LoadImage"]["input"]["required"]["image"][0]
    assert listed == ["busy.png"]  # the uploads are not offered to every user of the server
    with pytest.raises(urllib.error.HTTPError):
        server.get("/view?filename=group.jpg&type=input")
    # the uploads sit in a random per-run folder each (128 random bits), unguessable
    runs = sorted((input_dir / "faceanon-queue").iterdir())
    assert len(runs) == 2 and all(len(r.name) == 32 for r in runs)


def shipped_float_inputs_written_as_whole_numbers(object_info) -> list[tuple[Path, str, str, float]]:
    found = []
    for path in sorted(API_WORKFLOWS.glob("*_api.json")):
        prompt = json.loads(path.read_text())
        for node_id, node in prompt.items():
            specs = {**object_info[node["class_type"]]["input"].get("required", {}),
                     **object_info[node["class_type"]]["input"].get("optional", {})}
            for name, value in node["inputs"].items():
                spec = specs.get(name)
                if spec and spec[0] == "FLOAT" and isinstance(value, int) and not isinstance(value, bool):
                    opts = spec[1] if len(spec) > 1 else {}
                    decimal = value + 0.5 if value + 0.5 <= opts.get("max", float("inf")) else value - 0.5
                    found.append((path, node_id, name, decimal))
    return found


def test_set_decimal_on_every_whole_number_float_and_bad_value_refused_in_the_servers_words(server, tmp_path):
    object_info = server.get("/object_info")
    floats = shipped_float_inputs_written_as_whole_numbers(object_info)
    assert len(floats) >= 20, floats  # the issue counted 31 across the shipped files
    for path, node_id, name, decimal in floats:
        prompt = json.loads(path.read_text())
        changed = apply_sets(prompt, [f"{node_id}.{name}={decimal}"], object_info)
        assert changed[node_id]["inputs"][name] == decimal and isinstance(changed[node_id]["inputs"][name], float)
    # one of them end to end on the server: redact's whole-number strength set to a decimal
    Image.fromarray(photo(3, (256, 256))).save(tmp_path / "p.png")
    code, _, err = finish(faceanon_queue(api_workflow("redact_faces"), "--server", server.url, "--image",
                                           f"group.jpg={tmp_path / 'p.png'}", "--set", "2.strength=0.5",
                                           "--out", tmp_path / "ok", "--poll-interval", "0.2"))
    assert code == 0, err
    # a bad value: refused before anything is queued, in the words the server uses for it
    bad = json.loads(api_workflow("redact_faces").read_text())
    bad["2"]["inputs"]["threshold"] = 5.0
    bad["1"]["inputs"]["image"] = "busy.png" if (server.base / "input" / "busy.png").exists() else "x.png"
    before = history_ids(server)
    code, _, err = finish(faceanon_queue(api_workflow("redact_faces"), "--server", server.url, "--image",
                                           f"group.jpg={tmp_path / 'p.png'}", "--set", "2.threshold=5",
                                           "--out", tmp_path / "bad"))
    assert code == 2, err
    assert history_ids(server) == before and server.get("/queue")["queue_pending"] == []
    status, answer = server.post("/prompt", {"prompt": bad})  # what the server itself says (and refuses)
    assert status == 400
    words = answer["node_errors"]["2"]["errors"][0]["message"]
    assert words.startswith("Value 5.0 bigger than max of") and words in err, (words, err)


def test_folder_of_20_killed_halfway_and_resumed(server, tmp_path):
    inputs = tmp_path / "photos"
    inputs.mkdir()
    for index in range(20):
        Image.fromarray(photo(10 + index, (192, 192))).save(inputs / f"p{index:02d}.png")
    out = tmp_path / "out"
    manifest = out / "manifest.jsonl"
    args = (api_workflow("redact_faces"), "--server", server.url, "--inputs", inputs, "--image-node", "Load photo",
            "--out", out, "--max-in-flight", "2", "--poll-interval", "0.1")
    before = history_ids(server)
    proc = faceanon_queue(*args)
    deadline = time.time() + 300
    done_before = {}
    while time.time() < deadline:
        if manifest.exists():
            records = [json.loads(line) for line in manifest.read_text().splitlines()]
            done_before = {r["input"]: r["prompt_id"] for r in records if r["status"] == "done"}
            if len(done_before) >= 8:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert 8 <= len(done_before) < 20, done_before
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    done_at_kill = {r["input"]: r["prompt_id"] for r in records if r["status"] == "done"}
    code, _, err = finish(faceanon_queue(*args))
    assert code == 0, err
    lines = manifest.read_text().splitlines()
    assert len(lines) == 20
    records = [json.loads(line) for line in lines]
    assert sorted(r["input"] for r in records) == [f"p{i:02d}.png" for i in range(20)]
    assert all(r["status"] == "done" for r in records)
    for record in records:  # one output per input, in its own folder, the size of its own input
        files = sorted((out / Path(record["input"]).stem).rglob("*.png"))
        assert [str(f.relative_to(out)) for f in files] == record["outputs"]
        assert len(files) == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".faceanon-")]  # no staging left
    final = {r["input"]: r["prompt_id"] for r in records}
    assert all(final[key] == pid for key, pid in done_at_kill.items())  # nothing finished was run again
    new_prompts = history_ids(server) - before
    assert new_prompts == set(final.values())  # exactly 20 runs on the server: nothing requeued that it had
