"""The download engine against a loopback server that injects faults (tests/httpfaults.py).

Every fault must end in a verified file or a named failure, and never leave a partial or
unverified file at the final path.
"""
from __future__ import annotations

import hashlib
import logging
import random
import time
from pathlib import Path
from urllib.parse import quote_plus

import pandas as pd
import pytest

from httpfaults import FakeOidc, Fault, closed_port

from starlabels.acquire.auth import LoginError, login_headers
from starlabels.acquire.fetch import (RemoteFile, fetch_files, part_path, safe_relpath,
                                      with_mirror)
from starlabels.acquire.http import (ArchiveUnreachable, DownloadError, credentials_env_names,
                                     credentials_from_env)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    """Loopback requests must not be sent to a proxy from the environment."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def served(server, relpath: str, data: bytes, *, known: bool = True) -> RemoteFile:
    """Put ``data`` on the server; the RemoteFile knows size+sha256 unless ``known`` is False."""
    url = server.put(relpath, data)
    if not known:
        return RemoteFile(url=url, relpath=relpath)
    return RemoteFile(url=url, relpath=relpath, size=len(data), sha256=sha256(data))


def fast(lines: list | None = None, **overrides) -> dict:
    """Tiny backoffs so fault tests run in milliseconds; no rate limit unless asked."""
    options = dict(retries=3, backoff_s=0.01, max_backoff_s=0.05, timeout_s=2.0,
                   rate_limit_per_host=0, log=(lines.append if lines is not None else (lambda _: None)))
    options.update(overrides)
    return options


def assert_clean(dest: Path) -> None:
    left = [p.name for p in Path(dest).rglob("*") if p.name.startswith(".")]
    assert not left, f"temporary files were left behind: {left}"


# ---------------------------------------------------------------- names and mirrors

def test_safe_relpath_keeps_names_inside_and_plain():
    assert safe_relpath("../../etc/passwd") == "etc/passwd"
    assert safe_relpath("/abs/x.fits") == "abs/x.fits"
    assert safe_relpath("ADP.2020-12-07T15:35:14.938") == "ADP.2020-12-07T15_35_14.938"
    assert safe_relpath("Z-0.0.Alpha=+0.20/lte05800-4.50.fits") == "Z-0.0.Alpha=+0.20/lte05800-4.50.fits"
    assert safe_relpath("a/./b//.hidden/..\\..\\c d") == "a/b/hidden/c_d"
    for hopeless in ("", "/", "../..", "./.", "..."):
        with pytest.raises(ValueError):
            safe_relpath(hopeless)


def test_with_mirror_keeps_the_path_layout(tmp_path):
    url = "https://dataportal.eso.org/dataPortal/file/ADP.2020-12-07T15:35:14.938"
    assert with_mirror(url, None) == url
    assert with_mirror(url, "http://127.0.0.1:8000/base/") == \
        "http://127.0.0.1:8000/base/dataPortal/file/ADP.2020-12-07T15:35:14.938"
    assert with_mirror(url, "file:///data/mirror") == \
        "file:///data/mirror/dataPortal/file/ADP.2020-12-07T15:35:14.938"
    assert with_mirror(url, str(tmp_path)) == \
        f"{tmp_path.as_uri()}/dataPortal/file/ADP.2020-12-07T15:35:14.938"
    sas = "https://data.sdss.org/sas/dr12/marvels/spectro/x.fits?v=1"
    assert with_mirror(sas, "http://m/x", strip_prefix="/sas/dr12") == "http://m/x/marvels/spectro/x.fits?v=1"
    with pytest.raises(ValueError):
        with_mirror(sas, "http://m", strip_prefix="/other")
    with pytest.raises(ValueError):
        with_mirror(sas, "ftp://m/x")


# ---------------------------------------------------------------- the normal case

def test_fetch_verifies_writes_manifest_and_logs_progress(fault_server, tmp_path):
    files = [served(fault_server, f"plates/p{i:02d}.fits", payload(2000 + i, seed=i)) for i in range(40)]
    lines: list[str] = []
    manifest = tmp_path / "manifest.parquet"
    frame = fetch_files(files, tmp_path / "dest", manifest_path=manifest, concurrency=4,
                        what="MARVELS plates", **fast(lines))
    for item in files:
        assert (tmp_path / "dest" / item.relpath).read_bytes() == (fault_server.root / item.relpath).read_bytes()
    stored = pd.read_parquet(manifest)
    assert list(stored.columns) == ["url", "relpath", "path", "bytes", "sha256", "fetched_at",
                                    "status", "attempts", "error"]
    assert set(stored["status"]) == {"fetched"} and len(stored) == 40
    assert stored.set_index("relpath").loc["plates/p07.fits", "sha256"] == files[7].sha256
    assert (stored["bytes"] == [2000 + i for i in range(40)]).all()
    assert stored["fetched_at"].str.endswith("+00:00").all()
    assert len(frame) == 40 and set(frame["status"]) == {"fetched"}
    assert lines[0].startswith("fetching 40 MARVELS plates from 127.0.0.1:")
    progress = [line for line in lines[1:-1] if "files (" in line]
    assert 15 <= len(progress) <= 25, lines  # about every 5 %
    assert lines[-1].startswith("finished MARVELS plates: 40/40 files (100%)")
    assert not any("\r" in line for line in lines)
    assert_clean(tmp_path / "dest")


# ---------------------------------------------------------------- faults

def test_dropped_connection_resumes_with_range(fault_server, tmp_path):
    data = payload(300_000)
    item = served(fault_server, "spec/a.fits", data)
    fault_server.add_fault("/spec/a.fits", Fault.drop(after_bytes=100_000))
    fetch_files([item], tmp_path, **fast())
    assert (tmp_path / "spec/a.fits").read_bytes() == data
    first, second = fault_server.requests_for("/spec/a.fits")
    assert first.range is None and second.range.startswith("bytes=")
    resumed_at = int(second.range.split("=")[1].rstrip("-"))
    assert 0 < resumed_at <= 100_000
    assert second.status == 206 and second.bytes_sent == len(data) - resumed_at  # not from zero
    assert_clean(tmp_path)


def test_part_file_of_an_interrupted_run_is_resumed_by_the_rerun(fault_server, tmp_path):
    data = payload(200_000, seed=3)
    item = served(fault_server, "b.fits", data)
    fault_server.add_fault("/b.fits", Fault.drop(after_bytes=50_000))
    fault_server.add_fault("/b.fits", Fault.http_status(503, times=None))  # then the archive goes down
    with pytest.raises(DownloadError, match="b.fits: HTTP 503"):
        fetch_files([item], tmp_path, **fast(retries=0))
    assert not (tmp_path / "b.fits").exists()
    part = part_path(tmp_path / "b.fits")
    kept = part.stat().st_size
    assert 0 < kept <= 50_000
    fault_server.clear_faults()
    fault_server.reset_records()
    fetch_files([item], tmp_path, **fast())
    assert fault_server.ranges("/b.fits") == [f"bytes={kept}-"]
    assert (tmp_path / "b.fits").read_bytes() == data
    assert_clean(tmp_path)


def test_server_that_ignores_range_makes_the_client_restart_from_zero(fault_server, tmp_path):
    data = payload(50_000, seed=4)
    item = served(fault_server, "c.fits", data)
    fault_server.add_fault("/c.fits", Fault.ignore_range())
    part_path(tmp_path / "c.fits").write_bytes(b"stale bytes from an older version")
    lines: list[str] = []
    fetch_files([item], tmp_path, **fast(lines))
    assert fault_server.ranges("/c.fits") == ["bytes=33-"]
    assert (tmp_path / "c.fits").read_bytes() == data
    assert any("restarting from zero" in line for line in lines)


def test_416_accepts_a_complete_part_and_restarts_a_wrong_one(fault_server, tmp_path):
    data = payload(10_000, seed=5)
    url = fault_server.put("d.fits", data)
    item = RemoteFile(url, "d.fits", sha256=sha256(data))  # a checksum, but no size
    part_path(tmp_path / "d.fits").write_bytes(data)  # complete, server says 416 */10000
    fetch_files([item], tmp_path, **fast())
    assert (tmp_path / "d.fits").read_bytes() == data
    assert fault_server.ranges("/d.fits") == ["bytes=10000-"]

    other = tmp_path / "again"
    other.mkdir()
    part_path(other / "d.fits").write_bytes(data + b"junk")  # longer than the file: wrong
    fault_server.reset_records()
    fetch_files([item], other, **fast())
    assert (other / "d.fits").read_bytes() == data
    assert fault_server.ranges("/d.fits") == ["bytes=10004-", None]

    # a part nothing can vouch for (no checksum, no validator recorded when its bytes
    # arrived) might hold another version of the file: it is fetched again from zero
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    part_path(unknown / "d.fits").write_bytes(data)
    fault_server.reset_records()
    fetch_files([RemoteFile(url, "d.fits")], unknown, **fast())
    assert (unknown / "d.fits").read_bytes() == data
    assert fault_server.ranges("/d.fits") == [None]
    assert_clean(unknown)


def test_500_is_retried_then_verified(fault_server, tmp_path):
    data = payload(5_000)
    item = served(fault_server, "e.fits", data)
    fault_server.add_fault("/e.fits", Fault.http_status(500, times=2))
    frame = fetch_files([item], tmp_path, **fast())
    assert fault_server.count("/e.fits") == 3
    assert frame.loc[0, "attempts"] == 3 and frame.loc[0, "status"] == "fetched"
    assert (tmp_path / "e.fits").read_bytes() == data


def test_429_retry_after_is_honoured_and_capped(fault_server, tmp_path):
    data = payload(1_000)
    item = served(fault_server, "f.fits", data)
    fault_server.add_fault("/f.fits", Fault.http_status(429, headers={"Retry-After": "1"}))
    started = time.monotonic()
    fetch_files([item], tmp_path / "one", **fast(max_backoff_s=5.0))
    assert time.monotonic() - started >= 0.95
    assert fault_server.count("/f.fits") == 2

    fault_server.add_fault("/f.fits", Fault.http_status(503, headers={"Retry-After": "120"}))
    started = time.monotonic()
    fetch_files([item], tmp_path / "two", **fast(max_backoff_s=0.2))
    assert time.monotonic() - started < 5
    assert (tmp_path / "two/f.fits").read_bytes() == data


def test_truncated_body_is_retried(fault_server, tmp_path):
    data = payload(40_000, seed=6)
    item = served(fault_server, "g.fits", data)
    fault_server.add_fault("/g.fits", Fault.truncate(after_bytes=5_000))
    fetch_files([item], tmp_path, **fast())
    assert fault_server.ranges("/g.fits") == [None, "bytes=5000-"]
    assert (tmp_path / "g.fits").read_bytes() == data


def test_truncation_of_unknown_size_is_caught_by_content_length_and_resumed(fault_server, tmp_path):
    data = payload(40_000, seed=7)
    item = served(fault_server, "g2.fits", data, known=False)
    fault_server.add_fault("/g2.fits", Fault.truncate(after_bytes=7_000, times=None))
    fetch_files([item], tmp_path, **fast(retries=0))  # each attempt moves forward: no budget used
    assert fault_server.ranges("/g2.fits") == [None] + [f"bytes={n}-" for n in range(7000, 40_000, 7000)]
    assert (tmp_path / "g2.fits").read_bytes() == data


def test_checksum_mismatch_once_is_refetched_from_zero(fault_server, tmp_path):
    data = payload(20_000, seed=8)
    item = served(fault_server, "h.fits", data)
    fault_server.add_fault("/h.fits", Fault.corrupt(times=1))
    fetch_files([item], tmp_path, **fast())
    assert fault_server.ranges("/h.fits") == [None, None]
    assert (tmp_path / "h.fits").read_bytes() == data


def test_checksum_mismatch_always_fails_by_name_and_leaves_nothing(fault_server, tmp_path):
    data = payload(20_000, seed=9)
    item = served(fault_server, "dir/i.fits", data)
    fault_server.add_fault("/dir/i.fits", Fault.corrupt(times=None))
    manifest = tmp_path / "m.parquet"
    with pytest.raises(DownloadError) as caught:
        fetch_files([item], tmp_path / "dest", manifest_path=manifest, **fast(retries=2))
    text = str(caught.value)
    assert "dir/i.fits" in text and f"checksum mismatch: expected sha256 {item.sha256} got" in text
    assert fault_server.count("/dir/i.fits") == 3
    assert not (tmp_path / "dest/dir/i.fits").exists()
    assert_clean(tmp_path / "dest")
    row = pd.read_parquet(manifest).iloc[0]
    assert row["status"] == "failed" and "checksum mismatch" in row["error"] and row["attempts"] == 3


def test_md5_only_is_verified(fault_server, tmp_path):
    data = payload(3_000, seed=10)
    url = fault_server.put("j.fits", data)
    good = RemoteFile(url, "j.fits", md5=hashlib.md5(data).hexdigest())
    fetch_files([good], tmp_path / "ok", **fast())
    assert (tmp_path / "ok/j.fits").read_bytes() == data
    bad = RemoteFile(url, "j.fits", md5="0" * 32)
    with pytest.raises(DownloadError, match="expected md5 0{32} got"):
        fetch_files([bad], tmp_path / "bad", **fast(retries=0))
    assert not (tmp_path / "bad/j.fits").exists()


def test_slow_answer_beyond_timeout_is_retried_then_fails_clearly(fault_server, tmp_path):
    data = payload(4_000, seed=11)
    item = served(fault_server, "k.fits", data)
    fault_server.add_fault("/k.fits", Fault.slow(1.0))
    fetch_files([item], tmp_path / "once", **fast(timeout_s=0.3))
    assert fault_server.count("/k.fits") == 2
    assert (tmp_path / "once/k.fits").read_bytes() == data

    fault_server.add_fault("/k.fits", Fault.slow(1.0, times=None))
    started = time.monotonic()
    with pytest.raises(DownloadError, match="k.fits: no response within the timeout"):
        fetch_files([item], tmp_path / "always", **fast(timeout_s=0.3, retries=1))
    assert time.monotonic() - started < 2.0
    assert not (tmp_path / "always/k.fits").exists()


def test_stall_in_the_middle_of_the_body_resumes(fault_server, tmp_path):
    data = payload(100_000, seed=12)
    item = served(fault_server, "l.fits", data)
    fault_server.add_fault("/l.fits", Fault.slow(1.0, during=True))
    fetch_files([item], tmp_path, **fast(timeout_s=0.3))
    ranges = fault_server.ranges("/l.fits")
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    assert (tmp_path / "l.fits").read_bytes() == data


def test_404_fails_at_once_naming_url_and_status(fault_server, tmp_path):
    item = RemoteFile(fault_server.url("missing/n.fits"), "n.fits")
    with pytest.raises(DownloadError) as caught:
        fetch_files([item], tmp_path, **fast())
    assert item.url in str(caught.value) and "HTTP 404" in str(caught.value)
    assert fault_server.count("/missing/n.fits") == 1
    assert not (tmp_path / "n.fits").exists()


def test_one_failure_does_not_stop_the_others(fault_server, tmp_path):
    files = [served(fault_server, f"o{i}.fits", payload(1000, seed=i)) for i in range(5)]
    fault_server.add_fault("/o2.fits", Fault.http_status(404, times=None))
    with pytest.raises(DownloadError, match=r"1 of 5 files failed") as caught:
        fetch_files(files, tmp_path / "dest", **fast())
    frame = caught.value.manifest
    assert sorted(frame["status"]) == ["failed", "fetched", "fetched", "fetched", "fetched"]
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["o0.fits", "o1.fits", "o3.fits", "o4.fits"]


# ---------------------------------------------------------------- paths, reruns, politeness

def test_remote_names_cannot_escape_the_destination(fault_server, tmp_path):
    dest = tmp_path / "inside"
    data = payload(100)
    url = fault_server.put("evil.txt", data)
    frame = fetch_files([RemoteFile(url, "../../escape/evil.txt"), RemoteFile(url, "/etc/passwd")],
                        dest, **fast())
    assert (dest / "escape/evil.txt").read_bytes() == data
    assert (dest / "etc/passwd").read_bytes() == data
    assert not (tmp_path / "escape").exists()
    assert sorted(frame["relpath"]) == ["escape/evil.txt", "etc/passwd"]


def test_rerun_fetches_only_what_is_missing(fault_server, tmp_path):
    files = [served(fault_server, f"set/s{i}.fits", payload(3000, seed=i), known=False) for i in range(6)]
    manifest = tmp_path / "manifest.parquet"
    fault_server.add_fault("/set/s4.fits", Fault.http_status(500, times=None))
    with pytest.raises(DownloadError, match="1 of 6"):
        fetch_files(files, tmp_path / "dest", manifest_path=manifest, **fast(retries=1))
    first = pd.read_parquet(manifest).set_index("relpath")
    assert first.loc["set/s4.fits", "status"] == "failed" and (first["status"] == "fetched").sum() == 5

    fault_server.clear_faults()
    fault_server.reset_records()
    frame = fetch_files(files, tmp_path / "dest", manifest_path=manifest, **fast())
    assert [r.path for r in fault_server.records] == ["/set/s4.fits"]
    assert (frame["status"] == "skipped").sum() == 5
    assert (pd.read_parquet(manifest)["status"] != "failed").all()

    fault_server.reset_records()
    fetch_files(files, tmp_path / "dest", manifest_path=manifest, **fast())
    assert fault_server.records == []


def test_known_checksums_make_reruns_free_and_replace_a_wrong_file(fault_server, tmp_path):
    files = [served(fault_server, f"q{i}.fits", payload(2000, seed=i)) for i in range(3)]
    fetch_files(files, tmp_path, **fast())
    (tmp_path / "q1.fits").write_bytes(b"x" * 2000)  # same size, wrong content
    fault_server.reset_records()
    frame = fetch_files(files, tmp_path, **fast())
    assert [r.path for r in fault_server.records] == ["/q1.fits"]
    assert list(frame["status"]) == ["skipped", "fetched", "skipped"]
    assert (tmp_path / "q1.fits").read_bytes() == payload(2000, seed=1)


def test_concurrency_bound_is_respected(fault_server, tmp_path):
    files = [served(fault_server, f"c/r{i}.fits", payload(500, seed=i)) for i in range(8)]
    for item in files:
        fault_server.add_fault("/" + item.relpath, Fault.slow(0.25))
    fetch_files(files, tmp_path, concurrency=3, **fast())
    assert fault_server.max_active == 3


def test_rate_limit_per_host_is_respected(fault_server, tmp_path):
    files = [served(fault_server, f"t/u{i}.fits", payload(200, seed=i)) for i in range(6)]
    fetch_files(files, tmp_path, concurrency=4, **fast(rate_limit_per_host=5.0))
    times = sorted(r.time for r in fault_server.records)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) == 6 and min(gaps) >= 0.15, gaps  # 0.2 s apart, less scheduling noise
    assert times[-1] - times[0] >= 0.95


def test_refused_connection_raises_archive_unreachable_early(tmp_path):
    port = closed_port()
    files = [RemoteFile(f"http://127.0.0.1:{port}/dataPortal/file/ADP.{i}", f"ADP.{i}") for i in range(200)]
    manifest = tmp_path / "m.parquet"
    started = time.monotonic()
    with pytest.raises(ArchiveUnreachable) as caught:
        fetch_files(files, tmp_path / "dest", manifest_path=manifest, concurrency=4,
                    what="Gaia-ESO spectra", **fast(retries=2))
    assert time.monotonic() - started < 10
    text = str(caught.value)
    assert f"127.0.0.1:{port}" in text and "fetching 200 Gaia-ESO spectra" in text
    assert "connection refused" in text and "mirror" in text and "demo_ges" in text
    assert caught.value.host == f"127.0.0.1:{port}"
    attempted = pd.read_parquet(manifest)
    assert len(attempted) <= 4 and (attempted["status"] == "failed").all()  # not all 200


def test_login_token_is_used_and_never_shown(fault_server, tmp_path, caplog, monkeypatch):
    """ESO's way: the user and password (from the environment variables the config names) are
    exchanged at the OIDC token endpoint for a token, sent as 'Authorization: Bearer' with each
    download. No password, user-name value or token shows up in logs, errors or manifests."""
    password, wrong = "pw-Zq8!secret", "wrong-Pass-77"
    oidc = fault_server.mount("/sso/oidc/token", FakeOidc("survey-user", password))
    fault_server.require_token(oidc.token, prefix="/private")
    data = payload(1_000)
    item = served(fault_server, "private/v.fits", data)
    user_var, password_var = credentials_env_names("ESO")
    assert (user_var, password_var) == ("STARLABELS_ESO_USER", "STARLABELS_ESO_PASSWORD")
    login = {"token_url": fault_server.url("sso/oidc/token"), "user_env": user_var,
             "password_env": password_var}
    names = (user_var, password_var)
    logger = logging.getLogger("test_download")
    caplog.set_level(logging.DEBUG)
    manifest = tmp_path / "m.parquet"
    options = fast(log=logger.info, retries=1)

    # neither variable set: anonymous, and the archive's 401 says which variables to set
    monkeypatch.delenv(user_var, raising=False)
    monkeypatch.delenv(password_var, raising=False)
    assert login_headers(login, log=logger.info) == {}
    with pytest.raises(DownloadError) as without:
        fetch_files([item], tmp_path / "a", manifest_path=manifest, credentials_env=names,
                    **options)
    assert "HTTP 401" in str(without.value) and "STARLABELS_ESO_PASSWORD" in str(without.value)
    assert fault_server.count("/private/v.fits") == 1

    # a wrong password: the login itself is refused, naming the variables, not their values
    monkeypatch.setenv(user_var, "survey-user")
    monkeypatch.setenv(password_var, wrong)
    with pytest.raises(LoginError) as refused:
        login_headers(login, log=logger.info)
    assert user_var in str(refused.value) and "HTTP 401" in str(refused.value)

    # the right one: the password grant as astroquery.eso sends it, the id_token as bearer
    monkeypatch.setenv(password_var, password)
    headers = login_headers(login, log=logger.info)
    assert headers == {"Authorization": f"Bearer {oidc.token}"}
    asked = oidc.requests[-1]
    assert (asked["grant_type"], asked["client_id"], asked["username"]) == \
        ("password", "clientid", "survey-user")
    assert "valid until" in caplog.text
    fetch_files([item], tmp_path / "a", manifest_path=manifest, auth_headers=headers,
                credentials_env=names, **options)
    assert (tmp_path / "a/private/v.fits").read_bytes() == data

    # a token the archive no longer takes
    with pytest.raises(DownloadError) as rejected:
        fetch_files([served(fault_server, "private/w.fits", data)], tmp_path / "c",
                    manifest_path=manifest, auth_headers={"Authorization": "Bearer stale-tok-99"},
                    credentials_env=names, **options)
    assert "rejected the login token" in str(rejected.value)

    # a password written into a (mirror's) URL is kept out of the manifest too
    public = served(fault_server, "public/v.fits", data)
    in_url = RemoteFile(public.url.replace("http://", f"http://survey-user:{password}@"), "w.fits")
    frame = fetch_files([in_url], tmp_path / "b", manifest_path=manifest, **options)
    assert frame.loc[0, "url"] == public.url

    everything = (caplog.text + str(without.value) + str(refused.value) + str(rejected.value)
                  + manifest.read_bytes().decode("latin-1"))
    assert "private/v.fits" in caplog.text                       # the log did record
    for secret in (password, quote_plus(password), wrong, quote_plus(wrong), oidc.token,
                   "stale-tok-99"):
        assert secret not in everything


def test_unreachable_login_endpoint_names_host_not_password(monkeypatch):
    port = closed_port()
    monkeypatch.setenv("X_USER", "someone")
    monkeypatch.setenv("X_PASSWORD", "pw-never-shown")
    login = {"token_url": f"http://127.0.0.1:{port}/sso/oidc/token", "user_env": "X_USER",
             "password_env": "X_PASSWORD"}
    with pytest.raises(ArchiveUnreachable) as caught:
        login_headers(login, log=lambda _: None, timeout_s=5)
    text = str(caught.value)
    assert f"127.0.0.1:{port}" in text and "login token" in text and "X_USER" in text
    assert "pw-never-shown" not in text and "someone" not in text


def test_credentials_from_env_names_missing_variable_not_values(monkeypatch):
    monkeypatch.delenv("X_USER", raising=False)
    monkeypatch.delenv("X_PASSWORD", raising=False)
    assert credentials_from_env("X_USER", "X_PASSWORD") is None
    monkeypatch.setenv("X_PASSWORD", "hunter2-value")
    with pytest.raises(ValueError) as caught:
        credentials_from_env("X_USER", "X_PASSWORD")
    assert "X_USER" in str(caught.value) and "hunter2-value" not in str(caught.value)
    monkeypatch.setenv("X_USER", "me")
    assert credentials_from_env("X_USER", "X_PASSWORD") == ("me", "hunter2-value")


def test_local_mirror_copies_and_verifies(tmp_path):
    mirror = tmp_path / "mirror"
    data = payload(6_000, seed=13)
    (mirror / "dataPortal/file").mkdir(parents=True)
    (mirror / "dataPortal/file/ADP.2020-12-07T15:35:14.938").write_bytes(data)
    archive = "https://dataportal.eso.org/dataPortal/file/ADP.2020-12-07T15:35:14.938"
    for name, base in (("uri", mirror.as_uri()), ("plain", str(mirror))):
        item = RemoteFile(with_mirror(archive, base), "ADP.2020-12-07T15:35:14.938.fits",
                          size=len(data), sha256=sha256(data))
        frame = fetch_files([item], tmp_path / name, **fast())
        assert (tmp_path / name / "ADP.2020-12-07T15_35_14.938.fits").read_bytes() == data
        assert frame.loc[0, "status"] == "fetched"
    plain = RemoteFile(str(mirror / "dataPortal/file/ADP.2020-12-07T15:35:14.938"), "p.fits")
    fetch_files([plain], tmp_path / "path", **fast())
    assert (tmp_path / "path/p.fits").read_bytes() == data

    wrong = RemoteFile(with_mirror(archive, str(mirror)), "w.fits", sha256="0" * 64)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch_files([wrong], tmp_path / "wrong", **fast(retries=0))
    missing = RemoteFile(with_mirror(archive + "x", str(mirror)), "m.fits")
    with pytest.raises(DownloadError, match="not found"):
        fetch_files([missing], tmp_path / "missing", **fast())
    assert not (tmp_path / "wrong/w.fits").exists() and not (tmp_path / "missing/m.fits").exists()


# ---------------------------------------------------------------- what a hostile or broken server does

def fits_payload(blocks: int, seed: int = 0) -> bytes:
    """Bytes that look like a FITS file: a primary header card block, then random blocks."""
    header = (b"SIMPLE  =                    T".ljust(80) + b"END".ljust(80)).ljust(2880)
    return header + payload(2880 * (blocks - 1), seed=seed)


_DOWNLOADER = """
import sys
from starlabels.acquire.fetch import RemoteFile, fetch_files
frame = fetch_files([RemoteFile(sys.argv[1], "same.fits")], sys.argv[2], retries=3,
                    backoff_s=0.01, max_backoff_s=0.05, timeout_s=10.0, rate_limit_per_host=0,
                    log=lambda text: print(text, flush=True))
