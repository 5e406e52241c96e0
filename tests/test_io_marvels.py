"""MARVELS star1d layout v1 and marvelsStar-like catalog: round trips, strict validation."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from starlabels.io.marvels import (LAYOUT, marvels_plate_filename, read_marvels_plate,
                                   read_marvels_star_catalog, write_marvels_plate,
                                   write_marvels_star_catalog)
from starlabels.io.spectrum import SpectrumFormatError

NPIX = 400


def _rows() -> list[dict]:
    """Two stars x two beams; star B's second beam is dead (all NaN)."""
    rng = np.random.default_rng(7)
    wavelength = np.linspace(5000.0, 5700.0, NPIX)
    rows = []
    for star, vrad in (("TYC 3010-01494-1", -21.5), ("GSC_02651-00975", 8.25)):
        for beam in (1, 2):
            flux = (1 + 0.01 * rng.standard_normal(NPIX)).astype(np.float32)
            ivar = np.full(NPIX, 1e4, np.float32)
            mask = np.zeros(NPIX, np.int16)
            mask[beam * 10] = 4
            rows.append({"starname": star, "beam": beam, "wavelength": wavelength + beam * 0.01,
                         "flux": flux, "ivar": ivar, "mask": mask, "snr": 50.0 + beam,
                         "vrad_kms": vrad})
    dead = rows[3]
    dead["wavelength"] = np.full(NPIX, np.nan)
    dead["flux"] = np.full(NPIX, np.nan, np.float32)
    dead["ivar"] = np.full(NPIX, np.nan, np.float32)
    return rows


@pytest.fixture
def plate_file(tmp_path) -> Path:
    path = tmp_path / marvels_plate_filename("HD4203")
    write_marvels_plate(path, "HD4203", _rows(), resolution=11000.0)
    return path


def _rewrite(src: Path, dst: Path, *, header=None, drop=(), units=None, nrows=None,
             replace=None) -> Path:
    """Copy a plate file with header edits, dropped/replaced columns, new units or fewer rows."""
    with fits.open(src) as hdul:
        primary = fits.PrimaryHDU(header=hdul[0].header)
        for key, value in (header or {}).items():
            if value is None:
                del primary.header[key]
            else:
                primary.header[key] = value
        cols = []
        for col in hdul[1].columns:
            if col.name in drop:
                continue
            if col.name in (replace or {}):
                cols.append(replace[col.name])
                continue
            cols.append(fits.Column(name=col.name, format=col.format,
                                    unit=(units or {}).get(col.name, col.unit),
                                    array=hdul[1].data[col.name]))
        if nrows == 0:
            cols = [fits.Column(name=c.name, format=c.format, unit=c.unit) for c in cols]
        table = fits.BinTableHDU.from_columns(cols, name=hdul[1].name, nrows=nrows or 0)
        fits.HDUList([primary, table]).writeto(dst)
    return dst


def _assert_format_error(path: Path, match: str) -> None:
    with pytest.raises(SpectrumFormatError, match=match) as info:
        read_marvels_plate(path)
    assert path.name in str(info.value)


# ---------------------------------------------------------------- plate round trip

def test_plate_round_trip(plate_file):
    rows = _rows()
    spectra = read_marvels_plate(plate_file)
    assert [s.spectrum_id for s in spectra] == [
        "HD4203-TYC 3010-01494-1-b1", "HD4203-TYC 3010-01494-1-b2",
        "HD4203-GSC_02651-00975-b1", "HD4203-GSC_02651-00975-b2"]
    for spec, row in zip(spectra[:3], rows[:3]):
        assert spec.star_id == row["starname"] and spec.setup == "MARVELS"
        np.testing.assert_array_equal(spec.wavelength, row["wavelength"])
        np.testing.assert_array_equal(spec.flux, row["flux"])
        np.testing.assert_array_equal(spec.ivar, row["ivar"])
        np.testing.assert_array_equal(spec.mask, row["mask"] != 0)
        assert spec.snr == row["snr"] and spec.rv_kms == pytest.approx(row["vrad_kms"])
        assert spec.resolution == 11000.0 and spec.medium == "air"
        assert spec.meta["beam"] == row["beam"] and spec.meta["plate"] == "HD4203"


def test_dead_beam_comes_back(plate_file):
    dead = read_marvels_plate(plate_file)[3]
    assert np.all(np.isnan(dead.wavelength)) and np.all(np.isnan(dead.flux))
    assert np.all(dead.ivar == 0) and np.all(dead.mask)


