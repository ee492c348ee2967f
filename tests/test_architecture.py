"""The layout is the architecture: rooms of faceanon_core import one way, nodes/ stays thin, no cycles.

The import graph is read from the source (every ``import``, also the lazy ones inside functions), so a
new module that reaches up a level or across into another room's private names fails here.
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "faceanon_core"

#: room -> the rooms it may import (besides itself): today's graph, no wider. The method knows nothing of the
#: product around it; faces/, media/ and privacy/ handle a pipeline only through the object they are given.
ALLOWED = {
    "method": set(),
    "media": set(),
    "faces": set(),
    "privacy": {"faces", "media"},
    "client": set(),
    "testing": {"method"},
    "cli": {"client", "privacy", "faces", "media", "method"},
}
#: files longer than LONG_FILE_LINES, each with the reason it may be; everything else stays shorter.
LONG_FILE_LINES = 600
LONG_FILES = {
    "faceanon_core/faces/tracks.py": "split pending: what a track is and how tracks are found (issue 24), "
                                     "after the redaction-region work that is growing it lands",
}
#: top-level modules of faceanon_core that are not rooms (the public API and the moved-path table)
TOP_LEVEL = {"__init__", "_moved", "samples"}


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every import statement in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, [alias.name for alias in node.names]))
    return out


def core_modules() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if "__pycache__" not in p.parts)


def room_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "faceanon_core" or len(parts) < 2:
        return None
    return None if parts[1] in TOP_LEVEL else parts[1]


def test_every_module_lives_in_a_room():
    loose = [p.name for p in CORE.glob("*.py") if p.stem not in TOP_LEVEL]
    assert not loose, f"modules outside a room: {loose}"
    rooms = {p.parent.name for p in core_modules() if p.parent != CORE}
    assert rooms == set(ALLOWED), rooms


def test_rooms_import_one_way_only():
    bad = []
    for path in core_modules():
        here = room_of(module_name(path))
        if here is None:
            continue
        for target, _ in imports_of(path):
            there = room_of(target)
            reaches_cli = target.startswith("faceanon_core") and target.split(".")[1:2] == ["cli"] and here != "cli"
            if reaches_cli or (there and there != here and there not in ALLOWED[here]):
                bad.append(f"{module_name(path)} -> {target}")
    assert not bad, "imports against the direction of the rooms:\n" + "\n".join(bad)


def test_no_import_cycle_between_modules():
    graph: dict[str, set[str]] = {}
    names = {module_name(p) for p in core_modules()}
    for path in core_modules():
        src = module_name(path)
        deps = set()
        for target, imported in imports_of(path):
            for cand in [f"{target}.{n}" for n in imported] + [target]:
                if cand in names and cand != src and cand != "faceanon_core":
                    deps.add(cand)
                    break
        graph[src] = deps
    # A package's __init__ re-exporting its own modules is not a cycle of the design.
    def edges(m):
        return {d for d in graph.get(m, ()) if not d.startswith(m + ".")}

    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m, stack):
        state[m] = 1
        for d in edges(m):
            if state.get(d) == 1:
                cycle.extend(stack[stack.index(d):] + [d] if d in stack else [m, d])
                return True
            if state.get(d) is None and visit(d, stack + [d]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if state.get(m) is None and visit(m, [m]):
            break
    assert not cycle, " -> ".join(cycle)


def test_no_module_imports_another_modules_private_names():
    bad = []
    for path in list(core_modules()) + sorted((REPO / "nodes").rglob("*.py")) + sorted((REPO / "training").glob("*.py")):
        for target, imported in imports_of(path):
            for name in imported:
                if name.startswith("_") and not name.startswith("__") and "faceanon" in target + module_name(path):
                    bad.append(f"{module_name(path)}: from {target} import {name}")
    assert not bad, bad


def test_library_never_imports_comfyui_or_the_nodes():
    bad = []
    for path in core_modules():
        for target, _ in imports_of(path):
            top = target.split(".")[0]
            if top in {"comfy", "folder_paths", "comfy_api", "nodes", "server", "execution"}:
                bad.append(f"{module_name(path)} -> {target}")
    assert not bad, bad


COMFY_MODULES = {"comfy", "folder_paths", "comfy_api", "latent_preview", "nodes", "server", "execution"}
#: The backend room's modules that talk to ComfyUI (its models, sampler, patcher, loaders), each with the reason; every
#: other backend module imports no ComfyUI, so its unit tests run without the host.
BACKEND_ON_COMFYUI = {
    "faces": "ComfyUI's progress bar over the frames and its intermediate device for the outputs",
    "tracks": "ComfyUI's progress bar over the frames and its intermediate device for the outputs",
    "verify": "ComfyUI's intermediate device for the output frames",
    "encoding": "runs CLIP, the VAE and the ReferenceNet through ComfyUI's model management",
    "loading": "loads through comfy.sd and registers the model folder with folder_paths",
    "patching": "installs the attention on a ComfyUI MODEL (patcher wrappers, optimized_attention, memory estimate)",
    "sampling": "samples with comfy.sample and ComfyUI's latent previews",
}


def backend_modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted((REPO / "nodes" / "backend").glob("*.py")) if p.stem != "__init__"}


def test_the_backend_room_imports_no_comfyui_where_it_can():
    modules = backend_modules()
    assert set(BACKEND_ON_COMFYUI) <= set(modules), set(BACKEND_ON_COMFYUI) - set(modules)
    for name, path in modules.items():
        uses = sorted({t for t, _ in imports_of(path) if t.split(".")[0] in COMFY_MODULES and
                       not t.startswith("nodes.")})  # ComfyUI's own `nodes` is one module; nodes.* is ours
        if name in BACKEND_ON_COMFYUI:
            assert uses, f"nodes/backend/{name}.py imports no ComfyUI any more: remove it from BACKEND_ON_COMFYUI"
        else:
            assert not uses, f"nodes/backend/{name}.py imports {uses}: keep ComfyUI in the modules that need it"


def test_the_backend_room_never_imports_the_node_classes():
    """One way: node files -> backend -> faceanon_core. The backend knows no node class, socket or schema."""
    for name, path in backend_modules().items():
        for target, imported in imports_of(path):
            parts = target.split(".")
            inside_nodes = "nodes" in parts and "backend" not in parts
            assert not inside_nodes and "io" not in imported, f"nodes/backend/{name}.py imports {target} {imported}"


def test_the_allowed_imports_are_the_ones_in_use():
    """ALLOWED is today's graph: an allowance no module uses is a door left open, close it."""
    used: dict[str, set[str]] = {room: set() for room in ALLOWED}
    for path in core_modules():
        here = room_of(module_name(path))
        for target, _ in imports_of(path):
            there = room_of(target)
            if here and there and there != here:
                used[here].add(there)
    unused = {room: sorted(ALLOWED[room] - used[room]) for room in ALLOWED if ALLOWED[room] - used[room]}
    assert not unused, f"allowed but unused (remove from ALLOWED): {unused}"


