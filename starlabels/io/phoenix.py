"""PHOENIX-ACES-AGSS-COND-2011 HiRes synthetic spectra (Husser et al. 2013), as served at
``https://phoenix.astro.physik.uni-goettingen.de/data/HiResFITS/``.

Layout of the real files (and of what the writers here produce):

``WAVE_PHOENIX-ACES-AGSS-COND-2011.fits``
    primary HDU = 1-D float64 image of VACUUM wavelengths in Angstrom, shared by every
    spectrum of the grid (the spectra carry no wavelength axis of their own).
``PHOENIX-ACES-AGSS-COND-2011/Z-0.0/lte05800-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits``
    HDU0 = 1-D float32 flux image, BUNIT 'erg/s/cm^2/cm' (flux per cm of wavelength), header
    PHXTEFF, PHXLOGG, PHXM_H, PHXALPHA; HDU1 = abundance table. Models that are the result of an
    interpolation carry INTERPOL = T (the grid's "Info on spectra" page).

The grid's documented keywords do not include a unit, and files are met without one: a WAVE
file without BUNIT/UNIT, and interpolated models without BUNIT. Those are read with the
product's published conventions (Husser et al. 2013; the grid's documentation): wavelengths in
Angstrom, vacuum; flux in erg/s/cm^2/cm. Each such file is named in a :class:`ConventionWarning`
(the job's log). A model that is not interpolated and has no BUNIT is still refused: nothing says
that its flux follows the grid's convention.

File names: ``lte{Teff:05d}-{logg:.2f}{Z}{A}``, Z = ``-0.0`` for solar (the grid's own
spelling), ``+0.5``, ``-1.0`` ...; A = '' for alpha = 0, else ``.Alpha=+0.40``. The metallicity
directory is ``Z{Z}{A}``.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..artifacts import atomic_path
from .fitstools import open_fits
from .spectrum import ConventionWarning, Spectrum, SpectrumFormatError

__all__ = [
    "WAVE_FILENAME", "PHOENIX_SUFFIX", "phoenix_relpath", "parse_phoenix_filename",
    "write_phoenix_wave", "write_phoenix_spectrum", "read_phoenix_wave",
    "read_phoenix_spectrum", "default_abundances", "SYNTHETIC_IVAR", "PUBLISHED_WAVE_UNIT",
    "PUBLISHED_FLUX_UNIT",
]

WAVE_FILENAME = "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits"
PHOENIX_SUFFIX = ".PHOENIX-ACES-AGSS-COND-2011-HiRes.fits"

# Synthetic spectra are noiseless. A large FINITE inverse variance keeps weighted sums and
# chi-squares finite (np.inf would turn 0*inf into NaN downstream).
SYNTHETIC_IVAR = 1e20

_FILENAME_RE = re.compile(
    r"^lte(?P<teff>\d{5})-(?P<logg>\d+\.\d{2})(?P<z>[+-]\d+\.\d)"
    r"(?:\.Alpha=(?P<alpha>[+-]\d+\.\d{2}))?" + re.escape(PHOENIX_SUFFIX) + r"$")

# Solar log eps of the AGSS09 mixture (Asplund, Grevesse, Sauval & Scott 2009) the grid uses.
_AGSS09_SOLAR = {"H": 12.00, "Fe": 7.50, "Mg": 7.60, "Al": 6.45, "Ca": 6.34}
_ALPHA_ELEMENTS = {"Mg", "Ca"}

#: what the grid's publication and documentation say its files hold when a unit keyword is
#: missing: vacuum wavelengths in Angstrom, flux density per cm of wavelength
PUBLISHED_WAVE_UNIT = "Angstrom"
PUBLISHED_FLUX_UNIT = "erg/s/cm^2/cm"

_WAVE_UNIT_TO_ANGSTROM = {
    "angstrom": 1.0, "angstroms": 1.0, "aa": 1.0, "\u00e5": 1.0,
    "nm": 10.0, "nanometer": 10.0, "nanometers": 10.0,
    "um": 1e4, "micron": 1e4, "microns": 1e4, "micrometer": 1e4,
}
# Flux-density units -> factor to erg/s/cm^2/Angstrom (1 cm = 1e8 Angstrom, hence 1e-8).
_FLUX_UNIT_TO_PER_ANGSTROM = {
    "erg/s/cm^2/cm": 1e-8, "erg/s/cm2/cm": 1e-8, "erg/s/cm**2/cm": 1e-8,
    "erg/s/cm^3": 1e-8, "erg/s/cm3": 1e-8, "erg.s**-1.cm**-3": 1e-8,
    "erg/s/cm^2/angstrom": 1.0, "erg/s/cm2/angstrom": 1.0, "erg/s/cm**2/angstrom": 1.0,
    "erg.s**-1.cm**-2.angstrom**-1": 1.0,
}


# ---------------------------------------------------------------- file names

def _checked(value: float, decimals: int, what: str) -> float:
    """``value`` rounded to the decimals the file name shows; refuse values it would alter
    (0.25 would silently become '+0.2' and fetch the wrong model)."""
    value = float(value)
    rounded = round(value, decimals)
    if not math.isfinite(value) or abs(rounded - value) > 1e-6:
        raise ValueError(f"{what}={value!r} cannot be written with {decimals} decimal(s) in a "
                         f"PHOENIX file name")
    return rounded


def _z_string(fe_h: float) -> str:
    """'-0.0' for solar (the grid's spelling), else signed with one decimal: '+0.5', '-1.0'."""
    fe_h = _checked(fe_h, 1, "fe_h")
    return "-0.0" if fe_h == 0 else f"{fe_h:+.1f}"


def _alpha_string(alpha: float) -> str:
    """'' for alpha = 0, else '.Alpha=+0.40' / '.Alpha=-0.20'."""
    alpha = _checked(alpha, 2, "alpha")
    return "" if alpha == 0 else f".Alpha={alpha:+.2f}"


def phoenix_relpath(teff: float, logg: float, fe_h: float, alpha: float = 0.0) -> str:
    """Path of a HiRes spectrum below ``.../HiResFITS/PHOENIX-ACES-AGSS-COND-2011/``.

    >>> phoenix_relpath(5800, 4.5, 0.0)
    'Z-0.0/lte05800-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits'
    >>> phoenix_relpath(5800, 4.5, -1.0, 0.4)
    'Z-1.0.Alpha=+0.40/lte05800-4.50-1.0.Alpha=+0.40.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits'
    """
    teff_k = _checked(teff, 0, "teff")
    if not 0 < teff_k < 100000:
        raise ValueError(f"teff={teff!r} does not fit the 5-digit PHOENIX name")
    logg = _checked(logg, 2, "logg")
    if logg < 0:
        raise ValueError(f"logg={logg!r}: the grid (and its naming) has log g >= 0")
    z, a = _z_string(fe_h), _alpha_string(alpha)
    return f"Z{z}{a}/lte{int(teff_k):05d}-{logg:.2f}{z}{a}{PHOENIX_SUFFIX}"


def parse_phoenix_filename(name: str | os.PathLike) -> dict[str, float]:
    """Inverse of :func:`phoenix_relpath` on the file name (any directory part is ignored):
    returns dict(teff, logg, fe_h, alpha). Raises ValueError for names not in the grid's form."""
    base = Path(name).name
    match = _FILENAME_RE.match(base)
    if match is None:
        raise ValueError(f"{base!r} is not a PHOENIX-ACES-AGSS-COND-2011 HiRes file name")
    fe_h = float(match["z"])
    return {"teff": float(match["teff"]), "logg": float(match["logg"]),
            "fe_h": 0.0 if fe_h == 0 else fe_h,
            "alpha": float(match["alpha"]) if match["alpha"] else 0.0}


# ---------------------------------------------------------------- writers

def write_phoenix_wave(path: str | os.PathLike, wavelength_vacuum) -> None:
    """Write the grid's wavelength file: primary 1-D float64 image, Angstrom, vacuum."""
    wavelength_vacuum = np.asarray(wavelength_vacuum, dtype=np.float64)
    if wavelength_vacuum.ndim != 1 or wavelength_vacuum.size < 2:
        raise ValueError(f"wavelength_vacuum must be 1-D with >= 2 pixels, "
                         f"got {wavelength_vacuum.shape}")
    if not (np.all(np.isfinite(wavelength_vacuum)) and np.all(np.diff(wavelength_vacuum) > 0)):
        raise ValueError("wavelength_vacuum must be finite and strictly increasing")
    hdu = fits.PrimaryHDU(wavelength_vacuum)
    hdu.header["BUNIT"] = ("Angstrom", "Wavelength unit")
    hdu.header.add_comment("Wavelengths in VACUUM, shared by every HiRes spectrum of the grid.")
    with atomic_path(path) as tmp:
        fits.HDUList([hdu]).writeto(tmp, checksum=True)


def default_abundances(fe_h: float, alpha: float = 0.0) -> dict[str, float]:
    """log eps of H, Fe, Mg, Al, Ca: AGSS09 solar scaled by [Fe/H], plus [alpha/Fe] for Mg, Ca."""
    out = {}
    for element, solar in _AGSS09_SOLAR.items():
        if element == "H":
            out[element] = solar
        else:
            out[element] = solar + fe_h + (alpha if element in _ALPHA_ELEMENTS else 0.0)
    return out


def write_phoenix_spectrum(path: str | os.PathLike, flux, *, teff: float, logg: float,
                           fe_h: float, alpha: float = 0.0,
                           abundances: dict[str, float] | None = None) -> None:
    """Write one HiRes spectrum: HDU0 float32 flux in erg/s/cm^2/cm (per cm, like the grid)
    with PHXTEFF/PHXLOGG/PHXM_H/PHXALPHA; HDU1 'ABUNDANCES' table (ELEMENT, LOGEPS) holding
    ``abundances`` or, by default, :func:`default_abundances`."""
    flux = np.asarray(flux, dtype=np.float32)
    if flux.ndim != 1 or flux.size < 2:
        raise ValueError(f"flux must be 1-D with >= 2 pixels, got {flux.shape}")
    primary = fits.PrimaryHDU(flux)
    h = primary.header
    h["BUNIT"] = ("erg/s/cm^2/cm", "Unit of flux")
    h["PHXTEFF"] = (float(teff), "[K] effective temperature")
    h["PHXLOGG"] = (float(logg), "[cm/s^2] log (surface gravity)")
    h["PHXM_H"] = (float(fe_h), "[M/H] metallicity (rel. sol. - Asplund &a 2009)")
    h["PHXALPHA"] = (float(alpha), "[a/M] alpha element enhancement")
    h.add_comment(f"Wavelengths (vacuum, Angstrom) are in {WAVE_FILENAME}")

    abundances = default_abundances(float(fe_h), float(alpha)) if abundances is None \
        else dict(abundances)
    elements = [str(e) for e in abundances]
    width = max([len(e) for e in elements] + [1])
    table = fits.BinTableHDU.from_columns([
        fits.Column(name="ELEMENT", format=f"{width}A", array=np.array(elements, f"S{width}")),
        fits.Column(name="LOGEPS", format="E", unit="dex",
                    array=np.array([float(v) for v in abundances.values()], np.float32)),
    ], name="ABUNDANCES")
    with atomic_path(path) as tmp:
        fits.HDUList([primary, table]).writeto(tmp, checksum=True)


# ---------------------------------------------------------------- readers

def _unit_keyword(header: fits.Header) -> str | None:
    """BUNIT, or the non-standard UNIT some grid files use."""
    for key in ("BUNIT", "UNIT"):
        value = header.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _primary_vector(hdul: fits.HDUList, path: Path) -> np.ndarray:
    """The primary HDU's data as a 1-D float64 array."""
    data = hdul[0].data
    if data is None:
        raise SpectrumFormatError(path, "primary HDU has no data")
    values = np.asarray(data, dtype=np.float64)
    if values.ndim != 1 or values.size < 2:
        raise SpectrumFormatError(path, f"primary HDU holds shape {values.shape}, expected a "
                                        f"1-D array")
    return values


def read_phoenix_wave(path: str | os.PathLike) -> np.ndarray:
    """The grid's wavelengths in Angstrom (vacuum) from the WAVE file.

    BUNIT (or UNIT) may be Angstrom, nm or um and is converted; without either the published
    convention (Angstrom, vacuum) is used and a :class:`ConventionWarning` names the file.
    Another unit, non-finite or non-increasing values are a :class:`SpectrumFormatError`.
    """
    path = Path(path)
    with open_fits(path) as hdul:
        unit = _unit_keyword(hdul[0].header)
        wavelength = _primary_vector(hdul, path)
    if unit is None:
        warnings.warn(f"{path}: no BUNIT/UNIT keyword; wavelengths read with the PHOENIX "
                      f"HiRes convention ({PUBLISHED_WAVE_UNIT}, vacuum)", ConventionWarning,
                      stacklevel=2)
        unit = PUBLISHED_WAVE_UNIT
    scale = _WAVE_UNIT_TO_ANGSTROM.get(unit.lower())
    if scale is None:
        raise SpectrumFormatError(path, f"unknown wavelength unit {unit!r} (expected Angstrom, "
                                        f"nm or um)")
    if not np.all(np.isfinite(wavelength)):
        raise SpectrumFormatError(path, "wavelengths contain non-finite values")
    if not np.all(np.diff(wavelength) > 0):
        raise SpectrumFormatError(path, "wavelengths are not strictly increasing")
    return wavelength * scale


def _phx_keyword(header: fits.Header, key: str, path: Path) -> float:
    """A required numeric PHX* keyword."""
    value = header.get(key)
    if value is None:
        raise SpectrumFormatError(path, f"missing header keyword {key}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SpectrumFormatError(path, f"header keyword {key}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise SpectrumFormatError(path, f"header keyword {key}={value!r} is not finite")
    return number


def read_phoenix_spectrum(path: str | os.PathLike, wavelength_vacuum) -> Spectrum:
    """One HiRes spectrum on the grid's ``wavelength_vacuum`` (Å, from :func:`read_phoenix_wave`).

    The flux is converted from per cm to per Angstrom (x1e-8 for BUNIT 'erg/s/cm^2/cm'), so it
    is in erg/s/cm^2/Angstrom. An interpolated model (INTERPOL = T) without BUNIT is read in
    the grid's published unit, erg/s/cm^2/cm, with a :class:`ConventionWarning`; any other model
    without BUNIT is a :class:`SpectrumFormatError`. The model is noiseless: ivar = :data:`SYNTHETIC_IVAR` (1e20)
    where the flux is finite, 0 (and mask True) where it is not. medium='vacuum', rv_kms=0,
    star_id = spectrum_id = file stem; meta holds teff, logg, fe_h, alpha from PHXTEFF, PHXLOGG,
    PHXM_H, PHXALPHA (each required).
    """
    path = Path(path)
    wavelength = np.asarray(wavelength_vacuum, dtype=np.float64)
    if wavelength.ndim != 1:
        raise ValueError(f"wavelength_vacuum must be 1-D, got shape {wavelength.shape}")
    with open_fits(path) as hdul:
        header = hdul[0].header
        unit = _unit_keyword(header)
        flux = _primary_vector(hdul, path)
        meta = {"teff": _phx_keyword(header, "PHXTEFF", path),
                "logg": _phx_keyword(header, "PHXLOGG", path),
                "fe_h": _phx_keyword(header, "PHXM_H", path),
                "alpha": _phx_keyword(header, "PHXALPHA", path)}
        interpolated = header.get("INTERPOL") is True
    if unit is None and interpolated:
        warnings.warn(f"{path}: interpolated model (INTERPOL = T) without BUNIT; flux read in "
                      f"the PHOENIX HiRes unit {PUBLISHED_FLUX_UNIT}", ConventionWarning,
                      stacklevel=2)
        unit = PUBLISHED_FLUX_UNIT
    if unit is None:
        raise SpectrumFormatError(path, "no BUNIT keyword: unknown flux unit (only interpolated "
                                        "models, INTERPOL = T, are read with the grid's "
                                        "published unit)")
    scale = _FLUX_UNIT_TO_PER_ANGSTROM.get(unit.lower().replace(" ", ""))
    if scale is None:
        raise SpectrumFormatError(path, f"unknown flux unit {unit!r} (expected erg/s/cm^2/cm "
                                        f"or erg/s/cm^2/Angstrom)")
    if flux.size != wavelength.size:
        raise SpectrumFormatError(path, f"flux has {flux.size} pixels but the wavelength grid "
                                        f"has {wavelength.size}: wrong WAVE file?")
    flux = flux * scale
    bad = ~np.isfinite(flux)
    ivar = np.where(bad, 0.0, SYNTHETIC_IVAR)
    return Spectrum(spectrum_id=path.stem, star_id=path.stem, setup="PHOENIX-HiRes",
                    wavelength=wavelength, flux=flux, ivar=ivar, mask=bad, medium="vacuum",
                    rv_kms=0.0, path=str(path), meta=meta)
