"""Catalog flags, shard merging and the FITS / Parquet round trip."""
from __future__ import annotations

import shutil
import subprocess
import warnings

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from starlabels import __version__, artifacts
from starlabels.catalog import (FLAG_BAD_MASK, FLAG_BITS, FLAG_COLUMN, FLAG_DESCRIPTIONS,
                                FLAG_WARN_MASK,
                                attach_clean,
                                catalogue_chi2, column_unit, compute_flags, flag_names,
                                label_ranges,
                                merge_shards, read_catalog, verify_fits, write_catalog)
from starlabels.labels import LABELS

CAT_LABELS = ["teff", "logg", "fe_h", "mg_fe", "al_fe"]


def predictions(n: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "spectrum_id": [f"GES_{i:04d}_HR10+HR21" for i in range(n)],
        "star_id": [f"J{i:08d}-{i:07d}" for i in range(n)],
        "row": np.arange(n, dtype=np.int64),
        "split": ["train", "valid", "test", "target", "target", "target"][:n] * (n // 6 or 1),
        "snr": rng.uniform(10, 200, n),
    })
    for label, (lo, hi), spread in [("teff", (4000, 7000), 30.0), ("logg", (1, 5), 0.05),
                                    ("fe_h", (-1, 0.5), 0.03), ("mg_fe", (-0.1, 0.4), 0.02),
                                    ("al_fe", (-0.2, 0.5), 0.03)]:
        df[label] = rng.uniform(lo, hi, n)
        df[f"{label}_err"] = np.full(n, spread, dtype=np.float32)
    return df


# ---------------------------------------------------------------- flags

def test_flag_bits_distinct_powers_of_two():
    bits = list(FLAG_BITS.values())
    assert len(set(bits)) == len(bits)
    assert all(b > 0 and b & (b - 1) == 0 and b < 2**31 for b in bits)
    for name in ("CLEAN_REJECTED", "LOW_SNR", "HIGH_UNCERTAINTY", "OUTSIDE_TRAINING"):
        assert name in FLAG_BITS
    assert FLAG_BAD_MASK & FLAG_WARN_MASK == 0
    assert flag_names(FLAG_BITS["LOW_SNR"] | FLAG_BITS["HIGH_UNCERTAINTY"]) == ["LOW_SNR", "HIGH_UNCERTAINTY"]


def test_compute_flags_each_bit():
    df = predictions()
    df["snr"] = [100.0, 5.0, np.nan, 100.0, 100.0, 100.0]
    df.loc[2, "teff_err"] = 500.0          # the ensemble is unsure
    df.loc[3, "logg"] = 6.5                # beyond the training range
    df.loc[4, "fe_h"] = np.nan             # a member failed
    df["clean_keep"] = [True, True, True, True, True, False]
    ranges = {"teff": (3000.0, 8000.0), "logg": (0.0, 5.5), "fe_h": (-3.0, 1.0)}
    flags = compute_flags(df, CAT_LABELS, ranges, snr_min=20.0, max_err={"teff": 150.0})
    assert flags.dtype == np.int32
    b = FLAG_BITS
    assert flags[0] == b["IN_TRAINING_SET"]
    assert flags[1] == b["LOW_SNR"]
    assert flags[2] == b["LOW_SNR"] | b["HIGH_UNCERTAINTY"]        # unknown S/N counts as low
    assert flags[3] == b["OUTSIDE_TRAINING"]
    assert flags[4] == b["PREDICTION_NAN"]                      # NaN is not "outside"
    assert flags[5] == b["CLEAN_REJECTED"]
    assert (flags & FLAG_BAD_MASK != 0).tolist() == [False] * 4 + [True, False]
    # no S/N test asked for; labels without limits are not tested
    assert compute_flags(df.drop(columns="snr"), ["teff"], {}, None, {})[1] == 0


