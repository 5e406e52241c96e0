"""Download engine for survey archives (ESO, SDSS SAS, PHOENIX): resumable, verified, polite.

Our machines cannot reach the archives, so this module is written to be right by construction
and is proven against a loopback server that injects faults (``tests/httpfaults.py``). The
promises, in the order a user notices them:

- nothing unverified ever sits at a final path: bytes go to a hidden ``.<name>.part`` beside it
  (a name no sanitised remote name can take, see :func:`safe_relpath`), and the rename happens
  only after the size, the checksum and the content check (a FITS file must look like one);
- one downloader per file: a second process (or thread) fetching the same file into the same
  folder waits for the first instead of writing into the same part file;
- an interrupted run resumes: a part file continues with an HTTP ``Range`` request carrying the
  ``If-Range`` validator (ETag or Last-Modified) recorded when its first byte arrived, so a file
  that changed on the server starts over instead of being spliced; a part with neither a
  validator nor a published checksum to check it against is fetched again from zero. A final
  file that is already verified (or recorded in the manifest) is skipped without a request;
- a body sent with ``Content-Encoding: gzip`` or ``deflate`` despite ``Accept-Encoding:
  identity`` is decoded; a 416 answer is believed only where it agrees with the length the
  server announced for the part; each file has an overall deadline, so a server that trickles
  bytes holds a worker no longer than that;
- the archive is treated politely: bounded concurrency, a per-host request interval, exponential
  backoff with jitter on 429/5xx (``Retry-After`` honoured) and on dropped connections;
- an unreachable archive stops the run early with a message that says how to proceed (a mirror
  or the offline demo experiments) instead of grinding through thousands of files;
- login headers (the archive's bearer token, :mod:`starlabels.acquire.auth`) and any password
  in a URL never reach logs, exceptions or the manifest.

Mirrors (``file://`` URLs or plain folders with the archive's path layout) go through the same
verification, so a local copy is trusted no more than the archive.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import threading
import time
import urllib.request
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import unquote, urlsplit

import pandas as pd
import requests
import urllib3.exceptions

from ..artifacts import save_table
from .http import (ArchiveUnreachable, DownloadError, Permanent, Retryable, backoff_delay,
                   describe_error, host_of, redact_url, request_error, retry_after_seconds,
                   unreachable_message)

CHUNK_BYTES = 1 << 16
MANIFEST_COLUMNS = ["url", "relpath", "path", "bytes", "sha256", "fetched_at", "status",
                    "attempts", "error"]
PART_SUFFIX = ".part"
#: a content check: the problem with a complete file (None when it is what was asked for)
ContentCheck = Callable[[Path], "str | None"]
#: how a failure by the content check begins (after the URL)
NOT_THE_FILE = "not the file asked for"
#: how often a long run rewrites its manifest, so a killed run still leaves a record
MANIFEST_CHECKPOINT_S = 60.0


# ---------------------------------------------------------------- public types

@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: where it lives and where it goes, plus what the archive promises."""

    url: str                 # full URL (mirror already applied by the caller) or a local path
    relpath: str             # where it goes under dest_dir; sanitised with safe_relpath
    size: int | None = None  # expected bytes if the archive says
    sha256: str | None = None
    md5: str | None = None   # some archives publish md5 only


# ---------------------------------------------------------------- names and URLs

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._+=-]")


def safe_relpath(name: str) -> str:
    """Turn a remote-derived name into a relative path that cannot leave the destination folder.

    Archive names (ESO dp_ids with ':' in them, PHOENIX '=' and '+') are not trusted: every
    character outside [A-Za-z0-9._+=-] becomes '_', leading dots are stripped (no hidden files,
    no '..'), empty components and leading slashes vanish. Raises ValueError if nothing is left.
    """
    parts = []
    for component in re.split(r"[/\\]+", str(name)):
        component = _UNSAFE_CHARS.sub("_", component).lstrip(".")
        if component:
            parts.append(component)
    if not parts:
        raise ValueError(f"no usable file name in {name!r}")
    return "/".join(parts)


