"""IVOA TAP queries run as asynchronous (UWS) jobs, so no synchronous row cap truncates a catalog.

ESO's TAP services cap synchronous answers (about 2000 rows were seen) while the Gaia-ESO
catalog has over 100 000 stars; an async job returns the whole result. The job life cycle:
POST {service}/async (303 to the job) → POST {job}/phase PHASE=RUN → poll {job}/phase with
growing intervals → GET {job}/results/result (or read {job}/error) → DELETE the job.

Transient failures (5xx, 429, dropped connections) are retried like the download engine; a
host that never answers raises :class:`~starlabels.acquire.http.ArchiveUnreachable`.
"""
from __future__ import annotations

import io
import time
import xml.etree.ElementTree as ET
from typing import Callable
from urllib.parse import urljoin

import pandas as pd
import requests

from .http import (ArchiveUnreachable, Permanent, Retryable, backoff_delay, host_of,
                   redact_url, request_error, retry_after_seconds, unreachable_message)

FINAL_PHASES = {"COMPLETED", "ERROR", "ABORTED", "ARCHIVED"}


class TapError(RuntimeError):
    """A TAP job failed, was aborted, timed out, or returned something unreadable."""


def _first_line(adql: str) -> str:
    lines = [line.strip() for line in adql.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


class _TapClient:
    """One query's HTTP conversation with retries; knows what it is doing for error messages."""

    def __init__(self, service_url: str, session: requests.Session, *, retries: int,
                 backoff_s: float, max_backoff_s: float, request_timeout_s: float,
                 log: Callable[[str], None], attempted: str):
        self.service = service_url.rstrip("/")
        self.session = session
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.request_timeout_s = request_timeout_s
        self.log = log
        self.attempted = attempted
        self.connected = False

    def request(self, method: str, url: str, *, ok: tuple[int, ...] = (200,),
                **kwargs) -> requests.Response:
        """One HTTP exchange, retried on 429/5xx and connection errors; other statuses raise."""
        failures = 0
        only_connect_failures = True
        while True:
            try:
                response = self._once(method, url, ok, **kwargs)
                return response
            except Permanent as exc:
                raise TapError(f"{method} {redact_url(url)}: {exc}") from None
            except Retryable as exc:
                only_connect_failures &= exc.connect_failure
                failures += 1
                if failures > self.retries:
                    if only_connect_failures and not self.connected:
                        host = host_of(url)
                        raise ArchiveUnreachable(
                            unreachable_message(host, self.attempted, exc.reason), host=host) from None
                    raise TapError(f"{method} {redact_url(url)}: {exc.reason} "
                                   f"(gave up after {failures} attempts)") from None
                delay = backoff_delay(failures, self.backoff_s, self.max_backoff_s, exc.retry_after)
                self.log(f"TAP: retrying {method} {redact_url(url)} in {delay:.2f} s: {exc.reason}")
                time.sleep(delay)

    def _once(self, method: str, url: str, ok: tuple[int, ...], **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", self.request_timeout_s)
        try:
            response = self.session.request(method, url, **kwargs)
        except requests.exceptions.RequestException as exc:
            raise request_error(exc) from None
        self.connected = True
        status = response.status_code
        if status in ok:
            return response
        label = f"HTTP {status} {response.reason or ''}".strip()
        if status == 429 or status >= 500:
            raise Retryable(label, retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        raise Permanent(f"{label}: {response.text[:300].strip()}")


# ---------------------------------------------------------------- job life cycle

def _create_job(client: _TapClient, adql: str, fmt: str, maxrec: int | None) -> str:
    form = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": adql, "FORMAT": fmt}
    if maxrec is not None:
        form["MAXREC"] = str(maxrec)
    url = f"{client.service}/async"
    response = client.request("POST", url, data=form, allow_redirects=False,
                              ok=(200, 201, 302, 303))
    location = response.headers.get("Location")
    if location:
        return urljoin(url, location).rstrip("/")
    job_id = _xml_field(response.content, "jobId")
    if not job_id:
        raise TapError(f"TAP service {client.service} created no job (no Location header, no jobId)")
    return f"{url}/{job_id.strip()}"


def _xml_field(document: bytes, name: str) -> str | None:
    """Text of the first element called ``name`` in any namespace (UWS job documents)."""
    try:
        root = ET.fromstring(document)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == name:
            return (element.text or "").strip()
    return None


def _phase(client: _TapClient, job_url: str) -> str:
    response = client.request("GET", f"{job_url}/phase", ok=(200, 404, 405))
    if response.status_code == 200:
        return response.text.strip().upper()
    document = client.request("GET", job_url).content  # services without a /phase resource
    return (_xml_field(document, "phase") or "UNKNOWN").upper()


def _wait_for_end(client: _TapClient, job_url: str, *, poll_s: float, max_poll_s: float,
                  timeout_s: float) -> str:
    """Poll the phase with growing intervals (gentle on the service) until a final phase."""
    started = time.monotonic()
    interval = poll_s
    last = None
    while True:
        phase = _phase(client, job_url)
        if phase != last:
            client.log(f"TAP job {job_url}: {phase}")
            last = phase
        if phase in FINAL_PHASES:
            return phase
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"TAP job {job_url} still {phase} after {timeout_s:g} s")
        time.sleep(interval)
        interval = min(max_poll_s, interval * 1.5)


def _error_text(client: _TapClient, job_url: str) -> str:
    """The service's own explanation of a failed job, from {job}/error or the job document."""
    try:
        document = client.request("GET", f"{job_url}/error").content
        message = _votable_status_message(document) or _xml_field(document, "message")
        if not message and not document.lstrip().startswith(b"<"):
            message = document.decode("utf-8", "replace").strip()
        if message:
            return message[:2000]
    except (TapError, ArchiveUnreachable):
        pass
    try:
        document = client.request("GET", job_url).content
        return _xml_field(document, "message") or "the service gave no reason"
    except (TapError, ArchiveUnreachable):
        return "the service gave no reason"


def _delete_job(client: _TapClient, job_url: str) -> None:
    """Best effort: a leftover job only costs the service storage until its destruction time."""
    try:
        response = client.session.delete(job_url, allow_redirects=False,
                                         timeout=client.request_timeout_s)
        if response.status_code in (405, 501):
            client.session.post(job_url, data={"ACTION": "DELETE"}, allow_redirects=False,
                                timeout=client.request_timeout_s)
    except requests.exceptions.RequestException:
        pass


# ---------------------------------------------------------------- results

def _query_statuses(votable) -> list[tuple[str, str]]:
    """(value, message) of every QUERY_STATUS INFO, wherever DALI allows it to be."""
    infos = list(votable.infos)
    for resource in votable.resources:
        infos.extend(resource.infos)
        for table in resource.tables:
            infos.extend(table.infos)
    return [(str(info.value).upper(), (info.content or "").strip())
            for info in infos if (info.name or "").upper() == "QUERY_STATUS"]


def _votable_status_message(document: bytes) -> str | None:
    from astropy.io.votable import parse

    try:
        votable = parse(io.BytesIO(document), verify="ignore")
    except Exception:  # not a VOTable: the caller falls back to other readings
        return None
    for value, message in _query_statuses(votable):
        if value == "ERROR":
            return message or "QUERY_STATUS=ERROR"
    return None


def _parse_result(document: bytes, content_type: str, fmt: str, adql: str) -> pd.DataFrame:
    """VOTable (astropy) or CSV to a DataFrame; an OVERFLOW status means rows are missing."""
    text_start = document.lstrip()[:200].lower()
    if "csv" in content_type.lower() or (fmt.lower().startswith(("csv", "text/csv"))
                                         and not text_start.startswith(b"<")):
        return pd.read_csv(io.BytesIO(document))
    from astropy.io.votable import parse

    votable = parse(io.BytesIO(document), verify="ignore")
    statuses = _query_statuses(votable)
    for value, message in statuses:
        if value == "ERROR":
            raise TapError(f"TAP result reports an error: {message}\n  ADQL: {_first_line(adql)}")
        if value == "OVERFLOW":
            raise TapError(f"TAP result was truncated (QUERY_STATUS=OVERFLOW): the service's row "
                           f"limit cut the answer; pass a larger maxrec\n  ADQL: {_first_line(adql)}")
    table = votable.get_first_table().to_table(use_names_over_ids=True)
    return table.to_pandas()


# ---------------------------------------------------------------- public API

def tap_async_query(service_url: str, adql: str, *, fmt: str = "votable", poll_s: float = 2.0,
                    max_poll_s: float = 30.0, timeout_s: float = 3600.0,
                    log: Callable[[str], None] = print, session=None,
                    retries: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                    request_timeout_s: float = 120.0, maxrec: int | None = None,
                    what: str | None = None) -> pd.DataFrame:
    """Run ``adql`` as an asynchronous TAP job at ``service_url`` and return all result rows.

    ``what`` names the purpose in an unreachable-archive message (default: "running an
    asynchronous TAP query at <service>"). Raises TapError when the job ends in ERROR or
    ABORTED (with the service's message and the query's first line) or exceeds ``timeout_s``.
    """
    own_session = session is None
    session = session or requests.Session()
    attempted = what or f"running an asynchronous TAP query at {redact_url(service_url)}"
    client = _TapClient(service_url, session, retries=retries, backoff_s=backoff_s,
                        max_backoff_s=max_backoff_s, request_timeout_s=request_timeout_s,
                        log=log, attempted=attempted)
    job_url = None
    try:
        job_url = _create_job(client, adql, fmt, maxrec)
        log(f"TAP job created at {job_url}: {_first_line(adql)}")
        client.request("POST", f"{job_url}/phase", data={"PHASE": "RUN"}, allow_redirects=False,
                       ok=(200, 204, 302, 303))
        try:
            phase = _wait_for_end(client, job_url, poll_s=poll_s, max_poll_s=max_poll_s,
                                  timeout_s=timeout_s)
        except TimeoutError as exc:
            client.request("POST", f"{job_url}/phase", data={"PHASE": "ABORT"},
                           allow_redirects=False, ok=(200, 204, 302, 303, 400, 404, 409))
            raise TapError(f"{exc}; aborted\n  ADQL: {_first_line(adql)}") from None
        if phase != "COMPLETED":
            reason = _error_text(client, job_url) if phase == "ERROR" else f"job {phase.lower()}"
            raise TapError(f"TAP query at {redact_url(service_url)} ended in phase {phase}: "
                           f"{reason}\n  ADQL: {_first_line(adql)}")
        response = client.request("GET", f"{job_url}/results/result")
        frame = _parse_result(response.content, response.headers.get("Content-Type", ""), fmt, adql)
        log(f"TAP job {job_url}: {len(frame)} rows, {len(frame.columns)} columns")
        return frame
    finally:
        if job_url is not None:
            _delete_job(client, job_url)
        if own_session:
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
