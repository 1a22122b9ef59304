"""The test suite's own contract: plain `pytest` is the fast set, `pytest -m ""` runs all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _collect(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "tests/test_tracking.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_plain_pytest_leaves_the_slow_tests_out():
    out = _collect()
    assert "deselected" in out
    assert "test_aliked_tracker_follows_the_known_projection" not in out


def test_empty_marker_expression_runs_every_test():
    out = _collect("-m", "")
    assert "deselected" not in out
    assert "test_aliked_tracker_follows_the_known_projection" in out