def test_plate_header_and_columns(plate_file):
    with fits.open(plate_file) as hdul:
        h = hdul[0].header
        assert (h["LAYOUT"], h["PLATE"], h["NSTARS"], h["NBEAMS"], h["RESOLUT"], h["MEDIUM"]) \
            == (LAYOUT, "HD4203", 2, 4, 11000.0, "air")
        table = hdul[1]
        assert table.name == "STAR1D"
        assert table.columns["WAVE"].unit == "Angstrom" and table.columns["VRAD"].unit == "km/s"
        assert [table.columns[c].format for c in ("BEAM", "WAVE", "FLUX", "IVAR", "MASK")] == \
            ["I", f"{NPIX}D", f"{NPIX}E", f"{NPIX}E", f"{NPIX}I"]


def test_nm_wavelengths_are_converted(tmp_path, plate_file):
    with fits.open(plate_file) as hdul:
        wave_nm = hdul[1].data["WAVE"] / 10
    nm_col = fits.Column(name="WAVE", format=f"{NPIX}D", unit="nm", array=wave_nm)
    path = _rewrite(plate_file, tmp_path / "nm.fits", replace={"WAVE": nm_col})
    np.testing.assert_allclose(read_marvels_plate(path)[0].wavelength, _rows()[0]["wavelength"])


# ---------------------------------------------------------------- malformed plates

