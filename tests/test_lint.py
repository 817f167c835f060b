"""The code stays clean by the linter's rules (pyproject.toml), checked on every run."""

import os
import subprocess
import sys

from tests.helpers import ROOT


def test_ruff_finds_nothing():
    ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
    result = subprocess.run([ruff, "check", "--output-format", "concise", ROOT], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
