"""Fast writing and reading of one-row (or few-row) FITS binary tables with large array columns.

astropy's writer byte-swaps array columns element by element in Python (tens of ms for one
GIRAFFE spectrum), which dominates simulating or mirroring tens of thousands of files. Here the
headers still come from astropy (so every keyword, TFORM and TUNIT is standard) and only the
data block is written directly: the rows as big-endian bytes, zero-padded to 2880-byte blocks,
as the FITS standard prescribes. The CHECKSUM/DATASUM keywords are computed the same way astropy
does, so files pass ``fitsverify``.

Reading is the mirror image: :func:`read_simple_table` parses the two headers and views the
records with ``np.frombuffer`` (~0.1 ms a spectrum against ~2.4 ms for ``fits.open``, which
builds Card and Column objects). It takes only the plain layout the survey files have and
raises :class:`NotSimpleFITS` for anything else, so callers can fall back to astropy and keep
its results and errors.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from ..artifacts import atomic_path
from .fitstools import open_regular

BLOCK = 2880


def _padded(raw: bytes, fill: bytes = b"\0") -> bytes:
    return raw + fill * ((-len(raw)) % BLOCK)


def _checksum32(data: bytes, sum32: int = 0) -> int:
    """FITS 32-bit ones'-complement checksum (Seaman et al.), vectorised with numpy."""
    words = np.frombuffer(data, dtype=">u4").astype(np.uint64)
    hi = int((words >> np.uint64(16)).sum()) + (sum32 >> 16)
    lo = int((words & np.uint64(0xFFFF)).sum()) + (sum32 & 0xFFFF)
    while (hi >> 16) or (lo >> 16):
        carry_hi, carry_lo = hi >> 16, lo >> 16
        hi = (hi & 0xFFFF) + carry_lo
        lo = (lo & 0xFFFF) + carry_hi
    return ((hi << 16) | lo) & 0xFFFFFFFF


def _with_checksum(header: fits.Header, data_block: bytes) -> bytes:
    """Header bytes with DATASUM and CHECKSUM set so the HDU sums to -0 (ones' complement)."""
    datasum = _checksum32(data_block)
    header["DATASUM"] = (str(datasum), "data unit checksum")
    header["CHECKSUM"] = ("0" * 16, "HDU checksum")
    total = _checksum32(_padded(header.tostring().encode("ascii"), b" "), datasum)
    header["CHECKSUM"] = (_encode(~total & 0xFFFFFFFF), "HDU checksum")
    return _padded(header.tostring().encode("ascii"), b" ")


def _encode(value: int) -> str:
    """ASCII encoding of a 32-bit checksum (FITS checksum convention), as astropy writes it."""
    exclude = [0x3A, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F, 0x40, 0x5B, 0x5C, 0x5D, 0x5E, 0x5F, 0x60]
    ch = [0] * 16
    for i in range(4):
        byte = (value >> (24 - 8 * i)) & 0xFF
        quotient, remainder = byte // 4 + 0x30, byte % 4
        chars = [quotient + remainder, quotient, quotient, quotient]
        while True:
            check = False
            for k in range(0, 4, 2):
                for j in (k, k + 1):
                    if chars[j] in exclude:
                        chars[k] += 1
                        chars[k + 1] -= 1
                        check = True
            if not check:
                break
        for j in range(4):
            ch[4 * j + i] = chars[j]
    text = "".join(chr(c) for c in ch)
    return text[-1] + text[:-1]      # rotate right by one, as the convention requires


def write_fits(path: str | os.PathLike, primary: fits.PrimaryHDU, table: fits.BinTableHDU,
               checksum: bool = True) -> None:
    """Write ``primary`` (header only) + the binary table ``table`` atomically and fast.

    The table's header is used as astropy built it; its records are written as big-endian bytes.
    Tables whose record layout differs from the FITS row (variable-length arrays, scaled or
    logical columns) fall back to astropy's own writer.
    """
    records = np.asarray(table.data).view(np.ndarray)
    fast = (primary.data is None and records.dtype.itemsize == table.header["NAXIS1"]
            and "THEAP" not in table.header and not any(
                str(fmt).startswith(("P", "Q", "L")) for fmt in table.columns.formats))
    if not fast:
        with atomic_path(path) as tmp:
            fits.HDUList([primary, table]).writeto(tmp, checksum=checksum)
        return
    write_records(path, primary.header, table.header, records, checksum)


