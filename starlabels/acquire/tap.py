"""IVOA TAP queries run as asynchronous (UWS) jobs through pyvo, under a deadline of our own.

ESO's TAP services cap synchronous answers while the Gaia-ESO catalogue has over 100 000 stars;
an asynchronous job returns the whole result. pyvo runs the job's life cycle (create, PHASE=RUN,
read the UWS job document, fetch ``results/result``, DELETE); what it does not give is an
overall deadline: its ``wait``/``run_async`` timeout bounds each poll, and a service that
ignores UWS's WAIT keeps a job EXECUTING for ever. So the job's phase is polled here, with
growing intervals, and a job still running at ``timeout_s`` is aborted (PHASE=ABORT) and reported.

Every request goes through one ``requests`` session: transient failures (429 with Retry-After,
5xx, dropped connections) are retried by urllib3 with exponential backoff, every request has a
socket timeout (pyvo sets none on some), and the archive's login header (see
:mod:`starlabels.acquire.auth`) rides on it. Whatever goes wrong — an ERROR or ABORTED job, an
HTML page, an empty or truncated answer, a result the service's row limit cut
(QUERY_STATUS=OVERFLOW) — becomes a :class:`TapError` naming the service, the step and the
query; a service no connection could be made to raises
:class:`~starlabels.acquire.http.ArchiveUnreachable`.
"""
from __future__ import annotations

import time
import warnings
from typing import Callable, Mapping
from xml.parsers.expat import ExpatError

import pandas as pd
import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .http import ArchiveUnreachable, connect_failure, describe_error, host_of, redact_url, \
    unreachable_message

FINAL_PHASES = frozenset({"COMPLETED", "ERROR", "ABORTED", "ARCHIVED"})
#: every phase a UWS 1.1 job document may state
UWS_PHASES = FINAL_PHASES | {"PENDING", "QUEUED", "EXECUTING", "HELD", "SUSPENDED", "UNKNOWN"}
#: HTTP statuses worth another attempt: rate limiting and server-side trouble
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class TapError(RuntimeError):
    """A TAP job failed, was aborted, ran past its deadline, or answered something unreadable."""


def _first_line(adql: str) -> str:
    lines = [line.strip() for line in adql.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


class _CappedRetry(Retry):
    """urllib3's retry, with the server's Retry-After capped at the longest backoff, so one
    answer cannot park the job for an hour."""

    def get_retry_after(self, response):
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, self.backoff_max)


class _TimedSession(requests.Session):
    """A session whose every request has a socket timeout (pyvo passes none when it starts,
    aborts or deletes a job, or fetches its result)."""

    def __init__(self, request_timeout_s: float):
        super().__init__()
        self.request_timeout_s = float(request_timeout_s)

    def request(self, method, url, **kwargs):
        given = kwargs.get("timeout")
        if given is None:
            kwargs["timeout"] = self.request_timeout_s
        elif not isinstance(given, tuple):     # (connect, read) pairs are taken as given
            kwargs["timeout"] = min(float(given), self.request_timeout_s)
        return super().request(method, url, **kwargs)


def tap_session(*, headers: Mapping[str, str] | None = None, retries: int = 5,
                backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                request_timeout_s: float = 120.0) -> requests.Session:
    """The session TAP queries run on: retries with backoff, a timeout on every request, and
    ``headers`` (the archive's ``Authorization``) on every request."""
    session = _TimedSession(request_timeout_s)
    session.headers["User-Agent"] = "starlabels-tap/2 (+pyvo)"
    session.headers.update(dict(headers or {}))
    retry = _CappedRetry(total=retries, connect=retries, read=retries, status=retries,
                         backoff_factor=backoff_s, backoff_max=max_backoff_s,
                         status_forcelist=sorted(RETRY_STATUSES), allowed_methods=None,
                         respect_retry_after_header=True, raise_on_status=False)
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _reason(exc: BaseException) -> str:
    """What went wrong, in one line, from pyvo's, requests' or the VOTable parser's exception."""
    from pyvo.dal.exceptions import DALServiceError

    cause = getattr(exc, "cause", None)
    if isinstance(exc, DALServiceError) and exc.code:
        text = " ".join(str(getattr(exc, "reason", "") or exc).split())
        return f"HTTP {exc.code}: {text[:300]}"
    if isinstance(cause, requests.RequestException):
        return describe_error(cause)
    if isinstance(exc, requests.RequestException):
        return describe_error(exc)
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _is_connect_failure(exc: BaseException) -> bool:
    cause = getattr(exc, "cause", None)
    return any(isinstance(e, requests.RequestException) and connect_failure(e)
               for e in (exc, cause) if e is not None)


def _error_summary(job) -> str:
    """The service's own explanation of a failed job (UWS errorSummary), if it gave one."""
    try:
        summary = job.job.errorsummary
        message = summary.message.content if summary is not None and summary.message else None
    except Exception:  # noqa: BLE001 - the failure itself is what gets reported
        message = None
    return " ".join(str(message).split())[:2000] if message else "the service gave no reason"


