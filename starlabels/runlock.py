"""One run per results folder: a lock on ``results/<experiment>/`` that a run and its jobs hold.

Snakemake's own lock lives in the working directory (``.snakemake/locks``), so two checkouts
whose config names the same ``results`` folder do not see each other: the second run deletes the
outputs it is about to rebuild while the first is still reading or writing them. Here every
experiment folder a run writes carries a lock file, ``.starlabels-run.lock``:

- the run's main process takes it exclusively when its jobs are about to start (the workflow's
  ``onstart``, after the DAG is built and before Snakemake deletes any output), writes who it
  is beside it (``.starlabels-run.json``), and keeps it shared until it exits;
- every job joins its run: it takes the lock shared for as long as it runs and checks that the
  folder still belongs to its run (the run's id comes in the environment variable
  ``STARLABELS_RUN_ID``, which local jobs inherit and Slurm passes on with the job's
  environment);
- a second run fails at once, naming the first, while the first run's main process or any of
  its jobs is alive, also jobs that outlive a killed main process; a job of an earlier run that
  starts after another run took the folder (a Slurm job still pending when its run was killed)
  stops without touching anything.

The locks are ``flock`` locks: the kernel (or the NFS server) drops them when their process
ends, however it ends, so a killed run never leaves a stale lock behind and there is nothing
to unlock. Across machines this needs a file system whose locks are seen by all nodes: NFS
(v3 with lockd, v4), GPFS / Spectrum Scale, Lustre mounted with ``flock`` (not ``localflock``);
where the file system refuses locks the run stops and says so.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Iterable

LOCK_NAME = ".starlabels-run.lock"
INFO_NAME = ".starlabels-run.json"
RUN_ENV = "STARLABELS_RUN_ID"
#: how long a job waits for a run that is taking the folder (the exclusive lock is brief)
JOIN_WAIT_S = 30.0

_HELD: dict[str, int] = {}   # folder -> descriptor of its lock file, held until the process ends


class RunLockError(RuntimeError):
    """The results folder is another run's, or this process cannot tell it is its own."""


def _describe(folder: Path) -> str:
    try:
        info = json.loads((folder / INFO_NAME).read_text())
    except (OSError, ValueError):
        return "another run"
    return (f"run {info.get('run', '?')} (started {info.get('started_utc', '?')} on "
            f"{info.get('host', '?')}, pid {info.get('pid', '?')}, in {info.get('checkout', '?')}: "
            f"{info.get('command', '?')})")


def _open_lock(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    return os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)


def _flock(fd: int, operation: int, folder: Path) -> bool:
    """True when taken, False when another process holds a conflicting lock."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise RunLockError(
                f"{folder}: the file system refuses file locks ({exc.strerror}), so one run per "
                f"results folder cannot be guaranteed; put `results` on a file system with "
                f"locks (local disk, NFS, GPFS, Lustre mounted with -o flock)") from None
        raise
    return True


def hold_for_run(folders: Iterable[str | os.PathLike]) -> str:
    """Take the results folders for this run (its main process); returns the run's id, also set
    in ``STARLABELS_RUN_ID`` for the jobs it starts. Raises RunLockError naming the run that has
    a folder, leaving none of them taken."""
    run_id = uuid.uuid4().hex[:16]
    taken: list[tuple[Path, int]] = []
    try:
        for folder in sorted({Path(f).resolve() for f in folders}):
            fd = _open_lock(folder)
            taken.append((folder, fd))
            if not _flock(fd, fcntl.LOCK_EX, folder):
                raise RunLockError(
                    f"{folder} is in use by {_describe(folder)}, or by jobs of that run still "
                    f"running after it ended. One run writes a results folder at a time: wait "
                    f"for it or stop it and its jobs (scancel them on a cluster). The lock ends "
                    f"with their processes; there is nothing to unlock.")
            info = {"run": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                    "checkout": os.getcwd(), "command": " ".join(sys.argv),
                    "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(
                        timespec="seconds")}
            tmp = folder / f"{INFO_NAME}.{os.getpid()}"
            tmp.write_text(json.dumps(info, indent=1) + "\n")
            os.replace(tmp, folder / INFO_NAME)
            # shared from now on, so the run's own jobs can join; another run's exclusive
            # request still fails while any of them holds it
            if not _flock(fd, fcntl.LOCK_SH, folder):
                raise RunLockError(f"{folder} was taken by {_describe(folder)} while this run "
                                   f"was taking it")
    except BaseException:
        for _, fd in taken:
            os.close(fd)
        raise
    for folder, fd in taken:
        _keep(folder, fd)
    os.environ[RUN_ENV] = run_id
    return run_id


def _keep(folder: Path, fd: int) -> None:
    old = _HELD.pop(str(folder), None)
    if old is not None:
        os.close(old)
    _HELD[str(folder)] = fd


def lock_folder(path: str | os.PathLike) -> Path | None:
    """The results folder whose lock covers ``path``: the nearest folder above it with a lock
    file (None when there is none)."""
    for parent in Path(os.path.abspath(path)).parents:
        if (parent / LOCK_NAME).is_file():
            return parent
    return None


def join_run(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Hold, for the rest of this job's process, the results folders ``paths`` lie in, after
    checking each is held for the run that started the job. Returns the folders.

    Raises RunLockError when the job has no run (``STARLABELS_RUN_ID`` unset), a path lies in
    no locked folder, or a folder belongs to another run.
    """
    run_id = os.environ.get(RUN_ENV)
    if not run_id:
        raise RunLockError(
            f"this job was started without the run's id ({RUN_ENV} is not set): the workflow "
            f"sets it when it takes its results folders before the first job (Snakemake's "
            f"onstart, which --no-hooks skips); a scheduler must pass the job the environment "
            f"it was submitted with (Slurm does unless --export / SBATCH_EXPORT says otherwise)")
    folders = []
    for path in paths:
        folder = lock_folder(path)
        if folder is None:
            raise RunLockError(f"{path} lies in no results folder taken by run {run_id}")
        if folder not in folders:
            folders.append(folder)
    for folder in folders:
        if str(folder.resolve()) in _HELD:
            _check_owner(folder, run_id)
            continue
        fd = _open_lock(folder)
        try:
            deadline = time.monotonic() + JOIN_WAIT_S
            while not _flock(fd, fcntl.LOCK_SH, folder):
                if time.monotonic() > deadline:
                    raise RunLockError(f"{folder} stayed locked by {_describe(folder)} for "
                                       f"{JOIN_WAIT_S:g} s; this job of run {run_id} stops")
                time.sleep(0.2)
            _check_owner(folder, run_id)
        except BaseException:
            os.close(fd)
            raise
        _keep(folder.resolve(), fd)
    return folders


def _check_owner(folder: Path, run_id: str) -> None:
    try:
        owner = json.loads((folder / INFO_NAME).read_text()).get("run")
    except (OSError, ValueError):
        owner = None
    if owner != run_id:
        raise RunLockError(f"{folder} now belongs to {_describe(folder)}; this job of run "
                           f"{run_id} stops without touching it")


def release_all() -> None:
    """Drop every lock this process holds (the end of the process does the same)."""
    for fd in _HELD.values():
        os.close(fd)
    _HELD.clear()