def with_mirror(url: str, mirror: str | None, *, strip_prefix: str = "") -> str:
    """Point ``url`` at a mirror that keeps the archive's path layout.

    ``mirror`` may be an HTTP(S) base ('http://host:port/base'), a ``file://`` folder URL or a
    plain folder path; the result is ``<mirror base><url path>`` (a ``file://`` URL for folders).
    ``strip_prefix`` drops a leading part of the archive path that the mirror does not repeat
    (e.g. '/sas/dr12' when the mirror holds only 'marvels/...'). No mirror: ``url`` unchanged.
    """
    if not mirror:
        return url
    source = urlsplit(url)
    path = source.path if source.scheme else Path(url).as_posix()
    if not path.startswith("/"):
        path = "/" + path
    # a mirror serves its own folder: a path that climbs ('..', also percent-encoded) would
    # copy a file from elsewhere on the machine (or the mirror host) as if the archive had it
    if any(part in ("..", ".") for part in re.split(r"[/\\]", unquote(path))):
        raise ValueError(f"{redact_url(url)}: archive path with '.' or '..' components cannot "
                         f"be fetched from a mirror (it would leave the mirror's folder)")
    if strip_prefix:
        prefix = "/" + strip_prefix.strip("/")
        if path != prefix and not path.startswith(prefix + "/"):
            raise ValueError(f"{redact_url(url)} does not start with the prefix {prefix!r} to strip")
        path = path[len(prefix):] or "/"
    target = urlsplit(mirror)
    if target.scheme in ("http", "https"):
        out = mirror.rstrip("/") + path
        return f"{out}?{source.query}" if source.query else out
    if target.scheme == "file":
        return mirror.rstrip("/") + path
    if target.scheme and len(target.scheme) > 1:
        raise ValueError(f"unsupported mirror {mirror!r}: use http(s)://, file:// or a folder path")
    folder = Path(mirror).expanduser().resolve()
    return folder.as_uri().rstrip("/") + path


def _is_http(url: str) -> bool:
    return urlsplit(url).scheme in ("http", "https")


def _local_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL with a remote host is not supported: {url}")
        return Path(urllib.request.url2pathname(parts.path))
    if parts.scheme and len(parts.scheme) > 1:
        raise ValueError(f"unsupported URL scheme {parts.scheme!r} in {redact_url(url)}")
    return Path(url)


# ---------------------------------------------------------------- credentials


class _Redactor:
    """Removes secrets from any text before it is logged, raised or stored."""

    def __init__(self, secrets: Iterable[str]):
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def _secrets_of(auth_headers: Mapping[str, str] | None, files: Sequence[RemoteFile]) -> list[str]:
    """What must never be shown: the login headers' values (and the token alone) and any
    password written into a URL."""
    secrets = []
    for value in (auth_headers or {}).values():
        secrets.extend([value, value.split(" ", 1)[-1]])
    for item in files:
        password = urlsplit(item.url).password if _is_http(item.url) else None
        if password:
            secrets.append(password)
    return secrets


# ---------------------------------------------------------------- internal signals


class _Stopped(Exception):
    """The run is being abandoned (archive unreachable, or interrupted)."""


