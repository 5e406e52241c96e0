"""What the archive formats' FITS readers and writers share (astropy): opening a file so every
failure names it, finding tables and columns, wavelength units, text and catalogue columns.

Readers raise :class:`~starlabels.io.spectrum.SpectrumFormatError` for anything a file gets
wrong; the normalize stage records such a file in its rejects table.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
from astropy.io import fits

from .spectrum import SpectrumFormatError


# FITS wavelength units we accept, and the factor that turns them into Angstrom. Anything else
# (including the ambiguous 'A', which FITS reads as ampere) is refused rather than guessed.
WAVELENGTH_UNIT_TO_ANGSTROM = {
    "nm": 10.0, "nanometer": 10.0, "nanometers": 10.0,
    "angstrom": 1.0, "angstroms": 1.0, "aa": 1.0, "\u00e5": 1.0, "0.1nm": 1.0,
}


# astropy warnings on open that mean the file is damaged, not merely non-standard
FATAL_OPEN_WARNINGS = ("truncated", "corrupt", "Error validating header")


def safe_name_part(text: str, what: str) -> str:
    """Map ``text`` onto the characters [A-Za-z0-9._+-] with no leading dots.

    Every other character (path separators included) becomes '_', so the result can never
    leave the folder it is joined to, nor be a hidden file or '.'/'..'.
    """
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", str(text)).lstrip(".")
    if not safe:
        raise ValueError(f"{what} {text!r} leaves nothing usable for a file name")
    return safe


def open_regular(path: str | os.PathLike):
    """``open(path, "rb")`` for a regular file only: a FIFO, device or socket named like a FITS
    file would block a reader for ever (or read without end). Raises OSError naming the kind."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of waiting
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
            raise OSError(errno.EINVAL, f"{kind}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_fits_size(path: Path) -> None:
    """Refuse empty files and uncompressed FITS whose size is not a whole number of 2880-byte
    blocks: astropy reads some truncated files silently, dropping or shortening the last HDU.
    Anything but a regular file is refused too (a FIFO would block the reader for ever)."""
    try:
        with open_regular(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            magic = fh.read(6)
    except OSError as exc:
        raise SpectrumFormatError(path, f"cannot open file ({exc.strerror or exc})") from exc
    if size == 0:
        raise SpectrumFormatError(path, "empty file")
    if magic == b"SIMPLE" and size % 2880 != 0:
        raise SpectrumFormatError(path, f"file size {size} bytes is not a multiple of the FITS "
                                        f"block size 2880: truncated or corrupt")


def fits_problem(path: str | os.PathLike) -> str | None:
    """What keeps ``path`` from being a plain FITS file, or None when it looks like one: a
    regular file whose first card is ``SIMPLE  =                    T`` and whose size is a whole
    number of 2880-byte blocks. Every file the pipeline downloads is such a file, so the download
    engine refuses anything else (an HTML error page served with status 200, a cut transfer)
    instead of storing it as verified."""
    try:
        with open_regular(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(80)
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    if size == 0:
        return "empty file"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data, not a plain FITS file"
    if not head.startswith(b"SIMPLE  ="):
        text = head[:40].decode("ascii", errors="replace")
        if head.lstrip().startswith(b"<"):
            return f"an HTML or XML document, not a FITS file (it starts {text!r})"
        return f"not a FITS file: it does not start with the card SIMPLE = T (it starts {text!r})"
    if head[29:30] != b"T":
        return "SIMPLE is not T: not a standard FITS file"
    if size % 2880:
        return (f"size {size} bytes is not a whole number of 2880-byte FITS blocks: cut short "
                f"or not FITS")
    return None


@contextlib.contextmanager
def open_fits(path: Path) -> Iterator[fits.HDUList]:
    """Open a FITS file for reading; turn every astropy/numpy failure inside the block into a
    :class:`SpectrumFormatError` naming the file (data are read lazily, so a corrupt data unit
    fails only when the block touches it)."""
    check_fits_size(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
    except Exception as exc:  # astropy raises OSError, ValueError, TypeError, ... on junk
        raise SpectrumFormatError(path, f"not a readable FITS file ({type(exc).__name__}: "
                                        f"{exc})") from exc
    for warning in caught:
        # astropy only warns about a file cut on a block boundary and drops the broken HDU
        if any(word in str(warning.message) for word in FATAL_OPEN_WARNINGS):
            hdul.close()
            raise SpectrumFormatError(path, f"truncated or corrupt FITS file "
                                            f"({str(warning.message).splitlines()[0]})")
        warnings.warn_explicit(warning.message, warning.category, warning.filename,
                               warning.lineno)
    try:
        with content_errors(path):
            yield hdul
    finally:
        hdul.close()


@contextlib.contextmanager
def content_errors(path: Path) -> Iterator[None]:
    """Any astropy/numpy failure inside the block becomes a :class:`SpectrumFormatError`."""
    try:
        yield
    except SpectrumFormatError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, EOFError) as exc:
        raise SpectrumFormatError(path, f"corrupt FITS content ({type(exc).__name__}: "
                                        f"{exc})") from exc


def table_hdu(hdul: fits.HDUList, path: Path, index: int = 1) -> fits.BinTableHDU:
    """The binary table at ``index``; missing HDU or a non-table there is a format error."""
    if len(hdul) <= index:
        raise SpectrumFormatError(path, f"missing HDU {index}: file has only {len(hdul)} HDU(s)")
    hdu = hdul[index]
    if not isinstance(hdu, fits.BinTableHDU):
        raise SpectrumFormatError(path, f"HDU {index} is a {type(hdu).__name__}, "
                                        f"expected a binary table")
    return hdu


def column_lookup(hdu: fits.BinTableHDU, path: Path) -> dict[str, str]:
    """Map upper-case column name -> name as stored (TAP output may be lower case)."""
    return name_lookup(hdu.columns.names, path)


def name_lookup(names: Sequence[str], path: Path) -> dict[str, str]:
    """:func:`column_lookup` for a list of column names."""
    lookup: dict[str, str] = {}
    for name in names:
        key = name.strip().upper()
        if key in lookup:
            raise SpectrumFormatError(path, f"columns {lookup[key]!r} and {name!r} differ only "
                                            f"in case")
        lookup[key] = name
    return lookup


def wavelength_scale(unit: str | None, path: Path, column: str) -> float:
    """Factor from the stored wavelength unit to Angstrom; unknown or missing unit is an error."""
    if unit is None or not str(unit).strip():
        raise SpectrumFormatError(path, f"column {column} has no TUNIT; cannot tell nm from "
                                        f"Angstrom")
    key = str(unit).strip().lower()
    if key not in WAVELENGTH_UNIT_TO_ANGSTROM:
        raise SpectrumFormatError(path, f"unknown wavelength unit {unit!r} in column {column} "
                                        f"(expected nm or Angstrom)")
    return WAVELENGTH_UNIT_TO_ANGSTROM[key]


def as_text(values: np.ndarray) -> np.ndarray:
    """FITS string column -> object array of stripped ``str`` (bytes decoded as ASCII)."""
    out = []
    for v in np.asarray(values).ravel():
        if isinstance(v, (bytes, np.bytes_)):
            v = v.decode("ascii", errors="replace")
        out.append(str(v).strip())
    return np.array(out, dtype=object)


def string_column(name: str, values) -> fits.Column:
    """A fixed-width ASCII string column; missing values (None/NaN) become ''."""
    text = ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
            for v in values]
    for t in text:
        if not t.isascii():
            raise ValueError(f"column {name}: FITS strings must be ASCII, got {t!r}")
    width = max([len(t) for t in text] + [1])
    return fits.Column(name=name, format=f"{width}A", array=np.array(text, dtype=f"S{width}"))


def catalog_hdu(table: pd.DataFrame, spec: dict[str, tuple[str, str | None]],
                 required: Sequence[str], extname: str, what: str) -> fits.BinTableHDU:
    """A catalogue table HDU from ``table`` whose columns must all be described in ``spec``
    (name → (TFORM, unit)); the Gaia-ESO and MARVELS catalogue writers build theirs with it."""
    missing = [c for c in required if c not in table.columns]
    unknown = [c for c in table.columns if c not in spec]
    if missing or unknown:
        raise ValueError(f"{what}: missing required columns {missing}, unknown columns "
                         f"{unknown}")
    columns = []
    for name, (fmt, unit) in spec.items():
        if name not in table.columns:
            continue
        if fmt == "A":
            columns.append(string_column(name, table[name].tolist()))
        else:
            values = pd.to_numeric(table[name], errors="raise").to_numpy(dtype=np.float64)
            columns.append(fits.Column(name=name, format=fmt, unit=unit, array=values))
    return fits.BinTableHDU.from_columns(columns, name=extname)