def test_catalogue_chi2_follows_chi2_and_catches_a_mismatched_entry():
    """Catalogue labels drawn around ours with the joint errors give χ² with one degree of
    freedom per label compared; an entry that belongs to another star is flagged."""
    rng = np.random.default_rng(3)
    n = 20000
    ours = {"teff": rng.uniform(4000, 7000, n), "logg": rng.uniform(1, 5, n)}
    err = {"teff": np.full(n, 40.0), "logg": np.full(n, 0.08)}
    cat_err = {"teff": rng.uniform(30, 120, n), "logg": rng.uniform(0.05, 0.2, n)}
    catalogue = {k: ours[k] + rng.normal(0, np.hypot(err[k], cat_err[k])) for k in ours}
    catalogue["logg"][:100] = np.nan                  # these rows compare Teff alone
    cat_err["teff"][100:200] = np.nan                 # and these log g alone
    catalogue["teff"][200:300] = np.nan
    cat_err["logg"][200:300] = np.nan                 # nothing to compare
    catalogue["teff"][300] += 1500.0                  # another star's entry
    chi2, p = catalogue_chi2(ours, err, catalogue, cat_err)
    assert np.isnan(chi2[200:300]).all() and np.isnan(p[200:300]).all()
    rest = np.r_[400:n]
    assert np.median(chi2[rest]) == pytest.approx(1.386, rel=0.05)      # χ²₂ median
    assert np.mean(p[rest] < 1e-3) == pytest.approx(1e-3, abs=1e-3)     # p is uniform
    assert np.median(chi2[:100]) == pytest.approx(0.455, rel=0.1)       # χ²₁ median
    assert p[300] < 1e-6
    df = predictions()
    df["catalogue_chi2_p"] = [0.5, 1e-5, np.nan, 0.2, 0.3, 0.4]
    flags = compute_flags(df, CAT_LABELS, {}, None, {}, catalogue_p_min=1e-3)
    assert ((flags & FLAG_BITS["CATALOGUE_MISMATCH"]) != 0).tolist() == [False, True] + [False] * 4
    # off when no limit is configured
    assert not (compute_flags(df, CAT_LABELS, {}, None, {}) & FLAG_BITS["CATALOGUE_MISMATCH"]).any()


def test_compute_flags_missing_columns():
    df = predictions()
    with pytest.raises(ValueError, match="teff_err"):
        compute_flags(df.drop(columns="teff_err"), ["teff"], {}, None, {"teff": 100.0})
    with pytest.raises(ValueError, match="snr"):
        compute_flags(df.drop(columns="snr"), ["teff"], {}, 20.0, {})


def test_attach_clean_and_label_ranges():
    df = predictions()
    clean = pd.DataFrame({"spectrum_id": df["spectrum_id"][:3], "keep": [True, False, True],
                          "reason": ["", "pca_residual", ""]})
    out = attach_clean(df, clean)
    assert out["clean_keep"].tolist() == [True, False, True, True, True, True]
    assert out["clean_reason"].tolist()[:2] == ["", "pca_residual"]
    ranges = label_ranges(df.assign(teff=[np.nan, 4000, 5000, 6000, 7000, 4500.0]), ["teff"])
    assert ranges == {"teff": (4000.0, 7000.0)}
    with pytest.raises(ValueError):
        label_ranges(df.assign(teff=np.nan), ["teff"])


# ---------------------------------------------------------------- shards

def write_shards(tmp_path, parts):
    df = predictions(12)
    paths = []
    for i, rows in enumerate(parts):
        path = tmp_path / f"shard{i}.parquet"
        artifacts.save_table(path, df.iloc[rows], {"shard": i})
        paths.append(path)
    return df, paths


def test_merge_shards_sorts_by_row(tmp_path):
    df, paths = write_shards(tmp_path, [[6, 7, 8, 9, 10, 11], [3, 1, 0, 2, 4, 5]])
    merged = merge_shards(paths, n_rows=12)
    assert merged["row"].tolist() == list(range(12))
    pd.testing.assert_frame_equal(merged, df.reset_index(drop=True))
    assert len(merge_shards(paths)) == 12


