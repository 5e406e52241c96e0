"""ESO Phase-3 1-D spectra built from the ESO Science Data Products standard's own keyword lists
(ESO-044286, section 8.2 and the keyword dictionary), not by the project's writer: which column
is the spectrum (utypes, UCDs), air or vacuum, and the reference frame (SPECSYS)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from starlabels.io.gaia_eso import read_ges_spectrum, write_ges_spectrum
from starlabels.io.spectrum import SpectrumFormatError
from starlabels.spectral import doppler_shift

N = 200
WAVE_NM = np.linspace(848.0, 900.0, N)


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Distinct arrays, so a reader that takes the wrong column is caught by its values."""
    rng = np.random.default_rng(seed)
    quality = np.zeros(N, np.int32)
    quality[[5, 6]] = 1
    return {"flux": rng.uniform(900, 1100, N).astype(np.float32),
            "flux_other": rng.uniform(1.0, 2.0, N).astype(np.float32),
            "err": np.full(N, 10.0, np.float32), "err_other": np.full(N, 0.5, np.float32),
            "quality": quality}


def sdp_file(path: Path, columns: list[tuple[str, str, np.ndarray, str | None, str | None,
                                              str | None]],
             *, voclass: str, specsys: str | None = "BARYCENT", primary_extra: dict | None = None
             ) -> Path:
    """A 1-D spectrum as section 8.2 lays it out: a header-only primary HDU with the SCIENCE.
    SPECTRUM keywords, one BINTABLE extension with ONE row of equal-length arrays.

    columns: (TTYPE, TFORM code, array, TUNIT, TUTYP, TUCD) in file order.
    """
    primary = fits.PrimaryHDU()
    h = primary.header
    h["PRODCATG"] = "SCIENCE.SPECTRUM"
    h["ORIGIN"] = "ESO"
    h["INSTRUME"] = "GIRAFFE"
    h["OBJECT"] = "08403960-5307143"
    h["DISPELEM"] = "HR21"
    if specsys is not None:
        h["SPECSYS"] = specsys
    h["WAVELMIN"] = float(WAVE_NM[0])
    h["WAVELMAX"] = float(WAVE_NM[-1])
    h["SPEC_RES"] = 17300.0
    h["SNR"] = 85.0
    h["FLUXCAL"] = "UNCALIBRATED"
    h["CONTNORM"] = False
    for key, value in (primary_extra or {}).items():
        h[key] = value
    cols = [fits.Column(name=name, format=f"{N}{code}", unit=unit, array=array[None, :])
            for name, code, array, unit, _, _ in columns]
    table = fits.BinTableHDU.from_columns(cols, name="SPECTRUM")
    t = table.header
    t["VOCLASS"] = voclass
    t["VOPUB"] = "ESO/SAF"
    t["NELEM"] = N
    for i, (_, _, _, _, utype, ucd) in enumerate(columns, 1):
        if utype is not None:
            t[f"TUTYP{i}"] = utype
        if ucd is not None:
            t[f"TUCD{i}"] = ucd
    fits.HDUList([primary, table]).writeto(path)
    return path


def v1_file(path: Path, *, wave_ucd: str = "em.wl;obs.atmos", specsys: str | None = "BARYCENT",
            primary_extra: dict | None = None, utype_case=str) -> Path:
    """Case 1 of section 8.2: one flux array, VOCLASS 'SPECTRUM v1.0', Spectrum DM 1.1 utypes."""
    a = _arrays()
    return sdp_file(path, [
        ("WAVE", "D", WAVE_NM, "nm", utype_case("Spectrum.Data.SpectralAxis.Value"), wave_ucd),
        ("FLUX", "E", a["flux"], "adu", utype_case("Spectrum.Data.FluxAxis.Value"),
         "phot.flux.density;em.wl;src.net;stat.uncalib"),
        ("ERR", "E", a["err"], "adu", utype_case("Spectrum.Data.FluxAxis.Accuracy.StatError"),
         "stat.error;phot.flux.density;em.wl"),
    ], voclass="SPECTRUM v1.0", specsys=specsys, primary_extra=primary_extra)


