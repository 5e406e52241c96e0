"""PHOENIX-ACES-AGSS-COND-2011 HiRes: real file naming, wave/flux files, units, bad files."""
from __future__ import annotations


import numpy as np
import pytest
from astropy.io import fits

from starlabels.io.phoenix import (SYNTHETIC_IVAR, WAVE_FILENAME, parse_phoenix_filename,
                                   phoenix_relpath, read_phoenix_spectrum, read_phoenix_wave,
                                   write_phoenix_spectrum, write_phoenix_wave)
from starlabels.io.spectrum import ConventionWarning, SpectrumFormatError

N = 2000


def _wavelength() -> np.ndarray:
    return np.geomspace(4000.0, 9000.0, N)


@pytest.fixture
def grid(tmp_path):
    """A WAVE file and one solar-ish spectrum at the real relative path."""
    wave_path = tmp_path / WAVE_FILENAME
    write_phoenix_wave(wave_path, _wavelength())
    flux_per_cm = np.linspace(1e15, 2e15, N).astype(np.float32)
    flux_per_cm[5] = np.nan
    spec_path = tmp_path / phoenix_relpath(5800, 4.5, 0.0)
    write_phoenix_spectrum(spec_path, flux_per_cm, teff=5800, logg=4.5, fe_h=0.0, alpha=0.0)
    return wave_path, spec_path, flux_per_cm


# ---------------------------------------------------------------- naming

def test_relpath_matches_real_server_example():
    assert phoenix_relpath(5800, 4.5, 0.0) == \
        "Z-0.0/lte05800-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits"
    assert phoenix_relpath(5800, 4.5, -0.0) == phoenix_relpath(5800, 4.5, 0.0)
    assert WAVE_FILENAME == "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits"


def test_relpath_alpha_and_metal_rich():
    assert phoenix_relpath(5800, 4.5, -1.0, 0.4) == (
        "Z-1.0.Alpha=+0.40/lte05800-4.50-1.0.Alpha=+0.40.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits")
    assert phoenix_relpath(3500, 0.0, -2.0, -0.2) == (
        "Z-2.0.Alpha=-0.20/lte03500-0.00-2.0.Alpha=-0.20.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits")
    assert phoenix_relpath(12000, 6.0, 0.5) == \
        "Z+0.5/lte12000-6.00+0.5.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits"


@pytest.mark.parametrize("teff, logg, fe_h, alpha", [(5800, 4.5, 0.0, 0.0), (2300, 0.0, -4.0, 0.0),
                                                     (7200, 3.5, -1.5, 1.2), (4000, 1.0, 1.0, 0.0),
                                                     (6100, 4.0, -0.5, -0.2)])
def test_parse_inverts_relpath(teff, logg, fe_h, alpha):
    parsed = parse_phoenix_filename(phoenix_relpath(teff, logg, fe_h, alpha))
    assert parsed == {"teff": teff, "logg": logg, "fe_h": fe_h, "alpha": alpha}


def test_naming_refuses_values_it_cannot_spell():
    with pytest.raises(ValueError):
        phoenix_relpath(5800, 4.5, 0.25)          # would silently become '+0.2'
    with pytest.raises(ValueError):
        phoenix_relpath(5800.5, 4.5, 0.0)
    with pytest.raises(ValueError):
        parse_phoenix_filename("lte05800-4.50-0.0.fits")


# ---------------------------------------------------------------- wave file

def test_wave_round_trip_and_header(grid):
    wave_path = grid[0]
    np.testing.assert_array_equal(read_phoenix_wave(wave_path), _wavelength())
    with fits.open(wave_path) as hdul:
        assert hdul[0].header["BUNIT"] == "Angstrom" and hdul[0].data.dtype.kind == "f"
        assert hdul[0].data.dtype.itemsize == 8
        assert any("VACUUM" in str(c) for c in hdul[0].header["COMMENT"])