_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header; None where unknown."""
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None, None
    first = int(match.group(1)) if match.group(1) else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return first, total


# ---------------------------------------------------------------- politeness and progress

class _HostRateLimiter:
    """At most ``per_second`` request starts per host, shared by all worker threads.

    Each caller reserves the next free slot under a lock and then sleeps outside it, so the
    spacing holds however many threads wait.
    """

    def __init__(self, per_second: float | None):
        self.interval = 1.0 / per_second if per_second and per_second > 0 else 0.0
        self._next_slot: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, host: str, stop: threading.Event) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot.get(host, now))
            self._next_slot[host] = slot + self.interval
        if slot > now and stop.wait(slot - now):
            raise _Stopped()


class _Progress:
    """Plain progress lines for a Snakemake rule log: every ~5 % of files or every 10 s."""

    def __init__(self, total: int, what: str, log: Callable[[str], None], every_s: float = 10.0):
        self.total, self.what, self.log, self.every_s = total, what, log, every_s
        self.step = max(1, math.ceil(total * 0.05))
        self.started = time.monotonic()
        self.last_line = self.started
        self.next_mark = self.step
        self.counts = {"fetched": 0, "skipped": 0, "failed": 0}
        self.bytes = 0
        self._lock = threading.Lock()

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes += n

    def file_done(self, status: str) -> None:
        with self._lock:
            self.counts[status] = self.counts.get(status, 0) + 1

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        mb = self.bytes / 1e6
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.what}: {self.done}/{self.total} files ({pct:.0f}%), {mb:.1f} MB at "
                f"{mb / elapsed:.2f} MB/s, {self.counts['fetched']} fetched, {self.counts['skipped']} skipped, "
                f"{self.counts['failed']} failed, {elapsed:.0f} s")

    def maybe_report(self) -> None:
        now = time.monotonic()
        if self.done >= self.next_mark or now - self.last_line >= self.every_s:
            self.log(self.line())
            self.last_line = now
            while self.next_mark <= self.done:
                self.next_mark += self.step


# ---------------------------------------------------------------- one file

@dataclass
class _Outcome:
    url: str
    relpath: str
    path: str
    status: str                     # fetched | skipped | failed
    bytes: int | None = None
    sha256: str | None = None
    fetched_at: str | None = None
    attempts: int = 0
    error: str | None = None
    unreachable_host: str | None = None  # every attempt failed to connect to this host

    def row(self) -> dict:
        return {name: getattr(self, name) for name in MANIFEST_COLUMNS}


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _hash_file(path: Path, want_md5: bool) -> tuple[str, str | None]:
    sha = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False) if want_md5 else None
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
            if md5 is not None:
                md5.update(block)
    return sha.hexdigest(), (md5.hexdigest() if md5 is not None else None)


def _body_chunks(response: requests.Response) -> Iterator[bytes]:
    """The body's bytes as they arrive (urllib3 >= 2.3 read1), exactly as sent: any content
    encoding is undone by :class:`_Decoder`, which also tells a complete stream from a cut one."""
    raw = response.raw
    if hasattr(raw, "read1"):
        while True:
            chunk = raw.read1(CHUNK_BYTES, decode_content=False)
            if not chunk:
                return
            yield chunk
    else:  # older urllib3: small chunks bound what a failure can throw away
        yield from raw.stream(8192, decode_content=False)


class _Decoder:
    """Undo a Content-Encoding the server applied although ``identity`` was asked for.

    gzip and deflate are the encodings HTTP servers apply on their own; their streams carry an
    end marker, so a body cut short is recognised even without a Content-Length to compare
    with. Anything else cannot be decoded here and is a named failure.
    """

    def __init__(self, encoding: str):
        self.encoding = encoding
        if encoding in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._z = zlib.decompressobj(zlib.MAX_WBITS)
        else:
            raise Permanent(f"the server sent Content-Encoding {encoding!r} although identity "
                            f"was asked for, and it cannot be decoded here")
        self._started = False

    def feed(self, chunk: bytes) -> bytes:
        try:
            out = self._z.decompress(chunk)
        except zlib.error:
            if self.encoding == "deflate" and not self._started:
                # 'deflate' without the zlib wrapper, as some servers send it
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                out = self._z.decompress(chunk)
            else:
                raise Retryable(f"{self.encoding}-encoded body is corrupt", restart=True) \
                    from None
        self._started = True
        return out

    def finish(self) -> bytes:
        out = self._z.flush()
        if not self._z.eof:
            raise Retryable(f"{self.encoding}-encoded body ended before its end marker",
                            restart=True)
        return out


def _part_size(part: Path) -> int:
    try:
        return part.stat().st_size
    except FileNotFoundError:
        return 0


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def part_path(final: Path) -> Path:
    """Where the bytes of ``final`` collect until they are verified: a hidden name beside it that
    no sanitised remote name can take (:func:`safe_relpath` strips leading dots)."""
    return final.with_name(f".{final.name}{PART_SUFFIX}")


def _validator_path(final: Path) -> Path:
    """What the server said about the bytes in the part file (URL, validator, length)."""
    return final.with_name(f".{final.name}{PART_SUFFIX}.json")


def _claim_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.lock")


def _lock_unsupported(exc: OSError) -> bool:
    return exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


_CLAIMED: set[str] = set()
_CLAIMED_CHANGED = threading.Condition()


@contextlib.contextmanager
def _claim(final: Path, stop: threading.Event, log: Callable[[str], None]) -> Iterator[None]:
    """The right to write ``final`` and its part file, exclusive among the threads of this
    process and (through an ``flock`` on a hidden lock file beside it) among processes.

    Two downloaders of one file into one folder would otherwise write into the same part file
    and rename a mixture. The second waits for the first, then checks the file afresh. The lock
    file is removed by its holder; a waiter that locked a removed file opens the new one.
    """
    key = os.path.abspath(final)
    waited = False
    with _CLAIMED_CHANGED:
        while key in _CLAIMED:
            if not waited:
                log(f"waiting: another download of {final.name} into {final.parent} is running")
                waited = True
            _CLAIMED_CHANGED.wait(0.2)
            if stop.is_set():
                raise _Stopped()
        _CLAIMED.add(key)
    try:
        with _process_claim(_claim_path(final), final, stop, log, waited):
            yield
    finally:
        with _CLAIMED_CHANGED:
            _CLAIMED.discard(key)
            _CLAIMED_CHANGED.notify_all()


@contextlib.contextmanager
def _process_claim(lock: Path, final: Path, stop: threading.Event, log: Callable[[str], None],
                   waited: bool) -> Iterator[None]:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if not waited:
                log(f"waiting: another process is downloading {final.name} into {final.parent}")
                waited = True
            if stop.wait(0.2):
                raise _Stopped() from None
            continue
        except OSError as exc:
            os.close(fd)
            if not _lock_unsupported(exc):
                raise
            log(f"{final.parent}: the file system refuses locks; concurrent downloads into this "
                f"folder are not excluded")
            yield
            return
        try:
            now = os.stat(lock)
        except FileNotFoundError:
            now = None
        held = os.fstat(fd)
        if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            os.close(fd)   # its holder finished and removed it: lock the current one
            continue
        try:
            yield
        finally:
            _unlink(lock)
            os.close(fd)
        return


class _DeadlineExceeded(Exception):
    """The file took longer than the per-file deadline, all attempts together."""


@dataclass
class _PartState:
    """What the server told about the bytes in a part file when their first byte arrived."""
    url: str
    validator: str | None      # strong ETag or Last-Modified, for If-Range
    total: int | None          # the file's length as the server announced it

    @classmethod
    def load(cls, path: Path) -> "_PartState | None":
        try:
            data = json.loads(path.read_text())
            return cls(str(data["url"]), data.get("validator"), data.get("total"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".new")
        tmp.write_text(json.dumps({"url": self.url, "validator": self.validator,
                                   "total": self.total}))
        os.replace(tmp, path)


def _validator_of(response: requests.Response) -> str | None:
    """The value for If-Range: a strong ETag, else Last-Modified (RFC 9110 13.1.5)."""
    etag = (response.headers.get("ETag") or "").strip()
    if etag and not etag.startswith("W/"):
        return etag
    return (response.headers.get("Last-Modified") or "").strip() or None


class _Engine:
    """Everything the worker threads share for one fetch_files call."""

    def __init__(self, dest: Path, *, retries: int, backoff_s: float, max_backoff_s: float,
                 timeout_s: float, deadline_s: float | None, rate_limit_per_host: float,
                 auth_headers, credentials_env, content_check: ContentCheck | None,
                 redact: _Redactor, log: Callable[[str], None], progress: _Progress):
        self.dest = dest
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.auth_headers = dict(auth_headers or {})
        self.credentials_env = credentials_env
        self.content_check = content_check
        self.redact = redact
        self.log = lambda text: log(redact(text))
        self.progress = progress
        self.limiter = _HostRateLimiter(rate_limit_per_host)
        self.stop = threading.Event()
        self.connected_hosts: set[str] = set()
        self._connected_lock = threading.Lock()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    # -- sessions: one per thread, because requests.Session is not documented as thread-safe
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = "starlabels-download/1 (+python-requests)"
            session.headers.update(self.auth_headers)
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def mark_connected(self, host: str) -> None:
        with self._connected_lock:
            self.connected_hosts.add(host)

    # -- the retry loop
    def fetch_one(self, item: RemoteFile, recorded: dict | None) -> _Outcome | None:
        """The outcome for one file, or None when the run stopped before it was started."""
        if self.stop.is_set():
            return None
        final = self.dest / item.relpath
        shown = redact_url(item.url)
        outcome = _Outcome(url=shown, relpath=item.relpath, path=str(final), status="failed")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with _claim(final, self.stop, self.log):
                digest = self._already_present(item, final, recorded)
                if digest is not None:
                    outcome.status, outcome.bytes, outcome.sha256 = ("skipped",
                                                                     final.stat().st_size, digest)
                    outcome.fetched_at = (recorded or {}).get("fetched_at") or _utc_now()
                    return outcome
                return self._fetch_with_retries(item, final, outcome)
        except _Stopped:
            outcome.error = "not finished: the run was stopped"
            return outcome
        except Exception as exc:  # a bug or an odd OS error must not take the other files down
            outcome.error = self.redact(f"{type(exc).__name__}: {exc}")
            return outcome

    def _fetch_with_retries(self, item: RemoteFile, final: Path, outcome: _Outcome) -> _Outcome:
        part, state_path = part_path(final), _validator_path(final)
        shown = outcome.url
        host = host_of(item.url)
        failures = 0
        furthest = _part_size(part)
        only_connect_failures = True
        started = time.monotonic()
        deadline = started + self.deadline_s if self.deadline_s else math.inf
        while True:
            outcome.attempts += 1
            try:
                self._transfer(item, part, state_path, deadline)
                digest = self._verify(item, part)
                os.replace(part, final)
                _unlink(state_path)
                outcome.status, outcome.bytes, outcome.sha256 = "fetched", final.stat().st_size, digest
                outcome.fetched_at = _utc_now()
                return outcome
            except Permanent as exc:
                outcome.error = self.redact(f"{shown}: {exc}")
                return outcome
            except _DeadlineExceeded:
                outcome.error = self.redact(
                    f"{shown}: gave up after {time.monotonic() - started:.0f} s, the per-file "
                    f"deadline of {self.deadline_s:g} s (download.file_deadline_s); "
                    f"{_part_size(part)} bytes kept for a rerun to resume")
                return outcome
            except Retryable as exc:
                only_connect_failures &= exc.connect_failure
                if exc.restart:
                    _unlink(part)
                    _unlink(state_path)
                size_now = _part_size(part)
                # An attempt that moved the part file forward does not use up the retry budget:
                # a big file on a flaky line still completes. The file size (and the per-file
                # deadline) bound this.
                if size_now > furthest:
                    furthest = size_now
                else:
                    failures += 1
                if failures > self.retries:
                    outcome.error = self.redact(
                        f"{shown}: {exc.reason} (gave up after {outcome.attempts} attempts)")
                    if only_connect_failures and host not in self.connected_hosts:
                        outcome.unreachable_host = host
                        self.stop.set()  # at once: no worker should start another file
                    return outcome
                delay = backoff_delay(failures, self.backoff_s, self.max_backoff_s, exc.retry_after)
                if time.monotonic() + delay > deadline:
                    outcome.error = self.redact(
                        f"{shown}: {exc.reason}; no time left for another attempt within the "
                        f"per-file deadline of {self.deadline_s:g} s (download.file_deadline_s)")
                    return outcome
                self.log(f"retrying {shown} in {delay:.2f} s (attempt {outcome.attempts}, "
                         f"{failures}/{self.retries} retries used): {exc.reason}")
                if self.stop.wait(delay):
                    raise _Stopped()

    # -- skip what is already there and verified
    def _already_present(self, item: RemoteFile, final: Path, recorded: dict | None) -> str | None:
        """sha256 of a final file that needs no request, or None (a known-bad file is deleted)."""
        if not final.is_file():
            return None
        size = final.stat().st_size
        if item.size is not None or item.sha256 or item.md5:
            if item.size is not None and size != item.size:
                return self._discard(final, f"size {size} instead of {item.size}")
            sha, md5 = _hash_file(final, want_md5=bool(item.md5))
            if item.sha256 and sha != item.sha256.lower():
                return self._discard(final, "sha256 differs")
            if item.md5 and md5 != item.md5.lower():
                return self._discard(final, "md5 differs")
        elif recorded and recorded.get("bytes") == size and recorded.get("sha256"):
            sha, _ = _hash_file(final, want_md5=False)
            if sha != recorded["sha256"]:
                return self._discard(final, "sha256 differs from the manifest")
        else:
            return None  # nothing to check it against: fetch again, replace atomically on success
        problem = self.content_check(final) if self.content_check else None
        if problem:
            return self._discard(final, problem)
        return sha

    def _discard(self, final: Path, why: str) -> None:
        self.log(f"refetching {final}: the file present does not match ({why})")
        _unlink(final)
        return None

    # -- one attempt
    def _transfer(self, item: RemoteFile, part: Path, state_path: Path, deadline: float) -> None:
        if _is_http(item.url):
            self._transfer_http(item, part, state_path, deadline)
        else:
            self._copy_local(item, part)

    def _copy_local(self, item: RemoteFile, part: Path) -> None:
        try:
            source = _local_path(item.url)
        except ValueError as exc:
            raise Permanent(str(exc)) from None
        if not source.is_file():
            raise Permanent(f"not found: {source} does not exist (mirror incomplete?)")
        try:
            shutil.copyfile(source, part)
        except OSError as exc:
            raise Permanent(f"cannot copy {source}: {exc}") from None
        self.progress.add_bytes(_part_size(part))

    def _resumable(self, item: RemoteFile, part: Path, state_path: Path) -> _PartState | None:
        """What is known about the part's bytes if they may be continued, else None (and the
        part is gone): a part is continued only with the validator recorded when its bytes
        arrived, or where a published checksum will catch a mixture of two versions."""
        state = _PartState.load(state_path)
        if state is not None and state.url != redact_url(item.url):
            state = None
        trusted = state is not None and (state.validator or item.sha256 or item.md5)
        if not trusted and not (state is None and (item.sha256 or item.md5)):
            if _part_size(part):
                self.log(f"{redact_url(item.url)}: {_part_size(part)} bytes of an earlier "
                         f"attempt cannot be checked against the server's version; starting "
                         f"from zero")
            _unlink(part)
            _unlink(state_path)
            return None
        return state

    def _transfer_http(self, item: RemoteFile, part: Path, state_path: Path,
                       deadline: float) -> None:
        have = _part_size(part)
        state = self._resumable(item, part, state_path) if have else None
        have = _part_size(part)
        if item.size is not None and have > item.size:
            _unlink(part)
            have = 0
        if have and have == (item.size if item.size is not None else
                             (state.total if state is not None else None)):
            return  # complete from an earlier attempt: verification decides
        host = host_of(item.url)
        self.limiter.wait(host, self.stop)
        headers = {"Accept-Encoding": "identity"}  # byte offsets must refer to the file itself
        if have:
            headers["Range"] = f"bytes={have}-"
            if state is not None and state.validator:
                headers["If-Range"] = state.validator
        try:
            response = self.session().get(item.url, headers=headers, stream=True,
                                          timeout=(self.timeout_s, self.timeout_s))
        except requests.exceptions.RequestException as exc:
            raise request_error(exc) from None
        self.mark_connected(host)
        with response:
            self._check_status(response, item, have, state)
            if response.status_code == 416:
                return
            self._receive(response, item, part, state_path, have, deadline)

    def _check_status(self, response: requests.Response, item: RemoteFile, have: int,
                      state: _PartState | None) -> None:
        status = response.status_code
        label = f"HTTP {status} {response.reason or ''}".strip()
        if status in (200, 206):
            return
        if status == 416:  # the part already holds everything, or something is wrong
            _, total = _content_range(response.headers.get("Content-Range"))
            announced = state.total if state is not None else None
            if announced is not None and announced != have:
                raise Retryable(f"{label} for bytes={have}-, but the server announced "
                                f"{announced} bytes: restarting from zero", restart=True)
            if total is not None and total == have:
                return
            if total is None and (item.size is not None or item.sha256 or item.md5):
                return
            raise Retryable(f"{label} for bytes={have}-: restarting from zero", restart=True)
        if status == 429 or status >= 500:
            raise Retryable(label, retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        if status in (401, 403):
            raise Permanent(f"{label}: {self._credentials_hint()}")
        raise Permanent(f"{label} (not retried)")

    def _credentials_hint(self) -> str:
        user_var, password_var = self.credentials_env or ("STARLABELS_<ARCHIVE>_USER",
                                                          "STARLABELS_<ARCHIVE>_PASSWORD")
        if self.auth_headers:
            return (f"the archive rejected the login token obtained with the environment "
                    f"variables {user_var} and {password_var} (not that user's data, or the "
                    f"token expired: rerun to log in again)")
        return (f"the archive wants a login; set the environment variables {user_var} and "
                f"{password_var} (the archive's user name and password, exchanged for a "
                f"login token)")

    def _receive(self, response: requests.Response, item: RemoteFile, part: Path,
                 state_path: Path, have: int, deadline: float) -> None:
        """Stream the body into the part file; raise Retryable if it ends early."""
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        decoder = None if encoding in ("", "identity") else _Decoder(encoding)
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if response.status_code == 206:
            if decoder is not None:  # offsets would count encoded bytes, not the file's
                raise Retryable(f"partial answer in Content-Encoding {encoding}: restarting "
                                f"from zero", restart=True)
            first, total = _content_range(response.headers.get("Content-Range"))
            if first != have:
                raise Retryable(f"server resumed at byte {first} instead of {have}", restart=True)
            mode, start = "ab", have
            expected = total if total is not None else (have + length if length is not None else None)
        else:  # a full body: the server ignored the Range (or there was none); restart from zero
            if have:
                self.log(f"{redact_url(item.url)}: server sent the whole file instead of resuming "
                         f"at byte {have} (changed since, or no range support); restarting "
                         f"from zero")
            mode, start = "wb", 0
            expected = length if decoder is None else None
            _PartState(redact_url(item.url), _validator_of(response) if decoder is None else None,
                       expected).save(state_path)
        if item.size is not None and expected is not None and expected != item.size:
            raise Retryable(f"size mismatch: expected {item.size} bytes, server announces "
                             f"{expected}", restart=True)
        written, received = self._stream_body(response, part, mode, decoder, deadline)
        if decoder is not None:
            if length is not None and received < length:
                raise Retryable(f"truncated body: got {received} of {length} encoded bytes",
                                restart=True)
            return
        got = start + written
        if expected is not None and got < expected:
            raise Retryable(f"truncated body: got {got} of {expected} bytes")
        if expected is not None and got > expected:
            raise Retryable(f"body longer than announced ({got} > {expected} bytes)", restart=True)

    def _stream_body(self, response: requests.Response, part: Path, mode: str,
                     decoder: _Decoder | None, deadline: float) -> tuple[int, int]:
        """Append the body to the part file chunk by chunk; every byte received is kept.

        ``read1`` hands over whatever has arrived, so bytes before a drop or a stall reach the
        disk and the retry resumes after them (requests' iter_content would buffer up to a
        whole chunk and lose it with the exception). Returns (bytes written, bytes received).
        """
        written = received = 0
        chunks = _body_chunks(response)
        with open(part, mode) as fh:
            while True:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    if decoder is not None:
                        tail = decoder.finish()
                        fh.write(tail)
                        written += len(tail)
                    return written, received
                except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
                        OSError) as exc:
                    raise Retryable(f"connection lost after {received} bytes of the body: "
                                     f"{describe_error(exc)}", restart=decoder is not None) \
                        from None
                received += len(chunk)
                self.progress.add_bytes(len(chunk))
                data = decoder.feed(chunk) if decoder is not None else chunk
                try:
                    fh.write(data)
                    fh.flush()
                except OSError as exc:
                    raise Permanent(f"cannot write {part}: {exc}") from None
                written += len(data)
                if self.stop.is_set():
                    raise _Stopped()
                if time.monotonic() > deadline:
                    raise _DeadlineExceeded()

    def _verify(self, item: RemoteFile, part: Path) -> str:
        """sha256 of the complete part file, or Retryable when it is not what was promised."""
        size = _part_size(part)
        if item.size is not None and size < item.size:
            raise Retryable(f"truncated: {size} of {item.size} bytes")
        if item.size is not None and size > item.size:
            raise Retryable(f"size mismatch: expected {item.size} bytes got {size}", restart=True)
        sha, md5 = _hash_file(part, want_md5=bool(item.md5))
        if item.sha256 and sha != item.sha256.lower():
            raise Retryable(f"checksum mismatch: expected sha256 {item.sha256.lower()} got {sha}",
                             restart=True)
        if item.md5 and md5 != item.md5.lower():
            raise Retryable(f"checksum mismatch: expected md5 {item.md5.lower()} got {md5}",
                             restart=True)
        problem = self.content_check(part) if self.content_check else None
        if problem:
            raise Retryable(f"{NOT_THE_FILE}: {problem}", restart=True)
        return sha


# ---------------------------------------------------------------- manifest

def read_manifest(path: str | os.PathLike | None) -> pd.DataFrame:
    """The manifest at ``path`` (empty with the right columns if there is none)."""
    if path is None or not Path(path).is_file():
        return pd.DataFrame({name: pd.Series(dtype=object) for name in MANIFEST_COLUMNS})
    return pd.read_parquet(path)


def _manifest_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    frame["bytes"] = frame["bytes"].astype("Int64")
    frame["attempts"] = frame["attempts"].astype("int64")
    for name in ("url", "relpath", "path", "sha256", "fetched_at", "status", "error"):
        frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
    return frame


def _write_manifest(path: str | os.PathLike, previous: pd.DataFrame, rows: list[dict],
                    what: str) -> None:
    """Merge this run's rows into the earlier manifest (same relpath: this run wins), atomically."""
    current = _manifest_frame(rows)
    kept = previous[~previous["relpath"].isin(set(current["relpath"]))] if len(previous) else previous
    merged = _manifest_frame(kept.to_dict("records") + current.to_dict("records"))
    merged = merged.sort_values("relpath", kind="stable").reset_index(drop=True)
    save_table(path, merged, metadata={"stage": "download", "what": what,
                                       "written_utc": _utc_now()})


