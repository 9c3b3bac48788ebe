"""Style is enforced where CI runs the tests: `ruff check` and `ruff format --check` over the tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_check_is_clean():
    res = _ruff("check", ".")
    assert res.returncode == 0, res.stdout[-3000:]


def test_ruff_format_is_clean():
    res = _ruff("format", "--check", ".")
    assert res.returncode == 0, res.stdout[-3000:]
