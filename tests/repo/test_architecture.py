"""The layout is the architecture: rooms of faceanon_core import one way, nodes/ stays thin, no cycles.

The import graph is read from the source (every ``import``, also the lazy ones inside functions), so a
new module that reaches up a level or across into another room's private names fails here.
"""

from __future__ import annotations

import ast
import collections
import importlib
import importlib.util
import os
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "faceanon_core"

#: room -> the rooms it may import (besides itself): exactly today's graph (a new cross-room import fails
#: test_rooms_import_one_way_only, an allowance no module uses fails test_the_allowed_imports_are_the_ones_in_use).
#: The method knows nothing of the product around it; faces/, media/ and privacy/ handle a pipeline only through
#: the object they are given.
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
LONG_FILES: dict[str, str] = {}
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
    assert not bad, ("imports against the direction of the rooms (ALLOWED says which rooms each room may import; "
                     "move the code, or widen ALLOWED with the reason):\n" + "\n".join(bad))


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
    product = sorted((REPO / "nodes").rglob("*.py")) + sorted((REPO / "training").glob("*.py"))
    for path in list(core_modules()) + product:
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
NODES = REPO / "nodes"
BACKEND = NODES / "backend"
#: The backend room's modules that reach ComfyUI (its models, sampler, patcher, loaders, progress bars), directly or
#: through another backend module, each with the reason; every other backend module imports no ComfyUI, so its unit
#: tests run without the host.
BACKEND_ON_COMFYUI = {
    "encoding": "runs CLIP, the VAE and the ReferenceNet through ComfyUI's model management",
    "loading": "loads through comfy.sd and registers the model folder with folder_paths",
    "patching": "installs the attention on a ComfyUI MODEL (patcher wrappers, optimized_attention, memory estimate)",
    "sampling": "samples with comfy.sample and ComfyUI's latent previews",
    "faces": "ComfyUI's progress bar over the frames and its intermediate device for the outputs",
    "tracks": "ComfyUI's progress bar over the frames and its intermediate device for the outputs",
    "verify": "ComfyUI's intermediate device for the output frames",
    "track_identity": "the all-in-one steps: encoding and sampling",
    "anonymize": "the all-in-one steps: encoding and sampling",
}
#: Modules of nodes/ that are not node files: the node list and the sockets/inputs several node files share.
NODE_HELPERS = {"__init__", "registry", "sockets"}
NODE_FILE_LINES = 160  # a node file: its schemas (long descriptions and tooltips) and short execute methods
EXECUTE_LINES = 8


def backend_modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BACKEND.glob("*.py")) if p.stem != "__init__"}


def node_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(NODES.glob("*.py")) if p.stem not in NODE_HELPERS}


def comfy_imports(path: Path) -> list[str]:
    # ComfyUI's own `nodes` is one module; nodes.* (relative imports resolved) is ours
    return sorted({t for t, _ in imports_of(path) if t.split(".")[0] in COMFY_MODULES and not t.startswith("nodes.")})


def backend_imports(path: Path) -> set[str]:
    out = set()
    for target, names in imports_of(path):
        if target == "nodes.backend":
            out |= set(names)
        elif target.startswith("nodes.backend."):
            out.add(target.split(".")[2])
    return out


def test_the_backend_room_imports_no_comfyui_where_it_can():
    modules = backend_modules()
    assert set(BACKEND_ON_COMFYUI) <= set(modules), set(BACKEND_ON_COMFYUI) - set(modules)
    reaches = {name: bool(comfy_imports(path)) for name, path in modules.items()}
    for _ in modules:  # through other backend modules
        for name, path in modules.items():
            reaches[name] = reaches[name] or any(reaches.get(dep, False) for dep in backend_imports(path))
    for name, path in modules.items():
        if name in BACKEND_ON_COMFYUI:
            assert reaches[name], f"nodes/backend/{name}.py reaches no ComfyUI now: drop it from BACKEND_ON_COMFYUI"
        else:
            assert not reaches[name], (f"nodes/backend/{name}.py imports {comfy_imports(path)} or a module that does: "
                                       "keep ComfyUI in the modules that need it")


def test_the_pure_backend_modules_import_without_comfyui():
    """What the AST check above says, checked by importing: no ComfyUI is installed here."""
    from helpers.pack import pack_module

    assert importlib.util.find_spec("comfy") is None, "this check needs an environment without ComfyUI"
    pure = sorted(set(backend_modules()) - set(BACKEND_ON_COMFYUI))
    assert {"attention", "capture", "mixing", "layout", "batching", "images", "checks"} <= set(pure)
    for name in pure:
        pack_module(f"nodes.backend.{name}")