def _recorded_rows(previous: pd.DataFrame) -> dict[str, dict]:
    ok = previous[previous["status"].isin(["fetched", "skipped"])] if len(previous) else previous
    rows = {}
    for record in ok.to_dict("records"):
        record["bytes"] = None if pd.isna(record.get("bytes")) else int(record["bytes"])
        rows[record["relpath"]] = record
    return rows


# ---------------------------------------------------------------- the engine

def _prepare(files: Sequence[RemoteFile]) -> list[RemoteFile]:
    """Sanitise relpaths and drop exact duplicates; two different URLs for one path is an error."""
    chosen: dict[str, RemoteFile] = {}
    for item in files:
        clean = replace(item, relpath=safe_relpath(item.relpath))
        earlier = chosen.get(clean.relpath)
        if earlier is not None and earlier != clean:
            raise ValueError(f"two different files map to {clean.relpath!r}: "
                             f"{redact_url(earlier.url)} and {redact_url(clean.url)}")
        chosen[clean.relpath] = clean
    return list(chosen.values())


def fetch_files(files: Sequence[RemoteFile], dest_dir: str | os.PathLike, *,
                concurrency: int = 4, rate_limit_per_host: float = 5.0,
                retries: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                timeout_s: float = 60.0, deadline_s: float | None = None,
                manifest_path: str | os.PathLike | None = None,
                auth_headers: Mapping[str, str] | None = None,
                what: str = "files", log: Callable[[str], None] = print,
                credentials_env: tuple[str, str] | None = None,
                content_check: ContentCheck | None = None,
                progress_every_s: float = 10.0) -> pd.DataFrame:
    """Fetch ``files`` into ``dest_dir``, verified, resumable and idempotent; return the manifest rows.

    ``auth_headers`` go on every request (the archive's ``Authorization``, see
    :func:`starlabels.acquire.auth.login_headers`); ``credentials_env`` names the environment
    variables the login came from (or would), so a 401/403 message can say which ones to set.
    ``deadline_s`` bounds the time one file may take, all its attempts together (None: no
    bound); ``content_check`` names what is wrong with a complete file that is not what was
    asked for (an HTML error page served as a FITS file), so it is fetched again and never
    accepted, neither now nor from an earlier run.
    Raises ArchiveUnreachable early when a host never answered, DownloadError at the end when
    any file failed; in both cases the manifest (if any) is written first, so a rerun knows
    what is done. The exception carries this run's rows as ``.manifest``.
    """
    items = _prepare(files)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    redact = _Redactor(_secrets_of(auth_headers, items))
    say = lambda text: log(redact(text))  # noqa: E731
    previous = read_manifest(manifest_path)
    recorded = _recorded_rows(previous)
    progress = _Progress(len(items), what, say, every_s=progress_every_s)
    engine = _Engine(dest, retries=retries, backoff_s=backoff_s, max_backoff_s=max_backoff_s,
                     timeout_s=timeout_s, deadline_s=deadline_s,
                     rate_limit_per_host=rate_limit_per_host, auth_headers=auth_headers,
                     credentials_env=credentials_env, content_check=content_check,
                     redact=redact, log=log, progress=progress)
    hosts = sorted({host_of(item.url) for item in items})
    limit = (f"at most {rate_limit_per_host:g} requests/s per host" if rate_limit_per_host
             and rate_limit_per_host > 0 else "no rate limit")
    say(f"fetching {len(items)} {what} from {', '.join(hosts) or 'nowhere'} into {dest} "
        f"(concurrency {concurrency}, {limit})")
    outcomes: dict[str, _Outcome] = {}

    def write_manifest(only_finished: bool = False) -> None:
        if manifest_path is None:
            return
        done = [outcomes[item.relpath].row() for item in items if item.relpath in outcomes
                and not (only_finished and outcomes[item.relpath].status == "failed")]
        _write_manifest(manifest_path, previous, done, what)

    try:
        unreachable = _run_pool(engine, items, recorded, concurrency, outcomes,
                                checkpoint=lambda: write_manifest(only_finished=True))
    finally:  # also on Ctrl-C: the rerun must know what is already done
        write_manifest()
    frame = _manifest_frame([outcomes[item.relpath].row() for item in items
                             if item.relpath in outcomes])
    say(f"finished {progress.line()}")
    _raise_for_failures(frame, outcomes, unreachable, items, what, manifest_path)
    return frame


