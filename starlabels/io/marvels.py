"""SDSS-III MARVELS (DR12)-like files: per-plate 1-D spectra and the marvelsStar catalog.

The real internal layout of ``star1d_{plate}.fits`` is UNVERIFIED, so this module declares its
own and validates it strictly on read. A real archive file that does not follow it is refused
with a :class:`SpectrumFormatError` that says which rule it broke, never half-read.

starlabels MARVELS star1d layout v1
-----------------------------------
File name ``star1d_{plate}.fits`` (plate reduced to [A-Za-z0-9._+-]).

Primary HDU, header only:
    LAYOUT  = 'starlabels-star1d-v1'   (required, exact)
    PLATE   = plate name (string, non-empty)
    NSTARS  = number of distinct STARNAME values in HDU1
    NBEAMS  = number of rows in HDU1 (the interferometer gives 2 beams per star: 120 for 60)
    RESOLUT = resolving power R (float > 0)
    MEDIUM  = 'air' or 'vacuum' (the writer writes 'air')
HDU1, EXTNAME 'STAR1D', binary table, one row per beam, every array column the same width:
    STARNAME  string            target name (non-empty)
    BEAM      int16             beam number; (STARNAME, BEAM) unique
    WAVE      float64 array     TUNIT 'Angstrom' (nm accepted and converted); per row either
                                all NaN (dead beam) or finite and strictly increasing
    FLUX      float32 array     any linear unit
    IVAR      float32 array     inverse variance of FLUX
    MASK      int16 array       nonzero = bad pixel
    SNR       float32           median S/N of the beam
    VRAD      float32           TUNIT 'km/s', radial velocity (spectrum is in the observed frame)

Catalog: a FITS binary table like DR12 marvelsStar (column names compared case-insensitively:
the archive spells them STARNAME, Plate, Teff, Teff_E, log_g, log_g_E, FeH, FeH_E, RPM_LOG_g).
RPM_LOG_g is the luminosity class from the reduced-proper-motion diagram; the DR12 schema
documents its values as Mainseq / Giant / Refstar, Refstar meaning a known planet host (a
reference target, not a luminosity class). The reader maps them, case-insensitively, onto
``rpm_class`` 'dwarf' / 'giant' / 'planet_host' ('' where the call is empty); the simulator's
own vocabulary, dwarf / giant, reads the same. Any other value is refused.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from ..artifacts import atomic_path
from .fitsfast import write_fits
from .fitstools import (as_text, catalog_hdu, column_lookup, open_fits, safe_name_part,
                        string_column, table_hdu, wavelength_scale)
from .spectrum import Spectrum, SpectrumFormatError

__all__ = [
    "LAYOUT", "marvels_plate_filename", "write_marvels_plate", "read_marvels_plate",
    "write_marvels_star_catalog", "read_marvels_star_catalog", "MARVELS_CATALOG_COLUMNS",
    "RPM_DWARF", "RPM_GIANT", "RPM_PLANET_HOST", "RPM_VOCABULARY",
]

LAYOUT = "starlabels-star1d-v1"
_EXTNAME = "STAR1D"
_ARRAY_COLUMNS = ("WAVE", "FLUX", "IVAR", "MASK")
_TABLE_COLUMNS = ("STARNAME", "BEAM") + _ARRAY_COLUMNS + ("SNR", "VRAD")
_KMS_UNITS = {"km/s", "km.s**-1", "km s-1", "km.s-1", "km/sec"}
# SDSS catalogs write -9999 (or -999) for "no value"; no real label is that negative.
_SDSS_MISSING_BELOW = -999.0


def marvels_plate_filename(plate: str) -> str:
    """``star1d_{plate}.fits`` with the plate name reduced to [A-Za-z0-9._+-]."""
    return f"star1d_{safe_name_part(plate, 'plate')}.fits"


# ---------------------------------------------------------------- plate writer

def _beam_arrays(row: dict, index: int) -> tuple[np.ndarray, ...]:
    """wavelength, flux, ivar, mask of one row dict, checked for shape and wavelength order."""
    wavelength = np.asarray(row["wavelength"], dtype=np.float64)
    flux = np.asarray(row["flux"], dtype=np.float32)
    ivar = np.asarray(row["ivar"], dtype=np.float32)
    mask = row.get("mask")
    mask = (np.zeros(wavelength.shape, np.int16) if mask is None
            else np.asarray(mask).astype(np.int16))
    if wavelength.ndim != 1 or wavelength.size < 2:
        raise ValueError(f"row {index}: wavelength must be 1-D with >= 2 pixels")
    for name, array in (("flux", flux), ("ivar", ivar), ("mask", mask)):
        if array.shape != wavelength.shape:
            raise ValueError(f"row {index}: {name} has shape {array.shape}, wavelength has "
                             f"{wavelength.shape}")
    if not np.all(np.isnan(wavelength)) and not (
            np.all(np.isfinite(wavelength)) and np.all(np.diff(wavelength) > 0)):
        raise ValueError(f"row {index}: wavelength must be all NaN or finite and increasing")
    return wavelength, flux, ivar, mask


def write_marvels_plate(path: str | os.PathLike, plate: str, rows: list[dict],
                        resolution: float) -> None:
    """Write one plate in layout v1 (atomically).

    Each row dict: starname, beam, wavelength (Å, air), flux, ivar, mask (optional, nonzero =
    bad), snr, vrad_kms. All rows must have the same number of pixels (fixed-width columns).
    """
    if not rows:
        raise ValueError("a plate needs at least one beam")
    if not (math.isfinite(float(resolution)) and float(resolution) > 0):
        raise ValueError(f"resolution must be finite and > 0, got {resolution!r}")
    arrays = [_beam_arrays(row, i) for i, row in enumerate(rows)]
    widths = {a[0].size for a in arrays}
    if len(widths) != 1:
        raise ValueError(f"all beams must have the same number of pixels, got {sorted(widths)}")
    npix = widths.pop()
    starnames = [str(row["starname"]) for row in rows]
    beams = [int(row["beam"]) for row in rows]
    if any(not s.strip() for s in starnames):
        raise ValueError("every row needs a non-empty starname")
    if len(set(zip(starnames, beams))) != len(rows):
        raise ValueError("(starname, beam) pairs must be unique")

    primary = fits.PrimaryHDU()
    h = primary.header
    h["LAYOUT"] = (LAYOUT, "starlabels MARVELS star1d layout")
    h["PLATE"] = (str(plate), "Plate name")
    h["NSTARS"] = (len(set(starnames)), "Number of stars on the plate")
    h["NBEAMS"] = (len(rows), "Number of beams (rows of HDU1)")
    h["RESOLUT"] = (float(resolution), "Resolving power R")
    h["MEDIUM"] = ("air", "Wavelength medium")
    h["TELESCOP"] = ("SDSS 2.5m", "Telescope")
    h["INSTRUME"] = ("MARVELS", "Instrument")

    stacked = [np.stack([a[k] for a in arrays]) for k in range(4)]
    columns = [
        string_column("STARNAME", starnames),
        fits.Column(name="BEAM", format="I", array=np.array(beams, np.int16)),
        fits.Column(name="WAVE", format=f"{npix}D", unit="Angstrom", array=stacked[0]),
        fits.Column(name="FLUX", format=f"{npix}E", array=stacked[1]),
        fits.Column(name="IVAR", format=f"{npix}E", array=stacked[2]),
        fits.Column(name="MASK", format=f"{npix}I", array=stacked[3]),
        fits.Column(name="SNR", format="E",
                    array=np.array([float(r["snr"]) for r in rows], np.float32)),
        fits.Column(name="VRAD", format="E", unit="km/s",
                    array=np.array([float(r["vrad_kms"]) for r in rows], np.float32)),
    ]
    table = fits.BinTableHDU.from_columns(columns, name=_EXTNAME)
    # astropy byte-swaps array columns element by element (~40 ms a spectrum); write_fits
    # writes the same header and records directly (see fitsfast)
    write_fits(path, primary, table)


# ---------------------------------------------------------------- plate reader

def _plate_header(header: fits.Header, path: Path) -> dict:
    """Validate the primary header of layout v1 and return its values."""
    layout = header.get("LAYOUT")
    if layout != LAYOUT:
        raise SpectrumFormatError(path, f"LAYOUT is {layout!r}, expected {LAYOUT!r}: not a "
                                        f"starlabels star1d v1 file")
    plate = header.get("PLATE")
    if not isinstance(plate, str) or not plate.strip():
        raise SpectrumFormatError(path, f"PLATE must be a non-empty string, got {plate!r}")
    values = {"plate": plate.strip()}
    for key in ("NSTARS", "NBEAMS"):
        value = header.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise SpectrumFormatError(path, f"{key} must be a positive integer, got {value!r}")
        values[key.lower()] = int(value)
    resolution = header.get("RESOLUT")
    if isinstance(resolution, bool) or not isinstance(resolution, (int, float)) \
            or not math.isfinite(resolution) or resolution <= 0:
        raise SpectrumFormatError(path, f"RESOLUT must be a positive number, got {resolution!r}")
    values["resolution"] = float(resolution)
    medium = header.get("MEDIUM")
    if medium not in ("air", "vacuum"):
        raise SpectrumFormatError(path, f"MEDIUM must be 'air' or 'vacuum', got {medium!r}")
    values["medium"] = medium
    return values


def _vrad_scale(unit: str | None, path: Path) -> float:
    """Factor to km/s for the VRAD column (km/s or m/s); anything else is an error."""
    text = (unit or "").strip().lower()
    if text in _KMS_UNITS:
        return 1.0
    if text in {"m/s", "m.s**-1", "m s-1"}:
        return 1e-3
    raise SpectrumFormatError(path, f"unknown VRAD unit {unit!r} (expected km/s)")


def _check_wavelength_rows(wavelength: np.ndarray, path: Path) -> None:
    """Each beam's wavelengths: all NaN (dead beam, passed on) or finite and increasing."""
    for i, row in enumerate(wavelength):
        if np.all(np.isnan(row)):
            continue
        if not np.all(np.isfinite(row)):
            raise SpectrumFormatError(path, f"row {i}: WAVE mixes finite and non-finite values")
        if not np.all(np.diff(row) > 0):
            raise SpectrumFormatError(path, f"row {i}: WAVE is not strictly increasing")