def test_merge_shards_errors(tmp_path):
    _, paths = write_shards(tmp_path, [[0, 1, 2, 3], [3, 4, 5]])
    with pytest.raises(ValueError, match="duplicate"):
        merge_shards(paths, n_rows=6)
    _, paths = write_shards(tmp_path, [[0, 1, 2], [4, 5]])
    with pytest.raises(ValueError, match="1 missing"):
        merge_shards(paths, n_rows=6)
    with pytest.raises(ValueError, match="missing"):
        merge_shards(paths)                       # gap at 3 seen without a count too
    _, paths = write_shards(tmp_path, [[0, 1, 2], [3, 4, 5]])
    with pytest.raises(ValueError, match="missing"):
        merge_shards(paths, n_rows=8)             # two spectra never predicted
    with pytest.raises(ValueError, match="out of range"):
        merge_shards(paths, n_rows=5)
    with pytest.raises(ValueError, match="no shard"):
        merge_shards([])
    odd = tmp_path / "odd.parquet"
    artifacts.save_table(odd, predictions(3).drop(columns="row"))
    with pytest.raises(ValueError, match="no 'row'"):
        merge_shards([odd])
    other = tmp_path / "other.parquet"
    artifacts.save_table(other, predictions(12).iloc[6:].drop(columns="snr"))
    with pytest.raises(ValueError, match="columns"):
        merge_shards([paths[0], other])


# ---------------------------------------------------------------- FITS and Parquet

@pytest.fixture
def written_catalog(tmp_path):
    df = predictions(60)
    df["label_flags"] = compute_flags(df, CAT_LABELS, {}, 20.0, {})
    df["clean_keep"] = np.arange(60) % 7 != 0
    df["clean_reason"] = np.where(df["clean_keep"], "", "label_disagreement:teff;embedding_outlier")
    df.loc[3, "teff"] = np.nan
    df.loc[5, "star_id"] = None
    prov = artifacts.provenance({"experiment": "gaia_eso"},
                                experiment="gaia_eso_cnn_mg_al_" + "x" * 70,   # > 1 card
                                method="cnn_ensemble", n_members=8)
    fits_path, pq_path = tmp_path / "cat.fits", tmp_path / "cat.parquet"
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # no astropy VerifyWarning / truncation
        write_catalog(df, fits_path, pq_path, labels=CAT_LABELS, provenance=prov)
    return df, prov, fits_path, pq_path


def test_fits_units_and_header(written_catalog):
    df, prov, fits_path, _ = written_catalog
    with fits.open(fits_path) as hdul:
        assert len(hdul) == 2 and isinstance(hdul[1], fits.BinTableHDU)
        assert hdul[1].name == "STARLABELS"
        units = {c.name: c.unit for c in hdul[1].columns}
        for label in CAT_LABELS:
            assert units[label] == LABELS[label].unit
            assert units[f"{label}_err"] == LABELS[label].unit
        assert units["teff"] == "K" and units["snr"] is None and units["spectrum_id"] is None
        # logarithmic labels carry no unit string (neither FITS nor VOUnit has one astropy
        # parses); their descriptions say dex
        assert units["logg"] is None and units["fe_h_err"] is None
        assert hdul[1].columns["spectrum_id"].format == "18A"  # GES_0000_HR10+HR21
        assert hdul[1].columns["label_flags"].format == "J"
        assert hdul[1].columns["clean_keep"].format == "L"
        for header in (hdul[0].header, hdul[1].header):
            for key in ("STARLVER", "GITCOMM", "CONFHASH", "EXPERIM", "METHOD", "NMEMBER", "DATE",
                        "CHECKSUM", "DATASUM"):
                assert key in header, key
            assert header["STARLVER"] == __version__
            assert header["CONFHASH"] == prov["config_hash"]
            assert header["EXPERIM"] == prov["experiment"]    # 88 chars: CONTINUE cards
            assert header["NMEMBER"] == 8 and header["METHOD"] == "cnn_ensemble"
        assert hdul[1].header["FLAGB03"] == "OUTSIDE_TRAINING"
        assert hdul[1].header["FLAGBAD"] == FLAG_BAD_MASK
        assert hdul[0].header["LABELS"] == ",".join(CAT_LABELS)
        assert hdul[1].verify_checksum() == 1 and hdul[1].verify_datasum() == 1


def test_round_trip_fits_and_parquet(written_catalog):
    df, prov, fits_path, pq_path = written_catalog
    from_fits, from_pq = read_catalog(fits_path), read_catalog(pq_path)
    expected = df.copy()
    expected.loc[5, "star_id"] = ""                 # FITS has no null string
    for back in (from_fits, from_pq.assign(star_id=from_pq["star_id"].fillna(""))):
        assert list(back.columns) == list(df.columns)
        pd.testing.assert_frame_equal(back, expected, check_dtype=False)
    assert from_fits["teff_err"].dtype == np.float32
    assert from_fits["label_flags"].dtype == np.int32
    assert from_fits["clean_keep"].dtype == bool
    assert from_fits.attrs["provenance"]["config_hash"] == prov["config_hash"]
    assert from_pq.attrs["provenance"]["n_members"] == 8