def v2_file(path: Path, *, utypes: bool = True) -> Path:
    """Case 2 of section 8.2: several flux arrays, VOCLASS 'SPECTRUM v2.0'. The main pair is
    FLUX_REDUCED with ERR (spec: utypes, meta.main UCDs); FLUX with ERR_REDUCED is the eso:
    secondary pair, so pairing columns by name would be wrong."""
    a = _arrays()
    u = (lambda text: text) if utypes else (lambda text: None)
    return sdp_file(path, [
        ("WAVE", "D", WAVE_NM, "nm", u("spec:Data.SpectralAxis.Value"), "em.wl;obs.atmos"),
        ("FLUX_REDUCED", "E", a["flux"], "adu", u("spec:Data.FluxAxis.Value"),
         "phot.flux.density;em.wl;meta.main"),
        ("ERR", "E", a["err"], "adu", u("spec:Data.FluxAxis.Accuracy.StatError"),
         "stat.error;phot.flux.density;em.wl;meta.main"),
        ("QUAL", "J", a["quality"], None, u("spec:Data.FluxAxis.Accuracy.QualityStatus"),
         "meta.code.qual;meta.main"),
        ("FLUX", "E", a["flux_other"], "adu", u("eso:Data.FluxAxis.Value"),
         "phot.flux.density;em.wl"),
        ("ERR_REDUCED", "E", a["err_other"], "adu", u("eso:Data.FluxAxis.Accuracy.StatError"),
         "stat.error;phot.flux.density;em.wl"),
    ], voclass="SPECTRUM v2.0")


# ---------------------------------------------------------------- which column is the spectrum

@pytest.mark.parametrize("utype_case", [str, str.lower, str.upper])
def test_v1_single_flux_file(tmp_path, utype_case):
    """Utypes compare case-insensitively (keyword dictionary, TUTYPi)."""
    a = _arrays()
    spec = read_ges_spectrum(v1_file(tmp_path / "v1.fits", utype_case=utype_case))
    np.testing.assert_allclose(spec.wavelength, WAVE_NM * 10, rtol=1e-12)
    np.testing.assert_array_equal(spec.flux, a["flux"].astype(float))
    np.testing.assert_allclose(spec.ivar, 1 / 100.0)
    assert spec.medium == "air" and not spec.mask.any()
    assert spec.meta["flux_column"] == "FLUX" and spec.meta["specsys"] == "BARYCENT"


def test_v2_main_columns_come_from_utypes_not_names(tmp_path):
    a = _arrays()
    path = v2_file(tmp_path / "v2.fits")
    spec = read_ges_spectrum(path)
    assert spec.meta["flux_column"] == "FLUX_REDUCED"
    np.testing.assert_array_equal(spec.flux, a["flux"].astype(float))
    np.testing.assert_allclose(spec.ivar, 1 / 10.0 ** 2)          # ERR, not ERR_REDUCED
    np.testing.assert_array_equal(spec.mask, a["quality"] != 0)   # the main QUAL
    # the eso: secondary flux pairs with the eso: error by namespace, whatever its name
    other = read_ges_spectrum(path, flux_column="FLUX")
    np.testing.assert_array_equal(other.flux, a["flux_other"].astype(float))
    np.testing.assert_allclose(other.ivar, 1 / 0.5 ** 2)
    assert not other.mask.any()                                   # no eso: quality array


def test_v2_main_columns_from_ucd_meta_main_without_utypes(tmp_path):
    a = _arrays()
    spec = read_ges_spectrum(v2_file(tmp_path / "ucd.fits", utypes=False))
    assert spec.meta["flux_column"] == "FLUX_REDUCED"
    np.testing.assert_allclose(spec.ivar, 1 / 10.0 ** 2)
    np.testing.assert_array_equal(spec.mask, a["quality"] != 0)


