"""Real archive sources: manifests from (fake) archive answers, download shards, the raw/ layout
they assemble, literature tables, catalogue cuts and the experiment configs.

The archives are unreachable from here, so the ESO TAP services and the file servers are the
loopback fakes of tests/httpfaults.py; the answers have the real services' shapes (ObsCore
columns, TAP_SCHEMA.columns, DR5.1 column names, the PHOENIX and ESO URL layouts).
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from httpfaults import FakeOidc, FakeTap, Fault, closed_port, fault_server  # noqa: F401  (fixture)
from starlabels import runtime, surveys
from starlabels.acquire import manifests
from starlabels.acquire.assemble import assemble_observed, assemble_synthetic
from starlabels.acquire.http import ArchiveUnreachable, DownloadError
from starlabels.acquire.literature import (LiteratureTableError, calibration_table,
                                           load_benchmark_stars, load_marvels_calibration_stars)
from starlabels.acquire.remote import ArchiveConfigError, remote_table, shard_of
from starlabels.acquire.shards import download_shard
from starlabels.artifacts import load_table, save_table
from starlabels.config import ConfigError, load_config, validate_config
from starlabels.io.gaia_eso import read_ges_catalog, read_ges_flags, write_ges_catalog

REPO = Path(__file__).resolve().parent.parent
HR10 = {"name": "HR10", "start": 5342.0, "end": 5616.0, "step": 0.05}
HR21 = {"name": "HR21", "start": 8487.0, "end": 8998.0, "step": 0.05}
SETUPS = [("HR10", 5342.0, 5616.0), ("HR21", 8487.0, 8998.0)]
EM = {"HR10": (533.9e-9, 561.9e-9), "HR21": (848.4e-9, 900.1e-9), "HR15N": (647.0e-9, 679.0e-9)}
DOWNLOAD = {"shards": 3, "concurrency": 2, "rate_limit_per_host": 0, "retries": 1,
            "backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 5.0, "tap_timeout_s": 60.0}


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    """Loopback requests must not be sent to a proxy from the environment."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def eso_cfg(server=None, **overrides) -> dict:
    """The schema's archive.eso defaults, pointed at the loopback services."""
    cfg = validate_config({"experiments": {"e": {"source": "eso_ges"}}, "run": ["e"]})
    eso = cfg["experiments"]["e"]["archive"]["eso"]
    if server is not None:
        eso.update(tap_obs=server.url("tap_obs"), tap_cat=server.url("tap_cat"))
    eso.update(overrides)
    return eso


# ------------------------------------------------------------------ a small Gaia-ESO archive

CATALOG = pd.DataFrame({
    "OBJECT": ["05021542-6607455", "05021542-6607455", "18100451-4308222", "12000000+0000000",
               "00000001-0000001"],
    "RA": [75.56, 75.56, 272.51, 180.0, 0.01], "DECLINATION": [-66.12, -66.12, -43.13, 0.0, -0.01],
    "TEFF": [5800.0, 5750.0, 4600.0, 6100.0, 5000.0], "E_TEFF": [50.0, 80.0, 60.0, 70.0, 50.0],
    "LOGG": [4.3, 4.2, 2.4, 4.1, 3.0], "E_LOGG": [0.1, 0.1, 0.1, 0.1, 0.1],
    "FEH": [-0.2, -0.3, 0.1, -1.0, 0.0], "E_FEH": [0.05] * 5,
    "MG1": [7.60, 7.5, 7.70, 6.9, 7.5], "E_MG1": [0.05] * 5,
    "AL1": [6.30, 6.2, 6.50, 5.5, 6.4], "E_AL1": [0.07] * 5,
    "SNR": [80.0, 120.0, 45.0, 60.0, 30.0], "VRAD": [12.5, 12.4, -33.0, 101.0, 0.0],
    "E_VRAD": [0.3] * 5, "SETUP": ["HR10|HR21", "HR15N", "HR10|HR21", "HR10|HR21", "HR10"],
    "GES_TYPE": ["GE_MW"] * 5, "TECH": ["", "", "10302-11-00-00", "", ""],
    "PECULI": ["", "", "", "", ""], "REMARK": ["", "", "", "", ""],
})

OBSCORE = pd.DataFrame([
    # star 1: HR10 re-issued (keep the newest), HR21, and an HR15N spectrum of another setup
    {"dp_id": "ADP.2017-01-01T00:00:00.001", "target_name": "05021542-6607455", "setup": "HR10"},
    {"dp_id": "ADP.2020-12-07T15:35:14.938", "target_name": "05021542-6607455", "setup": "HR10"},
    {"dp_id": "ADP.2020-12-07T15:35:15.100", "target_name": "05021542-6607455", "setup": "HR21"},
    {"dp_id": "ADP.2020-12-07T15:35:15.200", "target_name": "05021542-6607455", "setup": "HR15N"},
    {"dp_id": "ADP.2020-12-07T15:36:00.000", "target_name": "18100451-4308222", "setup": "HR10"},
    {"dp_id": "ADP.2020-12-07T15:36:00.500", "target_name": "18100451-4308222", "setup": "HR21"},
    {"dp_id": "ADP.2020-12-07T15:37:00.000", "target_name": "12000000+0000000", "setup": "HR21"},
    # not in the parameter catalogue: never fetched
    {"dp_id": "ADP.2020-12-07T15:38:00.000", "target_name": "23595999-8959599", "setup": "HR10"},
])


