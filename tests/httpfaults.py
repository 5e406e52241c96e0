"""A loopback HTTP server that misbehaves on request, a fake IVOA TAP service that follows the
standards (TAP 1.1 over UWS 1.1, VOTable results), and a fake ESO login (OIDC token) endpoint.

The archives (ESO, SDSS SAS, PHOENIX) are unreachable from our machines, so the download code
is proven against this server instead. It serves the files of a folder with Range support,
Content-Length and validators (a strong ETag and Last-Modified, honoured in If-Range), and a test
injects faults per path: dropped connections, 5xx/429 answers, truncated or wrong bodies, slow
or trickling answers, an HTML page with status 200, a gzip Content-Encoding nobody asked for, a
416 that contradicts the file's length, a required bearer token, and a change of the file between attempts
(``then``). It records every request (path, Range and If-Range headers, bytes sent, time) and the
largest number of requests in flight at once.

Use from a test module::

    from httpfaults import Fault, FakeTap, fault_server  # noqa: F401  (fault_server is a fixture)

    def test_x(fault_server):
        url = fault_server.put("data/a.fits", b"...")
        fault_server.add_fault("/data/a.fits", Fault.drop(after_bytes=1000))
"""
from __future__ import annotations

import base64
import email.utils
import gzip
import hashlib
import io
import itertools
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

import pandas as pd
import pytest


# ---------------------------------------------------------------- faults

@dataclass
class Fault:
    """One injected misbehaviour for one path; ``times`` = matching requests it spoils (None: all).

    kinds: 'status' (answer ``status`` with ``headers`` and ``body`` of ``content_type``, by
    default a short text, instead of the file or service), 'drop' (reset the
    connection after ``after_bytes`` of the body), 'truncate' (announce the full length, send
    ``after_bytes``, close cleanly), 'corrupt' (same length, different bytes), 'slow' (sleep
    ``delay_s`` before the headers, or halfway through the body when ``during``), 'ignore_range'
    (answer 200 with the whole file even when a Range was asked for), 'trickle' (send the body
    ``after_bytes`` at a time, ``delay_s`` apart), 'html' (status 200 with an HTML error page),
    'gzip' (the whole file gzip-compressed with Content-Encoding: gzip, cut after
    ``after_bytes`` compressed bytes when that is set), 'lie_416' (answer a Range request with
    416 and Content-Range ``*/<first byte asked for>``, as if the file ended there).
    ``then`` is called once the faulty answer has been sent (e.g. to change the file).
    """

    kind: str
    times: int | None = 1
    status: int = 500
    headers: dict = field(default_factory=dict)
    after_bytes: int = 0
    delay_s: float = 0.0
    during: bool = False
    body: bytes | None = None
    content_type: str = "text/plain"
    used: int = 0
    then: Callable[[], None] | None = None

    @classmethod
    def http_status(cls, status: int, times: int | None = 1, headers: dict | None = None,
                    body: bytes | None = None, content_type: str = "text/plain") -> "Fault":
        return cls("status", times=times, status=status, headers=dict(headers or {}),
                   body=body, content_type=content_type)

    @classmethod
    def drop(cls, after_bytes: int, times: int | None = 1,
             then: Callable[[], None] | None = None) -> "Fault":
        return cls("drop", times=times, after_bytes=after_bytes, then=then)

    @classmethod
    def truncate(cls, after_bytes: int, times: int | None = 1) -> "Fault":
        return cls("truncate", times=times, after_bytes=after_bytes)

    @classmethod
    def corrupt(cls, times: int | None = 1) -> "Fault":
        return cls("corrupt", times=times)

    @classmethod
    def slow(cls, delay_s: float, times: int | None = 1, during: bool = False) -> "Fault":
        return cls("slow", times=times, delay_s=delay_s, during=during)

    @classmethod
    def ignore_range(cls, times: int | None = None) -> "Fault":
        return cls("ignore_range", times=times)

    @classmethod
    def trickle(cls, piece_bytes: int, every_s: float, times: int | None = None) -> "Fault":
        return cls("trickle", times=times, after_bytes=piece_bytes, delay_s=every_s)

    @classmethod
    def html(cls, times: int | None = 1) -> "Fault":
        return cls("html", times=times)

    @classmethod
    def gzip(cls, times: int | None = 1, cut_after: int = 0) -> "Fault":
        return cls("gzip", times=times, after_bytes=cut_after)

    @classmethod
    def lie_416(cls, times: int | None = 1) -> "Fault":
        return cls("lie_416", times=times)

    def take(self) -> bool:
        """Whether this fault applies to the current request (and count it if so)."""
        if self.times is not None and self.used >= self.times:
            return False
        self.used += 1
        return True