def test_fitsverify_clean(written_catalog):
    _, _, fits_path, _ = written_catalog
    result = verify_fits(fits_path)
    if result is None:
        print("fitsverify binary not found on PATH: FITS standard check skipped")
        pytest.skip("fitsverify not installed")
    errors, n_warnings, text = result
    assert (errors, n_warnings) == (0, 0), text


def test_fitsverify_detects_a_problem(tmp_path):
    # the parser must really read fitsverify's counts: a long string without LONGSTRN warns
    if shutil.which("fitsverify") is None:
        print("fitsverify binary not found on PATH: parser check skipped")
        pytest.skip("fitsverify not installed")
    primary = fits.PrimaryHDU()
    primary.header["LONGVAL"] = "x" * 120
    path = tmp_path / "bad.fits"
    fits.HDUList([primary]).writeto(path)
    errors, n_warnings, _ = verify_fits(path)
    assert errors == 0 and n_warnings >= 1


def test_write_is_atomic_and_refuses_bad_names(tmp_path):
    df = predictions()
    prov = artifacts.provenance(None)
    target = tmp_path / "cat.fits"
    write_catalog(df, target, None, labels=["teff"], provenance=prov)
    before = target.read_bytes()
    with pytest.raises(ValueError, match="TTYPE"):
        write_catalog(df.rename(columns={"snr": "s/n"}), target, None, labels=["teff"],
                      provenance=prov)
    with pytest.raises(ValueError, match="case"):
        write_catalog(df.assign(TEFF=1.0), target, None, labels=["teff"], provenance=prov)
    with pytest.raises(ValueError, match="label column"):
        write_catalog(df.drop(columns="al_fe"), target, None, labels=["al_fe"], provenance=prov)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.fits"]   # no temp files left
    with pytest.raises(ValueError, match="not a .fits"):
        read_catalog(tmp_path / "cat.csv")


def test_column_units():
    assert column_unit("logg_err") == LABELS["logg"].unit
    assert column_unit("teff_q84") == "K" and column_unit("teff_err_raw") == "K"
    assert column_unit("teff_err_members") == "K"
    assert column_unit("fe_h_ref") is None           # dex is no FITS unit
    assert column_unit("rv_used") == "km/s" and column_unit("ra") == "deg"
    assert column_unit("snr") is None and column_unit("teff_flag") is None



def test_infinite_predictions_reach_the_catalogue_as_nan_and_flagged(tmp_path):
    from starlabels.catalog import catalog_tables

    df = predictions(6)
    df.loc[1, "teff"] = np.inf
    df.loc[2, "logg"] = -np.inf
    df.loc[4, "fe_h_err"] = np.inf
    df["n_members"] = 2
    shard = tmp_path / "shard_0.parquet"
    artifacts.save_table(shard, df.drop(columns=["star_id", "split", "snr"]))
    stars = df[["spectrum_id", "star_id", "split", "snr"]].copy()
    for label in CAT_LABELS:
        stars[label] = 0.0
    artifacts.save_table(tmp_path / "stars.parquet", stars)
    artifacts.save_table(tmp_path / "clean.parquet",
                         pd.DataFrame({"keep": [True] * 6, "reason": [""] * 6,
                                       "cleaned": [False] * 6}))
    member = tmp_path / "member_0"
    artifacts.save_json(member / "model.json", {"labels": CAT_LABELS,
                                                "label_min": [0.0, -10, -10, -10, -10],
                                                "label_max": [1e5, 10, 10, 10, 10]})
    out = catalog_tables(shards=[shard], table=tmp_path / "stars.parquet",
                               clean_table=tmp_path / "clean.parquet", model_dirs=[member],
                               labels=CAT_LABELS, cfg={"snr_min": None, "max_err": {}})
    assert not np.isinf(out.select_dtypes("number").to_numpy(dtype=float)).any()
    assert np.isnan(out.loc[1, "teff"]) and np.isnan(out.loc[2, "logg"])
    assert np.isnan(out.loc[4, "fe_h_err"])
    bad = (out[FLAG_COLUMN] & FLAG_BITS["PREDICTION_NAN"]) != 0
    assert bad.tolist() == [False, True, True, False, False, False]