def obscore_answer(frame: pd.DataFrame = OBSCORE) -> pd.DataFrame:
    """The ObsCore columns the ESO service returns for these spectra (em_* in metres)."""
    return pd.DataFrame({
        "dp_id": frame["dp_id"], "target_name": frame["target_name"],
        "s_ra": 0.0, "s_dec": 0.0,
        "em_min": [EM[s][0] for s in frame["setup"]], "em_max": [EM[s][1] for s in frame["setup"]],
        "snr": 50.0, "access_estsize": 200,
    })


def select_columns(adql: str, table: pd.DataFrame) -> pd.DataFrame:
    """The columns a 'SELECT "A", "B" FROM ...' asks for, as a TAP service answers them."""
    names = re.findall(r'"(\w+)"', adql.split(" FROM ")[0])
    return table[[n for n in names if n in table.columns]]


class FakeEso:
    """ESO's two TAP services (tap_obs, tap_cat) on one loopback server; records the ADQL."""

    def __init__(self, server, catalog: pd.DataFrame = CATALOG, obscore: pd.DataFrame = None,
                 sync_cap: int = 5000):
        self.catalog = catalog
        self.obscore = obscore_answer() if obscore is None else obscore
        self.queries: list[str] = []
        # jobs complete at the first poll (the TAP client's own tests cover slow jobs)
        server.mount("tap_obs", FakeTap(self.answer_obs, phases=(), sync_cap=sync_cap))
        server.mount("tap_cat", FakeTap(self.answer_cat, phases=(), sync_cap=sync_cap))

    def answer_obs(self, adql: str):
        self.queries.append(adql)
        if "ivoa.ObsCore" not in adql or "obs_collection = 'GAIAESO'" not in adql:
            return "unexpected query"
        return self.obscore

    def answer_cat(self, adql: str):
        self.queries.append(adql)
        if "TAP_SCHEMA.columns" in adql:
            return pd.DataFrame({"table_name": 'safcat."GES_DR5_1_V1"',
                                 "column_name": list(self.catalog.columns),
                                 "datatype": "double", "unit": "", "ucd": "", "description": ""})
        if 'FROM safcat."GES_DR5_1_V1"' not in adql:
            return "unexpected query"
        return select_columns(adql, self.catalog)


def eso_manifest(server, tmp_path, eso=None, labels=("teff", "logg", "fe_h", "mg_fe", "al_fe"),
                 n_shards=3, mirror="http://mirror.example.org/eso", log=None):
    remote, catalog = tmp_path / "remote.parquet", tmp_path / "catalog.fits"
    counts = manifests.build_eso_manifest(
        eso=eso or eso_cfg(server), segments=[HR10, HR21], labels=list(labels), mirror=mirror,
        n_shards=n_shards, tap_timeout_s=60.0, remote_out=str(remote), catalog_out=str(catalog),
        log=log or (lambda _: None))
    return counts, load_table(remote), catalog


def test_eso_manifest_pairs_setups_by_cname_and_keeps_the_newest(fault_server, tmp_path):
    fake = FakeEso(fault_server)
    lines = []
    counts, remote, _ = eso_manifest(fault_server, tmp_path, log=lines.append)
    # star 1: newest HR10 + HR21 (HR15N and the 2017 re-issue not fetched); star 2: both setups;
    # star 3: HR21 only (the archive has no HR10: normalize decides); the uncatalogued star: none
    assert remote[["star_id", "setup", "dp_id"]].values.tolist() == [
        ["05021542-6607455", "HR10", "ADP.2020-12-07T15:35:14.938"],
        ["05021542-6607455", "HR21", "ADP.2020-12-07T15:35:15.100"],
        ["12000000+0000000", "HR21", "ADP.2020-12-07T15:37:00.000"],
        ["18100451-4308222", "HR10", "ADP.2020-12-07T15:36:00.000"],
        ["18100451-4308222", "HR21", "ADP.2020-12-07T15:36:00.500"],
    ]
    assert (remote["unit"] == remote["star_id"]).all()       # a star's setups are read together
    assert remote["relpath"].tolist()[:2] == ["05021542-6607455_HR10.fits",
                                              "05021542-6607455_HR21.fits"]
    assert remote["archive_url"][0] == \
        "https://dataportal.eso.org/dataPortal/file/ADP.2020-12-07T15:35:14.938"
    assert remote["url"][0] == \
        "http://mirror.example.org/eso/dataPortal/file/ADP.2020-12-07T15:35:14.938"
    assert remote["shard"].between(0, 2).all() and remote["size"].isna().all()
    assert counts == {"n_files": 5, "n_stars": 3, "n_catalog": 4}
    assert any("not in the parameter catalogue" in line for line in lines)
    # both queries were asynchronous jobs on the services' own tables
    assert any('FROM safcat."GES_DR5_1_V1"' in q and '"MG1"' in q and '"AL1"' in q
               for q in fake.queries)
    assert not fault_server.requests_for("/tap_obs/sync") + fault_server.requests_for("/tap_cat/sync")


