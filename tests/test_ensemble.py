"""Using a trained ensemble on one's own spectra: `starlabels predict / info / check-config` and
the Python API, on the ensembles the tiny end-to-end run trains (session fixture ``tiny_run``).

The predictions must equal the pipeline's own catalogue rows (to 1e-4): the command runs the
same readers, normalisation, networks and flags."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from starlabels.artifacts import load_table
from starlabels.catalog import FLAG_BITS, FLAG_COLUMN, read_catalog

pytestmark = pytest.mark.slow

#: bits only the workflow can set (it knows the training split and the t-SNE cleaning, runs the
#: refine fit, and has the survey catalogue's labels)
WORKFLOW_ONLY_BITS = (FLAG_BITS["IN_TRAINING_SET"] | FLAG_BITS["CLEAN_REJECTED"]
                      | FLAG_BITS["REFINE_POOR_FIT"] | FLAG_BITS["CATALOGUE_MISMATCH"])


def starlabels(*args: str | Path) -> subprocess.CompletedProcess:
    """`python -m starlabels ARGS` in a new process, as a user runs it."""
    cmd = [sys.executable, "-m", "starlabels", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def in_process(capsys, *args: str | Path) -> subprocess.CompletedProcess:
    """The same command through :func:`starlabels.cli.main` in this process (no new torch
    import per call)."""
    from starlabels.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def demo_files(results: Path, n_stars: int = 4) -> tuple[list[str], list[str]]:
    """The raw files of the first few test-split stars of tiny_ges (HR10 + HR21 each; first
    visits only: a repeat visit's files lie in spectra/visit<k>/)."""
    cat = load_table(results / "tiny_ges" / "catalog" / "starlabels_tiny_ges.parquet")
    first = (cat["split"] == "test") & (cat["spectrum_id"] == cat["star_id"])
    stars = cat.loc[first, "spectrum_id"].head(n_stars).tolist()
    spectra = results / "tiny_ges" / "raw" / "observed" / "spectra"
    return stars, [str(p) for s in stars for p in sorted(spectra.glob(f"{s}_*.fits"))]


def assert_rows_match(ours: pd.DataFrame, pipeline: pd.DataFrame) -> None:
    """Every predicted column of ``ours`` equals the pipeline catalogue's row of the same star
    to 1e-4 (relative, or absolute near zero); flags equal but for the workflow-only bits."""
    pipeline = pipeline.set_index("spectrum_id").loc[ours["spectrum_id"]]
    ours = ours.set_index("spectrum_id")
    numeric = [c for c in ours.columns if c in pipeline.columns and c != FLAG_COLUMN
               and ours[c].dtype.kind == "f"]
    assert {"teff", "logg", "fe_h", "teff_err"} <= set(numeric)
    for name in numeric:
        np.testing.assert_allclose(ours[name], pipeline[name], rtol=1e-4, atol=1e-4,
                                   err_msg=name)
    for name in [c for c in ours.columns if c.endswith("_prob") or c in ("embedding",
                                                                         "knn_distance")]:
        np.testing.assert_allclose(np.stack(ours[name]), np.stack(pipeline[name]), rtol=1e-4,
                                   atol=1e-4, err_msg=name)
    np.testing.assert_array_equal(ours[FLAG_COLUMN],
                                  pipeline[FLAG_COLUMN] & ~WORKFLOW_ONLY_BITS)


def test_predict_command_reproduces_the_pipeline_catalogue(tiny_run, tmp_path, fitsverify):
    results = tiny_run["results"]
    stars, files = demo_files(results)
    raw = results / "tiny_ges" / "raw" / "observed"
    junk = tmp_path / "notes.fits"
    junk.write_text("not a FITS file")
    out = tmp_path / "out" / "catalog.fits"
    proc = starlabels("predict", results / "tiny_ges" / "models", *files, junk,
                      tmp_path / "missing.fits", "-o", out, "--rv-table", raw / "catalog.fits",
                      "--id-column", "OBJECT")
    assert proc.returncode == 0, proc.stderr
    assert "normalize: 4/4 units (100%)" in proc.stderr          # progress on stderr
    assert proc.stdout == ""
    ours = read_catalog(out.with_suffix(".parquet"))
    assert sorted(ours["spectrum_id"]) == sorted(stars)
    assert (ours["rv_source"] == "table").all()
    assert ours["ra"].notna().all() and ours["dec"].notna().all()
    pipeline = load_table(results / "tiny_ges" / "catalog" / "starlabels_tiny_ges.parquet")
    assert_rows_match(ours, pipeline)
    assert_rows_match(read_catalog(out), pipeline)
    rejects = pd.read_csv(out.with_name("catalog_rejects.csv"))
    assert sorted(Path(p).name for p in rejects["path"]) == ["missing.fits", "notes.fits"]
    assert rejects["reason"].str.len().gt(10).all()
    fitsverify(out)
    from astropy.table import Table
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Table.read(out, hdu=1), Table.read(out.with_suffix(".parquet"), format="parquet.votable")


def test_deep_remap_ensemble_reproduces_distributions_and_neighbours(tiny_run, tmp_path):
    results = tiny_run["results"] / "tiny_marvels"
    plate = sorted((results / "raw" / "observed" / "spectra").glob("star1d_*.fits"))[0]
    out = tmp_path / "marvels.fits"
    proc = starlabels("predict", results / "models", plate, "-o", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    ours = read_catalog(out)                                   # vectors come from FITS too
    pipeline = load_table(results / "catalog" / "starlabels_tiny_marvels.parquet")
    assert len(ours) > 5 and (ours["rv_source"] == "header").all()
    assert_rows_match(ours, pipeline)
    expected = pipeline.set_index("spectrum_id").loc[ours["spectrum_id"]]
    assert ours["knn_star_id"].tolist() == expected["knn_star_id"].tolist()
    assert ours["evolutionary_class"].tolist() == expected["evolutionary_class"].tolist()


def test_python_api_on_arrays_equals_the_files(tiny_run):
    from starlabels.ensemble import Ensemble, read_star_table
    from starlabels.io.gaia_eso import read_ges_spectrum

    results = tiny_run["results"]
    stars, files = demo_files(results, n_stars=2)
    raw = results / "tiny_ges" / "raw" / "observed"
    rv = read_star_table(raw / "catalog.fits", "OBJECT").set_index("star_id")["vrad"]
    ensemble = Ensemble.load(results / "tiny_ges" / "models")
    from_files = ensemble.predict_files(files, rv_table=rv.reset_index(), log=lambda _: None)
    waves, fluxes, ivars = [], [], []
    for star in stars:
        pieces = [read_ges_spectrum(f) for f in files if Path(f).name.startswith(star)]
        waves.append(np.concatenate([p.wavelength for p in pieces]))
        fluxes.append(np.concatenate([p.flux for p in pieces]))
        ivars.append(np.concatenate([np.where(p.mask, 0.0, p.ivar) for p in pieces]))
    from_arrays = ensemble.predict(waves, fluxes, ivars, rv_kms=rv.loc[stars].to_numpy(),
                                   star_id=stars, log=lambda _: None)
    a = from_arrays.catalog.set_index("spectrum_id")
    b = from_files.catalog.set_index("spectrum_id").loc[a.index]
    for label in ("teff", "logg", "fe_h", "mg_fe", "al_fe"):
        np.testing.assert_allclose(a[label], b[label], rtol=1e-4)
        np.testing.assert_allclose(a[f"{label}_err"], b[f"{label}_err"], rtol=1e-4)
    # an array that cannot be normalised is a reject row with its reason, not an exception
    bad = ensemble.predict(waves[0], np.zeros_like(fluxes[0]), ivars[0], log=lambda _: None)
    assert bad.catalog.empty and bad.rejects["reason"].tolist() == ["zero flux"]


def test_the_catalogue_reference_scale_travels_with_the_ensemble(tiny_run, tmp_path, capsys):
    """ensemble.json carries the experiment's reference-star scale; applying the ensemble puts
    its labels on it exactly as the catalogue stage does (tiny's untrained ensemble refuses a
    fit, so a fitted record is written into a copy of the folder)."""
    from starlabels.ensemble import Ensemble
    from starlabels.reference_scale import apply_reference_scale

    results = tiny_run["results"]
    manifest = json.loads((results / "tiny_ges" / "models" / "ensemble.json").read_text())
    refused = json.loads((results / "tiny_ges" / "catalog" / "reference_scale.json").read_text())
    assert manifest["reference_scale"]["labels"] == refused["labels"]
    # tiny_marvels fits no reference scale
    assert json.loads((results / "tiny_marvels" / "models" / "ensemble.json").read_text())[
        "reference_scale"] is None
    copy = tmp_path / "models"
    shutil.copytree(results / "tiny_ges" / "models", copy)
    record = dict(manifest["reference_scale"])
    record["labels"] = dict(record["labels"])
    record["labels"]["teff"] = {"applied": True, "coefficients": [40.0, 30.0, -20.0],
                                "covariance": np.diag([25.0, 4.0, 1.0]).tolist()}
    record["labels"]["fe_h"] = {"applied": True, "coefficients": [-0.05, 0.02, 0.01],
                                "covariance": np.diag([1e-4, 1e-5, 1e-5]).tolist()}
    manifest["reference_scale"] = record
    (copy / "ensemble.json").write_text(json.dumps(manifest))
    _, files = demo_files(results, n_stars=2)
    quiet = dict(log=lambda _: None)
    plain = Ensemble.load(results / "tiny_ges" / "models").predict_files(files, **quiet).catalog
    scaled = Ensemble.load(copy).predict_files(files, **quiet).catalog
    expected = apply_reference_scale({k: plain[k].to_numpy() for k in ("teff", "logg", "fe_h")},
                                     record)
    for label in ("teff", "fe_h"):
        np.testing.assert_allclose(scaled[f"{label}_raw"], plain[label], rtol=1e-6)
        np.testing.assert_allclose(scaled[label], expected[label], rtol=1e-6)
        np.testing.assert_allclose(scaled[f"{label}_err_scale"], expected[f"{label}_err_scale"],
                                   rtol=1e-6)
        assert (scaled[label] != plain[label]).all()
    np.testing.assert_array_equal(scaled["logg"], plain["logg"])
    assert "logg_raw" not in scaled and "mg_fe_raw" not in scaled
    # the columns come in the catalogue's order: <label>, <label>_raw, ... <label>_err_scale
    cols = list(scaled.columns)
    assert cols.index("teff_raw") == cols.index("teff") + 1
    assert cols.index("teff_err_scale") == cols.index("teff_err") + 1
    proc = in_process(capsys, "info", copy)
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("ref. scale")]
    assert "teff: applied" in line and "fe_h: applied" in line
    assert "logg: not applied: the reference stars' predicted terms span too little" in line


def test_header_rvs_are_used_loudly_without_a_table(tiny_run, tmp_path, capsys):
    results = tiny_run["results"]
    _, files = demo_files(results, n_stars=1)
    proc = in_process(capsys, "predict", results / "tiny_ges" / "models", *files, "-o",
                      tmp_path / "c.fits")
    assert proc.returncode == 0, proc.stderr
    assert "catalogue's RVs (vrad)" in proc.stderr and "header RV" in proc.stderr
    assert read_catalog(tmp_path / "c.fits")["rv_source"].tolist() == ["header"]


def test_exit_status_is_nonzero_only_when_nothing_could_be_processed(tiny_run, tmp_path, capsys):
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"\0" * 100)
    out = tmp_path / "none.fits"
    proc = in_process(capsys, "predict", tiny_run["results"] / "tiny_ges" / "models", junk, "-o", out)
    assert proc.returncode == 1
    assert not out.exists()
    rejects = pd.read_csv(tmp_path / "none_rejects.csv")
    assert rejects["path"].tolist() == [str(junk)] and "unreadable" in rejects["reason"][0]