def write_records(path: str | os.PathLike, primary_header: fits.Header,
                  table_header: fits.Header, records: np.ndarray, checksum: bool = True) -> None:
    """Write a header-only primary HDU and a binary table of plain ``records`` (fixed-size
    numeric fields whose layout is the FITS row, as :func:`write_fits` checks) atomically; the
    headers are copied, not changed."""
    if records.dtype.itemsize != table_header["NAXIS1"] or len(records) != table_header["NAXIS2"]:
        raise ValueError(f"records of {records.dtype.itemsize} bytes x {len(records)} rows do not "
                         f"match the table header's NAXIS1 = {table_header['NAXIS1']}, "
                         f"NAXIS2 = {table_header['NAXIS2']}")
    data_block = _padded(records.astype(records.dtype.newbyteorder(">")).tobytes())
    primary_header = primary_header.copy()
    table_header = table_header.copy()
    if checksum:
        primary_bytes = _with_checksum(primary_header, b"")
        table_bytes = _with_checksum(table_header, data_block)
    else:
        primary_bytes = _padded(primary_header.tostring().encode("ascii"), b" ")
        table_bytes = _padded(table_header.tostring().encode("ascii"), b" ")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(primary_bytes)
            fh.write(table_bytes)
            fh.write(data_block)


# ---------------------------------------------------------------- fast reader

class NotSimpleFITS(Exception):
    """The file is not the plain layout :func:`read_simple_table` reads; use astropy instead."""


@dataclass(frozen=True)
class SimpleTable:
    """A header-only primary HDU and the binary table after it, as stored."""
    primary: dict      # primary header: keyword -> value (commentary cards left out)
    header: dict       # the table's header, likewise (TUCDn, EXTNAME, ...)
    names: list        # column names (TTYPEn), in order
    units: dict        # column name -> TUNITn, for the columns that have one
    rows: np.ndarray   # the records: a big-endian structured array over the file's bytes
    long_primary: frozenset = frozenset()  # primary keywords continued in CONTINUE cards


_END_CARD = "END" + " " * 77
_KEYWORD = re.compile(r"[A-Z0-9_-]{1,8} *")
# value of a "KEYWORD = value / comment" card: quoted string, logical, integer or real
_VALUE = re.compile(r" *(?:'((?:[^']|'')*)'|([TF])|"
                    r"([+-]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[DE][+-]?[0-9]+)?)) *(?:/.*)?")
_QUOTE_THEN_COMMENT = re.compile(r"'' */")
_COMMENTARY = ("COMMENT ", "HISTORY ", " " * 8)
_PRINTABLE = bytes(range(0x20, 0x7F))
# column keywords astropy interprets (astropy.io.fits.column.KEYWORD_NAMES); only the first
# three are understood here: scaling, nulls, TDIM shapes, ... go to astropy
_COLUMN_KEYWORD = re.compile(r"(TTYPE|TFORM|TUNIT|TNULL|TSCAL|TZERO|TDISP|TBCOL|TDIM|TCTYP|"
                             r"TCUNI|TCRPX|TCRVL|TCDLT|TRPOS)([1-9][0-9]*)")
_TFORM = re.compile(r"([0-9]*)([BIJKED])")
_NAME = re.compile(r"[A-Za-z0-9_]+")
# TFORM code -> the stored (big-endian) numpy type; astropy returns exactly these
_TFORM_DTYPE = {"B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8"}
_PRIMARY_REFUSED = ("GROUPS", "PCOUNT", "GCOUNT", "BSCALE", "BZERO", "BLANK", "XTENSION")
_TABLE_REFUSED = ("THEAP", "ZIMAGE", "ZTABLE", "GROUPS", "BSCALE", "BZERO", "BLANK")
_TABLE_MANDATORY = ["XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT",
                    "TFIELDS"]