def test_eso_catalogue_one_row_per_cname_with_configurable_solar_abundances(fault_server,
                                                                            tmp_path):
    FakeEso(fault_server)
    _, _, catalog = eso_manifest(fault_server, tmp_path)
    stars = read_ges_catalog(catalog, solar_mg=7.53, solar_al=6.37)
    assert stars["star_id"].tolist() == ["00000001-0000001", "05021542-6607455",
                                         "12000000+0000000", "18100451-4308222"]
    first = stars.iloc[1]
    # the HR10|HR21 row, not the HR15N row with the higher SNR
    assert first["teff"] == 5800.0 and first["vrad"] == 12.5
    assert first["mg_fe"] == pytest.approx(7.60 - 7.53 + 0.2)
    assert first["al_fe"] == pytest.approx(6.30 - 6.37 + 0.2)
    other_sun = read_ges_catalog(catalog, solar_mg=7.60, solar_al=6.45)
    assert other_sun["mg_fe"][1] == pytest.approx(0.2)
    assert other_sun["al_fe"][1] == pytest.approx(6.30 - 6.45 + 0.2)
    assert read_ges_flags(catalog)["flags"].tolist() == ["", "", "", "10302-11-00-00"]


def test_async_tap_is_not_truncated_by_the_synchronous_row_cap(fault_server, tmp_path):
    n = 120
    catalog = pd.concat([CATALOG.iloc[[0]]] * n, ignore_index=True)
    catalog["OBJECT"] = [f"{i:08d}+0000000" for i in range(n)]
    FakeEso(fault_server, catalog=catalog, sync_cap=50)
    counts, _, path = eso_manifest(fault_server, tmp_path)
    assert counts["n_catalog"] == n and len(read_ges_catalog(path)) == n


def test_eso_catalogue_without_al1_refuses_al_fe(fault_server, tmp_path):
    FakeEso(fault_server, catalog=CATALOG.drop(columns=["AL1", "E_AL1"]))
    with pytest.raises(ValueError, match=r"al_fe.*AL1"):
        eso_manifest(fault_server, tmp_path)
    # without [Al/Fe] among the labels the same catalogue is fine
    counts, _, _ = eso_manifest(fault_server, tmp_path, labels=("teff", "logg", "fe_h", "mg_fe"))
    assert counts["n_catalog"] == 4


def test_keep_all_fetches_reissues_under_distinct_names(fault_server, tmp_path):
    FakeEso(fault_server)
    _, remote, _ = eso_manifest(fault_server, tmp_path, eso=eso_cfg(fault_server, keep="all"))
    star = remote[remote["star_id"] == "05021542-6607455"]
    assert len(star) == 3 and star["relpath"].is_unique
    assert all(r.endswith(".fits") and "/" not in r and ":" not in r for r in star["relpath"])


def test_unreachable_tap_names_host_and_the_way_forward(tmp_path):
    port = closed_port()
    eso = eso_cfg(None, tap_obs=f"http://127.0.0.1:{port}/tap_obs",
                  tap_cat=f"http://127.0.0.1:{port}/tap_cat")
    start = time.monotonic()
    with pytest.raises(ArchiveUnreachable) as info:
        manifests.build_eso_manifest(
            eso=eso, segments=[HR10, HR21], labels=["teff"], mirror=None, n_shards=2,
            tap_timeout_s=10.0, remote_out=str(tmp_path / "r.parquet"),
            catalog_out=str(tmp_path / "c.fits"), log=lambda _: None,
            tap_query=lambda *a, **k: None,
            tap_columns=lambda url, table, **kw: _refused(url, **kw))
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "mirror" in message and "demo" in message
    assert "columns of the Gaia-ESO catalogue" in message and "archive.eso.tap_cat" in message
    assert time.monotonic() - start < 30


def _refused(url, **kw):
    from starlabels.acquire.tap import tap_columns

    return tap_columns(url, 'safcat."GES_DR5_1_V1"', retries=0, backoff_s=0.01, **kw)


def test_archive_errors_are_reported_as_one_line(capsys):
    try:
        raise ArchiveUnreachable("cannot reach archive.eso.org while fetching: refused.\n"
                                 "  - set `mirror:` ...", host="archive.eso.org")
    except ArchiveUnreachable as exc:
        runtime.concise_excepthook(type(exc), exc, exc.__traceback__)
    err = capsys.readouterr().err
    assert err.startswith("ERROR: cannot reach archive.eso.org") and "Traceback" not in err
    try:
        raise KeyError("a bug")
    except KeyError as exc:
        runtime.concise_excepthook(type(exc), exc, exc.__traceback__)
    assert "Traceback" in capsys.readouterr().err        # real bugs keep their traceback


# ------------------------------------------------------------------ names, shards, setups

def test_local_names_are_sanitised_and_unique():
    rows = pd.DataFrame({"archive_url": ["https://a.org/x/1", "https://a.org/x/2"],
                         "relpath": ["../../etc/passwd", "ok/name:with|chars.fits"]})
    table = remote_table(rows, 4, None)
    assert table["relpath"].tolist() == ["etc/passwd", "ok/name_with_chars.fits"]
    assert table["url"].tolist() == rows["archive_url"].tolist()
    clash = pd.DataFrame({"archive_url": ["https://a.org/1", "https://a.org/2"],
                          "relpath": ["a:b.fits", "a|b.fits"]})
    with pytest.raises(ValueError, match="same local name"):
        remote_table(clash, 4, None)