def test_truncated_plate(plate_file, tmp_path):
    blob = plate_file.read_bytes()
    half = tmp_path / "half.fits"
    half.write_bytes(blob[: len(blob) // 2])
    _assert_format_error(half, "truncated|corrupt")
    block = tmp_path / "block.fits"            # cut on a 2880-byte boundary: size check passes
    block.write_bytes(blob[: len(blob) - 2880])
    _assert_format_error(block, "truncated|corrupt")


@pytest.mark.parametrize("column", ["STARNAME", "BEAM", "WAVE", "FLUX", "IVAR", "MASK", "SNR",
                                    "VRAD"])
def test_dropped_column(plate_file, tmp_path, column):
    _assert_format_error(_rewrite(plate_file, tmp_path / "drop.fits", drop=(column,)), column)


@pytest.mark.parametrize("units, match", [({"WAVE": "furlong"}, "unknown wavelength unit"),
                                          ({"VRAD": "furlong/fortnight"}, "unknown VRAD unit")])
def test_unknown_units(plate_file, tmp_path, units, match):
    _assert_format_error(_rewrite(plate_file, tmp_path / "unit.fits", units=units), match)


@pytest.mark.parametrize("header, match", [
    ({"LAYOUT": "sdss-dr12"}, "LAYOUT"), ({"LAYOUT": None}, "LAYOUT"),
    ({"NBEAMS": 120}, "NBEAMS=120 but HDU1 has 4 rows"), ({"NSTARS": 60}, "NSTARS=60"),
    ({"MEDIUM": "water"}, "MEDIUM"), ({"RESOLUT": None}, "RESOLUT"), ({"PLATE": None}, "PLATE"),
])
def test_header_violations(plate_file, tmp_path, header, match):
    _assert_format_error(_rewrite(plate_file, tmp_path / "hdr.fits", header=header), match)


def test_empty_table_and_missing_hdu(plate_file, tmp_path):
    _assert_format_error(_rewrite(plate_file, tmp_path / "empty.fits", header={"NBEAMS": 1},
                                  nrows=0), "empty table")
    lonely = tmp_path / "lonely.fits"
    fits.HDUList([fits.PrimaryHDU(header=fits.getheader(plate_file))]).writeto(lonely)
    _assert_format_error(lonely, "missing HDU 1")


def test_shapes_disagree(plate_file, tmp_path):
    short = fits.Column(name="FLUX", format="10E", array=np.ones((4, 10), np.float32))
    _assert_format_error(_rewrite(plate_file, tmp_path / "short.fits", replace={"FLUX": short}),
                         "different widths")


def test_non_increasing_wavelength_rejects_whole_file(plate_file, tmp_path):
    with fits.open(plate_file) as hdul:
        hdul[1].data["WAVE"][1][[5, 6]] = hdul[1].data["WAVE"][1][[6, 5]]
        hdul.writeto(tmp_path / "swap.fits")
    _assert_format_error(tmp_path / "swap.fits", "row 1: WAVE is not strictly increasing")


def test_duplicate_beam(plate_file, tmp_path):
    beams = fits.Column(name="BEAM", format="I", array=np.array([1, 1, 1, 2], np.int16))
    _assert_format_error(_rewrite(plate_file, tmp_path / "dup.fits", replace={"BEAM": beams}),
                         "not unique")


def test_writer_refuses_ragged_rows(tmp_path):
    rows = _rows()
    rows[0]["flux"] = rows[0]["flux"][:-1]
    with pytest.raises(ValueError, match="flux"):
        write_marvels_plate(tmp_path / "x.fits", "P1", rows, 11000)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- file names

@pytest.mark.parametrize("plate", ["../../etc", "/abs", ".hidden", "a/b\\c", "HD 4203"])
def test_plate_filename_cannot_escape(tmp_path, plate):
    name = marvels_plate_filename(plate)
    assert name.startswith("star1d_") and name.endswith(".fits")
    assert "/" not in name and "\\" not in name and " " not in name
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_plate_filename_real_name():
    assert marvels_plate_filename("HD4203") == "star1d_HD4203.fits"


# ---------------------------------------------------------------- star catalog

def _catalog() -> pd.DataFrame:
    return pd.DataFrame({
        "STARNAME": ["TYC 3010-01494-1", "GSC_02651-00975", "HIP 12345"],
        "PLATE": ["HD4203", "HD4203", "GJ876"],
        "TEFF": [5650.0, 4710.0, -9999.0], "TEFF_E": [80.0, 95.0, -9999.0],
        "LOG_G": [4.40, 2.60, np.nan], "LOG_G_E": [0.15, 0.20, np.nan],
        "FEH": [-0.12, -0.45, 0.10], "FEH_E": [0.08, 0.09, 0.10],
        "RPM_LOG_G": ["dwarf", "GIANT", ""],
    })


def test_catalog_round_trip(tmp_path):
    path = tmp_path / "marvelsStar.fits"
    write_marvels_star_catalog(path, _catalog())
    cat = read_marvels_star_catalog(path)
    assert list(cat.columns) == ["star_id", "plate", "teff", "e_teff", "logg", "e_logg", "fe_h",
                                 "e_fe_h", "rpm_class"]
    assert cat["star_id"].tolist() == ["TYC 3010-01494-1", "GSC_02651-00975", "HIP 12345"]
    assert cat["plate"].tolist() == ["HD4203", "HD4203", "GJ876"]
    assert cat["teff"][0] == 5650.0 and cat["logg"][1] == 2.60 and cat["e_fe_h"][2] == 0.10
    assert np.isnan(cat["teff"][2]) and np.isnan(cat["e_teff"][2])   # SDSS -9999 -> NaN
    assert np.isnan(cat["logg"][2])
    assert cat["rpm_class"].tolist() == ["dwarf", "giant", ""]
    with fits.open(path) as hdul:
        assert hdul[1].columns["TEFF"].unit == "K"


def test_catalog_archive_spelling_and_missing_optional(tmp_path):
    """dr12 spells Teff, log_g, RPM_LOG_g; errors may be absent."""
    cat = _catalog()
    cols = [fits.Column(name="StarName", format="20A", array=cat["STARNAME"].to_numpy()),
            fits.Column(name="Teff", format="E", array=cat["TEFF"].to_numpy()),
            fits.Column(name="log_g", format="E", array=cat["LOG_G"].to_numpy()),
            fits.Column(name="FeH", format="E", array=cat["FEH"].to_numpy()),
            fits.Column(name="RPM_LOG_g", format="5A", array=cat["RPM_LOG_G"].to_numpy())]
    path = tmp_path / "dr12.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(path)
    with pytest.warns(UserWarning, match="TEFF_E"):
        out = read_marvels_star_catalog(path)
    assert out["teff"][1] == pytest.approx(4710.0) and out["rpm_class"][1] == "giant"
    assert out["e_teff"].isna().all() and (out["plate"] == "").all()


#: marvelsStar columns as the SDSS DR12 schema (MarvelsTables_DR12.sql) spells them, in order
DR12_MARVELS_STAR = [
    ("STARNAME", "25A"), ("TWOMASS_NAME", "20A"), ("Plate", "12A"), ("GSC_Name", "12A"),
    ("TYC_Name", "14A"), ("HIP_Name", "10A"), ("RA_Final", "D"), ("DEC_Final", "D"),
    ("GSC_B", "E"), ("GSC_V", "E"), ("TWOMASS_J", "E"), ("TWOMASS_H", "E"), ("TWOMASS_K", "E"),
    ("SP1", "8A"), ("SP2", "8A"), ("RPM_LOG_g", "32A"), ("Teff", "E"), ("log_g", "E"),
    ("FeH", "E"), ("GSC_B_E", "E"), ("GSC_V_E", "E"), ("TWOMASS_J_E", "E"),
    ("TWOMASS_H_E", "E"), ("TWOMASS_K_E", "E"), ("Teff_E", "E"), ("log_g_E", "E"),
    ("FeH_E", "E"), ("Epoch_0", "D"), ("RA_0", "D"), ("DEC_0", "D"), ("RA_TWOMASS", "D"),
    ("DEC_TWOMASS", "D"), ("GSC_PM_RA", "E"), ("GSC_PM_DEC", "E"), ("GSC_PM_RA_E", "E"),
    ("GSC_PM_DEC_E", "E"), ("TYC_B", "E"), ("TYC_B_E", "E"), ("TYC_V", "E"), ("TYC_V_E", "E"),
    ("HIP_PLX", "E"), ("HIP_PLX_E", "E"), ("HIP_SPTYPE", "12A"),
]


def dr12_marvels_star(path, rows: dict[str, list]) -> str:
    """A marvelsStar FITS table with every DR12 column; ``rows`` gives some columns' values,
    the rest are blank / -9999 as SDSS writes missing values."""
    n = len(next(iter(rows.values())))
    cols = []
    for name, fmt in DR12_MARVELS_STAR:
        default = [""] * n if fmt.endswith("A") else [-9999.0] * n
        cols.append(fits.Column(name=name, format=fmt, array=np.array(rows.get(name, default))))
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(path)
    return str(path)


DR12_ROWS = {"STARNAME": ["TYC 3010-01494-1", "TYC 3011-00003-1", "HIP 14810", "TYC 0001-1-1",
                          "TYC 0002-2-1", "TYC 0003-3-1"],
             "Plate": ["R101D22v1"] * 6,
             "RPM_LOG_g": ["Mainseq", "Giant", "Refstar", "MAINSEQ", "giant", ""],
             "Teff": [5650.0, 4710.0, 5580.0, 6020.0, 4800.0, -9999.0],
             "log_g": [4.40, 2.60, 4.30, 4.25, 2.70, -9999.0],
             "FeH": [-0.12, -0.45, 0.20, -0.30, -0.10, -9999.0],
             "Teff_E": [80.0, 95.0, 70.0, 90.0, 85.0, -9999.0],
             "log_g_E": [0.15, 0.20, 0.10, 0.15, 0.20, -9999.0],
             "FeH_E": [0.08, 0.09, 0.07, 0.08, 0.09, -9999.0]}


def test_dr12_marvels_star_schema_and_vocabulary(tmp_path):
    """The DR12 table reads as is: its column spellings, SDSS -9999 for missing values, and
    RPM_LOG_g's Mainseq / Giant / Refstar (Refstar = a known planet host) in any case."""
    cat = read_marvels_star_catalog(dr12_marvels_star(tmp_path / "marvelsStar.fits", DR12_ROWS))
    assert cat["rpm_class"].tolist() == ["dwarf", "giant", "planet_host", "dwarf", "giant", ""]
    assert cat["plate"].tolist() == ["R101D22v1"] * 6
    assert cat["teff"][0] == pytest.approx(5650.0) and cat["e_fe_h"][2] == pytest.approx(0.07)
    assert cat.loc[5, ["teff", "logg", "fe_h", "e_teff"]].isna().all()


@pytest.mark.parametrize("column", ["STARNAME", "TEFF", "LOG_G", "FEH"])
def test_catalog_missing_required(tmp_path, column):
    path = tmp_path / "cat.fits"
    cols = [fits.Column(name=c, format="20A" if c == "STARNAME" else "D",
                        array=_catalog()[c].to_numpy())
            for c in ("STARNAME", "TEFF", "LOG_G", "FEH") if c != column]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(path)
    with pytest.raises(SpectrumFormatError, match=column) as info:
        read_marvels_star_catalog(path)
    assert "cat.fits" in str(info.value)


def test_catalog_bad_rpm_and_empty(tmp_path):
    path = tmp_path / "rpm.fits"
    write_marvels_star_catalog(path, _catalog().assign(RPM_LOG_G=["dwarf", "subgiant", ""]))
    with pytest.raises(SpectrumFormatError, match="subgiant"):
        read_marvels_star_catalog(path)
    empty = tmp_path / "empty.fits"
    write_marvels_star_catalog(empty, _catalog().iloc[:0])
    with pytest.raises(SpectrumFormatError, match="empty table"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_marvels_star_catalog(empty)


# ---------------------------------------------------------------- fitsverify

def test_fitsverify_plate(plate_file, fitsverify):
    fitsverify(plate_file)


def test_fitsverify_catalog(tmp_path, fitsverify):
    path = tmp_path / "marvelsStar.fits"
    write_marvels_star_catalog(path, _catalog())
    fitsverify(path)
