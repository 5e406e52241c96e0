"""Asynchronous TAP through pyvo (with our own deadline) against the standard-following fake
TAP service in tests/httpfaults.py."""
from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest

from httpfaults import FakeTap, Fault, closed_port

from starlabels.acquire.http import ArchiveUnreachable
from starlabels.acquire.tap import TapError, tap_async_query, tap_columns

pytestmark = pytest.mark.timeout(60)

FAST = dict(poll_s=0.01, max_poll_s=0.05, backoff_s=0.01, max_backoff_s=0.05, request_timeout_s=5.0)
ADQL = 'SELECT OBJECT, TEFF, LOGG, SETUP\nFROM safcat."GES_DR5_1_V1"'


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def catalog(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame({"OBJECT": [f"{i:08d}-0000000" for i in range(n)],
                         "TEFF": rng.normal(5500, 500, n), "LOGG": rng.normal(4.0, 0.5, n),
                         "SETUP": np.where(np.arange(n) % 2 == 0, "HR10|HR21", "HR10")})


def quiet(**options):
    return {"log": lambda _: None, **FAST, **options}


# ---------------------------------------------------------------- the fake follows the standards

def test_the_fake_service_is_what_pyvo_expects(fault_server):
    """pyvo alone (no code of ours) runs a job on the fake and parses its UWS job document and
    VOTable result: the fake is a TAP service, not a mirror of our client."""
    import io

    import requests
    from pyvo.dal import TAPService
    from pyvo.io.uws import parse_job

    table = catalog(50)
    fault_server.mount("/tap", FakeTap(lambda adql: table))
    job = TAPService(fault_server.url("tap")).submit_job("SELECT * FROM t")
    document = parse_job(io.BytesIO(requests.get(job.url, timeout=5).content))
    assert document.phase == "PENDING" and document.jobid == "1"
    job.run()
    job.wait(timeout=5)
    assert job.phase == "COMPLETED"
    result = job.fetch_result().to_table()
    assert len(result) == 50 and list(result.colnames) == list(table.columns)
    job.delete()


def test_the_fake_sync_endpoint_really_caps(fault_server):
    """The cap the async path avoids is real in the fake: sync answers stop at 5000 rows."""
    from astropy.io.votable import parse
    import io
    import requests

    fault_server.mount("/tap", FakeTap(lambda adql: catalog(6000), sync_cap=5000))
    answer = requests.post(fault_server.url("tap/sync"), data={"QUERY": "SELECT *"}, timeout=10)
    votable = parse(io.BytesIO(answer.content))
    assert len(votable.get_first_table().array) == 5000
    assert [(i.name, i.value) for i in votable.resources[0].infos] == [("QUERY_STATUS", "OVERFLOW")]


# ---------------------------------------------------------------- results

def test_async_job_returns_every_row_beyond_the_sync_cap(fault_server):
    table = catalog(12_000)
    tap = fault_server.mount("/tap_cat", FakeTap(lambda adql: table, sync_cap=5000))
    lines: list[str] = []
    frame = tap_async_query(fault_server.url("tap_cat"), ADQL, **{**quiet(), "log": lines.append})
    assert len(frame) == 12_000 > tap.sync_cap
    assert list(frame.columns) == ["OBJECT", "TEFF", "LOGG", "SETUP"]
    assert frame["OBJECT"].tolist() == table["OBJECT"].tolist()
    np.testing.assert_allclose(frame["TEFF"], table["TEFF"])
    assert fault_server.count("/tap_cat/sync", None) == 0
    (job,) = tap.jobs.values()
    assert job.adql == ADQL and job.phase == "COMPLETED" and job.polls >= 4  # walked every phase
    assert job.deleted
    assert any("EXECUTING" in line for line in lines) and any("12000 rows" in line for line in lines)


def test_tap_columns_asks_tap_schema_for_both_spellings(fault_server):
    seen = []

    def respond(adql):
        seen.append(adql)
        return pd.DataFrame({"table_name": ['safcat."GES_DR5_1_V1"'] * 2,
                             "column_name": ["TEFF", "MG1"], "datatype": ["double"] * 2,
                             "unit": ["K", "dex"], "ucd": ["", ""], "description": ["", ""]})

    fault_server.mount("/tap_cat", FakeTap(respond))
    columns = tap_columns(fault_server.url("tap_cat"), 'safcat."GES_DR5_1_V1"', **quiet())
    assert "MG1" in set(columns["column_name"])
    assert "FROM TAP_SCHEMA.columns" in seen[0]
    assert """'safcat."GES_DR5_1_V1"'""" in seen[0] and "'safcat.GES_DR5_1_V1'" in seen[0]


def test_the_login_header_rides_on_every_request(fault_server):
    fault_server.require_token("tok-123", prefix="/tap")
    fault_server.mount("/tap", FakeTap(lambda adql: catalog(5)))
    frame = tap_async_query(fault_server.url("tap"), ADQL,
                            **quiet(headers={"Authorization": "Bearer tok-123"}))
    assert len(frame) == 5
    tap_requests = [r for r in fault_server.records if r.path.startswith("/tap")]
    assert len(tap_requests) >= 5 and all(r.authorization for r in tap_requests)
    with pytest.raises(TapError) as refused:
        tap_async_query(fault_server.url("tap"), ADQL, **quiet())
    assert "HTTP 401" in str(refused.value) and fault_server.url("tap") in str(refused.value)


# ---------------------------------------------------------------- failures name service and query

def _assert_names_service_and_query(error: Exception, service: str) -> None:
    text = str(error)
    assert service in text, text
    assert "ADQL: SELECT OBJECT, TEFF, LOGG, SETUP" in text and "FROM" not in text.split("ADQL:")[1]


def test_error_phase_reports_the_service_message_and_the_query(fault_server):
    tap = fault_server.mount("/tap", FakeTap(lambda adql: "Column MG1 does not exist in GES_DR5_1_V1"))
    with pytest.raises(TapError) as caught:
        tap_async_query(fault_server.url("tap"), ADQL, **quiet())
    assert "phase ERROR" in str(caught.value)
    assert "Column MG1 does not exist in GES_DR5_1_V1" in str(caught.value)
    _assert_names_service_and_query(caught.value, fault_server.url("tap"))
    assert all(job.deleted for job in tap.jobs.values())


def test_server_errors_on_job_creation_are_retried(fault_server):
    tap = fault_server.mount("/tap", FakeTap(lambda adql: catalog(10)))
    fault_server.add_fault("/tap/async", Fault.http_status(503, times=2))
    frame = tap_async_query(fault_server.url("tap"), "SELECT * FROM t", **quiet())
    assert len(frame) == 10 and len(tap.jobs) == 1
    assert fault_server.count("/tap/async", "POST") == 3


def test_overflow_status_in_an_async_result_is_an_error(fault_server):
    class CappedTap(FakeTap):
        def _send_table(self, handler, result, cap):
            super()._send_table(handler, result, cap=100)

    fault_server.mount("/tap", CappedTap(lambda adql: catalog(150)))
    with pytest.raises(TapError, match="OVERFLOW") as caught:
        tap_async_query(fault_server.url("tap"), ADQL, **quiet())
    _assert_names_service_and_query(caught.value, fault_server.url("tap"))


HTML = b"<!DOCTYPE html><html><head><title>ESO Login</title></head><body>Sign in</body></html>"


class _BrokenResult(FakeTap):
    """A service whose result answer is not a VOTable."""

    def __init__(self, kind: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kind = kind

    def _send_table(self, handler, result, cap):
        from httpfaults import votable_bytes

        if self.kind == "html":
            handler.reply(200, HTML, content_type="text/html")
        elif self.kind == "empty":
            handler.reply(200, b"", content_type="application/x-votable+xml")
        elif self.kind == "truncated":
            full = votable_bytes(result)
            handler.reply_cut(200, full, len(full) // 2, "application/x-votable+xml")


@pytest.mark.parametrize("kind", ["html", "empty", "truncated"])
def test_unreadable_results_name_service_step_and_query(fault_server, kind):
    tap = fault_server.mount("/tap", _BrokenResult(kind, lambda adql: catalog(2000)))
    with pytest.raises(TapError) as caught:
        tap_async_query(fault_server.url("tap"), ADQL, **quiet(retries=1))
    assert "fetching the result" in str(caught.value)
    _assert_names_service_and_query(caught.value, fault_server.url("tap"))
    assert all(job.deleted for job in tap.jobs.values())


def test_an_html_page_instead_of_the_job_names_service_and_query(fault_server):
    """A login portal or proxy page answering the job creation with 200 and HTML."""
    fault_server.mount("/tap", FakeTap(lambda adql: catalog(3)))
    fault_server.add_fault("/tap/async", Fault.http_status(200, times=None, body=HTML,
                                                           content_type="text/html"))
    with pytest.raises(TapError, match="creating the job.*not a UWS job document") as caught:
        tap_async_query(fault_server.url("tap"), ADQL, **quiet())
    _assert_names_service_and_query(caught.value, fault_server.url("tap"))


def test_unreachable_service_raises_archive_unreachable():
    port = closed_port()
    with pytest.raises(ArchiveUnreachable) as caught:
        tap_async_query(f"http://127.0.0.1:{port}/tap_cat", "SELECT * FROM t", **quiet(retries=1))
    text = str(caught.value)
    assert f"127.0.0.1:{port}" in text and "asynchronous TAP query" in text
    assert "mirror" in text and "demo_ges" in text


# ---------------------------------------------------------------- the deadline is ours

def test_pyvo_wait_alone_has_no_overall_deadline(fault_server):
    """Why the job is polled here: against a service that ignores WAIT, pyvo's wait(timeout=…)
    bounds each poll, not the wait, and a job that stays EXECUTING is waited for ever."""
    from pyvo.dal import TAPService

    fault_server.mount("/tap", FakeTap(lambda adql: catalog(3), phases=("EXECUTING",) * 10**6))
    from pyvo.dal.exceptions import DALServiceError

    job = TAPService(fault_server.url("tap")).submit_job("SELECT * FROM t").run()

    def wait() -> None:
        try:
            job.wait(timeout=0.2)
        except DALServiceError:   # the abort below: "job is not active"
            pass

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(timeout=3.0)
    assert waiter.is_alive()          # still polling 15 timeouts later
    job.abort()
    waiter.join(timeout=10.0)


def test_the_deadline_aborts_a_job_that_never_ends(fault_server):
    tap = fault_server.mount("/tap", FakeTap(lambda adql: catalog(3), phases=("EXECUTING",) * 10**6))
    start = time.monotonic()
    with pytest.raises(TapError, match="still EXECUTING after 0.5 s; aborted") as caught:
        tap_async_query(fault_server.url("tap"), ADQL, **quiet(timeout_s=0.5))
    assert time.monotonic() - start < 5.0
    _assert_names_service_and_query(caught.value, fault_server.url("tap"))
    (job,) = tap.jobs.values()
    assert job.phase == "ABORTED" and job.deleted