def _card_value(card: str):
    """Value of a standard value card, as astropy's Card.value gives it."""
    match = _VALUE.fullmatch(card, 10)
    if match is None:
        raise NotSimpleFITS(f"card {card.rstrip()!r}: no plain value (undefined, complex, ...)")
    text, logical, number = match.groups()
    if text is not None:
        # astropy reads 'A: 1' as a record-valued card, ends 'a'' / b' after the '', and
        # closes an empty string '' at a later quote if it can
        if ": " in text or _QUOTE_THEN_COMMENT.search(text) or (not text
                                                                and card.count("'") > 2):
            raise NotSimpleFITS(f"card {card.rstrip()!r}: string astropy reads differently")
        return text.replace("''", "'").rstrip(" ")
    if logical is not None:
        return logical == "T"
    number = number.replace("D", "E")
    return float(number) if ("." in number or "E" in number) else int(number)


def _parse_header(blob: bytearray, start: int) -> tuple[dict, list, int, frozenset]:
    """(keyword -> value, keywords in card order, offset after the header, keywords whose
    string goes on in CONTINUE cards) of the header at byte ``start``.

    Besides plain value cards, COMMENT/HISTORY/blank cards and END, two conventions every ESO
    archive header uses are passed over: ``HIERARCH ESO ...`` cards (never stored; no plain
    keyword can be read from them) and CONTINUE cards, whose keyword is dropped from the values
    and reported as long, so a caller that needs it can go to astropy. Anything else is refused
    (other HIERARCH cards, repeated keywords, bytes after END, no END).
    """
    values: dict = {}
    order: list = []
    long_strings: set = set()
    previous = None            # keyword of the last card, for CONTINUE
    while True:
        block = blob[start:start + BLOCK]
        if len(block) < BLOCK:
            raise NotSimpleFITS("header has no END card")
        if block.translate(None, _PRINTABLE):
            raise NotSimpleFITS("header holds non-printable bytes")
        text = block.decode("ascii")
        start += BLOCK
        for i in range(0, BLOCK, 80):
            card = text[i:i + 80]
            if card.startswith("END"):
                if card != _END_CARD or text[i + 80:].strip(" "):
                    raise NotSimpleFITS(f"odd END card {card.rstrip()!r}")
                return values, order, start, frozenset(long_strings)
            head = card[:8]
            if head in _COMMENTARY:
                order.append(head.rstrip(" "))
                previous = None
                continue
            if card.startswith("HIERARCH ESO "):
                order.append("HIERARCH")
                previous = "HIERARCH"
                continue
            if head == "CONTINUE":
                if previous == "HIERARCH" or previous in long_strings:
                    continue
                if previous is None or not isinstance(values.get(previous), str):
                    raise NotSimpleFITS(f"CONTINUE card after {previous!r}")
                del values[previous]
                long_strings.add(previous)
                continue
            if card[8:10] != "= " or not _KEYWORD.fullmatch(head):
                raise NotSimpleFITS(f"card {card.rstrip()!r} is not a plain value card")
            keyword = head.rstrip(" ")
            if keyword in values or keyword in long_strings or keyword == "HIERARCH":
                raise NotSimpleFITS(f"keyword {keyword} repeated or a convention")
            values[keyword] = _card_value(card)
            order.append(keyword)
            previous = keyword


def _is_int(value) -> bool:
    return type(value) is int          # header logicals are bool, a subclass of int