def test_shards_are_stable_and_spread():
    names = [f"{i:08d}+0000000_HR10.fits" for i in range(3000)]
    shards = np.array([shard_of(n, 24) for n in names])
    assert shards.min() == 0 and shards.max() == 23
    assert np.bincount(shards).min() > 3000 / 24 * 0.7
    assert [shard_of(n, 24) for n in names[:50]] == shards[:50].tolist()


def test_setups_are_told_apart_by_wavelength_range():
    lo = np.array([EM["HR10"][0], EM["HR21"][0], EM["HR15N"][0], 5400e-10])
    hi = np.array([EM["HR10"][1], EM["HR21"][1], EM["HR15N"][1], 5450e-10])
    assert manifests.classify_setup(lo, hi, SETUPS, 0.9).tolist() == ["HR10", "HR21", "", ""]


def test_adql_strings_and_table_names_cannot_break_out():
    assert manifests.adql_string("O'Brien") == "'O''Brien'"
    assert manifests.adql_table('safcat."GES_DR5_1_V1"', "k") == 'safcat."GES_DR5_1_V1"'
    with pytest.raises(ArchiveConfigError, match="archive.eso.catalog_table"):
        manifests.adql_table("t; DROP TABLE x", "archive.eso.catalog_table")


# ------------------------------------------------------------------ download shards + assemble

def served_eso_files(server, tmp_path) -> tuple[pd.DataFrame, dict]:
    """Serve the five spectra of the manifest test under the ESO path layout (each file a
    FITS header block naming its dp_id: the download engine accepts nothing else)."""
    FakeEso(server)
    _, remote, _ = eso_manifest(server, tmp_path, mirror=server.base_url)
    content = {}
    for dp in remote["dp_id"]:
        cards = [b"SIMPLE  =                    T", f"COMMENT spectrum {dp}".encode(), b"END"]
        content[dp] = b"".join(card.ljust(80) for card in cards).ljust(2880)
        server.put(f"dataPortal/file/{dp}", content[dp])
    return remote, content


def run_shards(tmp_path, remote_path, n_shards, **kw):
    outs = []
    for k in range(n_shards):
        out = tmp_path / f"shard_{k}.parquet"
        download_shard(remote=str(remote_path), shard=k, dest_dir=str(tmp_path / "files"),
                                journal_dir=str(tmp_path / "journal"), out=str(out),
                                download=DOWNLOAD, log=lambda _: None, **kw)
        outs.append(str(out))
    return outs


def test_rerun_after_a_failed_shard_fetches_only_what_is_missing(fault_server, tmp_path):
    remote, content = served_eso_files(fault_server, tmp_path)
    remote_path = tmp_path / "remote.parquet"
    broken = remote["dp_id"][1]
    fault_server.add_fault(f"/dataPortal/file/{broken}", Fault.http_status(503, times=None))
    with pytest.raises(DownloadError, match="503"):
        run_shards(tmp_path, remote_path, 3, allow_missing=True)
    fault_server.clear_faults()
    outs = run_shards(tmp_path, remote_path, 3, allow_missing=True)
    for dp in remote["dp_id"]:
        ok = [r for r in fault_server.requests_for(f"/dataPortal/file/{dp}") if r.status == 200]
        assert len(ok) == 1, dp                            # fetched once over both runs
    # a different number of shards moves files between shards: still nothing fetched again
    fault_server.reset_records()
    remote = remote_table(remote.drop(columns=["shard"]), 5, None)
    save_table(remote_path, remote)
    outs = run_shards(tmp_path, remote_path, 5, allow_missing=True)
    assert not [r for r in fault_server.records if r.path.startswith("/dataPortal")]

    raw = tmp_path / "raw"
    counts = assemble_observed(survey="gaia_eso", remote=str(remote_path),
                                        shard_tables=outs, catalog=str(tmp_path / "catalog.fits"),
                                        raw_dir=str(raw), calibration={"table": None},
                                        log=lambda _: None)
    manifest = load_table(raw / "manifest.parquet")
    assert counts["n_files"] == 5 and counts["n_missing"] == 0
    assert set(manifest.columns) >= {"path", "unit", "star_id", "setup", "dp_id"}
    for row in manifest.itertuples():
        assert Path(row.path).read_bytes() == content[row.dp_id]
        assert Path(row.path).parent == raw / "spectra"
    assert load_table(raw / "calibration_stars.parquet").empty
    assert read_ges_catalog(raw / "catalog.fits")["star_id"].nunique() == 4


