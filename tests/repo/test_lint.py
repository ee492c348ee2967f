"""ruff ([tool.ruff] in pyproject.toml) finds nothing anywhere in the tree.

The same rule as .ci/run's lint step, so a new lint error fails the unit tests too, not only CI.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FINDING = re.compile(r"[^ ].*?:\d+:\d+: \S+")

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ruff") is None,
                                reason="ruff is not installed (it is in the 'test' extra: pip install -e '.[test]')")


def test_no_ruff_findings():
    res = subprocess.run([sys.executable, "-m", "ruff", "check", ".", "--output-format", "concise", "--no-cache"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode in (0, 1), f"ruff did not run (exit {res.returncode}):\n{res.stdout}{res.stderr}"
    found = [line for line in res.stdout.splitlines() if FINDING.match(line)]
    # ruff's own count must agree with the parse, so a changed output format cannot hide findings
    total = re.search(r"Found (\d+) error", res.stdout)
    assert len(found) == (int(total[1]) if total else 0), res.stdout
    assert res.returncode == (1 if found else 0), res.stdout
    assert not found, "ruff findings (fix them; `ruff check --fix` does the safe ones):\n" + "\n".join(found)
