"""The README's result figures are the measured files' (bench/readme_tables.py), not edits by hand."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_readme_result_blocks_are_written_from_the_committed_measurements():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "readme_tables.py"), "--check"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, ("README.md differs from bench/results/ (run "
                                  "`python bench/readme_tables.py`): " + proc.stdout + proc.stderr)