def test_missing_archive_file_reaches_the_normalize_rejects_not_oblivion(fault_server, tmp_path):
    remote, _ = served_eso_files(fault_server, tmp_path)
    gone = remote["dp_id"][3]
    (fault_server.root / "dataPortal" / "file" / gone).unlink()
    with pytest.raises(DownloadError, match="404"):
        run_shards(tmp_path, tmp_path / "remote.parquet", 3, allow_missing=False)
    outs = run_shards(tmp_path, tmp_path / "remote.parquet", 3, allow_missing=True)
    raw = tmp_path / "raw"
    counts = assemble_observed(survey="gaia_eso", remote=str(tmp_path / "remote.parquet"),
                                        shard_tables=outs, catalog=str(tmp_path / "catalog.fits"),
                                        raw_dir=str(raw), calibration={"table": None},
                                        log=lambda _: None)
    manifest = load_table(raw / "manifest.parquet")
    assert counts["n_missing"] == 1
    lost = manifest[manifest["download_status"] == "missing"]
    assert lost["dp_id"].tolist() == [gone] and not Path(lost["path"].iloc[0]).exists()
    assert "HTTP 404" in lost["download_error"].iloc[0]          # normalize's reject reason


def test_login_comes_from_the_environment_and_never_reaches_the_tables(fault_server, tmp_path,
                                                                      monkeypatch):
    """Proprietary ESO data: the shard logs in at the token endpoint with the user and
    password of the environment variables the config names and sends the token as a bearer;
    neither the password nor the token is written anywhere."""
    remote, _ = served_eso_files(fault_server, tmp_path)
    oidc = fault_server.mount("/sso/oidc/token", FakeOidc("astro", "s3cret-pw"))
    fault_server.require_token(oidc.token, prefix="/dataPortal")
    login = {"token_url": fault_server.url("sso/oidc/token"), "user_env": "MY_ESO_USER",
             "password_env": "MY_ESO_PASSWORD"}
    monkeypatch.delenv("MY_ESO_USER", raising=False)
    monkeypatch.delenv("MY_ESO_PASSWORD", raising=False)
    with pytest.raises(DownloadError, match="MY_ESO_USER"):
        run_shards(tmp_path, tmp_path / "remote.parquet", 3, login=login)
    monkeypatch.setenv("MY_ESO_USER", "astro")
    monkeypatch.setenv("MY_ESO_PASSWORD", "s3cret-pw")
    outs = run_shards(tmp_path, tmp_path / "remote.parquet", 3, login=login)
    assert len(oidc.requests) == 3                               # one login per shard job
    for path in [*outs, *(tmp_path / "journal").glob("*.parquet")]:
        assert b"s3cret-pw" not in Path(path).read_bytes()
        assert oidc.token.encode() not in Path(path).read_bytes()
    assert all(r.authorization for r in fault_server.records if r.path.startswith("/dataPortal")
               and r.status == 200)


def test_eso_manifest_queries_carry_the_login_token(fault_server, tmp_path, monkeypatch):
    """TAP queries of proprietary data go with the same bearer token as downloads."""
    FakeEso(fault_server)
    oidc = fault_server.mount("/sso/oidc/token", FakeOidc("astro", "s3cret-pw"))
    fault_server.require_token(oidc.token, prefix="/tap_")
    eso = eso_cfg(fault_server, token_url=fault_server.url("sso/oidc/token"),
                  user_env="MY_ESO_USER", password_env="MY_ESO_PASSWORD")
    monkeypatch.delenv("MY_ESO_USER", raising=False)
    monkeypatch.delenv("MY_ESO_PASSWORD", raising=False)
    with pytest.raises(Exception, match="HTTP 401"):
        eso_manifest(fault_server, tmp_path, eso=eso)
    monkeypatch.setenv("MY_ESO_USER", "astro")
    monkeypatch.setenv("MY_ESO_PASSWORD", "s3cret-pw")
    counts, _, _ = eso_manifest(fault_server, tmp_path, eso=eso)
    assert counts["n_files"] == 5
    tap_requests = [r for r in fault_server.records if r.path.startswith("/tap_")]
    assert all(r.authorization for r in tap_requests if r.status == 200)


# ------------------------------------------------------------------ PHOENIX

def phoenix_cfg(base_url: str, **grid) -> dict:
    return {"base_url": base_url, "grid": {"teff": [5000, 5200, 100], "logg": [4.0, 4.5, 0.5],
                                           "fe_h": [-0.5, 0.0, 0.5], "alpha": [0.0, 0.0, 0.2],
                                           **grid}}


def test_phoenix_grid_points_follow_the_grid_layout():
    points = manifests.phoenix_grid_points({"teff": [5000, 5000, 100], "logg": [4.5, 4.5, 0.5],
                                           "fe_h": [-3.5, 0.5, 0.5], "alpha": [0.0, 0.4, 0.2]})
    with_alpha = {(p[2], p[3]) for p in points if p[3] != 0}
    assert {fe for fe, _ in with_alpha} == {-3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0}
    assert len(points) == 9 + 7 * 2
    rows = manifests.phoenix_rows(phoenix_cfg("https://phoenix.astro.physik.uni-goettingen.de/"
                                             "data/HiResFITS"))
    assert rows["archive_url"][0].endswith("/data/HiResFITS/WAVE_PHOENIX-ACES-AGSS-COND-2011.fits")
    assert rows["archive_url"][1] == (
        "https://phoenix.astro.physik.uni-goettingen.de/data/HiResFITS/PHOENIX-ACES-AGSS-COND-"
        "2011/Z-0.5/lte05000-4.00-0.5.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits")


