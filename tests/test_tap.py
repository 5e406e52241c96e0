"""The asynchronous TAP client against the fake UWS service in tests/httpfaults.py."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from httpfaults import FakeTap, Fault, closed_port

from starlabels.acquire.http import ArchiveUnreachable
from starlabels.acquire.tap import TapError, tap_async_query, tap_columns

pytestmark = pytest.mark.timeout(60)

FAST = dict(poll_s=0.01, max_poll_s=0.05, backoff_s=0.01, max_backoff_s=0.05, request_timeout_s=5.0)


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def catalog(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame({"OBJECT": [f"{i:08d}-0000000" for i in range(n)],
                         "TEFF": rng.normal(5500, 500, n), "LOGG": rng.normal(4.0, 0.5, n),
                         "SETUP": np.where(np.arange(n) % 2 == 0, "HR10|HR21", "HR10")})


def test_async_job_returns_every_row_beyond_the_sync_cap(fault_server):
    table = catalog(12_000)
    tap = fault_server.mount("/tap_cat", FakeTap(lambda adql: table, sync_cap=5000))
    lines: list[str] = []
    adql = 'SELECT OBJECT, TEFF, LOGG, SETUP\nFROM safcat."GES_DR5_1_V1"'
    frame = tap_async_query(fault_server.url("tap_cat"), adql, log=lines.append, **FAST)
    assert len(frame) == 12_000 > tap.sync_cap
    assert list(frame.columns) == ["OBJECT", "TEFF", "LOGG", "SETUP"]
    assert frame["OBJECT"].tolist() == table["OBJECT"].tolist()
    np.testing.assert_allclose(frame["TEFF"], table["TEFF"])
    assert fault_server.count("/tap_cat/sync", None) == 0
    (job,) = tap.jobs.values()
    assert job.adql == adql and job.phase == "COMPLETED" and job.polls >= 4  # walked every phase
    assert job.deleted
    assert any("EXECUTING" in line for line in lines) and any("12000 rows" in line for line in lines)


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


def test_error_phase_reports_the_service_message_and_the_query(fault_server):
    tap = fault_server.mount("/tap", FakeTap(lambda adql: "Column MG1 does not exist in GES_DR5_1_V1"))
    with pytest.raises(TapError) as caught:
        tap_async_query(fault_server.url("tap"), "SELECT MG1, AL1\nFROM safcat.GES_DR5_1_V1",
                        log=lambda _: None, **FAST)
    text = str(caught.value)
    assert "phase ERROR" in text and "Column MG1 does not exist in GES_DR5_1_V1" in text
    assert "ADQL: SELECT MG1, AL1" in text and "FROM" not in text.split("ADQL:")[1]
    assert all(job.deleted for job in tap.jobs.values())


def test_server_errors_on_job_creation_are_retried(fault_server):
    tap = fault_server.mount("/tap", FakeTap(lambda adql: catalog(10)))
    fault_server.add_fault("/tap/async", Fault.http_status(503, times=2))
    frame = tap_async_query(fault_server.url("tap"), "SELECT * FROM t", log=lambda _: None, **FAST)
    assert len(frame) == 10 and len(tap.jobs) == 1
    assert fault_server.count("/tap/async", "POST") == 3


def test_csv_results_are_read(fault_server):
    class CsvTap(FakeTap):
        def _send_table(self, handler, result, cap):
            handler.reply(200, result.to_csv(index=False).encode(), content_type="text/csv")

    fault_server.mount("/tap", CsvTap(lambda adql: catalog(7)))
    frame = tap_async_query(fault_server.url("tap"), "SELECT * FROM t", fmt="csv",
                            log=lambda _: None, **FAST)
    assert len(frame) == 7 and frame.loc[3, "OBJECT"] == "00000003-0000000"


def test_overflow_status_in_an_async_result_is_an_error(fault_server):
    class CappedTap(FakeTap):
        def _send_table(self, handler, result, cap):
            super()._send_table(handler, result, cap=100)

    fault_server.mount("/tap", CappedTap(lambda adql: catalog(150)))
    with pytest.raises(TapError, match="OVERFLOW"):
        tap_async_query(fault_server.url("tap"), "SELECT * FROM t", log=lambda _: None, **FAST)


def test_timeout_aborts_the_job(fault_server):
    tap = fault_server.mount("/tap", FakeTap(lambda adql: catalog(3), phases=("EXECUTING",) * 10_000))
    with pytest.raises(TapError, match="still EXECUTING"):
        tap_async_query(fault_server.url("tap"), "SELECT * FROM t", log=lambda _: None,
                        **{**FAST, "timeout_s": 0.3})
    (job,) = tap.jobs.values()
    assert job.phase == "ABORTED" and job.deleted


def test_unreachable_service_raises_archive_unreachable():
    port = closed_port()
    with pytest.raises(ArchiveUnreachable) as caught:
        tap_async_query(f"http://127.0.0.1:{port}/tap_cat", "SELECT * FROM t", log=lambda _: None,
                        retries=1, **FAST)
    text = str(caught.value)
    assert f"127.0.0.1:{port}" in text and "asynchronous TAP query" in text
    assert "mirror" in text and "demo_ges" in text


def test_tap_columns_asks_tap_schema_for_both_spellings(fault_server):
    seen = []

    def respond(adql):
        seen.append(adql)
        return pd.DataFrame({"table_name": ['safcat."GES_DR5_1_V1"'] * 2,
                             "column_name": ["TEFF", "MG1"], "datatype": ["double"] * 2,
                             "unit": ["K", "dex"], "ucd": ["", ""], "description": ["", ""]})

    fault_server.mount("/tap_cat", FakeTap(respond))
    columns = tap_columns(fault_server.url("tap_cat"), 'safcat."GES_DR5_1_V1"', log=lambda _: None, **FAST)
    assert "MG1" in set(columns["column_name"])
    assert "FROM TAP_SCHEMA.columns" in seen[0]
    assert """'safcat."GES_DR5_1_V1"'""" in seen[0] and "'safcat.GES_DR5_1_V1'" in seen[0]
