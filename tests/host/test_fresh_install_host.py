"""The pack installed the way ComfyUI users install it, on a fresh host (COMFYUI_PATH + COMFYUI_FRESH_PYTHON).

The CI host (``.ci/host-env``) has the pack installed editable with extras, which would hide a runtime
dependency missing from ``requirements.txt``. Here the server runs on a NEW virtual environment built by
``.ci/fresh-host``: torch/torchvision and ComfyUI's requirements as its README says, then only
``pip install -r requirements.txt`` of this pack. The pack goes into ``custom_nodes/`` as a clone puts it
there: the files git tracks (their working-tree content), no egg-info, no caches, no untracked module.
On that server the redaction workflow runs without any model folder, then, with the tiny random-weight
model folder in the published layout, every shipped workflow runs, and the log shows no import error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.host import workflow as wh
from helpers.host.outputs import EXPECTED, check_outputs  # (the shipped workflows' outputs)

HOST_DIR = Path(__file__).resolve().parent

pytestmark = pytest.mark.host

REPO = HOST_DIR.parents[1]
PACK = "ComfyUI-FaceAnon"
TORCH = "2.14.1"  # what .ci/fresh-host installs first, as ComfyUI's README says
# What a broken install prints: ComfyUI's own lines for a pack that fails to import, Python's import errors,
# and the pack's own refusal to register its nodes.
IMPORT_ERRORS = ("IMPORT FAILED", "Cannot import", "No module named", "ModuleNotFoundError", "ImportError",
                 "nodes NOT loaded")
# Not installed by `pip install -r requirements.txt`: the test and verify extras and the pack itself.
NOT_INSTALLED = ("faceanon_core", "pytest", "face_recognition")


def fresh_python_or_skip() -> str:
    python = os.environ.get("COMFYUI_FRESH_PYTHON")
    if not python:
        pytest.skip("COMFYUI_FRESH_PYTHON is not set: build the fresh host with "
                    "`eval \"$(bash .ci/fresh-host /tmp/freshhost)\"` (a new venv with ComfyUI's requirements and "
                    "only this pack's requirements.txt; needs COMFYUI_PATH)")
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        pytest.fail(f"COMFYUI_FRESH_PYTHON={python} is not an executable; rebuild it with .ci/fresh-host DIR")
    return python


def place_as_cloned(dest: Path) -> list[str]:
    """Copy the pack to ``dest`` as ``git clone`` would have it: the tracked files only (their working-tree
    content, so an uncommitted edit is tested too; a module never added to git is not there). Returns the
    relative paths. Without git metadata (an exported tree) the tree is copied minus what .gitignore names."""
    try:
        listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached"], check=True,
                                capture_output=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(
            ".git", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".venv", ".pytest_cache", "outputs",
            "cache"))
        return sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    files = [name for name in listed if name and (REPO / name).is_file()]  # a deleted, uncommitted file: gone
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    return files


@pytest.fixture(scope="module")
def fresh_python():
    return fresh_python_or_skip()


@pytest.fixture(scope="module")
def base(tmp_path_factory, fresh_python):
    root = tmp_path_factory.mktemp("fresh_base")
    files = place_as_cloned(root / "custom_nodes" / PACK)
    assert "requirements.txt" in files and "__init__.py" in files
    assert not any(".egg-info" in f or "__pycache__" in f for f in files)
    wh.write_inputs(root / "input")
    return root


@pytest.fixture(scope="module")
def server_options(fresh_python):
    """The fresh venv's Python, without this run's Python settings (the conftest's ``server`` uses them)."""
    return {"python": fresh_python, "env": clean_env()}


def clean_env() -> dict:
    """The environment without the test run's Python settings: PYTHONPATH=<checkout> (how contributors run
    the host tests) would let the fresh host import this checkout's faceanon_core and hide a broken import."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


def run_python(python: str, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-c", code], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          timeout=300)


def test_the_fresh_host_has_only_what_a_user_installs(fresh_python, tmp_path):
    """Not the CI host under another name: no editable pack, no test/verify extras, ComfyUI's torch kept."""
    for module in NOT_INSTALLED:
        found = run_python(fresh_python, f"import importlib.util as u; print(u.find_spec({module!r}) is not None)",
                           tmp_path)
        assert found.stdout.strip() == "False", (
            f"{module} is importable in COMFYUI_FRESH_PYTHON ({fresh_python}): not a fresh host; rebuild it with "
            f".ci/fresh-host DIR\n{found.stderr}")
    torch = run_python(fresh_python, "import torch; print(torch.__version__)", tmp_path)
    assert torch.stdout.strip().split("+")[0] == TORCH, (
        f"pip install -r requirements.txt changed ComfyUI's torch {TORCH} to {torch.stdout.strip()} "
        f"{torch.stderr[-2000:]}")


def test_the_pack_loads_without_an_import_error(server):
    from helpers.workflows import our_object_info

    log = server.log()
    bad = [line for line in log.splitlines() if any(marker in line for marker in IMPORT_ERRORS)]
    assert bad == [], "the pack failed to import on the fresh host:\n" + "\n".join(bad) + "\n\n" + log[-4000:]
    served = server.get("/object_info")
    missing = sorted(set(our_object_info()) - set(served))
    assert missing == [], f"node types not registered on the fresh host: {missing}\n{log[-4000:]}"


def test_redaction_runs_without_any_model_folder(server, base):
    """Redaction needs no diffusion weights: it runs before a model folder exists."""
    assert not (base / "models" / "faceanon").exists()
    entry = server.run(wh.tiny_settings(wh.load_json(wh.WORKFLOWS_API / "redact_faces_api.json")), timeout=600)
    check_outputs(server, base, entry, EXPECTED["redact_faces"])
    written = sorted(p.name for p in (base / "output").rglob("*.png"))
    assert len(written) == 1, written  # the redacted photo (the mask is a temp preview)


@pytest.fixture(scope="module")
def model_server(server, base):
    wh.write_model_folder(base)  # the tiny model folder, in the published layout, where users put theirs
    return server


@pytest.mark.parametrize("name", [n for n in wh.workflow_names() if n != "redact_faces"])
def test_shipped_workflow_runs_on_the_fresh_host(model_server, base, name):
    entry = model_server.run(wh.tiny_settings(wh.load_json(wh.WORKFLOWS_API / f"{name}_api.json")), timeout=600)
    check_outputs(model_server, base, entry, EXPECTED[name])


def test_the_log_has_no_import_error_after_the_runs(model_server):
    """Nodes import OpenCV, diffusers, scipy when they first run: a missing one shows only now."""
    log = model_server.log()
    bad = [line for line in log.splitlines() if any(marker in line for marker in IMPORT_ERRORS)]
    assert bad == [], "an import failed on the fresh host:\n" + "\n".join(bad)
