"""ruff ([tool.ruff] in pyproject.toml) finds nothing outside the files .ci/ruff-pending.txt allows for now.

The same rule as .ci/run's lint step, so a new lint error fails the unit tests too, not only CI. The pending
files are the ones the video-speed work is changing; they are swept after it merges and the list shrinks.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PENDING = REPO / ".ci" / "ruff-pending.txt"
FINDING = re.compile(r"(?P<path>[^ ].*?):\d+:\d+: (?P<code>\S+)")

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ruff") is None,
                                reason="ruff is not installed (it is in the 'test' extra: pip install -e '.[test]')")


def pending_files() -> set[str]:
    return {line.strip() for line in PENDING.read_text().splitlines() if line.strip() and not line.startswith("#")}


def ruff_findings() -> list[tuple[str, str]]:
    """(path, line) of every finding, paths relative to the repository root as ruff prints them."""
    res = subprocess.run([sys.executable, "-m", "ruff", "check", ".", "--output-format", "concise", "--no-cache"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode in (0, 1), f"ruff did not run (exit {res.returncode}):\n{res.stdout}{res.stderr}"
    found = [(m["path"], line) for line in res.stdout.splitlines() if (m := FINDING.match(line))]
    # ruff says how many it found: the parse above must have seen every one of them
    total = re.search(r"Found (\d+) error", res.stdout)
    assert len(found) == (int(total[1]) if total else 0), res.stdout
    return found


def test_no_ruff_findings_outside_the_pending_files():
    pending = pending_files()
    new = [line for path, line in ruff_findings() if Path(path).as_posix() not in pending]
    assert not new, ("ruff findings outside .ci/ruff-pending.txt (fix them; `ruff check --fix` does the safe "
                     "ones):\n" + "\n".join(new))


def test_every_pending_file_still_exists():
    missing = sorted(p for p in pending_files() if not (REPO / p).is_file())
    assert not missing, f"remove these from .ci/ruff-pending.txt, they are gone: {missing}"