def read_marvels_plate(path: str | os.PathLike) -> list[Spectrum]:
    """All beams of a layout-v1 plate file, one :class:`Spectrum` per beam.

    spectrum_id = '{plate}-{starname}-b{beam}', star_id = starname, setup = 'MARVELS'.
    mask = MASK != 0 or non-finite flux; ivar is 0 where it is negative, non-finite or the
    flux is non-finite. Beams whose arrays are all NaN still come back (normalize decides);
    any structural problem raises :class:`SpectrumFormatError` for the whole file.
    """
    path = Path(path)
    with open_fits(path) as hdul:
        head = _plate_header(hdul[0].header, path)
        table = table_hdu(hdul, path, 1)
        if table.name.upper() != _EXTNAME:
            raise SpectrumFormatError(path, f"HDU1 EXTNAME is {table.name!r}, expected "
                                            f"{_EXTNAME!r}")
        lookup = column_lookup(table, path)
        missing = [c for c in _TABLE_COLUMNS if c not in lookup]
        if missing:
            raise SpectrumFormatError(path, f"missing column(s) {missing} in HDU1")
        data = table.data
        nrows = 0 if data is None else len(data)
        if nrows == 0:
            raise SpectrumFormatError(path, "empty table: HDU1 has no rows")
        wave_scale = wavelength_scale(table.columns[lookup["WAVE"]].unit, path, "WAVE")
        vrad_scale = _vrad_scale(table.columns[lookup["VRAD"]].unit, path)
        arrays = {c: np.asarray(data[lookup[c]], dtype=np.float64) for c in _ARRAY_COLUMNS}
        starnames = as_text(data[lookup["STARNAME"]])
        beams = np.asarray(data[lookup["BEAM"]])
        snr = np.asarray(data[lookup["SNR"]], dtype=np.float64)
        vrad = np.asarray(data[lookup["VRAD"]], dtype=np.float64) * vrad_scale

    for name, array in arrays.items():
        if array.ndim != 2 or array.shape[1] < 2:
            raise SpectrumFormatError(path, f"column {name} is not an array column "
                                            f"(per-row shape {array.shape[1:]})")
    widths = {name: a.shape[1] for name, a in arrays.items()}
    if len(set(widths.values())) != 1:
        raise SpectrumFormatError(path, f"array columns have different widths {widths}")
    if not np.issubdtype(beams.dtype, np.integer) or beams.ndim != 1:
        raise SpectrumFormatError(path, f"BEAM must be an integer scalar column, got "
                                        f"{beams.dtype}")
    if snr.ndim != 1 or vrad.ndim != 1:
        raise SpectrumFormatError(path, "SNR and VRAD must be scalar columns")
    if nrows != head["nbeams"]:
        raise SpectrumFormatError(path, f"NBEAMS={head['nbeams']} but HDU1 has {nrows} rows")
    if any(not s for s in starnames):
        raise SpectrumFormatError(path, "a row has an empty STARNAME")
    if len(set(starnames)) != head["nstars"]:
        raise SpectrumFormatError(path, f"NSTARS={head['nstars']} but HDU1 names "
                                        f"{len(set(starnames))} distinct stars")
    if len(set(zip(starnames, beams.tolist()))) != nrows:
        raise SpectrumFormatError(path, "(STARNAME, BEAM) pairs are not unique")
    wavelength = arrays["WAVE"] * wave_scale
    _check_wavelength_rows(wavelength, path)

    spectra = []
    for i in range(nrows):
        flux = arrays["FLUX"][i]
        ivar = arrays["IVAR"][i]
        bad_flux = ~np.isfinite(flux)
        ivar = np.where(np.isfinite(ivar) & (ivar > 0) & ~bad_flux, ivar, 0.0)
        beam = int(beams[i])
        spectra.append(Spectrum(
            spectrum_id=f"{head['plate']}-{starnames[i]}-b{beam}", star_id=starnames[i],
            setup="MARVELS", wavelength=wavelength[i], flux=flux, ivar=ivar,
            mask=(arrays["MASK"][i] != 0) | bad_flux, medium=head["medium"],
            snr=float(snr[i]), rv_kms=float(vrad[i]), resolution=head["resolution"],
            path=str(path), meta={"plate": head["plate"], "beam": beam}))
    return spectra