@dataclass
class RequestRecord:
    method: str
    path: str
    range: str | None
    time: float
    authorization: bool
    if_range: str | None = None
    status: int | None = None
    bytes_sent: int = 0


# ---------------------------------------------------------------- the server

class FaultServer:
    """Serves ``root`` on 127.0.0.1 with per-path faults; see the module docstring."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.faults: dict[str, list[Fault]] = {}
        self.records: list[RequestRecord] = []
        self.active = 0
        self.max_active = 0
        self.tokens: list[tuple[str, str]] = []  # (bearer token, path prefix it opens)
        self.send_validators = True   # ETag and Last-Modified on every file answer
        self.mounts: dict[str, "FakeTap"] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle
    def start(self) -> "FaultServer":
        handler = type("BoundHandler", (_Handler,), {"owner": self})
        self._httpd = _QuietServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    # -- configuration from tests
    def put(self, relpath: str, data: bytes) -> str:
        """Store a file to serve; returns its URL."""
        target = self.root / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return self.url(relpath)

    def add_fault(self, path: str, fault: Fault) -> Fault:
        """Faults for one path apply in the order added, each for its ``times`` requests."""
        with self._lock:
            self.faults.setdefault("/" + path.lstrip("/"), []).append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def require_token(self, token: str, prefix: str = "/") -> None:
        """Paths under ``prefix`` answer 401 unless the request has 'Authorization: Bearer
        <token>' (ESO's archive after its OIDC login)."""
        self.tokens.append((token, prefix))

    def mount(self, prefix: str, service: "FakeTap") -> "FakeTap":
        """Answer every path under ``prefix`` with ``service`` (after faults and auth)."""
        self.mounts["/" + prefix.strip("/")] = service
        return service

    # -- what happened
    def requests_for(self, path: str, method: str | None = None) -> list[RequestRecord]:
        path = "/" + path.lstrip("/")
        with self._lock:
            return [r for r in self.records if r.path == path and (method is None or r.method == method)]

    def count(self, path: str, method: str | None = "GET") -> int:
        return len(self.requests_for(path, method))

    def ranges(self, path: str) -> list[str | None]:
        return [r.range for r in self.requests_for(path, "GET")]

    def reset_records(self) -> None:
        with self._lock:
            self.records.clear()
            self.max_active = 0

    # -- used by the handler
    def _begin(self, record: RequestRecord) -> None:
        with self._lock:
            self.records.append(record)
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def _end(self) -> None:
        with self._lock:
            self.active -= 1

    def _next_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults.get(path, []):
                if fault.take():
                    return fault
        return None


class _QuietServer(ThreadingHTTPServer):
    """Clients that give up mid-answer are part of the tests: no tracebacks on stderr."""

    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address) -> None:
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultServer

    def log_message(self, format, *args) -> None:  # noqa: A002 - signature of the base class
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- plumbing
    def _dispatch(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        self.record = RequestRecord(method=method, path=path, range=self.headers.get("Range"),
                                    time=time.monotonic(),
                                    authorization="Authorization" in self.headers,
                                    if_range=self.headers.get("If-Range"))
        self.owner._begin(self.record)
        try:
            body = self._read_body()
            if not self._authorised(path):
                self.reply(401, b"authentication required\n",
                           {"WWW-Authenticate": 'Bearer realm="archive"'})
                return
            fault = self.owner._next_fault(path)
            if fault is not None and fault.kind == "status":
                body = fault.body if fault.body is not None else \
                    f"injected {fault.status}\n".encode()
                self.reply(fault.status, body, fault.headers, content_type=fault.content_type)
                return
            if fault is not None and fault.kind == "slow" and not fault.during:
                time.sleep(fault.delay_s)
            for prefix, service in self.owner.mounts.items():
                if path == prefix or path.startswith(prefix + "/"):
                    service.handle(self, method, path[len(prefix):] or "/", body, prefix)
                    return
            if method in ("GET", "HEAD"):
                self._serve_file(path, fault, head=(method == "HEAD"))
            else:
                self.reply(405, b"method not allowed\n")
            if fault is not None and fault.then is not None:
                fault.then()
        finally:
            self.owner._end()

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorised(self, path: str) -> bool:
        needed = [token for token, prefix in self.owner.tokens if path.startswith(prefix)]
        return not needed or self.headers.get("Authorization") in {f"Bearer {t}" for t in needed}

    def reply(self, status: int, body: bytes, headers: dict | None = None,
              content_type: str = "text/plain") -> None:
        self.record.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, str(value))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            self.record.bytes_sent += len(body)

    def reply_cut(self, status: int, body: bytes, sent: int, content_type: str) -> None:
        """Announce all of ``body`` but send only its first ``sent`` bytes, then close: a
        transfer that breaks off."""
        self.record.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._write(body[:sent])
        self.close_connection = True

    def _serve_file(self, path: str, fault: Fault | None, head: bool) -> None:
        target = (self.owner.root / path.lstrip("/")).resolve()
        if self.owner.root.resolve() not in target.parents or not target.is_file():
            self.reply(404, b"not found\n")
            return
        kind = fault.kind if fault is not None else None
        if kind == "html":
            self.reply(200, b"<!DOCTYPE html>\n<html><head><title>Service unavailable</title>"
                            b"</head><body>The archive is busy; try later.</body></html>\n",
                       content_type="text/html")
            return
        data = target.read_bytes()
        validators = {}
        if self.owner.send_validators:
            validators = {"ETag": '"' + hashlib.sha1(data).hexdigest()[:16] + '"',
                          "Last-Modified": email.utils.formatdate(target.stat().st_mtime,
                                                                  usegmt=True)}
        if kind == "corrupt":
            data = bytes(b ^ 0x5A for b in data)
        size = len(data)
        status, first = 200, 0
        requested = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if requested and if_range is not None and if_range not in validators.values():
            requested = None  # RFC 9110: a stale validator gets the whole current file
        extra = {}
        if kind == "gzip":
            data = gzip.compress(data, mtime=0)
            size, requested = len(data), None
            extra["Content-Encoding"] = "gzip"
        if requested and kind == "lie_416":
            first, _ = _parse_range(requested, size)
            self.reply(416, b"", {"Content-Range": f"bytes */{first}"})
            return
        if requested and kind != "ignore_range":
            first, last = _parse_range(requested, size)
            if first >= size:
                self.reply(416, b"", {"Content-Range": f"bytes */{size}"})
                return
            status = 206
            data = data[first:last + 1]
        self.record.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        for name, value in {**validators, **extra}.items():
            self.send_header(name, value)
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{first + len(data) - 1}/{size}")
        self.end_headers()
        if not head:
            self._send_body(data, fault)

    def _send_body(self, data: bytes, fault: Fault | None) -> None:
        kind = fault.kind if fault is not None else None
        if kind == "gzip" and fault.after_bytes:
            kind = "truncate"
        if kind == "trickle":
            for start in range(0, len(data), max(1, fault.after_bytes)):
                self._write(data[start:start + fault.after_bytes])
                time.sleep(fault.delay_s)
            return
        if kind in ("drop", "truncate"):
            self._write(data[:fault.after_bytes])
            if kind == "drop":
                time.sleep(0.1)  # let the client read what was sent before the reset
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()  # RST: "connection reset by peer"
            self.close_connection = True
            return
        if kind == "slow" and fault.during:
            half = len(data) // 2
            self._write(data[:half])
            time.sleep(fault.delay_s)
            self._write(data[half:])
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        self.record.bytes_sent += len(data)


def _parse_range(header: str, size: int) -> tuple[int, int]:
    """First and last byte of 'bytes=a-b' / 'bytes=a-' / 'bytes=-n' (one range only)."""
    spec = header.split("=", 1)[1].split(",")[0].strip()
    start, _, end = spec.partition("-")
    if not start:
        return max(0, size - int(end)), size - 1
    return int(start), min(int(end), size - 1) if end else size - 1


# ---------------------------------------------------------------- fake TAP (UWS) service

_UWS = "http://www.ivoa.net/xml/UWS/v1.0"


@dataclass
class _Job:
    adql: str
    fmt: str
    job_id: str
    phase: str = "PENDING"
    steps: list[str] = field(default_factory=list)
    deleted: bool = False
    polls: int = 0
    waits: int = 0           # polls that asked for UWS's WAIT (blocking until a phase change)


class FakeTap:
    """An IVOA TAP service as the standards describe it: asynchronous queries are UWS 1.1 jobs
    under /async, a /sync endpoint answers at once (with a row cap), results are VOTables with
    an INFO QUERY_STATUS.

    ``respond(adql)`` returns a DataFrame (the result) or a string (the job fails with that
    message, given as the UWS errorSummary and at {job}/error). POST /async creates a PENDING
    job (303 to it); PHASE=RUN queues it; every later read of its phase (the UWS job document,
    or {job}/phase) moves one step along ``phases``, the last step being COMPLETED, or ERROR
    when ``respond`` returned a string. PHASE=ABORT aborts it, DELETE removes it. A job
    document asked for with UWS 1.1's WAIT is counted and answered at once, as by services
    without WAIT support (whose jobs pyvo's own wait() polls without an overall limit).
    """

    def __init__(self, respond: Callable[[str], pd.DataFrame | str],
                 phases: tuple[str, ...] = ("QUEUED", "EXECUTING", "EXECUTING"),
                 sync_cap: int = 5000):
        self.respond = respond
        self.phases = phases
        self.sync_cap = sync_cap
        self.jobs: dict[str, _Job] = {}
        self._ids = itertools.count(1)

    # -- routing
    def handle(self, handler: _Handler, method: str, subpath: str, body: bytes,
               base: str) -> None:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        query = {k: v[0] for k, v in parse_qs(urlsplit(handler.path).query).items()}
        parts = [p for p in subpath.split("/") if p]
        job_url = lambda job_id: f"{handler.owner.base_url}{base}/async/{job_id}"  # noqa: E731
        if parts == ["sync"]:
            return self._sync(handler, {**query, **form})
        if parts == ["async"] and method == "POST":
            return self._create(handler, form, job_url)
        if parts == ["async"] and method == "GET":
            return handler.reply(200, self._job_list(job_url), content_type="text/xml")
        if len(parts) >= 2 and parts[0] == "async" and parts[1] in self.jobs:
            job = self.jobs[parts[1]]
            rest = parts[2:]
            if job.deleted:
                return handler.reply(404, b"no such job\n")
            if not rest:
                return self._job_root(handler, method, form, query, job, job_url)
            if rest == ["phase"]:
                return self._phase(handler, method, form, job, job_url)
            if rest == ["results", "result"] and job.phase == "COMPLETED":
                return self._send_table(handler, self.respond(job.adql), cap=None)
            if rest == ["error"] and job.phase == "ERROR":
                return handler.reply(200, _error_votable(self.respond(job.adql)),
                                     content_type="application/x-votable+xml")
        handler.reply(404, b"no such resource\n")

    def _create(self, handler: _Handler, form: dict, job_url) -> None:
        if form.get("REQUEST") != "doQuery" or form.get("LANG") != "ADQL" or "QUERY" not in form:
            return handler.reply(400, b"need REQUEST=doQuery, LANG=ADQL, QUERY\n")
        job_id = str(next(self._ids))
        job = self.jobs[job_id] = _Job(adql=form["QUERY"], job_id=job_id,
                                       fmt=form.get("RESPONSEFORMAT", form.get("FORMAT",
                                                                               "votable")))
        if form.get("PHASE") == "RUN":
            self._run(job)
        handler.reply(303, b"", {"Location": job_url(job_id)})

    def _run(self, job: _Job) -> None:
        if job.phase == "PENDING":
            final = "ERROR" if isinstance(self.respond(job.adql), str) else "COMPLETED"
            job.steps = list(self.phases) + [final]
            job.phase = "QUEUED"

    def _advance(self, job: _Job) -> None:
        job.polls += 1
        if job.steps:
            job.phase = job.steps.pop(0)

    def _job_root(self, handler: _Handler, method: str, form: dict, query: dict, job: _Job,
                  job_url) -> None:
        if method == "DELETE" or (method == "POST" and form.get("ACTION") == "DELETE"):
            job.deleted = True
            return handler.reply(303, b"", {"Location": job_url("").rstrip("/")})
        if "WAIT" in query:
            job.waits += 1
        if job.phase not in ("PENDING", "COMPLETED", "ERROR", "ABORTED"):
            self._advance(job)
        handler.reply(200, self._job_document(job, job_url(job.job_id)), content_type="text/xml")

    def _phase(self, handler: _Handler, method: str, form: dict, job: _Job, job_url) -> None:
        if method == "POST":
            if form.get("PHASE") == "RUN":
                self._run(job)
            elif form.get("PHASE") == "ABORT":
                job.phase, job.steps = "ABORTED", []
            else:
                return handler.reply(400, b"PHASE must be RUN or ABORT\n")
            return handler.reply(303, b"", {"Location": job_url(job.job_id)})
        if job.phase not in ("PENDING", "COMPLETED", "ERROR", "ABORTED"):
            self._advance(job)
        handler.reply(200, job.phase.encode())

    def _job_document(self, job: _Job, url: str) -> bytes:
        """The UWS 1.1 job document (uws:job) of ``job``."""
        from xml.sax.saxutils import escape, quoteattr

        nil = ' xsi:nil="true"/>'
        parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n'
                 f'<uws:job xmlns:uws="{_UWS}" xmlns:xlink="http://www.w3.org/1999/xlink" '
                 f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="1.1">',
                 f"<uws:jobId>{job.job_id}</uws:jobId>", "<uws:ownerId" + nil,
                 f"<uws:phase>{job.phase}</uws:phase>", "<uws:quote" + nil,
                 "<uws:creationTime>2024-01-01T00:00:00Z</uws:creationTime>",
                 "<uws:startTime" + nil, "<uws:endTime" + nil,
                 "<uws:executionDuration>3600</uws:executionDuration>",
                 "<uws:destruction>2024-12-31T00:00:00Z</uws:destruction>",
                 "<uws:parameters>",
                 '<uws:parameter id="REQUEST">doQuery</uws:parameter>',
                 '<uws:parameter id="LANG">ADQL</uws:parameter>',
                 f'<uws:parameter id="QUERY">{escape(job.adql)}</uws:parameter>',
                 "</uws:parameters>", "<uws:results>"]
        if job.phase == "COMPLETED":
            parts.append(f'<uws:result id="result" xlink:type="simple" '
                         f'xlink:href={quoteattr(url + "/results/result")}/>')
        parts.append("</uws:results>")
        if job.phase == "ERROR":
            parts.append(f'<uws:errorSummary type="fatal" hasDetail="true"><uws:message>'
                         f"{escape(str(self.respond(job.adql)))}</uws:message>"
                         f"</uws:errorSummary>")
        parts.append("</uws:job>")
        return "\n".join(parts).encode()

    def _job_list(self, job_url) -> bytes:
        refs = "".join(f'<uws:jobref id="{j.job_id}" xlink:href="{job_url(j.job_id)}">'
                       f"<uws:phase>{j.phase}</uws:phase></uws:jobref>"
                       for j in self.jobs.values() if not j.deleted)
        return (f'<?xml version="1.0" encoding="UTF-8"?><uws:jobs xmlns:uws="{_UWS}" '
                f'xmlns:xlink="http://www.w3.org/1999/xlink" version="1.1">{refs}'
                f"</uws:jobs>").encode()

    def _sync(self, handler: _Handler, form: dict) -> None:
        self._send_table(handler, self.respond(form.get("QUERY", "")), cap=self.sync_cap)

    def _send_table(self, handler: _Handler, result, cap: int | None) -> None:
        if isinstance(result, str):
            return handler.reply(200, _error_votable(result), content_type="application/x-votable+xml")
        handler.reply(200, votable_bytes(result, cap=cap), content_type="application/x-votable+xml")


# ---------------------------------------------------------------- fake ESO login (OIDC token)

def fake_jwt(expires_at: float) -> str:
    """A token shaped like a JWT (header.payload.signature, base64url) expiring at
    ``expires_at`` (Unix time), as ESO's id_token is."""
    def part(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part({'exp': int(expires_at)})}.c2lnbmF0dXJl"


class FakeOidc:
    """ESO's token endpoint as astroquery.eso uses it: GET with the OAuth 2 password grant's
    parameters in the query string; 200 with a JSON document whose ``id_token`` is the bearer
    token, or 401 for wrong credentials. ``requests`` records each (user, password) asked."""

    def __init__(self, user: str, password: str, token: str | None = None,
                 lifetime_s: float = 28800.0):
        self.user, self.password = user, password
        self.token = token or fake_jwt(time.time() + lifetime_s)
        self.lifetime_s = lifetime_s
        self.requests: list[dict] = []

    def handle(self, handler: _Handler, method: str, subpath: str, body: bytes,
               base: str) -> None:
        params = {k: v[0] for k, v in parse_qs(urlsplit(handler.path).query).items()}
        self.requests.append(params)
        if method != "GET" or params.get("grant_type") != "password" \
                or params.get("client_id") != "clientid":
            return handler.reply(400, b'{"error": "invalid_request"}',
                                 content_type="application/json")
        if (params.get("username"), params.get("password")) != (self.user, self.password):
            return handler.reply(401, b'{"error": "invalid_grant"}',
                                 content_type="application/json")
        document = {"access_token": "not-the-id-token", "id_token": self.token,
                    "token_type": "bearer", "expires_in": int(self.lifetime_s),
                    "scope": "openid"}
        handler.reply(200, json.dumps(document).encode(), content_type="application/json")


def votable_bytes(frame: pd.DataFrame, cap: int | None = None) -> bytes:
    """``frame`` as a TAP result VOTable (written with astropy); OVERFLOW status beyond ``cap``."""
    from astropy.io.votable import from_table
    from astropy.io.votable.tree import Info
    from astropy.table import Table

    overflow = cap is not None and len(frame) > cap
    rows = frame.iloc[:cap] if overflow else frame
    votable = from_table(Table.from_pandas(rows.reset_index(drop=True)))
    resource = votable.resources[0]
    resource.infos.append(Info(name="QUERY_STATUS", value="OVERFLOW" if overflow else "OK"))
    buffer = io.BytesIO()
    votable.to_xml(buffer)
    return buffer.getvalue()


def _error_votable(message: str) -> bytes:
    from astropy.io.votable.tree import Info, Resource, VOTableFile

    votable = VOTableFile()
    resource = Resource(type="results")
    votable.resources.append(resource)
    info = Info(name="QUERY_STATUS", value="ERROR")
    info.content = message
    resource.infos.append(info)
    buffer = io.BytesIO()
    votable.to_xml(buffer)
    return buffer.getvalue()


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def fault_server(tmp_path):
    """A started FaultServer serving ``tmp_path/served``; stopped after the test."""
    server = FaultServer(tmp_path / "served").start()
    try:
        yield server
    finally:
        server.stop()


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