def _run_pool(engine: _Engine, items: list[RemoteFile], recorded: dict, concurrency: int,
              outcomes: dict[str, _Outcome], checkpoint: Callable[[], None]) -> _Outcome | None:
    """Run the workers, filling ``outcomes``; stop everything once a host proves unreachable.

    Returns the outcome that proved a host unreachable, or None.
    """
    unreachable: _Outcome | None = None
    last_checkpoint = time.monotonic()
    pool = cf.ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="fetch")
    try:
        pending = {pool.submit(engine.fetch_one, item, recorded.get(item.relpath))
                   for item in items}
        while pending:
            done, pending = cf.wait(pending, timeout=1.0, return_when=cf.FIRST_COMPLETED)
            for future in done:
                if future.cancelled():
                    continue
                outcome = future.result()
                if outcome is None:
                    continue
                outcomes[outcome.relpath] = outcome
                engine.progress.file_done(outcome.status)
                host = outcome.unreachable_host
                if host and unreachable is None:
                    unreachable = outcome
                    for other in pending:
                        other.cancel()
            engine.progress.maybe_report()
            if time.monotonic() - last_checkpoint > MANIFEST_CHECKPOINT_S:
                checkpoint()
                last_checkpoint = time.monotonic()
    except BaseException:
        engine.stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        engine.close()
    return unreachable


def _raise_for_failures(frame: pd.DataFrame, outcomes: dict, unreachable: _Outcome | None,
                        items: list[RemoteFile], what: str, manifest_path) -> None:
    if unreachable is not None:
        host = unreachable.unreachable_host
        reason = (unreachable.error or "").split(": ", 1)[-1]
        error = ArchiveUnreachable(unreachable_message(
            host, f"fetching {len(items)} {what} from {host}", reason), host=host)
        error.manifest = frame
        raise error
    failed = [o for o in outcomes.values() if o.status == "failed"]
    if failed:
        where = f" (manifest: {manifest_path})" if manifest_path is not None else ""
        reasons = "\n".join(f"  - {o.error}" for o in failed[:5])
        more = f"\n  ... and {len(failed) - 5} more" if len(failed) > 5 else ""
        error = DownloadError(f"{len(failed)} of {len(items)} {what} failed{where}; "
                              f"rerun to retry only those. First reasons:\n{reasons}{more}")
        error.manifest = frame
        raise error