# ---------------------------------------------------------------- star catalog

# marvelsStar column -> (FITS format, TUNIT)
MARVELS_CATALOG_COLUMNS: dict[str, tuple[str, str | None]] = {
    "STARNAME": ("A", None), "PLATE": ("A", None),
    "TEFF": ("D", "K"), "TEFF_E": ("D", "K"),
    "LOG_G": ("D", "log(cm.s**-2)"), "LOG_G_E": ("D", "dex"),
    "FEH": ("D", "dex"), "FEH_E": ("D", "dex"),
    "RPM_LOG_G": ("A", None),
}
_CATALOG_REQUIRED = ("STARNAME", "TEFF", "LOG_G", "FEH")
# output name -> (catalog column, is text)
_CATALOG_OUTPUT = {
    "star_id": ("STARNAME", True), "plate": ("PLATE", True),
    "teff": ("TEFF", False), "e_teff": ("TEFF_E", False),
    "logg": ("LOG_G", False), "e_logg": ("LOG_G_E", False),
    "fe_h": ("FEH", False), "e_fe_h": ("FEH_E", False),
    "rpm_class": ("RPM_LOG_G", True),
}
#: ``rpm_class`` values: the reduced-proper-motion dwarfs (the fine-tuning sample), giants (the
#: giant candidates) and known planet hosts (DR12's Refstar: no luminosity class given)
RPM_DWARF, RPM_GIANT, RPM_PLANET_HOST = "dwarf", "giant", "planet_host"
#: RPM_LOG_g as written (lower case) -> rpm_class: DR12 marvelsStar and the simulator's words
RPM_VOCABULARY = {"mainseq": RPM_DWARF, "giant": RPM_GIANT, "refstar": RPM_PLANET_HOST,
                  "dwarf": RPM_DWARF, "": ""}


