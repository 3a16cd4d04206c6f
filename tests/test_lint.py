"""The code base passes the linter configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_ruff_passes():
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
