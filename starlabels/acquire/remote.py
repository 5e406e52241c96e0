"""Remote-file tables: one row per archive file to fetch (URL with the ``mirror`` applied,
sanitised local name, expected size/checksum where the archive gives one, and a ``shard``).

The manifest step writes one (:mod:`starlabels.acquire.manifests`), the download shards fetch its
rows (:mod:`starlabels.acquire.shards`) and the assemble step lays the files out
(:mod:`starlabels.acquire.assemble`). File names are chosen here, never taken verbatim from the
archive: every name goes through :func:`starlabels.acquire.fetch.safe_relpath` so an odd CNAME or
dp_id cannot leave the download folder.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .. import config
from ..io.fitstools import fits_problem
from .fetch import RemoteFile, safe_relpath, with_mirror

#: columns every remote-file table has (one row per file to fetch)
REMOTE_COLUMNS = ("url", "archive_url", "relpath", "size", "sha256", "md5", "shard", "kind")


#: fetch_files statuses that mean "the file is on disk, complete and verified"
FETCHED_STATUSES = frozenset({"fetched", "skipped"})


#: our status for a file the archive does not have (HTTP 404 / 410): recorded, not fatal where
#: the archive is known to have holes (the PHOENIX grid)
MISSING_STATUSES = frozenset({"missing"})


class ArchiveConfigError(ValueError):
    """The experiment's archive settings cannot describe a download (names the config key)."""


def shard_of(relpath: str, n_shards: int) -> int:
    """Shard number of a file: a hash of its local name, so a file keeps its shard whatever
    else the archive lists (a rerun's shards then hold the same files as before)."""
    if n_shards < 1:
        raise ArchiveConfigError(f"download.shards must be >= 1, got {n_shards}")
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % int(n_shards)


def remote_table(rows: pd.DataFrame, n_shards: int, mirror: str | None) -> pd.DataFrame:
    """Complete a table of files to fetch: mirror applied to ``archive_url``, sanitised relpath,
    size/checksum columns (None where the archive gives none) and the shard number.

    Duplicate local names would make two archive files overwrite each other: refused.
    """
    out = rows.copy()
    out["relpath"] = [safe_relpath(p) for p in out["relpath"]]
    duplicated = out["relpath"][out["relpath"].duplicated()].unique()
    if len(duplicated):
        raise ValueError(f"{len(duplicated)} archive files map onto the same local name, e.g. "
                         f"{list(duplicated[:3])}")
    out["url"] = [with_mirror(u, mirror) for u in out["archive_url"]]
    for column in ("size", "sha256", "md5"):
        if column not in out:
            out[column] = None
    if "kind" not in out:
        out["kind"] = "file"
    out["shard"] = np.array([shard_of(p, n_shards) for p in out["relpath"]], dtype=np.int64)
    first = [c for c in REMOTE_COLUMNS]
    return out[first + [c for c in out.columns if c not in first]].reset_index(drop=True)


def remote_files(table: pd.DataFrame) -> list:
    """The rows of a remote table as :class:`starlabels.acquire.fetch.RemoteFile` objects."""
    def _opt(value, cast):
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            return None
        return cast(value)

    return [RemoteFile(url=str(r.url), relpath=str(r.relpath), size=_opt(r.size, int),
                       sha256=_opt(r.sha256, str), md5=_opt(r.md5, str))
            for r in table.itertuples(index=False)]


def fetch_options(download: Mapping[str, Any]) -> dict[str, Any]:
    """fetch_files keyword arguments from the experiment's ``download`` config section (keys it
    leaves out take the schema's defaults)."""
    download = config.section("download", download)
    return {"concurrency": int(download["concurrency"]),
            "rate_limit_per_host": float(download["rate_limit_per_host"]),
            "retries": int(download["retries"]), "backoff_s": float(download["backoff_s"]),
            "max_backoff_s": float(download["max_backoff_s"]),
            "timeout_s": float(download["timeout_s"]),
            "deadline_s": float(download["file_deadline_s"]),
            # every file the pipeline fetches from an archive is a FITS file
            "content_check": fits_problem}
