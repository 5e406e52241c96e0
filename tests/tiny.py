"""Running the workflow from the tests (the tiny end-to-end run is the session fixture
``tiny_run`` in conftest.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def snakemake(repo: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", *args]
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=timeout)