# ---------------------------------------------------------------- conventions TOPCAT users rely on

REMAP_LABELS = ["teff", "logg", "fe_h"]
EDGES = {"teff": [4000.0 + 500.0 * k for k in range(7)], "logg": [1.0 + 0.5 * k for k in range(9)],
         "fe_h": [-1.0 + 0.25 * k for k in range(7)]}


@pytest.fixture
def remap_catalog(tmp_path):
    """A deep-REMAP-like catalogue: percentiles, probabilities per bin, nearest stars,
    embedding, positions and a plate id carried from the input catalogue."""
    n, rng = 12, np.random.default_rng(3)
    df = predictions(n).drop(columns=["mg_fe", "mg_fe_err", "al_fe", "al_fe_err", "row"])
    df.insert(2, "ra", rng.uniform(0, 360, n))
    df.insert(3, "dec", rng.uniform(-90, 90, n))
    df.insert(4, "plate", [f"PLATE{1000 + i}" for i in range(n)])
    for label in REMAP_LABELS:
        df[f"{label}_q16"] = df[label] - 1.0
        df[f"{label}_q84"] = df[label] + 1.0
        df[f"{label}_ref"] = df[label] + 0.5
    df["n_members"] = np.full(n, 3, dtype=np.int64)
    df["label_flags"] = compute_flags(df, REMAP_LABELS, {}, 20.0, {})
    for label in REMAP_LABELS:
        p = rng.dirichlet(np.ones(len(EDGES[label]) - 1), n).astype(np.float32)
        df[f"{label}_prob"] = list(p)
    df["knn_star_id"] = [";".join(f"TYC {i}-{j}-1" for j in range(3)) for i in range(n)]
    df["knn_distance"] = list(rng.uniform(0, 1, (n, 3)).astype(np.float32))
    df["embedding"] = list(rng.normal(size=(n, 16)).astype(np.float32))
    prov = artifacts.provenance(None, experiment="tiny_marvels", method="deep_remap",
                                n_members=3)
    paths = tmp_path / "cat.fits", tmp_path / "cat.parquet"
    write_catalog(df, *paths, labels=REMAP_LABELS, provenance=prov, bins=EDGES)
    return (df, *paths)


def test_every_column_has_a_description_a_valid_ucd_and_a_parsable_unit(remap_catalog):
    from astropy.io.votable.ucd import check_ucd

    df, fits_path, _ = remap_catalog
    with fits.open(fits_path) as hdul:
        header = hdul[1].header
        for i, name in enumerate(df.columns, start=1):
            assert header[f"TTYPE{i}"] == name
            assert header[f"TCOMM{i}"] and len(header[f"TCOMM{i}"]) <= 68, name
            assert check_ucd(header[f"TUCD{i}"], check_controlled_vocabulary=True), name
    logg = list(df.columns).index("logg") + 1
    assert header["TUCD1"] == "meta.id" and "dex" in header[f"TCOMM{logg}"]
    # every entry of the registry, not only the columns of this file
    from starlabels.columns import COLUMNS, LABEL_SUFFIXES, column_info
    names = list(COLUMNS) + [f"{lab}_{s}" if s else lab for lab in LABELS for s in LABEL_SUFFIXES]
    import astropy.units as u
    for name in names:
        info = column_info(name)
        assert len(info.description) <= 68, name
        assert check_ucd(info.ucd, check_controlled_vocabulary=True), (name, info.ucd)
        if info.unit:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                u.Unit(info.unit, format="fits"), u.Unit(info.unit, format="vounit")


def test_astropy_reads_both_files_without_a_warning(remap_catalog):
    from astropy.table import Table

    df, fits_path, pq_path = remap_catalog
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_fits = Table.read(fits_path, hdu="STARLABELS")
        from_pq = Table.read(pq_path, format="parquet.votable")
    assert str(from_fits["teff"].unit) == "K" and str(from_fits["ra"].unit) == "deg"
    assert from_fits["teff_prob"].shape == (len(df), 6)
    assert from_fits["embedding"].shape == (len(df), 16)
    assert str(from_pq["teff_q16"].unit) == "K"
    assert from_pq["teff"].description == "Teff predicted by the ensemble"
    assert from_pq["label_flags"].meta.get("ucd", getattr(from_pq["label_flags"], "ucd", None)) \
        in (None, "meta.code.qual")


