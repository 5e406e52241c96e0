"""Gaia-ESO Phase-3 spectrum and DR5.1-like catalog: round trips, units, malformed files."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from starlabels.io.gaia_eso import (ges_spectrum_filename, read_ges_catalog, read_ges_spectrum,
                                    write_ges_catalog, write_ges_spectrum)
from starlabels.io.spectrum import SpectrumFormatError

CNAME = "08403960-5307143"


def _spectrum_inputs(n: int = 300):
    """HR21-like arrays: Å air wavelengths, flux, sigma, QUAL with two bad pixels, one NaN."""
    rng = np.random.default_rng(1)
    wavelength_air = np.linspace(8484.0, 9001.0, n)
    flux = (1000 + 50 * rng.standard_normal(n)).astype(np.float32)
    flux[7] = np.nan
    err = np.full(n, 20.0, np.float32)
    err[9] = 0.0                      # sigma 0 carries no information -> ivar 0
    qual = np.zeros(n, np.int32)
    qual[[3, 4]] = 1
    return wavelength_air, flux, err, qual


@pytest.fixture
def spectrum_file(tmp_path) -> Path:
    wavelength_air, flux, err, qual = _spectrum_inputs()
    path = tmp_path / ges_spectrum_filename(CNAME, "HR21")
    write_ges_spectrum(path, wavelength_air, flux, err, cname=CNAME, setup="HR21", snr=85.5,
                       resolution=17300.0, vrad_kms=-12.5, qual=qual)
    return path


def _rewrite_table(src: Path, dst: Path, *, drop=(), units=None, nrows=None, extra=None) -> Path:
    """Copy a one-table FITS file with columns dropped / units changed / rows cut."""
    with fits.open(src) as hdul:
        primary = fits.PrimaryHDU(header=hdul[0].header)
        cols = []
        for col in hdul[1].columns:
            if col.name in drop:
                continue
            unit = (units or {}).get(col.name, col.unit)
            cols.append(fits.Column(name=col.name, format=col.format, unit=unit,
                                    array=hdul[1].data[col.name]))
        cols.extend(extra or [])
        table = fits.BinTableHDU.from_columns(cols, nrows=nrows if nrows is not None else
                                              len(hdul[1].data), name=hdul[1].name)
        if nrows == 0:
            table = fits.BinTableHDU.from_columns(
                [fits.Column(name=c.name, format=c.format, unit=c.unit) for c in cols], nrows=0)
        fits.HDUList([primary, table]).writeto(dst)
    return dst


# ---------------------------------------------------------------- spectrum round trip

def test_spectrum_round_trip_converts_nm_to_angstrom(spectrum_file):
    wavelength_air, flux, err, qual = _spectrum_inputs()
    spec = read_ges_spectrum(spectrum_file)
    np.testing.assert_allclose(spec.wavelength, wavelength_air, rtol=1e-12)
    np.testing.assert_array_equal(spec.flux[np.isfinite(flux)], flux[np.isfinite(flux)])
    sigma = err.astype(np.float64)
    expected_ivar = np.divide(1.0, sigma ** 2, out=np.zeros_like(sigma), where=sigma > 0)
    expected_ivar[7] = 0.0            # the NaN-flux pixel
    np.testing.assert_allclose(spec.ivar, expected_ivar, rtol=1e-6)
    expected_mask = (qual > 0) | ~np.isfinite(flux)
    np.testing.assert_array_equal(spec.mask, expected_mask)
    assert spec.star_id == CNAME and spec.setup == "HR21"
    assert spec.snr == pytest.approx(85.5) and spec.resolution == pytest.approx(17300.0)
    assert spec.rv_kms == pytest.approx(-12.5)
    assert spec.medium == "air"
    assert spec.spectrum_id == spectrum_file.stem == f"{CNAME}_HR21"
    assert spec.path == str(spectrum_file)


def test_spectrum_file_looks_like_eso_phase3(spectrum_file):
    wavelength_air = _spectrum_inputs()[0]
    with fits.open(spectrum_file) as hdul:
        h = hdul[0].header
        assert (h["ORIGIN"], h["TELESCOP"], h["INSTRUME"]) == ("ESO", "ESO-VLT-U2", "GIRAFFE")
        assert h["OBJECT"] == CNAME and h["PRODCATG"] == "SCIENCE.SPECTRUM"
        assert h["SETUP"] == "HR21" and h["DISPELEM"] == "HR21"
        assert h["SPEC_RES"] == 17300.0 and h["SNR"] == 85.5 and h["VRAD"] == -12.5
        assert h["CONTNORM"] is False
        assert h["WAVELMIN"] == pytest.approx(848.4) and h["WAVELMAX"] == pytest.approx(900.1)
        assert any("AIR" in str(c) for c in h["COMMENT"])
        table = hdul[1]
        assert len(table.data) == 1
        assert table.columns["WAVE"].unit == "nm" and table.columns["WAVE"].format == "300D"
        assert table.columns["FLUX"].format == "300E" and table.columns["QUAL"].format == "300J"
        np.testing.assert_allclose(table.data["WAVE"][0], wavelength_air / 10, rtol=1e-12)
    assert [p.name for p in spectrum_file.parent.iterdir()] == [spectrum_file.name]  # no temp


def test_missing_vrad_gives_nan_rv(tmp_path):
    wavelength_air, flux, err, _ = _spectrum_inputs()
    path = tmp_path / "s.fits"
    write_ges_spectrum(path, wavelength_air, flux, err, cname=CNAME, setup="HR10", snr=50,
                       resolution=19800, vrad_kms=float("nan"))
    spec = read_ges_spectrum(path)
    assert np.isnan(spec.rv_kms)
    assert not spec.mask[3]           # no QUAL given: only the NaN flux pixel is masked
    assert spec.mask[7]


def test_flux_reduced_ivar_and_angstrom_variants(tmp_path, spectrum_file):
    """Real files vary: FLUX_REDUCED only, IVAR instead of ERR, WAVE in Angstrom."""
    with fits.open(spectrum_file) as hdul:
        data = hdul[1].data
        wave_aa, flux = data["WAVE"][0] * 10, data["FLUX"][0]
    n = wave_aa.size
    cols = [fits.Column(name="WAVE", format=f"{n}D", unit="Angstrom", array=wave_aa[None]),
            fits.Column(name="FLUX_REDUCED", format=f"{n}E", array=(flux / 1000)[None]),
            fits.Column(name="IVAR", format=f"{n}E", array=np.full((1, n), 4.0, np.float32))]
    path = tmp_path / "variant.fits"
    fits.HDUList([fits.PrimaryHDU(header=fits.getheader(spectrum_file)),
                  fits.BinTableHDU.from_columns(cols)]).writeto(path)
    spec = read_ges_spectrum(path, medium="air")   # no TUCD on this WAVE: say the medium
    np.testing.assert_allclose(spec.wavelength, wave_aa)
    np.testing.assert_allclose(spec.flux[~spec.mask], (flux / 1000)[~spec.mask], rtol=1e-6)
    assert spec.ivar[0] == 4.0 and spec.meta["flux_column"] == "FLUX_REDUCED"
    explicit = read_ges_spectrum(spectrum_file, flux_column="flux")
    assert explicit.meta["flux_column"] == "FLUX"


def test_medium_from_header_tucd(spectrum_file):
    assert read_ges_spectrum(spectrum_file, medium="header").medium == "air"
    with pytest.warns(UserWarning, match="TUCD"):
        assert read_ges_spectrum(spectrum_file, medium="vacuum").medium == "vacuum"


# ---------------------------------------------------------------- malformed spectra

def _assert_format_error(path: Path, match: str, **kwargs) -> None:
    with pytest.raises(SpectrumFormatError, match=match) as info:
        read_ges_spectrum(path, **kwargs)
    assert path.name in str(info.value)


def test_truncated_file(spectrum_file, tmp_path):
    blob = spectrum_file.read_bytes()
    spectrum_file.write_bytes(blob[: len(blob) // 2])
    _assert_format_error(spectrum_file, "truncated|corrupt|readable")
    block = tmp_path / "block.fits"   # cut on a 2880-byte boundary: astropy only warns
    block.write_bytes(blob[: len(blob) - 2880])
    _assert_format_error(block, "truncated")
    padding = tmp_path / "padding.fits"  # data complete, only the zero padding is cut
    padding.write_bytes(blob[:-100])
    _assert_format_error(padding, "truncated")


def test_not_fits_and_missing_file(tmp_path):
    junk = tmp_path / "junk.fits"
    junk.write_text("this is not FITS\n")
    _assert_format_error(junk, "not a readable FITS")
    _assert_format_error(tmp_path / "absent.fits", "cannot open")


@pytest.mark.parametrize("column, match", [("WAVE", "missing column WAVE"),
                                           ("FLUX", "missing column FLUX"),
                                           ("ERR", "missing error column")])
def test_dropped_column(tmp_path, spectrum_file, column, match):
    bad = _rewrite_table(spectrum_file, tmp_path / f"no_{column}.fits", drop=(column,))
    _assert_format_error(bad, match)


def test_unknown_and_missing_wavelength_unit(tmp_path, spectrum_file):
    bad = _rewrite_table(spectrum_file, tmp_path / "furlong.fits", units={"WAVE": "furlong"})
    _assert_format_error(bad, "unknown wavelength unit 'furlong'")
    bare = _rewrite_table(spectrum_file, tmp_path / "bare.fits", units={"WAVE": ""})
    _assert_format_error(bare, "no TUNIT")


def test_empty_and_multirow_table(tmp_path, spectrum_file):
    empty = _rewrite_table(spectrum_file, tmp_path / "empty.fits", nrows=0)
    _assert_format_error(empty, "empty table")
    two = _rewrite_table(spectrum_file, tmp_path / "two.fits", nrows=2)
    _assert_format_error(two, "2 rows")


def test_missing_hdu(tmp_path, spectrum_file):
    path = tmp_path / "primary_only.fits"
    fits.HDUList([fits.PrimaryHDU(header=fits.getheader(spectrum_file))]).writeto(path)
    _assert_format_error(path, "missing HDU 1")


def test_shapes_disagree(tmp_path, spectrum_file):
    short = fits.Column(name="IVAR", format="10E", array=np.ones((1, 10), np.float32))
    bad = _rewrite_table(spectrum_file, tmp_path / "short.fits", drop=("ERR",), extra=[short])
    _assert_format_error(bad, "10 pixels but WAVE has 300")


def test_non_increasing_wavelength(tmp_path):
    wavelength_air, flux, err, _ = _spectrum_inputs()
    path = tmp_path / "ok.fits"
    write_ges_spectrum(path, wavelength_air, flux, err, cname=CNAME, setup="HR21", snr=1,
                       resolution=1, vrad_kms=0)
    with fits.open(path) as hdul:
        hdul[1].data["WAVE"][0][[10, 11]] = hdul[1].data["WAVE"][0][[11, 10]]
        hdul.writeto(tmp_path / "swapped.fits")
    _assert_format_error(tmp_path / "swapped.fits", "not strictly increasing")


def test_missing_object_or_setup(tmp_path):
    wavelength_air, flux, err, _ = _spectrum_inputs()
    no_object = tmp_path / "no_object.fits"
    write_ges_spectrum(no_object, wavelength_air, flux, err, cname=CNAME, setup="HR21", snr=1,
                       resolution=1, vrad_kms=0, extra_header={"OBJECT": None})
    _assert_format_error(no_object, "OBJECT")
    no_setup = tmp_path / "no_setup.fits"
    write_ges_spectrum(no_setup, wavelength_air, flux, err, cname=CNAME, setup="HR21", snr=1,
                       resolution=1, vrad_kms=0,
                       extra_header={"SETUP": None, "DISPELEM": None,
                                     "ESO INS EXP MODE": "H875.7"})
    _assert_format_error(no_setup, "SETUP nor DISPELEM")
    assert fits.getheader(no_setup)["ESO INS EXP MODE"] == "H875.7"


# ---------------------------------------------------------------- catalog

def _catalog_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "OBJECT": [CNAME, "19212647+3747211"], "RA": [130.165, 290.360],
        "DECLINATION": [-53.119, 37.789], "TEFF": [5012.0, 4520.0], "E_TEFF": [60.0, 85.0],
        "LOGG": [3.05, 2.41], "E_LOGG": [0.12, 0.15], "FEH": [-0.20, -1.10],
        "E_FEH": [0.08, 0.10], "MG1": [7.80, np.nan], "E_MG1": [0.05, np.nan],
        "AL1": [6.00, 5.20], "E_AL1": [0.07, 0.09], "SNR": [85.0, 40.0],
        "VRAD": [-12.5, 33.1], "E_VRAD": [0.3, 0.4], "SETUP": ["HR10|HR21", "U580"],
        "GES_TYPE": ["GE_MW", "GE_CL"],
    })


def test_catalog_round_trip_and_abundance_conversion(tmp_path):
    path = tmp_path / "ges.fits"
    write_ges_catalog(path, _catalog_frame())
    cat = read_ges_catalog(path)
    assert list(cat.columns) == ["star_id", "ra", "dec", "teff", "e_teff", "logg", "e_logg",
                                 "fe_h", "e_fe_h", "mg_fe", "e_mg_fe", "al_fe", "e_al_fe",
                                 "snr", "vrad", "e_vrad", "setup", "ges_type"]
    assert cat["star_id"].tolist() == [CNAME, "19212647+3747211"]
    # [Mg/Fe] = 7.80 - 7.53 - (-0.20) = 0.47 ; [Al/Fe] = 6.00 - 6.37 - (-0.20) = -0.17
    assert cat["mg_fe"][0] == pytest.approx(0.47, abs=1e-12)
    assert cat["al_fe"][0] == pytest.approx(-0.17, abs=1e-12)
    assert cat["al_fe"][1] == pytest.approx(5.20 - 6.37 + 1.10, abs=1e-12)
    assert cat["e_mg_fe"][0] == pytest.approx(0.05) and cat["e_al_fe"][1] == pytest.approx(0.09)
    assert np.isnan(cat["mg_fe"][1]) and np.isnan(cat["e_mg_fe"][1])
    assert cat["dec"][1] == pytest.approx(37.789) and cat["teff"][1] == 4520.0
    assert cat["setup"].tolist() == ["HR10|HR21", "U580"]
    other_sun = read_ges_catalog(path, solar_mg=7.60, solar_al=6.45)
    assert other_sun["mg_fe"][0] == pytest.approx(0.40, abs=1e-12)
    with fits.open(path) as hdul:
        assert hdul[1].columns["TEFF"].unit == "K" and hdul[1].columns["VRAD"].unit == "km/s"


def test_catalog_lower_case_columns_and_missing_optional(tmp_path):
    frame = _catalog_frame()
    cols = [fits.Column(name=name.lower(), format="D", array=frame[name].to_numpy())
            for name in ("TEFF", "LOGG", "FEH", "E_FEH")]
    cols.insert(0, fits.Column(name="object", format="20A", array=frame["OBJECT"].to_numpy()))
    path = tmp_path / "tap.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(path)
    with pytest.warns(UserWarning, match="MG1"):
        cat = read_ges_catalog(path)
    assert cat["star_id"][0] == CNAME and cat["e_fe_h"][1] == pytest.approx(0.10)
    assert cat[["mg_fe", "al_fe", "vrad", "snr"]].isna().all().all()


@pytest.mark.parametrize("column", ["OBJECT", "TEFF", "LOGG", "FEH"])
def test_catalog_missing_required_column(tmp_path, column):
    full = tmp_path / "full.fits"
    write_ges_catalog(full, _catalog_frame())
    path = _rewrite_table(full, tmp_path / "ges.fits", drop=(column,))
    with pytest.raises(SpectrumFormatError, match=column) as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_ges_catalog(path)
    assert path.name in str(info.value)


def test_catalog_empty_and_truncated(tmp_path):
    empty = tmp_path / "empty.fits"
    write_ges_catalog(empty, _catalog_frame().iloc[:0])
    with pytest.raises(SpectrumFormatError, match="empty table"):
        read_ges_catalog(empty)
    cut = tmp_path / "cut.fits"
    write_ges_catalog(cut, _catalog_frame())
    cut.write_bytes(cut.read_bytes()[:4000])
    with pytest.raises(SpectrumFormatError, match="cut.fits"):
        read_ges_catalog(cut)


def test_catalog_writer_refuses_unknown_columns(tmp_path):
    with pytest.raises(ValueError, match="TEFF_K"):
        write_ges_catalog(tmp_path / "x.fits", _catalog_frame().assign(TEFF_K=1.0))
    with pytest.raises(ValueError, match="LOGG"):
        write_ges_catalog(tmp_path / "x.fits", _catalog_frame().drop(columns=["LOGG"]))
    assert not list(tmp_path.iterdir())     # nothing half-written


# ---------------------------------------------------------------- file names

@pytest.mark.parametrize("cname, setup", [("../../etc/passwd", "HR10"), ("/abs/path", "HR21"),
                                          (".hidden", "HR10|HR21"), ("a\\b", "../HR15N")])
def test_filename_cannot_escape_folder(tmp_path, cname, setup):
    name = ges_spectrum_filename(cname, setup)
    assert "/" not in name and "\\" not in name and not name.startswith(".")
    assert set(name) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-")
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_filename_keeps_real_names_and_refuses_empty():
    assert ges_spectrum_filename("08403960-5307143", "HR10") == "08403960-5307143_HR10.fits"
    assert ges_spectrum_filename("19212647+3747211", "HR10|HR21") == \
        "19212647+3747211_HR10_HR21.fits"
    with pytest.raises(ValueError):
        ges_spectrum_filename("..", "HR10")


# ---------------------------------------------------------------- fitsverify

def test_fitsverify_spectrum(spectrum_file, fitsverify):
    fitsverify(spectrum_file)


def test_fitsverify_catalog(tmp_path, fitsverify):
    path = tmp_path / "ges.fits"
    write_ges_catalog(path, _catalog_frame())
    fitsverify(path)


def test_spectrum_files_are_the_bytes_astropy_writes_whatever_layout_came_before(tmp_path):
    """The SPECTRUM table's header is built once per layout and reused: files of two layouts
    written alternately are each the file astropy itself writes from freshly built HDUs, with
    a valid checksum."""
    from starlabels.io.gaia_eso import _WRITER_COLUMNS

    rng = np.random.default_rng(3)
    for k, (n, start) in enumerate([(120, 5334.0), (64, 8479.0), (120, 5334.0), (64, 8479.0)]):
        wave = start + 0.05 * np.arange(n)
        flux, err = rng.normal(100, 3, n), rng.uniform(1, 2, n)
        qual = (rng.random(n) < 0.1).astype(np.int32)
        ours = tmp_path / f"ours{k}.fits"
        write_ges_spectrum(ours, wave, flux, err, cname=f"X{k}", setup="HR10", snr=50.0 + k,
                           resolution=19800.0, vrad_kms=float(k), qual=qual)
        with fits.open(ours, checksum=True) as hdul:
            primary = fits.PrimaryHDU(header=hdul[0].header.copy())
        wave_nm = wave / 10.0
        columns = [fits.Column(name="WAVE", format=f"{n}D", unit="nm", array=wave_nm[None]),
                   fits.Column(name="FLUX", format=f"{n}E", unit="adu",
                               array=flux.astype(np.float32)[None]),
                   fits.Column(name="ERR", format=f"{n}E", unit="adu",
                               array=err.astype(np.float32)[None]),
                   fits.Column(name="QUAL", format=f"{n}J", array=qual[None])]
        table = fits.BinTableHDU.from_columns(columns, name="SPECTRUM")
        for i, column in enumerate(columns, 1):
            table.header[f"TUTYP{i}"], table.header[f"TUCD{i}"] = _WRITER_COLUMNS[column.name]
        table.header["TDMIN1"], table.header["TDMAX1"] = float(wave_nm[0]), float(wave_nm[-1])
        table.header["NELEM"] = (n, "Number of pixels in each array")
        table.header["VOCLASS"] = ("SPECTRUM v2.0", "VO data model")
        for key in ("CHECKSUM", "DATASUM"):
            primary.header.remove(key, ignore_missing=True)
        reference = tmp_path / f"astropy{k}.fits"
        fits.HDUList([primary, table]).writeto(reference, checksum=True)
        # the same cards in the same order (astropy puts CHECKSUM before DATASUM, fitsfast
        # after: both valid), the same data bytes, and checksums astropy verifies
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with fits.open(ours, checksum=True) as a, fits.open(reference) as b:
                for ha, hb in ((a[0].header, b[0].header), (a[1].header, b[1].header)):
                    cards = lambda h: [(c.keyword, c.value, c.comment) for c in h.cards  # noqa
                                       if c.keyword not in ("CHECKSUM", "DATASUM")]
                    assert cards(ha) == cards(hb)
                start = a[1].fileinfo()["datLoc"]
                assert start == b[1].fileinfo()["datLoc"]
        assert ours.read_bytes()[start:] == reference.read_bytes()[start:]
