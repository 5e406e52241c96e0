"""Artifact contracts shared by every stage: atomic writes, flux matrices, tables, provenance.

Every stage writes its outputs through these functions so that
- a crash never leaves a half-written file where a complete one is expected (temp + rename),
- flux matrices are float32 ``.npy`` files that later stages memory-map,
- tables are Parquet with provenance (versions, git commit, config hash) in the schema metadata,
- JSON side-cars are written the same way.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import platform
import secrets
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

PROVENANCE_KEY = b"starlabels"


#: ending of the temporary files :func:`atomic_path` writes (a pattern nothing else uses, so
#: the sweep of leftovers never touches a file of someone else's)
TEMP_SUFFIX = ".starlabels-tmp"
_SWEPT_DIRS: set[str] = set()
_SWEPT_LOCK = threading.Lock()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic on
    POSIX file systems. On error the temporary file is removed and ``path`` is left untouched.

    The file is created with mode 0666 less the process umask, as ``open`` would create it
    (0644 under the usual umask 022), so outputs are as readable as any other file of the user.
    Its writer holds an exclusive ``flock`` on it until the rename: a process killed inside the
    block leaves its temporary file unlocked, and the first atomic write into that directory
    by a later process removes it (see :func:`sweep_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parent = os.path.abspath(path.parent)
    with _SWEPT_LOCK:
        first_visit = parent not in _SWEPT_DIRS
        _SWEPT_DIRS.add(parent)
    if first_visit:
        sweep_temporaries(parent)
    while True:
        tmp_path = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        _try_flock(fd, fcntl.LOCK_EX)
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
    finally:
        os.close(fd)


def _try_flock(fd: int, operation: int) -> bool:
    """flock ``fd``; False where the file system refuses locks (the sweep then keeps the file)."""
    try:
        fcntl.flock(fd, operation)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise
    return True


def sweep_temporaries(folder: str | os.PathLike) -> list[str]:
    """Remove the temporary files of :func:`atomic_path` in ``folder`` whose writer is gone.

    A live writer holds an exclusive lock on its file; a file nobody holds a lock on was left
    by a killed process and can never be renamed into place. Returns the names removed.
    """
    removed = []
    try:
        entries = [e.name for e in os.scandir(folder)
                   if e.name.startswith(".") and e.name.endswith(TEMP_SUFFIX)]
    except FileNotFoundError:
        return removed
    for name in entries:
        candidate = os.path.join(folder, name)
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if not _try_flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
                continue
            held = os.fstat(fd)
            try:
                now = os.lstat(candidate)
            except FileNotFoundError:
                continue  # renamed into place by its writer in the meantime
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                os.unlink(candidate)
                removed.append(name)
        finally:
            os.close(fd)
    return removed


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def save_json(path: str | os.PathLike, obj: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


def load_json(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


# ---------------------------------------------------------------- hashing and provenance

def config_hash(config: Mapping[str, Any] | None) -> str:
    """Stable sha256 (first 16 hex digits) of a config mapping, independent of key order."""
    if config is None:
        return "none"
    blob = json.dumps(_jsonable(config), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def array_hash(array: np.ndarray, chunk_rows: int = 4096) -> str:
    """sha256 (16 hex) of an array's shape, dtype and bytes; streams memory-mapped arrays by rows."""
    h = hashlib.sha256()
    h.update(repr((array.shape, str(array.dtype))).encode())
    if array.ndim == 0 or array.shape[0] == 0:
        h.update(np.ascontiguousarray(array).tobytes())
    else:
        for start in range(0, array.shape[0], chunk_rows):
            h.update(np.ascontiguousarray(array[start:start + chunk_rows]).tobytes())
    return h.hexdigest()[:16]