def _table_layout(header: dict, order: list) -> tuple[np.dtype, list, dict]:
    """Record dtype, column names and units of a plain binary-table header."""
    if (order[:8] != _TABLE_MANDATORY or header["XTENSION"] != "BINTABLE"
            or header["BITPIX"] != 8 or header["NAXIS"] != 2 or header["PCOUNT"] != 0
            or header["GCOUNT"] != 1 or not all(_is_int(header[k]) for k in _TABLE_MANDATORY[1:])
            or header["NAXIS1"] < 1 or header["NAXIS2"] < 1 or header["TFIELDS"] < 1):
        raise NotSimpleFITS("not a plain BINTABLE header")
    nfields = header["TFIELDS"]
    for keyword in header:
        column = _COLUMN_KEYWORD.fullmatch(keyword)
        if (keyword in _TABLE_REFUSED
                or keyword.startswith("NAXIS") and keyword not in ("NAXIS", "NAXIS1", "NAXIS2")
                or column and (column[1] not in ("TTYPE", "TFORM", "TUNIT")
                               or int(column[2]) > nfields)):
            raise NotSimpleFITS(f"table keyword {keyword} needs astropy")
    fields, names, units, folded = [], [], {}, set()
    for n in range(1, nfields + 1):
        name, tform, unit = (header.get(f"TTYPE{n}"), header.get(f"TFORM{n}"),
                             header.get(f"TUNIT{n}"))
        form = _TFORM.fullmatch(tform) if isinstance(tform, str) else None
        # odd names make astropy warn; names equal but for case are refused by the reader
        if (not isinstance(name, str) or not _NAME.fullmatch(name) or name.upper() in folded
                or form is None or (unit is not None and not isinstance(unit, str))):
            raise NotSimpleFITS(f"column {n}: name, format or unit needs astropy")
        repeat = int(form[1]) if form[1] else 1
        if repeat == 0:
            raise NotSimpleFITS(f"column {n}: zero-width column")
        # a repeat of 1 is a scalar field in astropy, not a 1-element array
        fields.append((name, _TFORM_DTYPE[form[2]]) if repeat == 1
                      else (name, _TFORM_DTYPE[form[2]], (repeat,)))
        names.append(name)
        folded.add(name.upper())
        if unit is not None:
            units[name] = unit
    try:
        dtype = np.dtype(fields)
    except (ValueError, TypeError, OverflowError) as exc:   # absurd repeat counts
        raise NotSimpleFITS(f"no record type for {fields}: {exc}") from exc
    if dtype.itemsize != header["NAXIS1"]:
        raise NotSimpleFITS(f"NAXIS1 {header['NAXIS1']} != {dtype.itemsize} from the TFORMs")
    return dtype, names, units


def read_simple_table(path: str | os.PathLike) -> SimpleTable:
    """The primary header and first binary table of a plain FITS file, without astropy.

    Plain means: no primary data, then one BINTABLE with fixed-width numeric columns
    (TFORM B, I, J, K, E, D) without scaling, nulls, TDIM or heap, both headers of standard
    value cards (plus ``HIERARCH ESO`` cards, skipped, and long strings in the primary header,
    listed in ``long_primary`` without a value), and nothing after the table's padded data. Raises :class:`NotSimpleFITS`
    for anything else (including unreadable, gzipped, truncated or extended files), so the
    caller can read it with astropy instead and get astropy's values and errors.
    """
    if not fits.conf.strip_header_whitespace:
        raise NotSimpleFITS("astropy is set to keep trailing blanks of header strings")
    try:
        with open_regular(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0 or size % BLOCK:
                raise NotSimpleFITS(f"size {size} is not a whole number of FITS blocks")
            blob = bytearray(size)          # writable, like the arrays astropy returns
            if fh.readinto(blob) != size:
                raise NotSimpleFITS("file changed size while read")
    except OSError as exc:
        raise NotSimpleFITS(f"cannot read ({exc})") from exc
    if not blob.startswith(b"SIMPLE  ="):
        raise NotSimpleFITS("does not start with SIMPLE")
    primary, order, table_start, long_primary = _parse_header(blob, 0)
    if (order[:3] != ["SIMPLE", "BITPIX", "NAXIS"] or primary["SIMPLE"] is not True
            or not _is_int(primary["BITPIX"]) or primary["BITPIX"] not in (8, 16, 32, 64, -32, -64)
            or not _is_int(primary["NAXIS"]) or primary["NAXIS"] != 0
            or primary.get("EXTEND", True) is not True
            or any(k in primary for k in _PRIMARY_REFUSED)
            or any(k.startswith("NAXIS") for k in order[3:])):
        raise NotSimpleFITS("primary HDU is not a plain header without data")
    header, order, data_start, long_table = _parse_header(blob, table_start)
    if long_table:   # column names, units and UCDs must all be at hand
        raise NotSimpleFITS(f"table keywords {sorted(long_table)} continue in CONTINUE cards")
    dtype, names, units = _table_layout(header, order)
    nrows = header["NAXIS2"]
    data_size = dtype.itemsize * nrows
    # no further HDU: astropy would read (and possibly refuse or warn about) it
    if data_start + data_size + (-data_size) % BLOCK != size:
        raise NotSimpleFITS("file does not end with the table's padded data")
    rows = np.frombuffer(blob, dtype=dtype, count=nrows, offset=data_start)
    return SimpleTable(primary=primary, header=header, names=names, units=units, rows=rows,
                       long_primary=long_primary)


__all__ = ["write_fits", "read_simple_table", "SimpleTable", "NotSimpleFITS"]