def test_two_spectral_axes_take_the_main_one(tmp_path):
    """Real IDPs carry WAVE (spec:, vacuum) beside WAVE_AIR (eso:, air)."""
    a = _arrays()
    path = sdp_file(tmp_path / "two_axes.fits", [
        ("WAVE_AIR", "D", WAVE_NM * 0.9997, "nm", "eso:Data.SpectralAxis.Value",
         "em.wl;obs.atmos"),
        ("WAVE", "D", WAVE_NM, "nm", "spec:Data.SpectralAxis.Value", "em.wl;meta.main"),
        ("FLUX", "E", a["flux"], "adu", "spec:Data.FluxAxis.Value",
         "phot.flux.density;em.wl;meta.main"),
        ("ERR", "E", a["err"], "adu", "spec:Data.FluxAxis.Accuracy.StatError",
         "stat.error;phot.flux.density;em.wl;meta.main"),
    ], voclass="SPECTRUM v2.0")
    spec = read_ges_spectrum(path)
    np.testing.assert_allclose(spec.wavelength, WAVE_NM * 10, rtol=1e-12)
    assert spec.medium == "vacuum"


def test_ambiguous_main_columns_are_refused_by_name(tmp_path):
    a = _arrays()
    path = sdp_file(tmp_path / "two_main.fits", [
        ("WAVE", "D", WAVE_NM, "nm", "spec:Data.SpectralAxis.Value", "em.wl;obs.atmos"),
        ("FLUX_A", "E", a["flux"], "adu", "spec:Data.FluxAxis.Value", "phot.flux.density"),
        ("FLUX_B", "E", a["flux"], "adu", "spec:Data.FluxAxis.Value", "phot.flux.density"),
        ("ERR", "E", a["err"], "adu", "spec:Data.FluxAxis.Accuracy.StatError", "stat.error"),
    ], voclass="SPECTRUM v2.0")
    with pytest.raises(SpectrumFormatError, match="several main flux columns.*FLUX_A.*FLUX_B"):
        read_ges_spectrum(path)


# ---------------------------------------------------------------- air or vacuum

@pytest.mark.parametrize("ucd, medium", [("em.wl;obs.atmos", "air"), ("em.wl", "vacuum"),
                                         ("em.wl;meta.main", "vacuum"),
                                         ("EM.WL;OBS.ATMOS", "air")])
def test_medium_from_the_wavelength_ucd(tmp_path, ucd, medium):
    assert read_ges_spectrum(v1_file(tmp_path / "m.fits", wave_ucd=ucd)).medium == medium


def test_wavelength_without_medium_ucd_is_refused_unless_configured(tmp_path):
    path = v1_file(tmp_path / "nomedium.fits", wave_ucd="instr.pixel")
    with pytest.raises(SpectrumFormatError, match="no air/vacuum TUCD"):
        read_ges_spectrum(path)
    assert read_ges_spectrum(path, medium="vacuum").medium == "vacuum"


# ---------------------------------------------------------------- SPECSYS

@pytest.mark.parametrize("frame", ["BARYCENT", "HELIOCEN", "barycent"])
def test_barycentric_and_heliocentric_files_are_used_as_they_are(tmp_path, frame):
    spec = read_ges_spectrum(v1_file(tmp_path / "b.fits", specsys=frame))
    np.testing.assert_allclose(spec.wavelength, WAVE_NM * 10, rtol=1e-12)
    assert spec.meta["barycentric_correction_kms"] == 0.0