def line_counts() -> dict[str, int]:
    files = list(core_modules()) + sorted((REPO / "nodes").rglob("*.py")) + sorted((REPO / "training").rglob("*.py"))
    return {path.relative_to(REPO).as_posix(): path.read_text().count("\n") for path in files
            if "__pycache__" not in path.parts}


def test_files_stay_small_unless_listed_with_a_reason():
    counts = line_counts()
    big = [f"{name}: {n} lines" for name, n in counts.items() if n > LONG_FILE_LINES and name not in LONG_FILES]
    assert not big, f"split these by job, or list them in LONG_FILES with the reason: {big}"
    stale = [name for name in LONG_FILES if counts.get(name, 0) <= LONG_FILE_LINES]
    assert not stale, f"no longer long (or gone): remove from LONG_FILES: {stale}"
    assert all(reason.strip() for reason in LONG_FILES.values())


def test_public_api_is_listed_once_and_importable():
    import faceanon_core

    for name in faceanon_core.__all__:
        assert getattr(faceanon_core, name) is not None, name
    from faceanon_core import FaceAnonPipeline, process_faces, redact_image  # noqa: F401


@pytest.mark.parametrize("old, new, attr", [
    ("faceanon_core.pipeline", "faceanon_core.method.pipeline", "FaceAnonPipeline"),
    ("faceanon_core.redact", "faceanon_core.faces.redact", "redact_image"),
    ("faceanon_core.states", "faceanon_core.method.states", "ReferenceStates"),
    ("faceanon_core.tiny_models", "faceanon_core.testing.tiny_models", "write_tiny_model_folder"),
])
def test_old_module_paths_still_import_with_a_deprecation_warning(old, new, attr):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert getattr(module, attr) is getattr(importlib.import_module(new), attr)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)


def test_old_faces_path_is_the_faces_room():
    from faceanon_core.faces import DetectedFace, MTCNNDetector, align_faces, paste_back, process_faces  # noqa: F401


def test_every_room_is_packaged_and_training_installs_under_our_name():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = set(config["tool"]["setuptools"]["packages"])
    rooms = {"faceanon_core"} | {f"faceanon_core.{p.parent.name}" for p in CORE.glob("*/__init__.py")}
    assert rooms | {"faceanon_training"} == packages
    assert "training" not in packages
    assert config["tool"]["setuptools"]["package-dir"] == {"faceanon_training": "training"}
    assert config["project"]["scripts"]["faceanon-train"] == "faceanon_training.cli:main"


def test_installed_trainer_is_faceanon_training_not_training(tmp_path):
    """Outside the checkout only ``faceanon_training`` exists; ``training`` is not installed."""
    code = ("import importlib.util as u; print(u.find_spec('faceanon_training') is not None, "
            "u.find_spec('training') is not None)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a checkout on the path has training/
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env=env)
    assert out.stdout.split() == ["True", "False"]


CORE_RULES = ("NEAR_LIMIT_FACTOR", "SMALLEST_DETECTABLE_FACE", "DEFAULT_TILE")


def test_the_nodes_define_no_rule_the_library_owns():
    """The near-limit rule (and its factor) lives in faceanon_core.faces.detect only: no second formula or copy in
    nodes/ (a copy drifted once: box width there, sqrt(area) here)."""
    offenders = []
    for path in sorted((REPO / "nodes").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in CORE_RULES
                                                    for t in node.targets):
                offenders.append(f"{path.name}:{node.lineno} assigns a core constant")
            if isinstance(node, ast.FunctionDef) and "near_limit" in node.name and "log" not in node.name:
                offenders.append(f"{path.name}:{node.lineno} defines {node.name}")
    assert offenders == []


def test_node_defaults_that_schemas_need_at_startup_equal_the_librarys():
    """DETECTOR_MIN_FACE and IDENTITY_MODES are needed while ComfyUI builds the schemas, where the nodes import no
    OpenCV (the library's modules that own them import it): these stay literal and must equal the library's."""
    sys.path.insert(0, str(REPO / "tests"))
    from node_stubs import load_node_modules

    from faceanon_core.faces.detect import DEFAULT_DETECTOR_MIN_FACE
    from faceanon_core.faces.video import IDENTITY_MODES

    nodes = load_node_modules("backend.faces", "backend.track_identity")
    assert nodes["backend.faces"].DETECTOR_MIN_FACE == DEFAULT_DETECTOR_MIN_FACE
    assert nodes["backend.track_identity"].IDENTITY_MODES == IDENTITY_MODES
