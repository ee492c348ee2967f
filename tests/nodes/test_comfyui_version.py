"""The ComfyUI version gate of the root ``__init__`` (no ComfyUI needed: the host is faked in sys.modules).

A ComfyUI older than 0.3.60 does not accept ``transformer_options=`` in ``optimized_attention``; the pack
must then register no node and say so in one log line, instead of failing deep in sampling.
"""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

from helpers.pack import load_pack  # noqa: E402

gate = load_pack()  # outside ComfyUI: no entry point, nothing imported from ComfyUI


def registers_nothing(pack) -> bool:
    """Neither registration ComfyUI's loader looks for (comfy_entrypoint, NODE_CLASS_MAPPINGS) is there."""
    return not hasattr(pack, "comfy_entrypoint") and getattr(pack, "NODE_CLASS_MAPPINGS", None) is None


def test_outside_comfyui_the_pack_registers_nothing_and_imports_no_comfyui():
    import subprocess

    assert registers_nothing(gate)
    code = ("import sys; from helpers.pack import load_pack; pack = load_pack(); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths', "
            "'nodes')), hasattr(pack, 'comfy_entrypoint'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=str(TESTS), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "False"], done.stdout


@pytest.mark.parametrize("text, expected", [
    ("0.3.64", (0, 3, 64)), ("0.3.60", (0, 3, 60)), ("v0.3.9", (0, 3, 9)), ("0.4", (0, 4, 0)),
    (" 1.0.0-rc1 ", (1, 0, 0)), ("0.3.100", (0, 3, 100)),
    ("", None), ("unknown", None), (None, None), (b"0.3.64", None),
])
def test_parse_comfyui_version(text, expected):
    assert gate.parse_comfyui_version(text) == expected


@pytest.mark.parametrize("text, register", [
    ("0.3.59", False), ("0.3.9", False), ("0.2.100", False), ("0.3.60", True), ("0.3.64", True),
    ("0.3.100", True), ("0.4.0", True), ("1.0", True),
])
def test_decision_compares_numbers_not_strings(text, register):
    ok, level, message = gate.comfyui_version_decision(text)
    assert ok is register
    if not register:
        assert level == logging.ERROR
        assert text in message and ">=0.3.60" in message and "transformer_options" in message


@pytest.mark.parametrize("text", [None, "", "main"])
def test_unknown_version_registers_with_a_warning(text):
    ok, level, message = gate.comfyui_version_decision(text)
    assert ok and level == logging.WARNING and ">=0.3.60" in message


def test_requirement_matches_pyproject():
    import tomllib

    meta = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())
    assert meta["tool"]["comfy"]["requires-comfyui"] == gate.REQUIRED_COMFYUI_TEXT
    assert gate.parse_comfyui_version(gate.REQUIRED_COMFYUI_TEXT.lstrip(">=")) == gate.REQUIRED_COMFYUI


def _fake_host(monkeypatch, tmp_path, version_module=None, version_file=None):
    """sys.modules as inside ComfyUI: comfy.model_management imported, maybe comfyui_version too."""
    comfy = types.ModuleType("comfy")
    comfy.__path__ = [str(tmp_path / "comfy")]
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_management", types.ModuleType("comfy.model_management"))
    if version_module is not None:
        module = types.ModuleType("comfyui_version")
        module.__version__ = version_module
        monkeypatch.setitem(sys.modules, "comfyui_version", module)
    else:
        monkeypatch.delitem(sys.modules, "comfyui_version", raising=False)
    if version_file is not None:
        (tmp_path / "comfyui_version.py").write_text(f'# generated\n__version__ = "{version_file}"\n')


def _import_as_comfyui_would(name):
    try:
        return load_pack(name)
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def test_too_old_comfyui_registers_nothing_with_one_log_line(monkeypatch, tmp_path, caplog):
    _fake_host(monkeypatch, tmp_path, version_module="0.3.59")
    with caplog.at_level(logging.DEBUG, logger="ComfyUI-FaceAnon"):
        pack = _import_as_comfyui_would("faceanon_gate_old")
    assert registers_nothing(pack)
    records = [r for r in caplog.records if r.name == "ComfyUI-FaceAnon"]
    assert len(records) == 1 and records[0].levelno == logging.ERROR
    assert "0.3.59" in records[0].getMessage() and ">=0.3.60" in records[0].getMessage()
    # the refusal happens before any node module (which would import ComfyUI) is loaded
    assert not any(k.startswith("faceanon_gate_old.nodes") for k in sys.modules)


def test_version_is_read_from_the_file_beside_comfy_when_not_imported(monkeypatch, tmp_path):
    _fake_host(monkeypatch, tmp_path, version_file="0.3.41")
    assert gate.comfyui_version_text() == "0.3.41"
    pack = _import_as_comfyui_would("faceanon_gate_file")
    assert registers_nothing(pack)


def test_imported_version_module_wins(monkeypatch, tmp_path):
    _fake_host(monkeypatch, tmp_path, version_module="0.3.64", version_file="0.3.41")
    assert gate.comfyui_version_text() == "0.3.64"


def test_no_version_anywhere_is_unknown(monkeypatch, tmp_path):
    _fake_host(monkeypatch, tmp_path)
    assert gate.comfyui_version_text() is None


@pytest.mark.parametrize("latest_io, missing", [
    (None, "comfy_api.latest)"),  # no V3 API at all
    (types.SimpleNamespace(ComfyNode=object, Schema=object, NodeOutput=object), "comfy_api.latest.io.Custom"),
])
def test_a_comfyui_without_the_v3_api_registers_nothing_with_one_log_line(monkeypatch, tmp_path, caplog, latest_io,
                                                                           missing):
    _fake_host(monkeypatch, tmp_path, version_module="0.3.64")
    if latest_io is None:
        monkeypatch.setitem(sys.modules, "comfy_api.latest", None)  # import fails
    else:
        latest = types.ModuleType("comfy_api.latest")
        latest.io, latest.ComfyExtension = latest_io, object
        monkeypatch.setitem(sys.modules, "comfy_api", types.ModuleType("comfy_api"))
        monkeypatch.setitem(sys.modules, "comfy_api.latest", latest)
    with caplog.at_level(logging.DEBUG, logger="ComfyUI-FaceAnon"):
        pack = _import_as_comfyui_would("faceanon_gate_v3")
    assert registers_nothing(pack)
    records = [r for r in caplog.records if r.name == "ComfyUI-FaceAnon"]
    assert len(records) == 1 and records[0].levelno == logging.ERROR, records
    assert missing in records[0].getMessage() and "Update ComfyUI" in records[0].getMessage()
    assert not any(k.startswith("faceanon_gate_v3.nodes") for k in sys.modules)