def test_phoenix_holes_are_recorded_as_missing_not_fatal(fault_server, tmp_path):
    from starlabels.io.phoenix import (WAVE_FILENAME, read_phoenix_spectrum, read_phoenix_wave,
                                       write_phoenix_spectrum, write_phoenix_wave)

    prefix = "data/HiResFITS"
    cfg = phoenix_cfg("https://phoenix.astro.physik.uni-goettingen.de/" + prefix)
    rows = manifests.phoenix_rows(cfg)
    wave = np.linspace(5000.0, 5010.0, 200)
    write_phoenix_wave(fault_server.root / prefix / WAVE_FILENAME, wave)
    holes = set(rows["relpath"][rows["kind"] == "spectrum"][::4])
    for row in rows[rows["kind"] == "spectrum"].itertuples():
        if row.relpath in holes:
            continue
        path = fault_server.root / prefix / row.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        write_phoenix_spectrum(path, np.full(200, 1e15, np.float32), teff=row.teff,
                               logg=row.logg, fe_h=row.fe_h, alpha=row.alpha)
    remote = tmp_path / "remote.parquet"
    manifests.build_phoenix_manifest(phoenix=cfg, mirror=fault_server.base_url, n_shards=3,
                                    remote_out=str(remote), log=lambda _: None)
    outs = run_shards(tmp_path, remote, 3, allow_missing=True)
    raw = tmp_path / "phoenix"
    counts = assemble_synthetic(remote=str(remote), shard_tables=outs, raw_dir=str(raw),
                                         log=lambda _: None)
    manifest = load_table(raw / "manifest.parquet")
    assert counts == {"n_models": len(rows) - 1 - len(holes), "n_missing": len(holes)}
    assert set(manifest.loc[manifest["kind"] == "missing", "relpath"]) == holes
    waves = manifest.loc[manifest["kind"] == "wave", "path"]
    np.testing.assert_array_equal(read_phoenix_wave(waves.iloc[0]), wave)
    first = manifest[manifest["kind"] == "spectrum"].iloc[0]
    spec = read_phoenix_spectrum(first["path"], wave)
    assert spec.meta["teff"] == first["teff"] and spec.meta["logg"] == first["logg"]


# ------------------------------------------------------------------ MARVELS

def test_marvels_manifest_lists_one_star1d_file_per_plate(fault_server, tmp_path):
    from starlabels.io.marvels import read_marvels_star_catalog, write_marvels_star_catalog

    sdss = {"base_url": "https://data.sdss.org/sas/dr12/marvels", "rerun": "v1.0",
            "plate_path": "spectro/redux/{rerun}/results/{plate}/star1d_{plate}.fits",
            "star_catalog": "catalogs/marvelsStar.fits"}
    stars = pd.DataFrame({"STARNAME": ["TYC 1-1-1", "TYC 2-2-1", "TYC 3-3-1"],
                          "PLATE": ["HD4203", "HD4203", "GJ436"], "TEFF": [5500.0, np.nan, 5800.0],
                          "TEFF_E": [50.0, np.nan, 50.0], "LOG_G": [4.4, np.nan, 4.3],
                          "LOG_G_E": [0.1, np.nan, 0.1], "FEH": [0.0, np.nan, -0.2],
                          "FEH_E": [0.05, np.nan, 0.05],
                          "RPM_LOG_G": ["dwarf", "giant", "dwarf"]})
    write_marvels_star_catalog(fault_server.root / "sas/dr12/marvels/catalogs/marvelsStar.fits",
                               stars)
    remote = tmp_path / "remote.parquet"
    manifests.build_marvels_manifest(sdss=sdss, mirror=fault_server.base_url, n_shards=2,
                                    download=DOWNLOAD, download_dir=str(tmp_path / "files"),
                                    remote_out=str(remote), catalog_out=str(tmp_path / "c.fits"),
                                    log=lambda _: None)
    table = load_table(remote)
    assert table["plate"].tolist() == ["GJ436", "HD4203"]
    assert table["relpath"].tolist() == ["star1d_GJ436.fits", "star1d_HD4203.fits"]
    assert table["url"][1] == (f"{fault_server.base_url}/sas/dr12/marvels/spectro/redux/v1.0/"
                               f"results/HD4203/star1d_HD4203.fits")
    assert read_marvels_star_catalog(tmp_path / "c.fits")["star_id"].tolist() == \
        stars["STARNAME"].tolist()
    with pytest.raises(ArchiveConfigError, match="archive.sdss.rerun"):
        manifests.marvels_plate_rows(["HD4203"], dict(sdss, rerun=None))


# ------------------------------------------------------------------ literature tables

def test_benchmark_table_names_a_source_for_every_number():
    table = load_benchmark_stars()
    assert len(table) == 15 and (table["reference"].str.len() > 20).all()
    labels = ["teff", "e_teff", "logg", "e_logg", "fe_h", "e_fe_h"]
    # no number without a source: a row nobody could read values for carries none
    assert table.loc[~table["verified"], labels].isna().all().all()
    verified = table[table["verified"]]
    assert len(verified) == 12 and verified[["teff", "logg", "fe_h"]].notna().all().all()
    assert verified["reference"].str.contains("Soubiran et al. 2024|IAU 2015").all()
    arcturus = table.set_index("name").loc["Arcturus (HD 124897)"]
    assert 4000 < arcturus["teff"] < 4500 and arcturus["logg"] < 2
    assert (table["check"].str.len() > 0).all()