def git_commit(repo_dir: str | os.PathLike | None = None) -> str:
    """The current git commit of the workflow checkout, or 'unknown' outside a git checkout."""
    repo_dir = Path(repo_dir) if repo_dir else Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True,
                             text=True, timeout=10, check=True)
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo_dir, capture_output=True, text=True, timeout=10)
        return commit + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def software_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("starlabels", "numpy", "scipy", "pandas", "pyarrow", "astropy", "torch",
                 "openTSNE", "snakemake"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def provenance(config: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Metadata stamped on every artifact: versions, git commit, config hash, creation time."""
    meta = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "config_hash": config_hash(config),
        "versions": software_versions(),
    }
    meta.update(_jsonable(extra))
    return meta


# ---------------------------------------------------------------- flux matrices

def save_matrix(path: str | os.PathLike, matrix: np.ndarray) -> None:
    """Write a 2-D float32 matrix as ``.npy`` atomically (rows = spectra, columns = pixels)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"flux matrix must be 2-D, got shape {matrix.shape}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, matrix, allow_pickle=False)


def open_matrix_writer(path: str | os.PathLike, n_rows: int, n_pixels: int) -> np.memmap:
    """A float32 ``.npy`` memmap of the final shape, for stages that fill rows in a stream.

    Write into the returned array, then call :func:`commit_matrix_writer` to flush and move it
    into place; until then it lives under a temporary name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.writing.npy")
    return np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n_rows, n_pixels))


@contextlib.contextmanager
def matrix_row_writer(path: str | os.PathLike, n_rows: int, n_pixels: int
                      ) -> Iterator[Callable[[np.ndarray], None]]:
    """Write a float32 ``.npy`` of shape (n_rows, n_pixels) row block by row block, atomically.

    Yields ``write(rows)``; blocks go straight to the file (no memory map, whose written pages
    would stay in the job's resident memory), and the file appears at ``path`` only when the
    block completes with exactly ``n_rows`` rows written.
    """
    written = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f4", "fortran_order": False, "shape": (int(n_rows), int(n_pixels))})

        def write(rows: np.ndarray) -> None:
            nonlocal written
            rows = np.ascontiguousarray(rows, dtype="<f4")
            if rows.ndim != 2 or rows.shape[1] != n_pixels or written + len(rows) > n_rows:
                raise ValueError(f"{path}: block of shape {rows.shape} does not fit "
                                 f"({written} of {n_rows} rows written, {n_pixels} pixels)")
            fh.write(rows.tobytes())
            written += len(rows)

        yield write
        if written != n_rows:
            raise ValueError(f"{path}: {written} rows written, {n_rows} declared")


def commit_matrix_writer(matrix: np.memmap, path: str | os.PathLike) -> None:
    matrix.flush()
    tmp = Path(matrix.filename)
    del matrix
    os.replace(tmp, path)


def load_matrix(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """Open a flux matrix; memory-mapped read-only by default so it is never copied whole."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


class MatrixRowReader:
    """Read contiguous row blocks of a float32 ``.npy`` matrix into one reused buffer.

    Slicing a memory map leaves every page it touched mapped into the process, so a job that
    streams a 10⁶-row matrix ends with the whole file counted in its RSS (and in Slurm's
    MaxRSS). ``readinto`` copies through the page cache instead: the process holds one batch.
    """

    def __init__(self, path: str | os.PathLike, max_rows: int) -> None:
        self._file = open(path, "rb")
        version = np.lib.format.read_magic(self._file)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(self._file)
        if fortran or dtype != np.dtype("<f4") or len(shape) != 2:
            self._file.close()
            raise ValueError(f"{path}: expected a C-ordered little-endian float32 matrix, got "
                             f"dtype {dtype}, shape {shape}, fortran_order {fortran}")
        self.shape = shape
        self._offset = self._file.tell()
        self._row_bytes = 4 * shape[1]
        self._buffer = np.empty((max(1, int(max_rows)), shape[1]), dtype=np.float32)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a view of the buffer (valid until the next call)."""
        n = stop - start
        if not 0 <= start <= stop <= self.shape[0] or n > len(self._buffer):
            raise ValueError(f"rows {start}:{stop} outside the matrix {self.shape} or the "
                             f"buffer of {len(self._buffer)} rows")
        self._file.seek(self._offset + start * self._row_bytes)
        view = self._buffer[:n]
        got = self._file.readinto(memoryview(view).cast("B"))
        if got != n * self._row_bytes:
            raise OSError(f"short read: {got} of {n * self._row_bytes} bytes at row {start}")
        return view

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "MatrixRowReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- tables

def save_table(path: str | os.PathLike, table: pd.DataFrame,
               metadata: Mapping[str, Any] | None = None) -> None:
    """Write a DataFrame as Parquet atomically, provenance JSON under the 'starlabels' key."""
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata(_with_provenance(arrow.schema, metadata).metadata)
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)


def _with_provenance(schema: pa.Schema, metadata: Mapping[str, Any] | None) -> pa.Schema:
    """``schema`` with ``metadata`` stored as JSON under the 'starlabels' key."""
    meta = dict(schema.metadata or {})
    meta[PROVENANCE_KEY] = json.dumps(_jsonable(dict(metadata or {})), sort_keys=True).encode()
    return schema.with_metadata(meta)


@contextlib.contextmanager
def open_table_writer(path: str | os.PathLike, metadata: Mapping[str, Any] | None = None
                      ) -> Iterator[Callable[[pd.DataFrame], None]]:
    """Write a Parquet table chunk by chunk (one row group per call), atomically.

    Yields ``write(df)``; every chunk must have the first one's columns and types. Only the
    current chunk is in memory, so a stage can write millions of rows in constant memory. The
    file appears at ``path`` (with ``metadata`` stored as :func:`save_table` does) only when the
    block completes; a failure leaves no partial file. At least one chunk (it may be empty) must
    be written.
    """
    writer: pq.ParquetWriter | None = None
    with atomic_path(path) as tmp:
        def write(df: pd.DataFrame) -> None:
            nonlocal writer
            arrow = pa.Table.from_pandas(df, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(tmp, _with_provenance(arrow.schema, metadata))
            writer.write_table(arrow)
        try:
            yield write
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError(f"{path}: no chunk was written; write at least an empty frame")


def load_table(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    return pq.read_table(path, columns=columns).to_pandas()


def table_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The provenance mapping stored by :func:`save_table` (empty if none)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(PROVENANCE_KEY)
    return json.loads(raw) if raw else {}


def empty_rejects() -> pd.DataFrame:
    """The rejects-table layout every stage uses: what was rejected, by which stage, and why."""
    return pd.DataFrame({"spectrum_id": pd.Series(dtype=str), "path": pd.Series(dtype=str),
                         "stage": pd.Series(dtype=str), "reason": pd.Series(dtype=str)})
