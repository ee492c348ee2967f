"""ci_policy: with CI=true a skipped host test fails unless it needs a GPU (and a host is set); outside CI
skips stay skips. Checked on a throwaway test file in a child pytest (no ComfyUI needed), with the
plugin loaded as tests/conftest.py loads it for the whole suite."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


def suite_plugins() -> list[str]:
    """``pytest_plugins`` of tests/conftest.py: the CI policy is among them."""
    tree = ast.parse((TESTS / "conftest.py").read_text())
    found = [ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
             and [ast.unparse(t) for t in node.targets] == ["pytest_plugins"]]
    assert found and "helpers.host.ci_policy" in found[0], found
    return found[0]

SAMPLE = textwrap.dedent('''
    import pytest

    pytestmark = pytest.mark.host


    def test_runs():
        pass


    def test_fails():
        assert False


    def test_no_browser():
        pytest.skip("chromium is not installed")


    @pytest.mark.host(needs_gpu=True)
    def test_lowvram():
        pytest.skip("--lowvram needs a CUDA GPU")


    @pytest.fixture
    def broken_setup():
        pytest.skip("skipped in a fixture")


    def test_fixture_skip(broken_setup):
        pass


    @pytest.mark.skip(reason="decorated away")
    def test_marked_skip():
        pass
''')

NOT_HOST = textwrap.dedent('''
    import pytest


    def test_unit_skip():
        pytest.skip("not a host test")
''')


def _run(tmp_path, ci: str | None, comfyui_path: str | None):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "test_unit.py").write_text(NOT_HOST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    host: needs a real ComfyUI\n")
    (tmp_path / "conftest.py").write_text(f"pytest_plugins = {suite_plugins()!r}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "COMFYUI_PATH", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])
    if ci is not None:
        env["CI"] = ci
    if comfyui_path is not None:
        env["COMFYUI_PATH"] = comfyui_path
    done = subprocess.run([sys.executable, "-m", "pytest", "-v", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)
    return done.returncode, done.stdout


def _outcome(stdout: str, name: str) -> str:
    """The outcome in pytest's verbose line ``test_x.py::NAME OUTCOME`` (the first one: the call's)."""
    match = re.search(rf"^test_\w+\.py::{name} (PASSED|FAILED|SKIPPED|ERROR)", stdout, re.MULTILINE)
    assert match, f"{name} not in the output:\n{stdout}"
    return match.group(1)


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_only_gpu_skips_pass(tmp_path, ci):
    code, out = _run(tmp_path, ci, "/some/ComfyUI")
    assert code == 1, out
    assert _outcome(out, "test_runs") == "PASSED"
    assert _outcome(out, "test_fails") == "FAILED"
    assert _outcome(out, "test_lowvram") == "SKIPPED"
    assert _outcome(out, "test_no_browser") == "FAILED", out
    for name in ("test_fixture_skip", "test_marked_skip"):  # skipped in setup: reported as setup errors
        assert _outcome(out, name) == "ERROR", (name, out)
    assert "this one skipped: Skipped: chromium is not installed" in out
    assert _outcome(out, "test_unit_skip") == "SKIPPED"  # not a host test: the policy leaves it alone
    assert ("host tests (/some/ComfyUI): 2 ran (1 passed, 1 failed), 1 skipped (GPU only), 3 skipped but failed "
            "(CI allows only GPU skips)") in out, out


def test_in_ci_without_a_host_skips_stay_skips(tmp_path):
    """CI's run of the whole suite has no COMFYUI_PATH: the host tests skip there and run in the host command."""
    code, out = _run(tmp_path, "true", None)
    assert code == 1, out  # test_fails only
    for name in ("test_no_browser", "test_lowvram", "test_fixture_skip", "test_marked_skip"):
        assert _outcome(out, name) == "SKIPPED", (name, out)


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_outside_ci_skips_stay_skips(tmp_path, ci):
    code, out = _run(tmp_path, ci, None)
    assert code == 1, out  # test_fails only
    for name in ("test_no_browser", "test_lowvram", "test_fixture_skip", "test_marked_skip"):
        assert _outcome(out, name) == "SKIPPED", (name, out)
    assert "host tests (no COMFYUI_PATH): 2 ran (1 passed, 1 failed), 4 skipped" in out, out