print("STATUS", frame.loc[0, "status"], flush=True)
"""


def test_two_downloaders_of_one_file_into_one_folder_never_mix_their_bytes(fault_server,
                                                                           tmp_path):
    import subprocess
    import sys

    data = payload(60_000, seed=21)
    item = served(fault_server, "same.fits", data, known=False)   # nothing to verify against
    fault_server.add_fault("/same.fits", Fault.trickle(3_000, 0.1, times=None))  # 2 s each
    dest = tmp_path / "dest"
    repo = Path(__file__).resolve().parent.parent
    first = subprocess.Popen([sys.executable, "-c", _DOWNLOADER, item.url, str(dest)], cwd=repo,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not fault_server.requests_for("/same.fits") and time.monotonic() < deadline:
        time.sleep(0.02)
    second = subprocess.Popen([sys.executable, "-c", _DOWNLOADER, item.url, str(dest)], cwd=repo,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = [proc.communicate(timeout=50)[0] for proc in (first, second)]
    assert [proc.returncode for proc in (first, second)] == [0, 0], outputs
    assert all("STATUS fetched" in out for out in outputs), outputs
    assert "waiting: another process is downloading same.fits" in outputs[1], outputs[1]
    assert (dest / "same.fits").read_bytes() == data
    assert_clean(dest)


def test_a_remote_file_named_like_a_part_file_does_not_collide(fault_server, tmp_path):
    partlike = served(fault_server, "spec/a.fits.part", payload(30_000, seed=22), known=False)
    plain = served(fault_server, "spec/a.fits", payload(40_000, seed=23), known=False)
    frame = fetch_files([partlike, plain], tmp_path, concurrency=1, **fast())
    assert list(frame["status"]) == ["fetched", "fetched"]
    assert (tmp_path / "spec/a.fits.part").read_bytes() == payload(30_000, seed=22)
    assert (tmp_path / "spec/a.fits").read_bytes() == payload(40_000, seed=23)
    assert sorted(p.name for p in (tmp_path / "spec").iterdir()) == ["a.fits", "a.fits.part"]


def test_html_page_served_with_200_is_never_accepted_as_a_fits_file(fault_server, tmp_path):
    from starlabels.io.fitstools import fits_problem

    data = fits_payload(3, seed=24)
    item = served(fault_server, "h/spec.fits", data, known=False)
    fault_server.add_fault("/h/spec.fits", Fault.html(times=1))
    lines: list[str] = []
    fetch_files([item], tmp_path / "once", content_check=fits_problem, **fast(lines))
    assert (tmp_path / "once/h/spec.fits").read_bytes() == data
    assert any("an HTML or XML document" in line for line in lines), lines

    fault_server.add_fault("/h/spec.fits", Fault.html(times=None))
    with pytest.raises(DownloadError, match="an HTML or XML document, not a FITS file"):
        fetch_files([item], tmp_path / "always", content_check=fits_problem, **fast(retries=1))
    assert not (tmp_path / "always/h/spec.fits").exists()
    assert_clean(tmp_path / "always")


def test_an_html_page_an_earlier_run_recorded_as_fetched_is_fetched_again(fault_server, tmp_path):
    from starlabels.io.fitstools import fits_problem

    data = fits_payload(2, seed=25)
    item = served(fault_server, "spec.fits", data, known=False)
    fault_server.add_fault("/spec.fits", Fault.html(times=1))
    manifest = tmp_path / "m.parquet"
    fetch_files([item], tmp_path / "dest", manifest_path=manifest, **fast())  # no check: stored
    page = (tmp_path / "dest/spec.fits").read_bytes()
    assert page.startswith(b"<!DOCTYPE html>")
    assert pd.read_parquet(manifest).loc[0, "status"] == "fetched"
    fault_server.reset_records()
    frame = fetch_files([item], tmp_path / "dest", manifest_path=manifest,
                        content_check=fits_problem, **fast())
    assert list(frame["status"]) == ["fetched"] and fault_server.count("/spec.fits") == 1
    assert (tmp_path / "dest/spec.fits").read_bytes() == data


def test_a_file_that_changes_between_attempts_is_not_spliced(fault_server, tmp_path):
    old, new = payload(80_000, seed=26), payload(80_000, seed=27)
    item = served(fault_server, "v.fits", old, known=False)
    fault_server.add_fault("/v.fits", Fault.drop(after_bytes=30_000,
                                                 then=lambda: fault_server.put("v.fits", new)))
    fetch_files([item], tmp_path, **fast())
    assert (tmp_path / "v.fits").read_bytes() == new
    first, second = fault_server.requests_for("/v.fits")
    assert second.range.startswith("bytes=") and second.if_range  # asked to resume if unchanged
    assert second.status == 200                                    # changed: the whole new file
    assert_clean(tmp_path)


def test_without_validators_or_checksums_a_part_is_never_continued(fault_server, tmp_path):
    old, new = payload(80_000, seed=28), payload(80_000, seed=29)
    fault_server.send_validators = False   # no ETag, no Last-Modified
    item = served(fault_server, "w.fits", old, known=False)
    fault_server.add_fault("/w.fits", Fault.drop(after_bytes=30_000,
                                                 then=lambda: fault_server.put("w.fits", new)))
    fetch_files([item], tmp_path, **fast())
    assert (tmp_path / "w.fits").read_bytes() == new
    assert fault_server.ranges("/w.fits") == [None, None]


def test_gzip_content_encoding_is_decoded(fault_server, tmp_path):
    data = fits_payload(4, seed=30)
    item = served(fault_server, "z.fits", data, known=False)
    fault_server.add_fault("/z.fits", Fault.gzip(times=1))
    frame = fetch_files([item], tmp_path / "whole", **fast())
    assert (tmp_path / "whole/z.fits").read_bytes() == data
    assert frame.loc[0, "bytes"] == len(data) and frame.loc[0, "sha256"] == sha256(data)

    import gzip
    fault_server.add_fault("/z.fits", Fault.gzip(times=1, cut_after=len(gzip.compress(data)) // 2))
    fetch_files([item], tmp_path / "cut", **fast())
    assert (tmp_path / "cut/z.fits").read_bytes() == data
    assert_clean(tmp_path / "cut")


def test_416_that_contradicts_the_announced_length_restarts(fault_server, tmp_path):
    data = payload(20_000, seed=31)
    item = served(fault_server, "r.fits", data, known=False)
    fault_server.add_fault("/r.fits", Fault.drop(after_bytes=5_000))
    fault_server.add_fault("/r.fits", Fault.lie_416())   # "the file ends where your part ends"
    lines: list[str] = []
    fetch_files([item], tmp_path, **fast(lines))
    assert (tmp_path / "r.fits").read_bytes() == data
    assert fault_server.ranges("/r.fits")[-1] is None
    assert any("but the server announced 20000 bytes" in line for line in lines), lines


def test_trickling_server_is_cut_off_by_the_per_file_deadline_and_resumed(fault_server, tmp_path):
    data = payload(30_000, seed=32)
    item = served(fault_server, "t.fits", data, known=False)
    fault_server.add_fault("/t.fits", Fault.trickle(1_000, 0.1, times=None))  # 3 s for the file
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"t.fits: gave up after \d+ s, the per-file deadline "
                                            r"of 0.6 s"):
        fetch_files([item], tmp_path, deadline_s=0.6, **fast(timeout_s=2.0))
    assert time.monotonic() - started < 2.0
    kept = part_path(tmp_path / "t.fits").stat().st_size
    assert 0 < kept < len(data)
    fault_server.clear_faults()
    fault_server.reset_records()
    fetch_files([item], tmp_path, deadline_s=0.6, **fast())
    assert fault_server.ranges("/t.fits") == [f"bytes={kept}-"]
    assert (tmp_path / "t.fits").read_bytes() == data


@pytest.mark.parametrize("climb", ["../../../../../../etc/hostname",
                                   "%2e%2e/%2E%2E/%2e%2e/%2e%2e/%2e%2e/etc/hostname",
                                   "a/./../../../../../../etc/hostname"])
def test_a_folder_mirror_never_serves_a_file_from_outside_itself(tmp_path, climb):
    from starlabels.acquire.remote import remote_table

    mirror = tmp_path / "mirror"
    (mirror / "dataPortal/file").mkdir(parents=True)
    url = f"https://dataportal.eso.org/dataPortal/file/{climb}"
    with pytest.raises(ValueError, match="would leave the mirror's folder"):
        with_mirror(url, str(mirror))
    rows = pd.DataFrame({"archive_url": [url], "relpath": ["x.fits"]})
    with pytest.raises(ValueError, match="dataportal.eso.org"):
        remote_table(rows, 2, str(mirror))
    with pytest.raises(ValueError, match="would leave"):
        with_mirror(url, "http://mirror.example.org/base")