def test_unverified_rows_are_left_out_unless_asked_for(tmp_path):
    path = tmp_path / "bench.csv"
    path.write_text("# comment\nname,star_id,teff,e_teff,logg,e_logg,fe_h,e_fe_h,reference,"
                    "verified,check\nA,05021542-6607455,5800,50,4.4,0.1,0.0,0.05,Paper 1,true,\n"
                    "B,18100451-4308222,4600,50,2.4,0.1,0.1,0.05,Paper 2,false,Table 3\n"
                    "C,,5000,50,3.0,0.1,0.1,0.05,Paper 3,true,\n")
    lines = []
    kept = calibration_table("gaia_eso", {"table": str(path)}, log=lines.append)
    assert kept["star_id"].tolist() == ["05021542-6607455"]
    assert list(kept.columns) == ["star_id", "teff", "e_teff", "logg", "e_logg", "fe_h",
                                  "e_fe_h", "reference"]
    assert any("not verified" in line for line in lines)
    assert any("no survey star_id" in line for line in lines)
    both = calibration_table("gaia_eso", {"table": str(path), "use_unverified": True},
                             log=lambda _: None)
    assert len(both) == 2


def test_empty_marvels_calibration_table_refuses_the_comparison():
    assert load_marvels_calibration_stars().empty      # rows must come from Ghezzi et al. 2014
    cfg = {"table": "marvels_calibration_stars.csv", "required": True}
    with pytest.raises(LiteratureTableError, match="Ghezzi et al. 2014") as info:
        calibration_table("sdss_marvels", cfg, log=lambda _: None)
    assert "reference_stars.required: false" in str(info.value)
    assert calibration_table("sdss_marvels", dict(cfg, required=False), log=lambda _: None).empty


@pytest.mark.parametrize("row, words", [
    ("TYC 1-1-1,5.8,0.05,4.4,0.1,0.0,0.05,Paper,true,", ["teff", "unit"]),
    ("TYC 1-1-1,5800,50,4.4,0.1,0.0,0.05,,true,", ["reference"]),
    ("TYC 1-1-1,5800,50,4.4,0.1,0.0,0.05,Paper,yes,", ["verified"]),
    ("TYC 1-1-1,58OO,50,4.4,0.1,0.0,0.05,Paper,true,", ["teff", "non-numbers"]),
])
def test_malformed_literature_rows_are_refused_naming_the_file(tmp_path, row, words):
    path = tmp_path / "calib.csv"
    path.write_text("star_id,teff,e_teff,logg,e_logg,fe_h,e_fe_h,reference,verified,check\n"
                    + row + "\n")
    with pytest.raises(LiteratureTableError) as info:
        load_marvels_calibration_stars(path)
    assert str(path) in str(info.value)
    for word in words:
        assert word in str(info.value)


# ------------------------------------------------------------------ cuts and readers

def test_quality_flags_exclude_stars_from_training(tmp_path):
    from starlabels.selection import flagged, gaia_eso_stars

    assert flagged(pd.Series(["10302-11-00-00|13027", "", "103021-00", None]),
                   ["10302", "13027"]).tolist() == [True, False, False, False]
    path = tmp_path / "cat.fits"
    write_ges_catalog(path, CATALOG.drop_duplicates("OBJECT"))
    selection = {"teff_range": [4000.0, 7000.0], "snr_min": 20.0, "require_finite_errors": True,
                 "valid_fraction": 0.0, "test_fraction": 0.0, "seed": 1}
    solar = {"mg": 7.53, "al": 6.37}
    plain = gaia_eso_stars(path, ["teff", "logg", "fe_h"], selection, solar)
    cut = gaia_eso_stars(path, ["teff", "logg", "fe_h"], dict(selection, exclude_flags=["10302"]),
                         solar)
    flagged_star = "18100451-4308222"
    assert plain.set_index("star_id").loc[flagged_star, "split"] == "train"
    assert cut.set_index("star_id").loc[flagged_star, "split"] == "target"
    assert (cut["split"] == "train").sum() == (plain["split"] == "train").sum() - 1


def test_reader_choices_from_config_reach_the_reader(tmp_path):
    from starlabels.io.gaia_eso import write_ges_spectrum

    path = tmp_path / "s.fits"
    wave = np.linspace(5340.0, 5620.0, 300)
    write_ges_spectrum(path, wave, np.full(300, 100.0), np.full(300, 2.0), cname="X", setup="HR10",
                       snr=50.0, resolution=19800.0, vrad_kms=0.0)
    assert surveys.get("gaia_eso").reader({"medium": "header"})(path).medium == "air"
    with pytest.warns(UserWarning, match="TUCD"):
        assert surveys.get("gaia_eso").reader({"medium": "vacuum"})(path).medium == "vacuum"
    with pytest.raises(Exception, match="FLUX_REDUCED"):
        surveys.get("gaia_eso").reader({"flux_column": "FLUX_REDUCED"})(path)


# ------------------------------------------------------------------ configs and the DAG

