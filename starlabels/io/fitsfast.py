"""Fast writing of one-row (or few-row) FITS binary tables with large array columns.

astropy's writer byte-swaps array columns element by element in Python (tens of ms for one
GIRAFFE spectrum), which dominates simulating or mirroring tens of thousands of files. Here the
headers still come from astropy (so every keyword, TFORM and TUNIT is standard) and only the
data block is written directly: the rows as big-endian bytes, zero-padded to 2880-byte blocks,
as the FITS standard prescribes. The CHECKSUM/DATASUM keywords are computed the same way astropy
does, so files pass ``fitsverify``.
"""
from __future__ import annotations

import os

import numpy as np
from astropy.io import fits

from ..artifacts import atomic_path

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
    data_block = _padded(records.astype(records.dtype.newbyteorder(">")).tobytes())
    primary_header = primary.header.copy()
    table_header = table.header.copy()
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


__all__ = ["write_fits"]