def test_an_edited_or_incomplete_ensemble_is_refused(tiny_run, tmp_path, capsys):
    from starlabels.members import load_member

    copy = tmp_path / "models"
    shutil.copytree(tiny_run["results"] / "tiny_ges" / "models", copy)
    proc = in_process(capsys, "info", copy)        # a copied folder is the same ensemble
    assert proc.returncode == 0, proc.stderr
    assert "checksums    verified" in proc.stdout and "teff [K]" in proc.stdout
    meta_path = copy / "member_0" / "model.json"
    original = meta_path.read_text()
    meta = json.loads(original)
    meta["label_max"][0] += 500.0
    meta_path.write_text(json.dumps(meta))
    proc = in_process(capsys, "info", copy)
    assert proc.returncode == 1 and "member_0/model.json: sha256" in proc.stderr
    with pytest.raises(ValueError, match=r"disagree on \['label_max'\]"):
        load_member(copy / "member_0")
    meta_path.write_text(original)
    shutil.rmtree(copy / "member_1")
    proc = in_process(capsys, "info", copy)
    assert proc.returncode == 1 and "member_1" in proc.stderr


def test_info_json_and_check_config(tiny_run, tiny_config_path, tmp_path, capsys):
    proc = in_process(capsys, "info", tiny_run["results"] / "tiny_marvels" / "models", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["method"] == "deep_remap" and info["calibration"] == "ensemble_calibration.json"
    assert info["labels"] == {"teff": "K", "logg": None, "fe_h": None}
    assert info["grid"]["segments"][0]["name"] == "MARVELS" and info["grid"]["n_pixels"] == 1701
    ok = starlabels("check-config", tiny_config_path)          # python -m starlabels
    assert ok.returncode == 0 and "valid" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_config_path.read_text().replace("members: 2", "members: 0", 1))
    proc = in_process(capsys, "check-config", bad)
    assert proc.returncode == 1 and "experiments.tiny_ges.train.members" in proc.stderr