@pytest.mark.parametrize("keyword", ["ESO QC BERV", "ESO DRS BERV", "ESO QC VRAD BARYCOR"])
def test_topocentric_file_is_moved_by_its_barycentric_correction(tmp_path, keyword):
    """The same star written barycentric and topocentric reads back the same: a topocentric
    wavelength times D(BERV) is the barycentric one, so removing VRAD then gives the rest
    frame."""
    berv = -23.4
    topocentric = WAVE_NM / np.sqrt((1 + berv / 299792.458) / (1 - berv / 299792.458))
    a = _arrays()
    path = sdp_file(tmp_path / "topo.fits", [
        ("WAVE", "D", topocentric, "nm", "Spectrum.Data.SpectralAxis.Value", "em.wl;obs.atmos"),
        ("FLUX", "E", a["flux"], "adu", "Spectrum.Data.FluxAxis.Value", "phot.flux.density"),
        ("ERR", "E", a["err"], "adu", "Spectrum.Data.FluxAxis.Accuracy.StatError", "stat.error"),
    ], voclass="SPECTRUM v1.0", specsys="TOPOCENT", primary_extra={f"HIERARCH {keyword}": berv})
    spec = read_ges_spectrum(path)
    np.testing.assert_allclose(spec.wavelength, WAVE_NM * 10, rtol=1e-12)
    np.testing.assert_allclose(spec.wavelength, doppler_shift(topocentric * 10, berv), rtol=1e-14)
    assert spec.meta["barycentric_correction_kms"] == berv and spec.meta["specsys"] == "TOPOCENT"


@pytest.mark.parametrize("specsys, match", [
    ("TOPOCENT", "TOPOCENT.*no barycentric correction"),
    ("LSRK", "SPECSYS='LSRK'"), ("SOURCE", "SPECSYS='SOURCE'"), ("GEOCENTR", "GEOCENTR"),
    (None, "no SPECSYS"), ("", "no SPECSYS"),
])
def test_frames_that_cannot_reach_the_rest_frame_are_refused(tmp_path, specsys, match):
    path = v1_file(tmp_path / "frame.fits", specsys=specsys)
    with pytest.raises(SpectrumFormatError, match=match) as info:
        read_ges_spectrum(path)
    assert "frame.fits" in str(info.value)


# ---------------------------------------------------------------- the project's writer

def test_writer_files_follow_the_standard(tmp_path):
    """The simulated survey's files carry the v2.0 utypes, UCDs and SPECSYS the reader uses, so
    the reader finds their columns under other names as well."""
    path = tmp_path / "w.fits"
    rng = np.random.default_rng(2)
    write_ges_spectrum(path, WAVE_NM * 10, rng.uniform(1, 2, N), np.full(N, 0.1), cname="X",
                       setup="HR21", snr=50, resolution=17000, vrad_kms=12.0)
    with fits.open(path) as hdul:
        h, t = hdul[0].header, hdul[1].header
        assert h["SPECSYS"] == "BARYCENT" and t["VOCLASS"] == "SPECTRUM v2.0"
        assert [t[f"TUTYP{i}"] for i in range(1, 5)] == [
            "spec:Data.SpectralAxis.Value", "spec:Data.FluxAxis.Value",
            "spec:Data.FluxAxis.Accuracy.StatError", "spec:Data.FluxAxis.Accuracy.QualityStatus"]
        assert t["TUCD1"] == "em.wl;obs.atmos" and "meta.main" in t["TUCD2"]
        renamed = [fits.Column(name=new, format=c.format, unit=c.unit, array=hdul[1].data[c.name])
                   for c, new in zip(hdul[1].columns, ["LAMBDA", "F", "SIGMA", "FLAGS"])]
        table = fits.BinTableHDU.from_columns(renamed, header=t.copy())
        for i, new in enumerate(["LAMBDA", "F", "SIGMA", "FLAGS"], 1):
            table.header[f"TTYPE{i}"] = new
        fits.HDUList([fits.PrimaryHDU(header=h), table]).writeto(tmp_path / "renamed.fits")
    original, renamed_read = read_ges_spectrum(path), read_ges_spectrum(tmp_path / "renamed.fits")
    for name in ("wavelength", "flux", "ivar", "mask"):
        np.testing.assert_array_equal(getattr(original, name), getattr(renamed_read, name))
    assert renamed_read.meta["flux_column"] == "F" and renamed_read.medium == "air"
