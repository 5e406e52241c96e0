"""The HTTP vocabulary the download engine and the TAP client share: which failures are worth a
retry, how long to wait, how an unreachable archive is reported, and credentials.

- :class:`Retryable` (429, 5xx, dropped connections, short bodies) and :class:`Permanent`
  (anything else) classify one failed request; :func:`request_error` turns a ``requests``
  exception into one of them;
- :func:`backoff_delay` is exponential backoff with jitter that honours ``Retry-After``;
- :class:`DownloadError` and :class:`ArchiveUnreachable` are what callers see;
- credentials come from environment variables named in config, and never reach logs
  (:func:`redact_url`).
"""
from __future__ import annotations

import datetime as _dt
import email.utils
import os
import random
import re
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3.exceptions


class DownloadError(RuntimeError):
    """A file (or, raised at the end of a run, several files) failed for good."""


class ArchiveUnreachable(DownloadError):
    """No connection to the archive host could be made at all (refused, DNS, offline)."""

    def __init__(self, message: str, host: str | None = None):
        super().__init__(message)
        self.host = host


def unreachable_message(host: str, attempted: str, reason: str) -> str:
    """The one wording used for an unreachable archive, by the download engine and the TAP client.

    It names the host and what was being done, and gives the two ways forward, because the
    reader is usually someone whose machine simply has no route to the archive.
    """
    return (
        f"cannot reach {host} while {attempted}: {reason}.\n"
        f"This machine may be offline, or {host} may be down or blocked by a firewall. To proceed:\n"
        f"  - set `mirror:` in the experiment config to a local or institutional copy with the same "
        f"path layout (e.g. mirror: /data/mirror, or mirror: http://mirror.example.org/base), or\n"
        f"  - run the offline demo experiments (`snakemake --cores 2`, experiments demo_ges/demo_marvels), "
        f"which simulate the surveys and need no network."
    )


def redact_url(url: str) -> str:
    """The URL without any 'user:password@' part, for logs, errors and the manifest."""
    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return url


def host_of(url: str) -> str:
    """'host[:port]' of an HTTP URL, 'local files' for file:// URLs and plain paths."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        return f"{host}:{parts.port}" if parts.port else host
    return "local files"


def credentials_env_names(archive: str) -> tuple[str, str]:
    """Our naming convention: STARLABELS_<ARCHIVE>_USER / STARLABELS_<ARCHIVE>_PASSWORD."""
    key = re.sub(r"[^A-Z0-9]+", "_", archive.upper()).strip("_")
    return f"STARLABELS_{key}_USER", f"STARLABELS_{key}_PASSWORD"


def credentials_from_env(user_var: str, password_var: str) -> tuple[str, str] | None:
    """(user, password) from the environment, or None when neither variable is set.

    Half a pair is a configuration mistake, reported by variable name (never by value).
    """
    user = os.environ.get(user_var) or ""
    password = os.environ.get(password_var) or ""
    if not user and not password:
        return None
    if not user or not password:
        missing = user_var if not user else password_var
        raise ValueError(f"{missing} is not set, but its partner is: set both "
                         f"{user_var} and {password_var}, or neither")
    return user, password


class Retryable(Exception):
    """This attempt failed in a way worth retrying."""

    def __init__(self, reason: str, *, retry_after: float | None = None,
                 connect_failure: bool = False, restart: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.connect_failure = connect_failure  # no connection to the host could be made
        self.restart = restart                  # the part file is wrong: start from zero


class Permanent(Exception):
    """This file will not succeed by retrying (404, 403, a missing mirror file, disk error)."""


def connect_failure(exc: BaseException) -> bool:
    """True when no TCP connection was made at all: refused, DNS failure, unreachable, timeout."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    seen = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, urllib3.exceptions.NewConnectionError):
            return True
        if isinstance(current, urllib3.exceptions.MaxRetryError):
            pending.append(current.reason)
        pending.extend([current.__cause__, current.__context__])
        pending.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))
    return False


def describe_error(exc: BaseException) -> str:
    """A short reason for a network exception, without URLs (those are named separately)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "no response within the timeout"
    text = str(exc)
    for needle, label in (("Connection refused", "connection refused"),
                          ("Name or service not known", "host name could not be resolved"),
                          ("Temporary failure in name resolution", "host name could not be resolved"),
                          ("Failed to resolve", "host name could not be resolved"),
                          ("Network is unreachable", "network is unreachable"),
                          ("No route to host", "no route to host"),
                          ("Connection reset", "connection reset by the server"),
                          ("timed out", "timed out"),
                          ("IncompleteRead", "connection closed before the body was complete"),
                          ("RemoteDisconnected", "server closed the connection without a response")):
        if needle in text:
            return label
    return f"{type(exc).__name__}: {text[:200]}"


def request_error(exc: requests.exceptions.RequestException) -> Exception:
    """Map an exception raised before any response arrived to a retry decision."""
    if isinstance(exc, requests.exceptions.SSLError):
        return Permanent(f"TLS error: {str(exc)[:200]}")
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        requests.exceptions.InvalidSchema)):
        return Permanent(f"invalid URL: {exc}")
    return Retryable(describe_error(exc), connect_failure=connect_failure(exc))


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None if absent/garbled."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return max(0.0, (when - _dt.datetime.now(_dt.timezone.utc)).total_seconds())


def backoff_delay(failures: int, base_s: float, max_s: float,
                  retry_after: float | None = None) -> float:
    """Seconds to wait before the next attempt: exponential with jitter, or the server's wish.

    Jitter (a factor 0.5–1) spreads the retries of concurrent workers so they do not hit a
    struggling server in lock-step. A Retry-After from the server wins, capped at ``max_s``.
    """
    if retry_after is not None:
        return min(max_s, retry_after)
    exponential = base_s * (2.0 ** max(failures - 1, 0))
    return min(max_s, exponential) * random.uniform(0.5, 1.0)