def test_the_backend_room_never_imports_the_node_classes():
    """One way: node files -> backend -> faceanon_core. The backend knows no node class, socket or schema."""
    for name, path in backend_modules().items():
        for target, imported in imports_of(path):
            parts = target.split(".")
            inside_nodes = parts[0] == "nodes" and parts[1:2] != ["backend"] and len(parts) > 1
            assert not inside_nodes and "io" not in imported, f"nodes/backend/{name}.py imports {target} {imported}"


def test_node_files_are_short_node_classes_over_the_backend():
    """Like comfy_extras/nodes_*.py: a node file holds V3 node classes (schema + an execute of a few lines) and the
    input helpers of their schemas; what a node runs lives in nodes/backend/, and the library is reached through it."""
    assert node_files(), "no node file found"
    for name, path in node_files().items():
        text = path.read_text()
        lines = text.count("\n")
        assert lines <= NODE_FILE_LINES, f"nodes/{name}.py: {lines} lines; move what the nodes run to backend/"
        tree = ast.parse(text)
        classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
        assert classes, f"nodes/{name}.py holds no node class: it belongs in nodes/backend/"
        for cls in classes:
            assert any(ast.unparse(b) == "io.ComfyNode" for b in cls.bases), f"nodes/{name}.py: {cls.name} is no node"
            for method in (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "execute"):
                lines = method.end_lineno - method.lineno + 1
                assert lines <= EXECUTE_LINES, f"nodes/{name}.py: {cls.name}.execute has {lines} lines"
        for func in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
            assert func.name.endswith(("_input", "_inputs")), f"nodes/{name}.py: {func.name} belongs in backend/"
        for target, _ in imports_of(path):
            assert "faceanon_core" not in target, f"nodes/{name}.py imports {target}: go through nodes/backend/"


def product_names() -> collections.Counter:
    """How often each name is used (read, called, imported, an attribute) in the product: nodes/ and the root."""
    used: collections.Counter = collections.Counter()
    for path in [*NODES.rglob("*.py"), REPO / "__init__.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name):
                used[node.id] += 1
            elif isinstance(node, ast.Attribute):
                used[node.attr] += 1
            elif isinstance(node, ast.alias):
                used[node.name.split(".")[-1]] += 1
    return used


def test_no_test_only_code_in_the_product():
    """Every function, class, method and constant that nodes/ defines is used by the product itself (a
    reference implementation or a helper that only tests call belongs in tests/ or faceanon_core/testing)."""
    used = product_names()
    unused = []
    for path in NODES.rglob("*.py"):
        tree = ast.parse(path.read_text())
        defined = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        defined += [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)]
        for name in defined:
                dunder = name.startswith("__") and name.endswith("__")
                if not dunder and name not in HOST_CALLED and used[name] == 0:
                    unused.append(f"{path.relative_to(REPO)}: {name}")
    assert not unused, f"defined in nodes/ but used only outside the product (tests?): {sorted(unused)}"


#: Names ComfyUI calls on the pack's objects and classes (never called by the pack itself).
HOST_CALLED = {"define_schema", "execute", "validate_inputs", "get_node_list", "_comfy_cache_tensors", "models",
               "logger"}
#: Defaults the schemas need while ComfyUI starts, where the library's module that owns them imports OpenCV: the
#: nodes keep one copy each, equal to the library's (see test_node_defaults_that_schemas_need_at_startup_equal_...).
STARTUP_COPIES = {"DETECTOR_MIN_FACE": "DEFAULT_DETECTOR_MIN_FACE", "IDENTITY_MODES": "IDENTITY_MODES"}


def module_constants(root: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = collections.defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            for target in targets:
                if isinstance(target, ast.Name) and target.id.isupper():
                    out[target.id].append(path.relative_to(REPO).as_posix())
    return out


def test_every_constant_of_the_nodes_is_defined_once_and_none_copies_the_librarys():
    ours, core = module_constants(NODES), module_constants(CORE)
    twice = {name: where for name, where in ours.items() if len(where) > 1}
    assert not twice, f"defined more than once in nodes/: {twice}"
    copies = {name: core[name] for name in ours if name in core and name not in STARTUP_COPIES}
    assert not copies, f"nodes/ defines constants the library owns (import them): {copies}"
    startup = {name for name in ours if name in STARTUP_COPIES}
    assert startup == set(STARTUP_COPIES), startup


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
    from faceanon_core.faces.detect import DEFAULT_DETECTOR_MIN_FACE
    from faceanon_core.faces.video import IDENTITY_MODES
    from helpers.node_stubs import load_node_modules

    nodes = load_node_modules("backend.faces", "backend.track_identity")
    assert nodes["backend.faces"].DETECTOR_MIN_FACE == DEFAULT_DETECTOR_MIN_FACE
    assert nodes["backend.track_identity"].IDENTITY_MODES == IDENTITY_MODES