def test_real_data_configs_are_valid_and_sources_fit_surveys():
    ges = load_config(REPO / "configs" / "gaia_eso.yaml")["experiments"]["gaia_eso"]
    assert ges["source"] == "eso_ges"
    # the group's recipe: 30 members, the best 80 % kept, early stopping on a holdout, Keras'
    # LeakyReLU slope, dropout after the convolutions and the first two dense layers
    train = ges["train"]
    assert train["members"] == 30 and ges["predict"]["keep_quantile"] == 0.8
    assert train["holdout_fraction"] > 0 and train["min_delta"] == 1e-4
    assert train["patience"] == 25 and train["learning_rate"] == 1e-4
    assert train["architecture"]["negative_slope"] == 0.3
    assert train["architecture"]["dropout_after"] == ["conv", "dense_1", "dense_2"]
    assert ges["labels"] == ["teff", "logg", "fe_h", "mg_fe", "al_fe"]
    assert {s["step"] for s in ges["grid"]["segments"]} == {0.05}
    assert [s["name"] for s in ges["grid"]["segments"]] == ["HR10", "HR21"]
    assert ges["archive"]["eso"]["tap_obs"] == "https://archive.eso.org/tap_obs"
    mar = load_config(REPO / "configs" / "marvels.yaml")["experiments"]["marvels"]
    assert mar["source"] == "sdss_marvels" and mar["synthetic"]["source"] == "phoenix"
    assert mar["synthetic"]["synthesize"]["resolution"] == 11000
    assert mar["reference_stars"]["required"] is True
    with pytest.raises(ConfigError, match="experiments.e.survey"):
        validate_config({"experiments": {"e": {"source": "eso_ges", "survey": "sdss_marvels",
                                               "labels": ["teff"]}}, "run": ["e"]})


@pytest.mark.slow
def test_survey_scale_dag_builds_fast_without_network(tmp_path):
    """`snakemake -n` for configs/gaia_eso.yaml with a pre-written manifest of 36 904 stars."""
    results = tmp_path / "results"
    download = results / "gaia_eso" / "raw" / "observed" / "download"
    n = 36904
    cnames = [f"{i // 10000:02d}{i % 10000:06d}-0000000" for i in range(n)]
    rows = pd.DataFrame({
        "archive_url": [f"https://dataportal.eso.org/dataPortal/file/ADP.2020-01-01T00:00:00.{i:06d}"
                        for i in range(2 * n)],
        "relpath": [f"{c}_{s}.fits" for c in cnames for s in ("HR10", "HR21")],
        "kind": "spectrum", "star_id": [c for c in cnames for _ in (0, 1)],
        "setup": ["HR10", "HR21"] * n})
    rows["unit"] = rows["star_id"]
    save_table(download / "remote.parquet", remote_table(rows, 32, None))
    write_ges_catalog(download / "catalog.fits", pd.DataFrame({
        "OBJECT": cnames, "TEFF": 5000.0, "LOGG": 4.0, "FEH": 0.0}))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile",
                           "configs/gaia_eso.yaml", "--config", f"results={results}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, flags=re.M))
    assert counts["download_shard"] == "32" and counts["archive_observed"] == "1"
    print(f"dry-run DAG for 36 904 targets built in {seconds:.2f} s")
    assert seconds <= 20.0


# ------------------------------------------------------------------ validation without truth

def test_validation_without_truth_measures_against_reference_labels(tmp_path):
    from starlabels.plots import precision_vs_snr
    from starlabels.validate import (clean_summary, no_truth, precision_block,
                                     reference_precision_by_snr)

    rng = np.random.default_rng(3)
    n = 400
    ref = rng.uniform(4500, 6500, n)
    cat = pd.DataFrame({"star_id": [f"s{i}" for i in range(n)], "split": "test",
                        "snr": np.where(np.arange(n) < n // 2, 30.0, 150.0),
                        "teff_ref": ref, "teff_err": 40.0})
    cat["teff"] = ref + rng.normal(0, np.where(cat["snr"] < 100, 200.0, 50.0))
    truth = no_truth(cat, ["teff"]).rename(columns={"teff": "teff_true"})
    block = precision_block(cat, truth, ["teff"], np.arange(n))
    assert block["vs_true"]["teff"]["n"] == 0                 # real data: nothing to compare
    assert block["vs_reference"]["teff"]["n"] == n
    report = reference_precision_by_snr(cat, ["teff"], np.arange(n), [20, 100, 1000])
    assert report["n"].tolist() == [n // 2, n // 2]
    assert report["sigma"][0] == pytest.approx(200, rel=0.2)
    assert report["sigma"][1] == pytest.approx(50, rel=0.2)
    precision_vs_snr(report, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
    cleaned = pd.DataFrame({"cleaned": [True, True, True, False], "keep": [True, False, True, True],
                            "reason": ["", "tsne outlier; residual", "", ""]})
    rejects = pd.DataFrame({"spectrum_id": ["x"], "path": ["p"], "stage": ["normalize"],
                            "reason": ["unreadable: p: cannot open file"]})
    summary = clean_summary(cleaned, rejects)
    assert summary["rejected_fraction"] == pytest.approx(1 / 3)
    assert summary["per_reason"] == {"tsne outlier": 1}
    assert summary["normalize_rejected"] == {"n": 1, "per_reason": {"unreadable": 1}}
