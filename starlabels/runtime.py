"""What every workflow job does around its stage, and nothing else: the log, the error hook, the
config hash, memory behaviour.

A script under ``workflow_scripts/`` starts with ``job = runtime.job(snakemake)``: from then on
everything the job prints goes to the rule's log, an archive failure is reported as its one-line
message, and ``job.config_hash`` identifies every parameter the rule handed over. This module
imports nothing heavy, so the redirect comes before any library is loaded.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class Job:
    #: sha256[:16] of all the rule's params (its provenance in every artifact it writes)
    config_hash: str


def job(snakemake: Any) -> Job:
    """Send stdout and stderr to the rule's log (line-buffered), install
    :func:`concise_excepthook`, join the job's run (:func:`starlabels.runlock.join_run`: the
    results folder must still be its run's, and stays held while the job runs), and hash the
    rule's params."""
    from .runlock import join_run

    sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)
    sys.excepthook = concise_excepthook
    join_run([*snakemake.output, *snakemake.log])
    return Job(config_hash=params_hash(dict(snakemake.params.items())))


def params_hash(params: Mapping[str, Any]) -> str:
    """The config hash of a rule: every param it receives, so any edit that reruns the rule
    (Snakemake compares params) also changes the hash its outputs carry ('none' for a rule
    without params)."""
    from .artifacts import config_hash

    return config_hash(dict(params) or None)


def folder(path: str | os.PathLike) -> str:
    """The folder of a declared file (a rule names a folder by a file inside it)."""
    return os.path.dirname(os.fspath(path))


def folders(paths: Sequence[str | os.PathLike]) -> list[str]:
    """:func:`folder` of each path, e.g. the model folders of the members' ``model.json``."""
    return [folder(p) for p in paths]


def log_to_stdout(message: str) -> None:
    """The stages' default log: one line on stdout, flushed (the rule log when run by a job)."""
    print(message, flush=True)


def _concise_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says all there is to say (host, what, mirror / config hint)."""
    from .acquire.http import DownloadError
    from .acquire.literature import LiteratureTableError
    from .acquire.remote import ArchiveConfigError
    from .runlock import RunLockError

    return (DownloadError, ArchiveConfigError, LiteratureTableError, RunLockError)


def concise_excepthook(kind, value, traceback) -> None:
    """sys.excepthook of the workflow's jobs: an unreachable archive, a config gap or an empty
    literature table is reported as its one-line message, not a traceback; any other error
    keeps its traceback."""
    if isinstance(value, _concise_errors()):
        print(f"ERROR: {value}", file=sys.stderr, flush=True)
    else:
        sys.__excepthook__(kind, value, traceback)


def keep_freed_memory(top_pad_bytes: int = 1 << 30) -> bool:
    """Ask glibc to keep up to ``top_pad_bytes`` of freed heap instead of returning it to the
    kernel (mallopt M_TOP_PAD, what ``MALLOC_TOP_PAD_`` sets). Network layers allocate and free
    the same activation buffers every batch; by default glibc trims them and page-faults them in
    again, which measured 2.6× slower prediction and 1.55× slower training on the 2-core machine
    (bench/README.md). Called at the start of a job process; a no-op (False) off glibc."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-2, int(top_pad_bytes)))  # -2 = M_TOP_PAD
    except (OSError, AttributeError):
        return False
