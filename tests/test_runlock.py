"""One run per results folder (starlabels.runlock), with real processes: a run's main process,
its jobs, a second run, a job that outlives its killed run and one that starts too late."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from starlabels import runlock

REPO = Path(__file__).resolve().parent.parent

# a process that takes the folder as a run (or joins as a job), says so, and waits for "stop"
_ACTOR = """
import os, sys, time
from pathlib import Path
from starlabels import runlock
role, folder, control = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
try:
    if role == "run":
        print("RUN", runlock.hold_for_run([folder]), flush=True)
    else:
        runlock.join_run([folder / "normalized" / "flux.npy"])
        print("JOINED", flush=True)
except runlock.RunLockError as err:
    print("REFUSED", err, flush=True)
    sys.exit(3)
while not control.exists():
    time.sleep(0.02)
"""


class Actor:
    def __init__(self, role: str, folder: Path, tmp_path: Path, run_id: str | None = None):
        self.control = tmp_path / f"stop-{role}-{time.monotonic_ns()}"
        env = dict(os.environ)
        env.pop(runlock.RUN_ENV, None)
        if run_id is not None:
            env[runlock.RUN_ENV] = run_id
        self.proc = subprocess.Popen([sys.executable, "-c", _ACTOR, role, str(folder),
                                      str(self.control)], cwd=REPO, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.first = self.proc.stdout.readline().strip()

    def stop(self) -> int:
        self.control.write_text("")
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "results" / "demo_ges"
    path.mkdir(parents=True)
    return path


def test_a_second_run_is_refused_naming_the_first(folder, tmp_path):
    first = Actor("run", folder, tmp_path)
    assert first.first.startswith("RUN ")
    second = Actor("run", folder, tmp_path)
    assert second.proc.wait(timeout=30) == 3
    assert second.first.startswith("REFUSED") and f"pid {first.proc.pid}" in second.first
    assert "nothing to unlock" in second.first
    assert first.stop() == 0
    third = Actor("run", folder, tmp_path)        # the first ended: its lock went with it
    assert third.first.startswith("RUN ") and third.stop() == 0


def test_jobs_of_a_killed_run_keep_the_folder_until_they_end(folder, tmp_path):
    run = Actor("run", folder, tmp_path)
    run_id = run.first.split()[1]
    job = Actor("job", folder, tmp_path, run_id=run_id)
    assert job.first == "JOINED"
    run.kill()                                     # the main process dies, its job does not
    later = Actor("run", folder, tmp_path)
    assert later.proc.wait(timeout=30) == 3 and "still running" in later.first
    assert job.stop() == 0
    after = Actor("run", folder, tmp_path)
    assert after.first.startswith("RUN ") and after.stop() == 0


def test_a_job_whose_run_lost_the_folder_stops_without_touching_it(folder, tmp_path):
    old = Actor("run", folder, tmp_path)
    old_id = old.first.split()[1]
    old.kill()
    new = Actor("run", folder, tmp_path)           # nothing of the old run is alive any more
    assert new.first.startswith("RUN ")
    late = Actor("job", folder, tmp_path, run_id=old_id)   # e.g. a Slurm job pending till now
    assert late.proc.wait(timeout=30) == 3
    assert "now belongs to run" in late.first and f"this job of run {old_id}" in late.first
    own = Actor("job", folder, tmp_path, run_id=new.first.split()[1])
    assert own.first == "JOINED" and own.stop() == 0 and new.stop() == 0


def test_a_job_without_a_run_is_refused(folder, tmp_path):
    Actor("run", folder, tmp_path).stop()
    job = Actor("job", folder, tmp_path, run_id=None)
    assert job.proc.wait(timeout=30) == 3
    assert f"{runlock.RUN_ENV} is not set" in job.first
    outside = tmp_path / "elsewhere"
    with pytest.raises(runlock.RunLockError, match="lies in no results folder"):
        os.environ[runlock.RUN_ENV] = "abc"
        try:
            runlock.join_run([outside / "x.parquet"])
        finally:
            del os.environ[runlock.RUN_ENV]


def test_the_folder_says_who_holds_it(folder, tmp_path):
    run = Actor("run", folder, tmp_path)
    info = json.loads((folder / runlock.INFO_NAME).read_text())
    assert info["pid"] == run.proc.pid and info["run"] == run.first.split()[1]
    assert {"host", "checkout", "command", "started_utc"} <= set(info)
    assert run.stop() == 0