def test_vectors_round_trip_through_fits_as_fixed_width_arrays(remap_catalog):
    df, fits_path, pq_path = remap_catalog
    from_fits, from_pq = read_catalog(fits_path), read_catalog(pq_path)
    assert list(from_fits.columns) == list(df.columns) == list(from_pq.columns)
    for name in ("teff_prob", "knn_distance", "embedding"):
        np.testing.assert_array_equal(np.stack(from_fits[name]), np.stack(df[name]))
        np.testing.assert_array_equal(np.stack(from_pq[name]), np.stack(df[name]))
    assert from_fits["knn_star_id"].tolist() == df["knn_star_id"].tolist()
    with fits.open(fits_path) as hdul:
        cols = hdul[1].columns
        assert cols["logg_prob"].format == "8E" and cols["embedding"].format == "16E"
        i = list(df.columns).index("logg_prob") + 1
        assert hdul[1].header[f"BLOW{i}"] == 1.0 and hdul[1].header[f"BWID{i}"] == 0.5
    result = verify_fits(fits_path)
    if result is not None:
        assert result[:2] == (0, 0), result[2]


def test_parquet_carries_units_descriptions_flag_bits_and_bin_edges(remap_catalog):
    import pyarrow.parquet as pq

    from starlabels.catalog import CATALOG_KEY

    df, _, pq_path = remap_catalog
    schema = pq.read_schema(pq_path)
    assert schema.field("teff").metadata[b"unit"] == b"K"
    assert b"unit" not in schema.field("logg").metadata
    assert schema.field("ra").metadata[b"ucd"] == b"pos.eq.ra;meta.main"
    assert schema.field("fe_h_prob").metadata[b"description"].startswith(b"probability")
    import json
    meta = json.loads(schema.metadata[CATALOG_KEY])
    assert meta["flag_column"] == "label_flags"
    assert meta["flag_bits"]["OUTSIDE_TRAINING"] == {
        "value": 8, "bit": 3, "description": FLAG_DESCRIPTIONS["OUTSIDE_TRAINING"]}
    assert meta["bin_edges"] == EDGES and meta["flag_bad_mask"] == FLAG_BAD_MASK
    assert schema.metadata[b"IVOA.VOTable-Parquet.version"] == b"1.0"


def test_a_column_without_a_description_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'mystery' has no description"):
        write_catalog(predictions().assign(mystery=1.0), tmp_path / "c.fits", None,
                      labels=["teff"], provenance=artifacts.provenance(None))
    with pytest.raises(ValueError, match="no bin edges"):
        write_catalog(predictions().assign(teff_prob=[np.ones(3)] * 6), tmp_path / "c.fits",
                      None, labels=["teff"], provenance=artifacts.provenance(None))


def test_stilts_reads_units_ucds_and_descriptions(remap_catalog):
    import csv
    import io

    df, fits_path, _ = remap_catalog
    if shutil.which("stilts") is None:
        print("stilts not on PATH: TOPCAT-side metadata check skipped")
        pytest.skip("stilts not installed")
    meta = subprocess.run(["stilts", "tpipe", f"in={fits_path}", "omode=meta"],
                          capture_output=True, text=True, timeout=300)
    assert meta.returncode == 0, meta.stderr
    assert "8: teff(Double)/K - Teff predicted by the ensemble" in meta.stdout
    assert "teff_prob(float[6])" in meta.stdout and "embedding(float[16])" in meta.stdout
    table = subprocess.run(["stilts", "tpipe", f"in={fits_path}", "cmd=meta", "omode=out",
                            "ofmt=csv"], capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr
    col = {row["Name"]: row for row in csv.DictReader(io.StringIO(table.stdout))}
    assert list(col) == list(df.columns)
    assert all(row["UCD"] and row["Description"] for row in col.values())
    assert col["teff"]["Units"] == "K" and col["teff"]["UCD"] == "phys.temperature.effective"
    assert col["ra"]["Units"] == "deg" and col["label_flags"]["UCD"] == "meta.code.qual"
    assert col["embedding"]["Shape"] == "(16)" and col["knn_distance"]["Shape"] == "(3)"