@pytest.mark.parametrize("unit, scale", [("nm", 10.0), ("um", 1e4), ("angstrom", 1.0)])
def test_wave_units_converted(tmp_path, unit, scale):
    hdu = fits.PrimaryHDU(np.linspace(1.0, 2.0, 50))
    hdu.header["BUNIT"] = unit
    hdu.writeto(tmp_path / "w.fits")
    np.testing.assert_allclose(read_phoenix_wave(tmp_path / "w.fits"),
                               np.linspace(1.0, 2.0, 50) * scale)


@pytest.mark.parametrize("unit, data, match", [
    ("furlong", np.linspace(1, 2, 50), "unknown wavelength unit 'furlong'"),
    ("Angstrom", np.linspace(2, 1, 50), "not strictly increasing"),
    ("Angstrom", np.ones((3, 4)), "expected a 1-D array"),
])
def test_bad_wave_files(tmp_path, unit, data, match):
    hdu = fits.PrimaryHDU(data)
    if unit:
        hdu.header["BUNIT"] = unit
    path = tmp_path / "wave.fits"
    hdu.writeto(path)
    with pytest.raises(SpectrumFormatError, match=match) as info:
        read_phoenix_wave(path)
    assert "wave.fits" in str(info.value)


def test_wave_file_without_unit_uses_the_published_convention(tmp_path):
    """The grid's documented keywords include no unit: a WAVE file without BUNIT/UNIT is read
    as Angstrom (vacuum), the product's published convention, and the file is named in the
    warning the job's log records."""
    path = tmp_path / WAVE_FILENAME
    fits.PrimaryHDU(_wavelength()).writeto(path)
    with pytest.warns(ConventionWarning, match=r"no BUNIT/UNIT.*Angstrom, vacuum") as caught:
        wavelength = read_phoenix_wave(path)
    np.testing.assert_array_equal(wavelength, _wavelength())
    assert str(path) in str(caught[0].message)


# ---------------------------------------------------------------- spectrum file

def test_spectrum_round_trip_per_angstrom(grid):
    wave_path, spec_path, flux_per_cm = grid
    spec = read_phoenix_spectrum(spec_path, read_phoenix_wave(wave_path))
    good = np.isfinite(flux_per_cm)
    np.testing.assert_allclose(spec.flux[good], flux_per_cm[good].astype(np.float64) * 1e-8,
                               rtol=1e-12)
    assert spec.flux[0] == pytest.approx(1e7, rel=1e-6)    # 1e15 per cm = 1e7 per Angstrom
    np.testing.assert_array_equal(spec.mask, ~good)
    assert spec.ivar[0] == SYNTHETIC_IVAR and spec.ivar[5] == 0.0
    assert np.all(np.isfinite(spec.ivar))
    assert spec.medium == "vacuum" and spec.rv_kms == 0.0
    assert spec.spectrum_id == spec.star_id == \
        "lte05800-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes"
    assert spec.meta == {"teff": 5800.0, "logg": 4.5, "fe_h": 0.0, "alpha": 0.0}


def test_spectrum_header_and_abundance_table(tmp_path):
    path = tmp_path / phoenix_relpath(4500, 2.0, -1.0, 0.4)
    write_phoenix_spectrum(path, np.ones(N), teff=4500, logg=2.0, fe_h=-1.0, alpha=0.4)
    with fits.open(path) as hdul:
        h = hdul[0].header
        assert h["BUNIT"] == "erg/s/cm^2/cm" and hdul[0].data.dtype.itemsize == 4
        assert (h["PHXTEFF"], h["PHXLOGG"], h["PHXM_H"], h["PHXALPHA"]) == (4500, 2.0, -1.0, 0.4)
        table = hdul[1].data
        logeps = dict(zip(table["ELEMENT"], table["LOGEPS"].astype(float)))
    assert set(logeps) == {"H", "Fe", "Mg", "Al", "Ca"}
    assert logeps["H"] == 12.0
    assert logeps["Fe"] == pytest.approx(7.50 - 1.0, abs=1e-5)
    assert logeps["Mg"] == pytest.approx(7.60 - 1.0 + 0.4, abs=1e-5)   # alpha element
    assert logeps["Al"] == pytest.approx(6.45 - 1.0, abs=1e-5)         # not alpha