def write_marvels_star_catalog(path: str | os.PathLike, table: pd.DataFrame) -> None:
    """Write a marvelsStar-like catalog (HDU1 'MARVELSSTAR').

    ``table`` uses the column names of :data:`MARVELS_CATALOG_COLUMNS`; STARNAME, TEFF, LOG_G
    and FEH are required, unknown columns are refused. NaN labels are written as NaN.
    """
    hdu = catalog_hdu(table, MARVELS_CATALOG_COLUMNS, _CATALOG_REQUIRED, "MARVELSSTAR",
                       "marvelsStar catalog")
    with atomic_path(path) as tmp:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, checksum=True)


def _catalog_numbers(data, column: fits.Column, path: Path) -> np.ndarray:
    """A label column as float64; NULL (TNULL), NaN and SDSS sentinels (<= -999) -> NaN."""
    raw = np.asarray(data[column.name])
    if not np.issubdtype(raw.dtype, np.number) or raw.ndim != 1:
        raise SpectrumFormatError(path, f"column {column.name} should be numeric, found "
                                        f"{raw.dtype}")
    values = raw.astype(np.float64)
    if column.null is not None and np.issubdtype(raw.dtype, np.integer):
        values[raw == column.null] = np.nan
    values[values <= _SDSS_MISSING_BELOW] = np.nan
    return values