def tap_async_query(service_url: str, adql: str, *, timeout_s: float = 3600.0,
                    poll_s: float = 2.0, max_poll_s: float = 30.0,
                    log: Callable[[str], None] = print,
                    headers: Mapping[str, str] | None = None, retries: int = 5,
                    backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                    request_timeout_s: float = 120.0, maxrec: int | None = None,
                    what: str | None = None) -> pd.DataFrame:
    """Run ``adql`` as an asynchronous TAP job at ``service_url`` and return every result row.

    ``timeout_s`` is the job's overall deadline (the job is aborted when it passes); each
    request is further bounded by ``request_timeout_s``. ``headers`` go on every request (the
    archive's login). ``what`` names the purpose in an unreachable-archive message. The job is
    deleted afterwards whatever happened.
    """
    from pyvo.dal import TAPService
    from pyvo.dal.exceptions import DALAccessError, DALOverflowWarning

    service = redact_url(service_url.rstrip("/"))
    query = _first_line(adql)
    attempted = what or f"running an asynchronous TAP query at {service}"
    session = tap_session(headers=headers, retries=retries, backoff_s=backoff_s,
                          max_backoff_s=max_backoff_s, request_timeout_s=request_timeout_s)
    deadline = time.monotonic() + float(timeout_s)
    step, job, phase = "creating the job", None, None
    try:
        with warnings.catch_warnings():
            # a result cut by the service's row limit is an error here, not a warning
            warnings.simplefilter("error", DALOverflowWarning)
            created = TAPService(service_url, session=session).submit_job(adql, maxrec=maxrec)
            if str(created.phase).upper() not in UWS_PHASES:
                raise TapError(f"TAP query at {service} failed while {step}: the answer at "
                               f"{redact_url(created.url)} is not a UWS job document (an HTML "
                               f"page, a proxy?)\n  ADQL: {query}")
            job = created
            log(f"TAP job created at {redact_url(job.url)}: {query}")
            step = "starting the job"
            job.run()
            step = "waiting for the job"
            interval = float(poll_s)
            while True:
                phase = str(job.phase).upper()
                if phase in FINAL_PHASES:
                    log(f"TAP job {redact_url(job.url)}: {phase}")
                    break
                if time.monotonic() >= deadline:
                    step = "aborting the job past its deadline"
                    job.abort()
                    raise TapError(f"TAP job {redact_url(job.url)} at {service} still {phase} "
                                   f"after {timeout_s:g} s; aborted\n  ADQL: {query}")
                log(f"TAP job {redact_url(job.url)}: {phase}")
                time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
                interval = min(float(max_poll_s), interval * 1.5)
            if phase != "COMPLETED":
                raise TapError(f"TAP query at {service} ended in phase {phase}: "
                               f"{_error_summary(job)}\n  ADQL: {query}")
            step = "fetching the result"
            table = job.fetch_result().to_table()
        frame = table.to_pandas()
        log(f"TAP job {redact_url(job.url)}: {len(frame)} rows, {len(frame.columns)} columns")
        return frame
    except TapError:
        raise
    except DALOverflowWarning:
        raise TapError(f"TAP result from {service} was truncated (QUERY_STATUS=OVERFLOW): the "
                       f"service's row limit cut the answer; pass a larger maxrec\n"
                       f"  ADQL: {query}") from None
    except (DALAccessError, requests.RequestException, urllib3.exceptions.HTTPError, ExpatError,
            ValueError, KeyError, IndexError) as exc:
        if job is None and _is_connect_failure(exc):
            host = host_of(service_url)
            raise ArchiveUnreachable(unreachable_message(host, attempted, _reason(exc)),
                                     host=host) from None
        raise TapError(f"TAP query at {service} failed while {step}: {_reason(exc)}\n"
                       f"  ADQL: {query}") from exc
    finally:
        if job is not None and job.url is not None:
            try:
                job.delete()
            except (DALAccessError, requests.RequestException):
                pass   # a leftover job only costs the service storage until its destruction
        session.close()


def tap_columns(service_url: str, table: str, **query_options) -> pd.DataFrame:
    """The columns TAP_SCHEMA lists for ``table`` (name, datatype, unit, ucd, description).

    Services differ in whether TAP_SCHEMA stores a quoted name (safcat."GES_DR5_1_V1") or a
    plain one, so both spellings are asked for. An empty frame means the table is unknown.
    """
    spellings = {table, table.replace('"', "")}
    quoted = ", ".join("'" + name.replace("'", "''") + "'" for name in sorted(spellings))
    adql = ("SELECT table_name, column_name, datatype, unit, ucd, description\n"
            f"FROM TAP_SCHEMA.columns WHERE table_name IN ({quoted})")
    return tap_async_query(service_url, adql, **query_options)


__all__ = ["TapError", "tap_async_query", "tap_columns", "tap_session", "FINAL_PHASES"]
