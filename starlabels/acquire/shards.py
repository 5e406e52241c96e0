"""The download shards: each job fetches the rows of one shard of a remote-file table.

A file already complete on disk (matching the archive's size/checksum, or — ESO publishes
neither — recorded in the shard journals kept beside the downloads) is not fetched again, so a
rerun after an interruption fetches only what is missing. A file the archive does not have
(HTTP 404), or serves only as something else (an HTML page, a file cut short: what the content
check refuses after every retry), is recorded as missing with that reason where missing files
are allowed; it never reaches the download folder.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from .. import artifacts
from ..batch import Log
from .auth import login_headers
from .fetch import NOT_THE_FILE, fetch_files, read_manifest
from .http import ArchiveUnreachable, DownloadError
from .remote import FETCHED_STATUSES, MISSING_STATUSES, fetch_options, remote_files

_NOT_THERE = re.compile(r"HTTP (?:404|410)\b|not found: |" + re.escape(NOT_THE_FILE + ": "))


def fetched_paths(result: pd.DataFrame, what: str, allow_missing: bool) -> list[str]:
    """Paths of the fetched files; raise naming the failures (and missing ones unless allowed)."""
    status = result["status"].astype(str).str.lower()
    bad = ~status.isin(FETCHED_STATUSES) & ~(allow_missing & status.isin(MISSING_STATUSES))
    if bad.any():
        sample = result.loc[bad, ["url", "status", "error"]].head(5).to_dict("records")
        raise DownloadError(f"{int(bad.sum())} of {len(result)} {what} could not be fetched, "
                            f"e.g. {sample}; rerun to fetch only the missing files")
    return result.loc[status.isin(FETCHED_STATUSES), "path"].astype(str).tolist()


def journal_path(journal_dir: str | os.PathLike, shard: int) -> Path:
    """Where a shard's download journal lives (outside Snakemake's outputs, so it survives a
    failed job and the rerun knows which files are complete)."""
    return Path(journal_dir) / f"shard_{int(shard)}.parquet"


def seed_journal(journal_dir: str | os.PathLike, shard: int, relpaths: Iterable[str]) -> int:
    """Copy into this shard's journal what the other journals know about its files.

    Archives like ESO give no size or checksum, so a complete file is recognised only through a
    journal entry (bytes + sha256). Files move between shards when ``download.shards`` changes;
    gathering every journal's entries for this shard's files keeps them from being fetched twice.
    Returns the number of entries added.
    """
    wanted = set(relpaths)
    own = journal_path(journal_dir, shard)
    mine = read_manifest(own)
    known = set(mine["relpath"]) if len(mine) else set()
    found = []
    for other in sorted(Path(journal_dir).glob("shard_*.parquet")):
        if other == own:
            continue
        rows = read_manifest(other)
        rows = rows[rows["relpath"].isin(wanted - known) & rows["status"].isin(FETCHED_STATUSES)]
        if len(rows):
            found.append(rows)
            known |= set(rows["relpath"])
    if not found:
        return 0
    merged = pd.concat([mine, *found], ignore_index=True) if len(mine) else \
        pd.concat(found, ignore_index=True)
    artifacts.save_table(own, merged.reset_index(drop=True), {"stage": "download"})
    return sum(len(f) for f in found)


def _missing_not_fatal(error: Exception, what: str, log: Log) -> pd.DataFrame:
    """The fetch result of a run whose only failures are files the archive does not have (or
    has only in a form the content check refuses), with those rows marked 'missing' and their
    reason kept in ``error``; re-raise ``error`` if anything else failed."""
    frame = getattr(error, "manifest", None)
    if frame is None:
        raise error
    frame = frame.copy()
    failed = frame["status"] == "failed"
    absent = failed & frame["error"].fillna("").str.contains(_NOT_THERE)
    if (failed & ~absent).any():
        raise error
    frame.loc[absent, "status"] = "missing"
    log(f"download: {int(absent.sum())} {what} are not in the archive (HTTP 404/410) or not "
        f"usable as served; recorded as missing with the reason")
    return frame


def download_shard(*, remote: str, shard: int, dest_dir: str, out: str,
                   download: Mapping[str, Any], journal_dir: str | None = None,
                   login: Mapping[str, Any] | None = None,
                   allow_missing: bool = False, what: str = "files", log: Log = print,
                   metadata: Mapping | None = None) -> pd.DataFrame:
    """Fetch the files of one shard into ``dest_dir``; write what was fetched to ``out``.

    ``login`` is the archive's login block (``token_url``, ``user_env``, ``password_env``; None
    for public archives): with its environment variables set, the job logs in once and sends
    the token with every request. Files already complete in ``dest_dir`` (verified against the
    archive's size/checksum or the journal in ``journal_dir``) are not fetched again. ``allow_missing`` records an
    archive's 404 as status 'missing' instead of failing (PHOENIX grid holes); any other
    failure fails the job after the retries, so the next run tries again.
    """
    table = artifacts.load_table(remote)
    rows = table[table["shard"] == int(shard)]
    journal = None
    if journal_dir is not None:
        added = seed_journal(journal_dir, shard, rows["relpath"])
        journal = journal_path(journal_dir, shard)
        if added:
            log(f"download: shard {shard}: {added} files known complete from other shards' "
                f"journals")
    log(f"download: shard {shard}: {len(rows)} {what}")
    names = (login or {}).get("user_env"), (login or {}).get("password_env")
    try:
        result = fetch_files(remote_files(rows), dest_dir, what=what, log=log,
                             manifest_path=journal, auth_headers=login_headers(login, log=log),
                             credentials_env=names if all(names) else None,
                             **fetch_options(download))
    except ArchiveUnreachable:
        raise
    except DownloadError as error:
        if not allow_missing:
            raise
        result = _missing_not_fatal(error, what, log)
    fetched_paths(result, what, allow_missing)
    artifacts.save_table(out, result.reset_index(drop=True),
                         dict(metadata or {}, shard=int(shard)))
    return result