def test_custom_abundances(tmp_path):
    path = tmp_path / "custom.fits"
    write_phoenix_spectrum(path, np.ones(N), teff=5000, logg=3, fe_h=0, abundances={"Li": 1.05})
    with fits.open(path) as hdul:
        assert list(hdul[1].data["ELEMENT"]) == ["Li"]


def test_spectrum_length_must_match_wavelength(grid):
    _, spec_path, _ = grid
    with pytest.raises(SpectrumFormatError, match="wrong WAVE file") as info:
        read_phoenix_spectrum(spec_path, _wavelength()[:-1])
    assert spec_path.name in str(info.value)


@pytest.mark.parametrize("key", ["PHXTEFF", "PHXLOGG", "PHXM_H", "PHXALPHA", "BUNIT"])
def test_missing_keyword(grid, tmp_path, key):
    _, spec_path, _ = grid
    with fits.open(spec_path) as hdul:
        del hdul[0].header[key]
        hdul.writeto(tmp_path / "edited.fits")
    with pytest.raises(SpectrumFormatError, match=f"{key}|unknown flux unit") as info:
        read_phoenix_spectrum(tmp_path / "edited.fits", _wavelength())
    assert "edited.fits" in str(info.value)


def _without_bunit(spec_path, out, **cards):
    with fits.open(spec_path) as hdul:
        del hdul[0].header["BUNIT"]
        for key, value in cards.items():
            hdul[0].header[key] = value
        hdul.writeto(out)
    return out


def test_interpolated_model_without_bunit_uses_the_published_unit(grid, tmp_path):
    wave_path, spec_path, flux_per_cm = grid
    path = _without_bunit(spec_path, tmp_path / "interp.fits", INTERPOL=True)
    with pytest.warns(ConventionWarning, match=r"INTERPOL = T.*erg/s/cm\^2/cm") as caught:
        spec = read_phoenix_spectrum(path, read_phoenix_wave(wave_path))
    good = np.isfinite(flux_per_cm)
    np.testing.assert_allclose(spec.flux[good], flux_per_cm[good].astype(np.float64) * 1e-8,
                               rtol=1e-12)
    assert "interp.fits" in str(caught[0].message)


@pytest.mark.parametrize("cards", [{}, {"INTERPOL": False}])
def test_model_without_bunit_that_is_not_interpolated_is_refused(grid, tmp_path, cards):
    _, spec_path, _ = grid
    path = _without_bunit(spec_path, tmp_path / "plain.fits", **cards)
    with pytest.raises(SpectrumFormatError, match="no BUNIT.*INTERPOL"):
        read_phoenix_spectrum(path, _wavelength())


def test_unknown_flux_unit(grid, tmp_path):
    _, spec_path, _ = grid
    with fits.open(spec_path) as hdul:
        hdul[0].header["BUNIT"] = "furlong/fortnight"
        hdul.writeto(tmp_path / "f.fits")
    with pytest.raises(SpectrumFormatError, match="unknown flux unit"):
        read_phoenix_spectrum(tmp_path / "f.fits", _wavelength())


def test_truncated_and_dataless_files(grid, tmp_path):
    wave_path, spec_path, _ = grid
    for path in (wave_path, spec_path):
        blob = path.read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(SpectrumFormatError, match=WAVE_FILENAME):
        read_phoenix_wave(wave_path)
    with pytest.raises(SpectrumFormatError, match=spec_path.name):
        read_phoenix_spectrum(spec_path, _wavelength())
    empty = tmp_path / "nodata.fits"
    fits.PrimaryHDU().writeto(empty)
    with pytest.raises(SpectrumFormatError, match="no data"):
        read_phoenix_wave(empty)


def test_fitsverify_wave_and_spectrum(grid, fitsverify):
    wave_path, spec_path, _ = grid
    fitsverify(wave_path)
    fitsverify(spec_path)
