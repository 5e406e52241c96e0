"""The fast FITS reader behind read_ges_spectrum gives exactly what astropy gives, or declines.

Every file is read twice: as read_ges_spectrum reads it (fast reader first) and with the fast
reader switched off (astropy only). Spectra, warnings and error messages must be identical;
files outside the plain layout must be declined by the fast reader (NotSimpleFITS).
"""
from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import starlabels.io.gaia_eso as gaia_eso
from starlabels.io.fitsfast import NotSimpleFITS, read_simple_table
from starlabels.io.gaia_eso import read_ges_spectrum, write_ges_spectrum

BLOCK = 2880


# ---------------------------------------------------------------- helpers

def _astropy_only(path):
    raise NotSimpleFITS("switched off by the test")


def _outcome(path: Path, **kwargs) -> tuple:
    """('ok', Spectrum) or ('error', type, message), and the warnings, of one read."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = ("ok", read_ges_spectrum(path, **kwargs))
        except Exception as exc:   # noqa: BLE001  (whatever astropy raises, both ways)
            result = ("error", type(exc), str(exc))
    return result, [(w.category, str(w.message)) for w in caught]


def _assert_same_spectrum(fast, slow) -> None:
    for name in ("wavelength", "flux", "ivar", "mask"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), name          # bit for bit, NaN payloads included
        assert a.flags.writeable == b.flags.writeable, name
    for name in ("spectrum_id", "star_id", "setup", "medium", "path", "meta"):
        assert getattr(fast, name) == getattr(slow, name), name
        assert type(getattr(fast, name)) is type(getattr(slow, name)), name
    for name in ("snr", "rv_kms", "resolution"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert type(a) is type(b) and (a == b or (np.isnan(a) and np.isnan(b))), name


def _fast_path_taken(path: Path) -> bool:
    """Whether read_ges_spectrum reads ``path`` with the fast reader."""
    try:
        table = read_simple_table(path)
    except NotSimpleFITS:
        return False
    return gaia_eso.fast_reader_declines(table) is None


def assert_same_as_astropy(path: Path, monkeypatch, *, fast: bool, **kwargs) -> tuple:
    """Read ``path`` both ways and compare; ``fast`` says whether the fast reader must take it."""
    assert _fast_path_taken(path) is fast
    got, got_warnings = _outcome(path, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(gaia_eso, "read_simple_table", _astropy_only)
        want, want_warnings = _outcome(path, **kwargs)
    assert got_warnings == want_warnings
    assert got[0] == want[0], (got, want)
    if got[0] == "ok":
        _assert_same_spectrum(got[1], want[1])
    else:
        assert got == want
    if fast:   # astropy itself says nothing about a file the fast reader takes
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with fits.open(path) as hdul:
                [hdul[0].header[k] for k in hdul[0].header]
                [hdul[1].data[name] for name in hdul[1].columns.names]
    return got


def _inputs(rng: np.random.Generator, n: int):
    wavelength = np.cumsum(rng.uniform(0.01, 0.5, n)) + rng.uniform(3000, 9000)
    flux = rng.normal(1000, 300, n).astype(np.float32)
    err = np.abs(rng.normal(20, 10, n)).astype(np.float32)
    return wavelength, flux, err


def _write_table(path: Path, columns, primary_cards=None, table_cards=None, **writeto) -> Path:
    """A spectrum file written by plain astropy (its own header layout), with the two keywords
    the SDP standard requires for the frame and medium (SPECSYS, TUCD of the wavelength)."""
    primary = fits.PrimaryHDU()
    for key, value in (primary_cards if primary_cards is not None else
                       {"OBJECT": "12345678-1234567", "SETUP": "HR10", "SNR": 50.0,
                        "SPECSYS": "BARYCENT"}).items():
        primary.header[key] = value
    table = fits.BinTableHDU.from_columns(columns)
    for key, value in {"TUCD1": "em.wl;obs.atmos", **(table_cards or {})}.items():
        table.header[key] = value
    fits.HDUList([primary, table]).writeto(path, **writeto)
    return path


def _spectrum_columns(n: int = 50, *, wave="WAVE", flux="FLUX", err="ERR", unit="nm",
                      nrows: int = 1):
    rng = np.random.default_rng(n)
    wavelength, values, sigma = _inputs(rng, n)
    tile = (nrows, 1)
    return [fits.Column(name=wave, format=f"{n}D", unit=unit,
                        array=np.tile(wavelength / (10 if unit == "nm" else 1), tile)),
            fits.Column(name=flux, format=f"{n}E", unit="adu", array=np.tile(values, tile)),
            fits.Column(name=err, format=f"{n}E", unit="adu", array=np.tile(sigma, tile))]


def _card(text: str) -> str:
    assert len(text) <= 80
    return text.ljust(80)


def _with_primary_cards(src: Path, dst: Path, cards: list[str]) -> Path:
    """Copy ``src`` with its primary header replaced by exactly these card images."""
    blob = src.read_bytes()
    end = 0
    while blob[end:end + 80] != b"END".ljust(80):
        end += 80
    table_start = (end // BLOCK + 1) * BLOCK
    header = "".join(_card(c) for c in cards) + "END".ljust(80)
    header += " " * ((-len(header)) % BLOCK)
    dst.write_bytes(header.encode("ascii") + blob[table_start:])
    return dst


_BASE_PRIMARY = ["SIMPLE  =                    T / conforms to FITS standard",
                 "BITPIX  =                    8",
                 "NAXIS   =                    0",
                 "EXTEND  =                    T",
                 "SPECSYS = 'BARYCENT'"]


@pytest.fixture
def base_file(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    wavelength, flux, err = _inputs(rng, 40)
    path = tmp_path / "base.fits"
    write_ges_spectrum(path, wavelength, flux, err, cname="00000005-5738054", setup="HR10",
                       snr=64.2, resolution=19800.0, vrad_kms=-37.3)
    return path


# ---------------------------------------------------------------- files the fast reader takes

@pytest.mark.parametrize("seed", range(25))
def test_project_writer_files_read_identically(tmp_path, monkeypatch, seed):
    """Random contents through write_ges_spectrum: NaN/inf flux, zero/NaN sigma, QUAL flags,
    odd NaN bit patterns, missing or odd keywords, sizes from 2 pixels up."""
    rng = np.random.default_rng(seed)
    n = int(rng.choice([2, 3, 17, 400, 5801]))
    wavelength, flux, err = _inputs(rng, n)
    pick = lambda p: rng.random(n) < p  # noqa: E731
    flux[pick(0.05)] = np.nan
    flux[pick(0.02)] = rng.choice([np.inf, -np.inf])
    flux[pick(0.02)] = -0.0
    # signalling / payload NaNs and denormals must convert bit for bit like astropy's
    odd = np.array([0x7F800001, 0xFFC00123, 0x00000001, 0x80000001], np.uint32).view(np.float32)
    flux[pick(0.02)] = rng.choice(odd)
    err[pick(0.05)] = rng.choice([0.0, np.nan, -1.0, np.inf])
    qual = rng.choice([0, 0, 0, 1, 2, 64, -1, 2**31 - 1], size=n).astype(np.int32)
    extra = {}
    if seed % 3 == 0:
        extra.update({"OBJECT": None, "CNAME": "00000005-5738054"})
    if seed % 4 == 1:
        extra.update({"SETUP": None})                       # setup from DISPELEM
    if seed % 5 == 2:
        extra.update({"CONTNORM": True, "OBSERVER": "O'Brien", "NOTE": "a / b 'c'"})
    if seed % 7 == 3:
        extra.update({"SNR": "high", "SPEC_RES": 17000})    # text SNR -> NaN, integer R
    if seed % 6 == 4:
        extra.update({"OBJECT": "  leading blanks", "HISTORY": "history card"})
    path = tmp_path / f"s{seed}.fits"
    write_ges_spectrum(path, wavelength, flux, err, cname="00000005-5738054", setup="HR21",
                       snr=rng.choice([float(rng.uniform(1, 300)), np.nan]),
                       resolution=rng.choice([19800.0, np.nan]),
                       vrad_kms=rng.choice([float(rng.normal(0, 50)), np.nan]),
                       qual=None if seed % 2 else qual, extra_header=extra)
    for medium in ("air", "vacuum", "header"):
        assert_same_as_astropy(path, monkeypatch, fast=True, medium=medium)
    assert_same_as_astropy(path, monkeypatch, fast=True, flux_column="flux")
    assert_same_as_astropy(path, monkeypatch, fast=True, flux_column="IVAR")


def test_vacuum_tucd_and_real_bench_layout(tmp_path, monkeypatch, base_file):
    """A vacuum TUCD on WAVE: medium='header' must say vacuum both ways."""
    with fits.open(base_file) as hdul:
        hdul[1].header["TUCD1"] = "em.wl"
        hdul.writeto(tmp_path / "vacuum.fits")
    got = assert_same_as_astropy(tmp_path / "vacuum.fits", monkeypatch, fast=True,
                                 medium="header")
    assert got[1].medium == "vacuum"
    assert_same_as_astropy(tmp_path / "vacuum.fits", monkeypatch, fast=True, medium="air")


def test_topocentric_file_goes_to_astropy_for_its_barycentric_correction(tmp_path, monkeypatch,
                                                                          base_file):
    """The fast reader passes over HIERARCH ESO cards, where a TOPOCENT spectrum's barycentric
    correction lives: such files are read by astropy, and barycentric ones stay fast."""
    path = tmp_path / "topo.fits"
    rng = np.random.default_rng(4)
    wavelength, flux, err = _inputs(rng, 40)
    write_ges_spectrum(path, wavelength, flux, err, cname="X", setup="HR10", snr=50,
                       resolution=19800, vrad_kms=3.0,
                       extra_header={"SPECSYS": "TOPOCENT", "ESO QC BERV": 17.25})
    got = assert_same_as_astropy(path, monkeypatch, fast=False)
    assert got[1].meta["barycentric_correction_kms"] == 17.25
    assert not np.allclose(got[1].wavelength, wavelength, rtol=1e-6, atol=0)
    assert assert_same_as_astropy(base_file, monkeypatch, fast=True)[1].meta["specsys"] == \
        "BARYCENT"


@pytest.mark.parametrize("variant", ["angstrom", "reduced", "reduced_and_plain", "ivar_only",
                                     "lower_case", "no_units", "no_qual", "int_types",
                                     "scalar_columns", "two_rows", "no_err", "furlong",
                                     "case_clash"])
def test_plain_astropy_files_read_identically(tmp_path, monkeypatch, variant):
    n = 60
    cols = _spectrum_columns(n)
    rng = np.random.default_rng(3)
    if variant == "angstrom":
        cols = _spectrum_columns(n, unit="Angstrom")
    elif variant == "reduced":
        cols = _spectrum_columns(n, flux="FLUX_REDUCED", err="ERR_REDUCED")
    elif variant == "reduced_and_plain":
        cols += _spectrum_columns(n, flux="FLUX_REDUCED", err="ERR_REDUCED")[1:]
    elif variant == "ivar_only":
        cols = cols[:2] + [fits.Column(name="IVAR", format=f"{n}E",
                                       array=rng.uniform(-1, 5, (1, n)).astype(np.float32))]
    elif variant == "lower_case":
        cols = _spectrum_columns(n, wave="wave", flux="Flux", err="err")
    elif variant == "no_units":
        cols[1] = fits.Column(name="FLUX", format=f"{n}E", array=cols[1].array)
    elif variant == "no_qual":
        pass
    elif variant == "int_types":
        cols += [fits.Column(name="QUAL", format=f"{n}I",
                             array=rng.integers(-3, 3, (1, n)).astype(np.int16)),
                 fits.Column(name="BYTES", format=f"{n}B",
                             array=rng.integers(0, 255, (1, n)).astype(np.uint8)),
                 fits.Column(name="BIG", format="3K", array=np.array([[1, -2, 2**62]]))]
    elif variant == "scalar_columns":
        cols += [fits.Column(name="NPIX", format="J", array=np.array([n])),
                 fits.Column(name="QUAL", format="1E", array=np.array([0.0]))]
    elif variant == "two_rows":
        cols = _spectrum_columns(n, nrows=2)
    elif variant == "no_err":
        cols = cols[:2]
    elif variant == "furlong":
        cols = _spectrum_columns(n, unit="furlong")
    elif variant == "case_clash":
        cols += [fits.Column(name="Err", format=f"{n}E", array=cols[2].array)]
    path = _write_table(tmp_path / f"{variant}.fits", cols)
    kwargs = {"flux_column": "FLUX_REDUCED"} if variant == "reduced_and_plain" else {}
    got = assert_same_as_astropy(path, monkeypatch, fast=variant != "case_clash", **kwargs)
    if variant in ("angstrom", "lower_case", "int_types", "reduced_and_plain", "ivar_only"):
        assert got[0] == "ok"
    if variant in ("scalar_columns", "two_rows", "no_err", "furlong"):
        assert got[0] == "error"


@pytest.mark.parametrize("cards", [
    ["OBJECT  = 'O''Brien  '", "SETUP   = 'HR10'/no blank before the comment"],
    ["OBJECT  = '  lead'  / leading blanks are kept", "DISPELEM= 'HR21'"],
    ["OBJECT  =                12345", "SETUP   =                    T"],
    ["OBJECT  = 'X' / it''s a 'comment' with / and : 1", "SETUP   = 'HR10'",
     "SNR     =                1.5D2", "VRAD    =                  -12",
     "SPEC_RES=              +.5E+04", "CONTNORM= 'F'"],
    ["OBJECT  = 'X'", "SETUP   = 'HR10'", "SNR     =              0012.50",
     "VRAD    =                  -0.", "SPEC_RES=                  1E5",
     "CONTNORM=                    T"],
    ["OBJECT  = 'X'", "SETUP   = 'HR10'", "SNR     = 'high'", "VRAD    =                    F",
     "COMMENT = 'a commentary card, whatever follows'", "HISTORY x", "", "        = 'blank key'"],
    ["OBJECT  = ''", "SETUP   = 'HR10'"],
    ["OBJECT  = 'X'", "SETUP   = '   '"],
    ["CNAME   = 'Y'", "SETUP   = 'HR10'", "DATE-OBS= '2010-01-01T00:00:00.000'"],
    # a header over several blocks, ending exactly at a block's last card
    ["OBJECT  = 'X'", "SETUP   = 'HR10'"] + [f"KEY{i:05d}=                 {i:4d}" for i in range(65)],
    ["OBJECT  = 'X'", "SETUP   = 'HR10'"] + [f"HISTORY step {i}" for i in range(100)],
])
def test_header_values_like_astropy(tmp_path, monkeypatch, base_file, cards):
    path = _with_primary_cards(base_file, tmp_path / "cards.fits", _BASE_PRIMARY + cards)
    assert_same_as_astropy(path, monkeypatch, fast=True)


# ---------------------------------------------------------------- files the fast reader declines

@pytest.mark.parametrize("cards", [
    ["OBJECT  = 'a'' / b'"],              # astropy ends this string after the ''
    ["OBJECT  = '' / it's'"],             # ... and this empty one at the later quote
    ["OBJECT  = 'AXIS.1: 2'"],            # a record-valued card for astropy
    ["SNR     =                1.5e2"],   # lower-case exponent (non-standard)
    ["SNR     =                 1 5"],    # unparsable: astropy raises on reading it
    ["SNR     ="],                        # undefined value
    ["SNR     =               (1, 2)"],   # complex
    ["snr     =                  5.0"],
    ["SNR      =                 5.0"],
    ["SNR     =                  5.0", "SNR     =                  6.0"],   # repeated
    ["CONTINUE  '&'"],                    # continues SETUP, which the reader needs
    ["HIERARCH OBJECT = 'Y'"],            # not ESO's: astropy may read it as OBJECT
    ["COMMENT x", "CONTINUE  'y'"],       # CONTINUE after no string
    ["ENDX    =                    1"],
    ["OBJECT2 = 'unterminated"],
    ["SETUP2  = 'x'                   \x7f"],
])
def test_unusual_cards_are_left_to_astropy(tmp_path, monkeypatch, base_file, cards):
    if cards[0].startswith("OBJECT  ="):
        cards = cards + ["SETUP   = 'HR10'"]
    else:
        cards = ["OBJECT  = 'X'", "SETUP   = 'HR10'"] + cards
    path = _with_primary_cards(base_file, tmp_path / "odd.fits", _BASE_PRIMARY + cards)
    assert_same_as_astropy(path, monkeypatch, fast=False)


ESO_HEADER = [  # the kind of cards an ESO Phase-3 spectrum's primary header is full of
    "ORIGIN  = 'ESO-PARANAL'        / European Southern Observatory",
    "HIERARCH ESO OBS NAME = 'GES_FIELD_1' / OB name",
    "HIERARCH ESO INS SLIT NAME = 'Medusa1' / Slit name",
    "HIERARCH ESO DET OUT1 GAIN = 0.6100 / Conversion from electrons to ADU",
    "HIERARCH ESO TPL START = '2012-01-01T00:00:00' / TPL start time",
    "PROV1   = 'GIRAF_SPECTRA_HR10_one_very_long_provenance_file_name_that_goes_on_&'",
    "CONTINUE  'and_on_for_ever.fits&'",
    "CONTINUE  '' / provenance",
    "HIERARCH ESO PRO REC1 PARAM1 VALUE = 'a_long_recipe_parameter_value_that_n&'",
    "CONTINUE  'ore_than_one_card'",
]


def test_eso_hierarch_and_long_strings_read_fast(tmp_path, monkeypatch, base_file):
    cards = _BASE_PRIMARY + ["OBJECT  = 'X'", "SETUP   = 'HR10'", "SNR     = 42.5"] + ESO_HEADER
    path = _with_primary_cards(base_file, tmp_path / "eso.fits", cards)
    table = read_simple_table(path)
    assert table.long_primary == {"PROV1"} and "PROV1" not in table.primary
    assert not any(k.startswith("ESO") or k == "HIERARCH" for k in table.primary)
    got = assert_same_as_astropy(path, monkeypatch, fast=True)
    assert got[1].snr == 42.5 and got[1].star_id == "X"


def test_long_string_of_a_keyword_read_goes_to_astropy(tmp_path, monkeypatch, base_file):
    cards = _BASE_PRIMARY + ["OBJECT  = 'GES_star_with_an_improbably_long_name_that_needs_two_c&'",
                             "CONTINUE  'ards'", "SETUP   = 'HR10'"] + ESO_HEADER
    path = _with_primary_cards(base_file, tmp_path / "long_object.fits", cards)
    got = assert_same_as_astropy(path, monkeypatch, fast=False)
    assert got[1].star_id.endswith("two_cards")


def test_continue_long_string_is_left_to_astropy(tmp_path, monkeypatch):
    path = _write_table(tmp_path / "long.fits", _spectrum_columns(),
                        primary_cards={"OBJECT": "X" * 100, "SETUP": "HR10",
                                      "SPECSYS": "BARYCENT"})
    assert b"CONTINUE" in path.read_bytes()
    got = assert_same_as_astropy(path, monkeypatch, fast=False)
    assert got[1].star_id == "X" * 100


def test_scaled_columns_are_left_to_astropy(tmp_path, monkeypatch):
    n = 50
    cols = _spectrum_columns(n)
    cols[1] = fits.Column(name="FLUX", format=f"{n}I", array=np.arange(n, dtype=np.int16)[None])
    path = _write_table(tmp_path / "scaled.fits", cols,
                        table_cards={"TSCAL2": 0.5, "TZERO2": 1000.0})
    assert b"TSCAL2" in path.read_bytes() and b"TZERO2" in path.read_bytes()
    got = assert_same_as_astropy(path, monkeypatch, fast=False)
    np.testing.assert_array_equal(got[1].flux, 1000 + 0.5 * np.arange(n))
    unsigned = _spectrum_columns(n) + [fits.Column(name="QUAL", format=f"{n}J", bzero=2**31,
                                                   array=np.full((1, n), 2**31, np.uint32))]
    path = _write_table(tmp_path / "unsigned.fits", unsigned)
    assert b"TZERO4" in path.read_bytes()
    got = assert_same_as_astropy(path, monkeypatch, fast=False)
    assert got[1].mask.all()


@pytest.mark.parametrize("keyword, value", [("TSCAL2", 2.0), ("TZERO2", 1.0), ("TNULL4", -1),
                                            ("TDIM1", "(50)"), ("TDISP1", "F8.3"),
                                            ("THEAP", 20000), ("ZIMAGE", False),
                                            ("TTYPE9", "GHOST")])
def test_column_keywords_astropy_interprets(tmp_path, monkeypatch, keyword, value):
    cols = _spectrum_columns(50) + [fits.Column(name="QUAL", format="50J",
                                                array=np.zeros((1, 50), np.int32))]
    path = _write_table(tmp_path / "kw.fits", cols, table_cards={keyword: value},
                        output_verify="silentfix")
    assert keyword.encode() in path.read_bytes()
    assert_same_as_astropy(path, monkeypatch, fast=False)


def test_variable_length_and_string_columns(tmp_path, monkeypatch):
    n = 30
    rng = np.random.default_rng(5)
    wavelength, flux, err = _inputs(rng, n)
    vla = [fits.Column(name="WAVE", format="PD()", unit="nm",
                       array=np.array([wavelength / 10], dtype=object)),
           fits.Column(name="FLUX", format="PE()", array=np.array([flux], dtype=object)),
           fits.Column(name="ERR", format="PE()", array=np.array([err], dtype=object))]
    assert_same_as_astropy(_write_table(tmp_path / "vla.fits", vla), monkeypatch, fast=False)
    text = _spectrum_columns(n) + [fits.Column(name="NOTE", format="8A", array=["abc"])]
    assert_same_as_astropy(_write_table(tmp_path / "text.fits", text), monkeypatch, fast=False)


def test_truncated_and_unterminated_files(tmp_path, monkeypatch, base_file):
    blob = base_file.read_bytes()
    cases = {"half.fits": blob[: len(blob) // 2],
             "block.fits": blob[: len(blob) - BLOCK],     # a whole block short
             "padding.fits": blob[:-100],
             "headers_only.fits": blob[:2 * BLOCK],
             "empty.fits": b""}
    no_end = bytearray(blob)
    end = bytes(no_end).index(b"END".ljust(80), BLOCK)   # the table header's END card
    no_end[end:end + 80] = b" " * 80
    cases["no_end.fits"] = bytes(no_end)
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        got = assert_same_as_astropy(path, monkeypatch, fast=False)
        assert got[0] == "error", name


def test_structure_the_fast_reader_does_not_take(tmp_path, monkeypatch, base_file):
    blob = base_file.read_bytes()
    # a further HDU after the table
    with fits.open(base_file) as hdul:
        hdul.append(fits.ImageHDU(np.zeros(3)))
        hdul.writeto(tmp_path / "three_hdus.fits")
    assert_same_as_astropy(tmp_path / "three_hdus.fits", monkeypatch, fast=False)
    # a zero block appended
    (tmp_path / "zeros.fits").write_bytes(blob + b"\0" * BLOCK)
    assert_same_as_astropy(tmp_path / "zeros.fits", monkeypatch, fast=False)
    # NAXIS1 disagreeing with the TFORMs
    text = blob.replace(b"NAXIS1  =                  800", b"NAXIS1  =                  808")
    assert text != blob
    (tmp_path / "naxis1.fits").write_bytes(text)
    assert_same_as_astropy(tmp_path / "naxis1.fits", monkeypatch, fast=False)
    # primary HDU with data, and an image as HDU1
    fits.HDUList([fits.PrimaryHDU(np.zeros(3)), fits.ImageHDU(np.zeros(3))]).writeto(
        tmp_path / "image.fits")
    assert_same_as_astropy(tmp_path / "image.fits", monkeypatch, fast=False)


def test_gzip_is_left_to_astropy(tmp_path, monkeypatch, base_file):
    for name in ("spec.fits.gz", "gzipped_but_named.fits"):
        path = tmp_path / name
        path.write_bytes(gzip.compress(base_file.read_bytes()))
        got = assert_same_as_astropy(path, monkeypatch, fast=False)
        assert got[0] == "ok"


def test_missing_file_and_directory(tmp_path, monkeypatch):
    assert_same_as_astropy(tmp_path / "absent.fits", monkeypatch, fast=False)
    (tmp_path / "dir.fits").mkdir()
    assert_same_as_astropy(tmp_path / "dir.fits", monkeypatch, fast=False)


def test_fast_reader_returns_the_stored_layout(base_file):
    table = read_simple_table(base_file)
    assert table.names == ["WAVE", "FLUX", "ERR", "QUAL"]
    assert table.units == {"WAVE": "nm", "FLUX": "adu", "ERR": "adu"}
    assert table.header["TUCD1"] == "em.wl;obs.atmos" and table.header["NELEM"] == 40
    assert table.primary["OBJECT"] == "00000005-5738054" and table.primary["CONTNORM"] is False
    assert table.rows.dtype["WAVE"].shape == (40,) and table.rows.dtype["FLUX"].base.str == ">f4"
    with fits.open(base_file) as hdul:
        for name in table.names:
            assert np.array_equal(table.rows[name], hdul[1].data[name], equal_nan=True)
        assert {k: v for k, v in hdul[0].header.items() if k != "COMMENT"} == table.primary


def test_card_values_match_astropy_cards():
    """Random value cards: whatever the fast parser accepts, astropy's Card reads the same
    (type and value) without a warning; the rest it declines."""
    import random

    from starlabels.io.fitsfast import _card_value

    rnd = random.Random(7)
    alphabet = "'' /:aZ9 .-+ED'"

    def text(k: int) -> str:
        return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, k)))

    def number() -> str:
        digits = lambda k: "".join(rnd.choice("0123456789") for _ in range(k))  # noqa: E731
        out = rnd.choice(["", "+", "-"]) + rnd.choice(["", "0", "00"]) + digits(rnd.randint(0, 5))
        if rnd.random() < 0.5:
            out += "." + digits(rnd.randint(0, 4))
        if rnd.random() < 0.4:
            out += rnd.choice("EDed") + rnd.choice(["", "+", "-"]) + str(rnd.randint(0, 400))
        return out

    accepted = 0
    for _ in range(4000):
        kind = rnd.random()
        if kind < 0.5:
            value = " " * rnd.randint(0, 3) + "'" + text(12) + "'" + text(8)
        elif kind < 0.85:
            value = " " * rnd.randint(0, 20) + number() + text(5)
        else:
            value = " " * rnd.randint(0, 20) + rnd.choice("TFtf") + text(5)
        card = ("KEY     = " + value)[:80].ljust(80)
        try:
            mine = _card_value(card)
        except NotSimpleFITS:
            continue
        accepted += 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            theirs = fits.Card.fromstring(card)
            assert theirs.keyword == "KEY", card
            assert type(mine) is type(theirs.value), card
            assert mine == theirs.value, card
    assert accepted > 400


# ---------------------------------------------------------------- not a regular file

@pytest.mark.timeout(20)
@pytest.mark.parametrize("reader", ["gaia_eso", "marvels", "phoenix_wave", "fits_problem"])
def test_a_fifo_named_like_a_fits_file_is_refused_at_once(tmp_path, reader):
    import os

    from starlabels.io.fitstools import fits_problem
    from starlabels.io.gaia_eso import read_ges_spectrum
    from starlabels.io.marvels import read_marvels_plate
    from starlabels.io.phoenix import read_phoenix_wave
    from starlabels.io.spectrum import SpectrumFormatError

    fifo = tmp_path / "star_HR10.fits"
    os.mkfifo(fifo)                     # nobody ever writes into it: opening it would block
    if reader == "fits_problem":
        assert fits_problem(fifo) == "cannot read it (a FIFO, not a regular file)"
        return
    read = {"gaia_eso": read_ges_spectrum, "marvels": read_marvels_plate,
            "phoenix_wave": read_phoenix_wave}[reader]
    with pytest.raises(SpectrumFormatError, match="a FIFO, not a regular file"):
        read(fifo)
