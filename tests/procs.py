"""Killing a training process at a chosen checkpoint, for the preemption tests."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch


def kill_9_at_checkpoint(proc: subprocess.Popen, checkpoint: Path,
                         ready: Callable[[Mapping[str, Any]], bool], timeout: float = 300,
                         poll: float = 0.02) -> None:
    """SIGKILL ``proc`` as soon as ``checkpoint`` holds a state for which ``ready`` is true.

    Fails if the process ends first (it could not be killed mid-training) or no such checkpoint
    appears within ``timeout`` seconds.
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        if checkpoint.exists() and ready(torch.load(checkpoint, weights_only=True)):
            break
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the process ended before it could be killed:\n{output}")
        time.sleep(poll)
    else:
        proc.kill()
        raise AssertionError(f"no checkpoint ready in {checkpoint} within {timeout} s")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
