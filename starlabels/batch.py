"""The batch engine of the stages that turn many input files into one matrix: normalize,
synthesize and the survey simulator.

- :func:`ordered_map` runs a function over items in a process pool (read-only state sent once
  per worker), results in input order whatever the number of workers;
- :class:`MatrixRowStream` streams rows into float32 ``.npy`` memmaps and trims them on commit;
- :class:`Progress` logs rates and rejects about every 5 % of the work;
- rejects: :class:`RejectSpectrum` (an input that cannot be used, with the reason that goes into
  the rejects table), :func:`rejects_frame`, :func:`log_reject_counts`, :func:`exception_text`.
"""
from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from . import artifacts

Log = Callable[[str], Any]


class RejectSpectrum(Exception):
    """A star (or spectrum) that cannot be normalised; ``reason`` goes into the rejects table.

    ``key`` groups reasons for the summary counts: 'masked fraction 0.41 > 0.25' and
    'masked fraction 0.30 > 0.25' share the key 'masked fraction > 0.25'.
    """

    def __init__(self, reason: str, key: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.key = key or reason


def say(log: Callable[[str], Any], message: str) -> None:
    """Log one line and flush, so progress shows up in Snakemake log files while a job runs."""
    log(message)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


_WORKER: tuple[Callable[[Any, Any], Any], Any] | None = None


_THREAD_LIMITS: Any = None


def _one_native_thread_per_worker() -> None:
    """Keep BLAS to one thread inside a pool worker.

    The continuum fits call LAPACK; with N workers each starting an OpenBLAS pool sized to the
    whole machine, N² threads fight over N cores and the pool ends up slower than one process.
    threadpoolctl is optional: without it the environment (OMP_NUM_THREADS) decides.
    """
    global _THREAD_LIMITS
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    _THREAD_LIMITS = threadpool_limits(limits=1)


def _set_worker(func: Callable[[Any, Any], Any], state: Any) -> None:
    """Pool initializer: the per-task function and the read-only state it needs, sent once."""
    global _WORKER
    _WORKER = (func, state)
    _one_native_thread_per_worker()


def _run_task(item: Any) -> Any:
    func, state = _WORKER
    return func(state, item)


def ordered_map(func: Callable[[Any, Any], Any], state: Any, items: Sequence[Any],
                threads: int = 1) -> Iterator[Any]:
    """``func(state, item)`` for every item, results in input order.

    threads=1 runs in-process (no pool: simple tracebacks, no pickling). Otherwise a
    ``multiprocessing`` Pool receives ``state`` once per worker through its initializer and the
    items through ``imap`` in chunks, which keeps the order whatever the number of workers.
    """
    threads = max(1, min(int(threads), len(items)))
    if threads == 1:
        for item in items:
            yield func(state, item)
        return
    # a few chunks per worker: few round trips, yet the last chunks still balance the load
    chunksize = max(2, min(64, len(items) // (threads * 8)))
    with multiprocessing.get_context().Pool(threads, initializer=_set_worker,
                                            initargs=(func, state)) as pool:
        yield from pool.imap(_run_task, items, chunksize=chunksize)


class MatrixRowStream:
    """Rows of flux and ivar streamed into float32 ``.npy`` memmaps, trimmed when committed.

    ``capacity`` is an upper bound on the number of rows. The staging files are sparse until
    written, so a generous bound costs no disk. :meth:`commit` moves them into place when they
    are full, or copies the filled rows in chunks into right-sized files when some inputs were
    rejected; the whole matrix is never held in memory.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], capacity: int, n_pixels: int):
        self.paths = [Path(p) for p in paths]
        self.capacity = int(capacity)
        self.n_pixels = int(n_pixels)
        self.n_rows = 0
        self._staging = [artifacts.open_matrix_writer(p.with_name(p.name + ".staging.npy"),
                                                      self.capacity, self.n_pixels)
                         for p in self.paths]

    def append(self, *rows: np.ndarray) -> int:
        """Write one row per matrix; returns the row index."""
        if self.n_rows >= self.capacity:
            raise RuntimeError(f"more rows than the capacity {self.capacity}")
        for matrix, row in zip(self._staging, rows, strict=True):
            matrix[self.n_rows] = row
        self.n_rows += 1
        return self.n_rows - 1

    def commit(self, chunk_rows: int = 1024) -> None:
        for i, (staging, path) in enumerate(zip(self._staging, self.paths)):
            if self.n_rows == self.capacity:
                artifacts.commit_matrix_writer(staging, path)
            else:
                final = artifacts.open_matrix_writer(path, self.n_rows, self.n_pixels)
                for start in range(0, self.n_rows, chunk_rows):
                    stop = min(start + chunk_rows, self.n_rows)
                    final[start:stop] = staging[start:stop]
                artifacts.commit_matrix_writer(final, path)
                _discard(staging)
            self._staging[i] = None
        self._staging = []

    def abort(self) -> None:
        """Remove the staging files (after an error); the final paths are left untouched."""
        for staging in self._staging:
            if staging is not None:
                _discard(staging)
        self._staging = []


def _discard(matrix: np.memmap) -> None:
    filename = matrix.filename
    del matrix
    with contextlib.suppress(FileNotFoundError):
        os.unlink(filename)


class Progress:
    """Logs a line about every ``every`` of the work (5 %), with rates and rejects so far."""

    def __init__(self, log: Callable[[str], Any], stage: str, total: int, what: str,
                 every: float = 0.05):
        self.log, self.stage, self.total, self.what = log, stage, int(total), what
        self.step = max(1, int(math.ceil(every * self.total)))
        self.next = self.step
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def update(self, done: int, detail: str, n_spectra: int, n_rejects: int) -> None:
        if done < self.next and done != self.total:
            return
        while self.next <= done:
            self.next += self.step
        elapsed = self.elapsed()
        rate = n_spectra / elapsed if elapsed > 0 else float("nan")
        pct = 100.0 * done / self.total if self.total else 100.0
        say(self.log, f"{self.stage}: {done}/{self.total} {self.what} ({pct:.0f}%), {detail}, "
                      f"{rate:.1f} spectra/s, {n_rejects} rejected so far, "
                      f"{elapsed:.1f} s elapsed")


def no_finite_flux(flux: np.ndarray, wavelength: np.ndarray) -> str:
    """Why no pixel has both a finite wavelength and a finite flux, in the file's own terms: a
    reject reason that says +inf where the file holds +inf, not 'all-NaN'."""
    n_nan = int(np.isnan(flux).sum())
    if n_nan == flux.size:
        return "all-NaN flux"
    n_pos, n_neg = int(np.isposinf(flux).sum()), int(np.isneginf(flux).sum())
    if n_nan + n_pos + n_neg == flux.size:
        parts = [f"{n} {what}" for n, what in ((n_pos, "+inf"), (n_neg, "-inf"), (n_nan, "NaN"))
                 if n]
        return f"no finite flux ({', '.join(parts)} of {flux.size} pixels)"
    return (f"no pixel has both a finite wavelength and a finite flux "
            f"({int((~np.isfinite(wavelength)).sum())} of {flux.size} wavelengths not finite)")


def rejects_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Rejects rows in the layout of :func:`artifacts.empty_rejects`."""
    empty = artifacts.empty_rejects()
    if not rows:
        return empty
    return pd.DataFrame([{k: str(r[k]) for k in empty.columns} for r in rows],
                        columns=empty.columns)


def log_reject_counts(log: Callable[[str], Any], stage: str, per_reason: Mapping[str, int]) -> None:
    """The final per-reason summary, most frequent first."""
    if not per_reason:
        say(log, f"{stage}: no rejects")
        return
    say(log, f"{stage}: rejects by reason:")
    for reason, count in sorted(per_reason.items(), key=lambda kv: (-kv[1], kv[0])):
        say(log, f"{stage}:   {count:7d}  {reason}")


def exception_text(exc: BaseException) -> str:
    """'TypeName: message' for an unexpected exception, as recorded in a rejects table."""
    return f"{type(exc).__name__}: {exc}"
