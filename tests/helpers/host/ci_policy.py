"""Pytest plugin for the host tests (``pytest.mark.host``): in CI they may skip only what needs a GPU.

Loaded for the whole suite by tests/conftest.py (``pytest_plugins``, which only the top-level
conftest may set); it acts on ``host``-marked tests only. With ``CI=true`` and a host (``COMFYUI_PATH``) a skipped
host test is reported as a failure unless it is marked ``pytest.mark.host(needs_gpu=True)`` (the only
thing a CPU CI machine cannot run), so a missing browser, extra or model cannot turn into a green run
that tested nothing. Without COMFYUI_PATH the host tests skip, with their reason, as before: a
contributor without a host, or CI's run of the whole suite, which runs the host tests in a second
command against the snapshot host (README "Tests", .ci/run). Every skip reason is printed (``-ra`` in
pyproject), and the terminal summary says how many host tests ran.
"""

from __future__ import annotations

import os

import pytest

_OUTCOMES = pytest.StashKey[dict]()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_configure(config):
    config.stash[_OUTCOMES] = {}


def gpu_only(item) -> bool:
    """``@pytest.mark.host(needs_gpu=True)`` on the test (the closest ``host`` mark wins)."""
    mark = item.get_closest_marker("host")
    return bool(mark is not None and mark.kwargs.get("needs_gpu"))


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if item.get_closest_marker("host") is None:
        return report
    strict = in_ci() and bool(os.environ.get("COMFYUI_PATH"))
    refused = report.skipped and strict and not hasattr(report, "wasxfail") and not gpu_only(item)
    if refused:
        reason = _skip_reason(report)
        report.outcome = "failed"
        report.longrepr = (f"CI=true: a host test may skip only when it needs a GPU (pytest.mark.host(needs_gpu="
                           f"True)); this one skipped: {reason}")
    outcomes = item.config.stash.setdefault(_OUTCOMES, {})
    previous = outcomes.get(item.nodeid)
    if refused:
        outcomes[item.nodeid] = "refused" if previous != "failed" else previous
    elif report.failed:
        outcomes[item.nodeid] = "failed"
    elif report.skipped and previous != "failed":
        outcomes[item.nodeid] = "skipped"
    elif report.when == "call" and report.passed and previous is None:
        outcomes[item.nodeid] = "passed"
    return report


def pytest_terminal_summary(terminalreporter, config):
    outcomes = config.stash.get(_OUTCOMES, {})
    if not outcomes:
        return
    counts = {kind: sum(1 for v in outcomes.values() if v == kind)
              for kind in ("passed", "failed", "skipped", "refused")}
    host = os.environ.get("COMFYUI_PATH") or "no COMFYUI_PATH"
    line = (f"host tests ({host}): {counts['passed'] + counts['failed']} ran ({counts['passed']} passed, "
            f"{counts['failed']} failed), {counts['skipped']} skipped"
            f"{' (GPU only)' if in_ci() and host != 'no COMFYUI_PATH' else ''}")
    if counts["refused"]:
        line += f", {counts['refused']} skipped but failed (CI allows only GPU skips)"
    terminalreporter.write_line(line)