def _catalog_text(data, column: fits.Column) -> np.ndarray:
    """A text column as stripped str; an integer PLATE column is written without '.0'."""
    raw = np.asarray(data[column.name])
    if np.issubdtype(raw.dtype, np.integer):
        return np.array([str(int(v)) for v in raw], dtype=object)
    return as_text(raw)


def _rpm_classes(values: np.ndarray, path: Path) -> np.ndarray:
    """The reduced-proper-motion call as 'dwarf' / 'giant' / 'planet_host' / '' (see
    :data:`RPM_VOCABULARY`); a value outside the vocabulary refuses the table."""
    written = [str(v).strip().lower() for v in values]
    unknown = sorted(set(written) - set(RPM_VOCABULARY))
    if unknown:
        raise SpectrumFormatError(path, f"RPM_LOG_G has values {unknown[:5]}; expected DR12's "
                                        f"Mainseq, Giant or Refstar (or dwarf / giant), or empty")
    return np.array([RPM_VOCABULARY[w] for w in written], dtype=object)


def read_marvels_star_catalog(path: str | os.PathLike) -> pd.DataFrame:
    """Read a marvelsStar-like catalog: star_id, plate, teff, e_teff, logg, e_logg, fe_h,
    e_fe_h, rpm_class.

    Column names match case-insensitively (the archive spells them Teff, log_g, RPM_LOG_g).
    Missing label values (NaN, TNULL, SDSS -9999) come back NaN. STARNAME, TEFF, LOG_G and FEH
    are required; other missing columns become NaN ('' for text) with a warning.
    """
    path = Path(path)
    with open_fits(path) as hdul:
        hdu = table_hdu(hdul, path, 1)
        lookup = column_lookup(hdu, path)
        missing = [c for c in _CATALOG_REQUIRED if c not in lookup]
        if missing:
            raise SpectrumFormatError(path, f"missing required column(s) {missing} (columns: "
                                            f"{sorted(lookup)})")
        data = hdu.data
        nrows = 0 if data is None else len(data)
        if nrows == 0:
            raise SpectrumFormatError(path, "empty table: the catalog has no rows")
        out: dict[str, np.ndarray] = {}
        absent = []
        for name, (stored, is_text) in _CATALOG_OUTPUT.items():
            if stored not in lookup:
                absent.append(stored)
                out[name] = (np.array([""] * nrows, dtype=object) if is_text
                             else np.full(nrows, np.nan))
                continue
            column = hdu.columns[lookup[stored]]
            if is_text:
                out[name] = _catalog_text(data, column)
            else:
                out[name] = _catalog_numbers(data, column, path)
    out["rpm_class"] = _rpm_classes(out["rpm_class"], path)
    if absent:
        warnings.warn(f"{path}: catalog lacks column(s) {absent}; filled with NaN/''",
                      stacklevel=2)
    return pd.DataFrame(out)
