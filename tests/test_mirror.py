"""Acceptance: a real-archive experiment run through Snakemake against a loopback mirror.

A simulated Gaia-ESO survey (1 000 stars × HR10 + HR21 = 2 000 spectra) is written with the
package's simulator, then published the way ESO publishes it: every file under
``dataPortal/file/<dp_id>``, an ObsCore table and the DR5.1 catalogue behind (fake) TAP
services. ``snakemake --until normalize`` with ``source: eso_ges`` and ``mirror:`` pointing at it
must give exactly the normalized flux matrix the simulate path gives for the same stars — and a
rerun after a failed download must fetch only the files that were missing.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from astropy.table import Table
from astropy.units import UnitsWarning

from httpfaults import FakeTap, Fault, FaultServer
from starlabels import stages
from starlabels.artifacts import load_table
from starlabels.config import validate_config
from starlabels.io.fitstools import fits_problem

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parent.parent
N_STARS = 1000
EXPERIMENT = {
    "survey": "gaia_eso",
    "labels": ["teff", "logg", "fe_h", "mg_fe", "al_fe"],
    "grid": {"segments": [{"name": "HR10", "start": 5342.0, "end": 5616.0, "step": 0.2},
                          {"name": "HR21", "start": 8487.0, "end": 8998.0, "step": 0.2}]},
    # no benchmark stars: the simulator lists them in its calibration table, which a real
    # archive run takes from reference_stars instead, so the two paths' splits would differ;
    # one exposure per star and setup: the archive keeps the newest of each (keep: newest),
    # so repeat visits would not come back through it
    "simulate": {"seed": 77, "n_stars": N_STARS, "defect_fraction": 0.05,
                 "broken_file_fraction": 0.01, "benchmark_stars": {"table": None},
                 "observing": {"repeat_fraction": 0.0},
                 "setups": [{"name": "HR10", "resolution": 19800, "start": 5334.0, "end": 5624.0,
                             "step": 0.1},
                            {"name": "HR21", "resolution": 16200, "start": 8479.0, "end": 9006.0,
                             "step": 0.1}]},
}
#: stars whose newest spectrum is preceded by an older, unusable re-issue in the archive
N_REISSUED = 5
#: spectra whose download fails in the first run (HTTP 500 on every attempt)
N_FAILING = 4


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def dp_id(i: int) -> str:
    """ESO-like product ids: 'ADP.<ingestion time>' (':' included, as the archive writes them)."""
    return f"ADP.2021-06-{1 + i // 86400:02d}T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.500"


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """The simulated survey, its simulate-path normalisation, and its ESO-style publication."""
    root = tmp_path_factory.mktemp("mirror")
    cfg = validate_config({"experiments": {"sim": EXPERIMENT}, "run": ["sim"]})["experiments"]["sim"]
    raw = root / "sim" / "raw" / "observed"
    started = time.perf_counter()
    stages.acquire_observed(survey="gaia_eso", source="simulate", simulate_cfg=cfg["simulate"],
                            raw_dir=str(raw), truth=str(root / "sim" / "truth.parquet"),
                            threads=2, log=lambda _: None)
    norm = root / "sim" / "normalized"
    stages.normalize(survey="gaia_eso", manifest=str(raw / "manifest.parquet"),
                     catalog=str(raw / "catalog.fits"),
                     calibration=str(raw / "calibration_stars.parquet"), labels=cfg["labels"],
                     grid_cfg=cfg["grid"], selection=cfg["selection"],
                     solar=cfg["solar_abundances"], cfg=cfg["normalize"],
                     flux=str(norm / "flux.npy"), ivar=str(norm / "ivar.npy"),
                     table=str(norm / "stars.parquet"), rejects=str(norm / "rejects.parquet"),
                     threads=2, log=lambda _: None)
    simulate_s = time.perf_counter() - started

    # publish: files under the ESO path layout (hard links), ObsCore rows, the catalogue
    served = root / "served"
    files = served / "dataPortal" / "file"
    files.mkdir(parents=True)
    manifest = load_table(raw / "manifest.parquet")
    setup_range = {s["name"]: (s["start"] * 1e-10, s["end"] * 1e-10)
                   for s in cfg["simulate"]["setups"]}
    rows = []
    for i, row in enumerate(manifest.itertuples()):
        dp = dp_id(10000 + i)
        (files / dp).hardlink_to(row.path)
        rows.append({"dp_id": dp, "target_name": row.star_id, "setup": row.setup})
    for i, star in enumerate(manifest["star_id"].unique()[:N_REISSUED]):
        old = dp_id(i)                       # older than every real dp_id: must not be fetched
        (files / old).write_bytes(b"an older re-issue that is not a FITS file")
        rows.append({"dp_id": old, "target_name": star, "setup": "HR10"})
    obscore = pd.DataFrame({
        "dp_id": [r["dp_id"] for r in rows], "target_name": [r["target_name"] for r in rows],
        "s_ra": 0.0, "s_dec": 0.0,
        "em_min": [setup_range[r["setup"]][0] for r in rows],
        "em_max": [setup_range[r["setup"]][1] for r in rows],
        "snr": 50.0, "access_estsize": 200})
    with warnings.catch_warnings():          # 'dex', 'log(cm.s**-2)': not FITS-standard units
        warnings.simplefilter("ignore", UnitsWarning)
        catalog = Table.read(raw / "catalog.fits", hdu=1).to_pandas()
    for column in catalog.columns:
        if catalog[column].dtype == object:
            catalog[column] = [v.decode() if isinstance(v, bytes) else v for v in catalog[column]]
    return {"root": root, "cfg": cfg, "obscore": obscore, "catalog": catalog,
            "simulated": norm, "served": served, "simulate_s": simulate_s,
            "newest": obscore["dp_id"][:len(manifest)].tolist(),
            "older": obscore["dp_id"][len(manifest):].tolist()}


def answer_obs(survey):
    def respond(adql: str):
        if "ivoa.ObsCore" not in adql or "obs_collection = 'GAIAESO'" not in adql:
            return f"unexpected query: {adql}"
        return survey["obscore"]
    return respond


def answer_cat(survey):
    catalog = survey["catalog"]

    def respond(adql: str):
        if "TAP_SCHEMA.columns" in adql:
            return pd.DataFrame({"table_name": 'safcat."GES_DR5_1_V1"',
                                 "column_name": list(catalog.columns), "datatype": "",
                                 "unit": "", "ucd": "", "description": ""})
        names = re.findall(r'"(\w+)"', adql.split(" FROM ")[0])
        return catalog[[n for n in names if n in catalog.columns]]
    return respond


def snakemake(config: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--until",
                           "normalize", "--configfile", str(config)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_mirror_run_matches_simulate_path_and_resumes(survey):
    server = FaultServer(survey["served"]).start()
    obs = server.mount("tap_obs", FakeTap(answer_obs(survey), phases=()))
    cat = server.mount("tap_cat", FakeTap(answer_cat(survey), phases=()))
    try:
        results = survey["root"] / "results"
        config = survey["root"] / "mirror.yaml"
        experiment = {k: v for k, v in EXPERIMENT.items() if k != "simulate"}
        experiment.update({
            "source": "eso_ges", "mirror": server.base_url,
            "archive": {"eso": {"tap_obs": server.url("tap_obs"),
                                "tap_cat": server.url("tap_cat")}},
            "download": {"shards": 6, "concurrency": 4, "rate_limit_per_host": 1000.0,
                         "retries": 1, "backoff_s": 0.01, "max_backoff_s": 0.05,
                         "timeout_s": 20.0}})
        config.write_text(yaml.safe_dump({"results": str(results), "run": ["mirror_ges"],
                                          "experiments": {"mirror_ges": experiment}}))

        # first run: four spectra keep failing (HTTP 500), so their shards fail
        failing = survey["newest"][::len(survey["newest"]) // N_FAILING][:N_FAILING]
        for dp in failing:
            server.add_fault(f"/dataPortal/file/{dp}", Fault.http_status(500, times=None))
        started = time.perf_counter()
        first = snakemake(config)
        first_s = time.perf_counter() - started
        assert first.returncode != 0, first.stdout[-3000:] + first.stderr[-3000:]
        logs = "\n".join(p.read_text() for p in (results / "mirror_ges" / "logs")
                         .glob("download_observed_shard_*.log"))
        assert "ERROR:" in logs and "HTTP 500" in logs and "Traceback" not in logs
        assert not (results / "mirror_ges" / "normalized" / "flux.npy").exists()

        # second run, archive healthy again: only what is missing is fetched
        server.clear_faults()
        started = time.perf_counter()
        second = snakemake(config)
        second_s = time.perf_counter() - started
        assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
        # files the archive itself holds cut short are fetched at every attempt and never
        # accepted; every other file is fetched exactly once over both runs
        cut = {dp for dp in survey["newest"]
               if fits_problem(survey["served"] / "dataPortal" / "file" / dp)}
        assert cut
        for dp in survey["newest"]:
            ok = [r for r in server.requests_for(f"/dataPortal/file/{dp}") if r.status == 200]
            if dp in cut:
                assert len(ok) >= 2, f"{dp} fetched {len(ok)} times"
            else:
                assert len(ok) == 1, f"{dp} fetched {len(ok)} times"
        for dp in survey["older"]:
            assert not server.requests_for(f"/dataPortal/file/{dp}")
        # the archive was asked once (columns, catalogue, ObsCore): the manifest was not redone
        assert len(cat.jobs) == 2 and len(obs.jobs) == 1
    finally:
        server.stop()

    mirrored = results / "mirror_ges" / "normalized"
    simulated = survey["simulated"]
    a = np.load(simulated / "flux.npy")
    b = np.load(mirrored / "flux.npy")
    assert a.shape == b.shape and a.shape[0] > 0.95 * N_STARS
    assert np.array_equal(a, b)
    assert np.array_equal(np.load(simulated / "ivar.npy"), np.load(mirrored / "ivar.npy"))
    stars_a, stars_b = load_table(simulated / "stars.parquet"), load_table(mirrored / "stars.parquet")
    assert stars_a["star_id"].tolist() == stars_b["star_id"].tolist()
    for label in EXPERIMENT["labels"]:
        np.testing.assert_array_equal(stars_a[label], stars_b[label])
    assert (stars_a["split"] == stars_b["split"]).all()
    rejects_a = load_table(simulated / "rejects.parquet")
    rejects_b = load_table(mirrored / "rejects.parquet")
    assert len(rejects_a) > 0
    assert sorted(rejects_a["spectrum_id"]) == sorted(rejects_b["spectrum_id"])
    # the cut files never reached the spectra folder: their rejects say why
    not_downloaded = rejects_b[rejects_b["reason"].str.startswith("not downloaded: ")]
    assert len(not_downloaded) == len(cut)
    assert not_downloaded["reason"].str.contains("not a whole number of 2880-byte FITS "
                                                 "blocks").all()
    assert not any(Path(p).exists() for p in not_downloaded["path"])
    print(f"\nsimulate+normalize {survey['simulate_s']:.1f} s; snakemake with failing downloads "
          f"{first_s:.1f} s; resumed run to normalize {second_s:.1f} s")
