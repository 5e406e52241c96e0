"""The label catalog: quality bit flags, merging prediction shards, FITS + Parquet output.

Conventions (after SDSS-V Astra, without its hard-coded paths):

- every row carries an int32 ``label_flags`` bit mask (:data:`FLAG_BITS`; not ``flags``, which
  pandas reserves for ``DataFrame.flags``); :data:`FLAG_BAD_MASK` marks bits that make a row
  unusable, :data:`FLAG_WARN_MASK` those that call for care;
- FITS column names (TTYPE) are written **as-is** (the lower-case names used in every table of the
  pipeline, e.g. ``teff``, ``teff_err``), so the FITS and Parquet catalogs have identical columns
  and :func:`read_catalog` returns the same DataFrame from either. FITS column names are
  case-insensitive, so names differing only in case are refused;
- every column has a description, an IVOA UCD and (where it has one) a unit that astropy parses
  without a warning, from :mod:`starlabels.columns`: TCOMMn / TUCDn / TUNITn in FITS, field
  metadata and a VOTable header (the VOParquet convention) in Parquet; vectors (probabilities
  per bin with their bin edges, embeddings, distances to the nearest labelled stars) are
  fixed-width array columns in FITS, so FITS and Parquet hold the same columns;
- provenance goes into both headers: STARLVER, GITCOMM, CONFHASH, EXPERIM, METHOD, NMEMBER, DATE;
  the primary header also carries the whole provenance mapping as JSON (PROVJSON, a long string
  continued over CONTINUE cards, declared by LONGSTRN);
- CHECKSUM / DATASUM on every HDU, and the file passes ``fitsverify`` with no warnings.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import __version__, artifacts, columns
from .labels import check_labels

# ---------------------------------------------------------------- flags

#: the catalogue column holding the bits (not ``flags``: that is a pandas DataFrame attribute)
FLAG_COLUMN = "label_flags"

FLAG_BITS: dict[str, int] = {
    "CLEAN_REJECTED": 1 << 0,
    "LOW_SNR": 1 << 1,
    "HIGH_UNCERTAINTY": 1 << 2,
    "OUTSIDE_TRAINING": 1 << 3,
    "PREDICTION_NAN": 1 << 4,
    "IN_TRAINING_SET": 1 << 5,
    "REFINE_POOR_FIT": 1 << 6,
    "CATALOGUE_MISMATCH": 1 << 7,
}

FLAG_DESCRIPTIONS: dict[str, str] = {
    "CLEAN_REJECTED": "t-SNE cleaning rejected this training spectrum (clean_keep false)",
    "LOW_SNR": "S/N below the configured minimum, or S/N unknown",
    "HIGH_UNCERTAINTY": "uncertainty (<label>_err) of at least one label above its configured "
                        "maximum",
    "OUTSIDE_TRAINING": "at least one predicted label outside the training label range",
    "PREDICTION_NAN": "at least one predicted label is not finite",
    "IN_TRAINING_SET": "spectrum was in the training split: in-sample prediction",
    "REFINE_POOR_FIT": "the refine stage's best-fit model does not describe the spectrum "
                       "(refine_chi2_red above the threshold set on the valid split): unlike "
                       "the training set (a defect, a binary, emission, a rare star)",
    "CATALOGUE_MISMATCH": "the survey catalogue's own labels for this spectrum disagree with "
                          "ours beyond their joint errors (catalogue_chi2_p below the configured "
                          "limit): a mis-matched spectrum, a wrong catalogue solution, or a "
                          "spectrum that misled the network",
}

#: rows with any of these bits must not be used
FLAG_BAD_MASK: int = FLAG_BITS["PREDICTION_NAN"]
#: rows with any of these bits are usable with care (IN_TRAINING_SET is information only)
FLAG_WARN_MASK: int = (FLAG_BITS["CLEAN_REJECTED"] | FLAG_BITS["LOW_SNR"]
                       | FLAG_BITS["HIGH_UNCERTAINTY"] | FLAG_BITS["OUTSIDE_TRAINING"]
                       | FLAG_BITS["REFINE_POOR_FIT"] | FLAG_BITS["CATALOGUE_MISMATCH"])


def flag_names(value: int) -> list[str]:
    """The names of the bits set in one flags value, in bit order."""
    return [name for name, bit in FLAG_BITS.items() if int(value) & bit]


def attach_clean(predictions: pd.DataFrame, clean: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``predictions`` with ``clean_keep`` / ``clean_reason`` from a tsne_clean table.

    Matched on ``spectrum_id``; spectra the cleaning never saw are kept (``clean_keep`` True,
    reason '').
    """
    lookup = clean.set_index("spectrum_id")[["keep", "reason"]]
    if lookup.index.has_duplicates:
        raise ValueError("clean table has duplicate spectrum_id values")
    out = predictions.copy()
    matched = lookup.reindex(out["spectrum_id"].to_numpy())
    out["clean_keep"] = matched["keep"].fillna(True).astype(bool).to_numpy()
    out["clean_reason"] = matched["reason"].fillna("").astype(str).to_numpy()
    return out


def label_ranges(table: pd.DataFrame, labels: Sequence[str]) -> dict[str, tuple[float, float]]:
    """(min, max) of each label over the given rows (NaN ignored), for OUTSIDE_TRAINING."""
    out = {}
    for label in labels:
        values = table[label].to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError(f"no finite {label} values to define a training range")
        out[label] = (float(values.min()), float(values.max()))
    return out


def compute_flags(df: pd.DataFrame, labels: Sequence[str],
                  training_ranges: Mapping[str, tuple[float, float]],
                  snr_min: float | None, max_err: Mapping[str, float],
                  catalogue_p_min: float | None = None) -> np.ndarray:
    """int32 bit mask per row (see :data:`FLAG_BITS`).

    Columns used: the predicted ``<label>`` columns; ``<label>_err`` for labels in ``max_err``;
    ``snr`` unless ``snr_min`` is None; ``clean_keep`` (bool, from :func:`attach_clean`),
    ``split``, ``refine_unlike_training`` (the refine stage's χ² verdict) and
    ``catalogue_chi2_p`` (from :func:`catalogue_chi2`; tested unless ``catalogue_p_min`` is
    None) when present.
    Labels missing from ``training_ranges`` / ``max_err`` are not tested
    for that bit.
    """
    labels = check_labels(list(labels))
    n = len(df)
    flags = np.zeros(n, dtype=np.int32)

    def column(name: str) -> np.ndarray:
        if name not in df.columns:
            raise ValueError(f"compute_flags: column {name!r} missing")
        return df[name].to_numpy(dtype=np.float64, na_value=np.nan)

    values = {label: column(label) for label in labels}
    if "clean_keep" in df.columns:
        rejected = ~df["clean_keep"].fillna(True).astype(bool).to_numpy()
        flags[rejected] |= FLAG_BITS["CLEAN_REJECTED"]
    if snr_min is not None:
        snr = column("snr")
        # unknown S/N cannot vouch for the spectrum either; comparisons with NaN are False
        flags[~(snr >= float(snr_min))] |= FLAG_BITS["LOW_SNR"]
    for label, limit in max_err.items():
        if label in values:
            flags[column(f"{label}_err") > float(limit)] |= FLAG_BITS["HIGH_UNCERTAINTY"]
    for label, (lo, hi) in training_ranges.items():
        if label in values:
            v = values[label]
            flags[(v < float(lo)) | (v > float(hi))] |= FLAG_BITS["OUTSIDE_TRAINING"]
    for v in values.values():
        flags[~np.isfinite(v)] |= FLAG_BITS["PREDICTION_NAN"]
    if "split" in df.columns:
        flags[(df["split"].astype(str) == "train").to_numpy()] |= FLAG_BITS["IN_TRAINING_SET"]
    if "refine_unlike_training" in df.columns:
        poor = df["refine_unlike_training"].fillna(False).astype(bool).to_numpy()
        flags[poor] |= FLAG_BITS["REFINE_POOR_FIT"]
    if catalogue_p_min is not None and "catalogue_chi2_p" in df.columns:
        p = df["catalogue_chi2_p"].to_numpy(dtype=np.float64, na_value=np.nan)
        # NaN (no catalogue labels to compare) is no evidence either way: comparisons are False
        flags[p < float(catalogue_p_min)] |= FLAG_BITS["CATALOGUE_MISMATCH"]
    return flags


def catalogue_chi2(predicted: Mapping[str, np.ndarray], errors: Mapping[str, np.ndarray],
                   catalogue: Mapping[str, np.ndarray], catalogue_errors: Mapping[str, np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """χ² of the survey catalogue's labels against ours, and its upper-tail probability.

        χ² = Σ_labels (ours − catalogue)² / (σ²_ours + σ²_catalogue)

    over the labels a row has both values and both errors for (χ² with that many degrees of
    freedom when both are right; NaN for a row with none). ``predicted`` must be on the
    catalogue's scale (``<label>_raw`` where the reference stars moved the labels): a network
    learns the catalogue's systematics, and the test is whether this spectrum's catalogue entry
    fits it, not whether the catalogue's scale is right. The labels' correlations are left out:
    on demo_ges's good valid stars the sum follows χ² with 5 degrees of freedom closely enough
    (median 4.3, 95th percentile 13 against 4.4 and 11) for a tail test at p ~ 10⁻³.
    """
    from scipy.stats import chi2 as chi2_dist

    compared = [label for label in predicted if label in catalogue]
    if not compared:
        raise ValueError("catalogue_chi2: no label has catalogue values")

    def stacked(values: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.stack([np.asarray(values[label], dtype=np.float64) for label in compared])

    var = stacked(errors) ** 2 + stacked(catalogue_errors) ** 2
    term = (stacked(predicted) - stacked(catalogue)) ** 2 / var
    usable = np.isfinite(term) & (var > 0)
    total = np.where(usable, term, 0.0).sum(axis=0)
    dof = usable.sum(axis=0)
    chi2 = np.where(dof > 0, total, np.nan)
    p = np.where(dof > 0, chi2_dist.sf(total, np.maximum(dof, 1)), np.nan)
    return chi2, p


# ---------------------------------------------------------------- shards

def evolutionary_class(logg: np.ndarray, giant_logg_max: float, dwarf_logg_min: float
                       ) -> np.ndarray:
    """'giant' below ``giant_logg_max``, 'dwarf' from ``dwarf_logg_min``, 'subgiant' between;
    '' where log g is not finite."""
    logg = np.asarray(logg, dtype=np.float64)
    out = np.where(logg < giant_logg_max, "giant",
                   np.where(logg >= dwarf_logg_min, "dwarf", "subgiant")).astype(object)
    out[~np.isfinite(logg)] = ""
    return out


def merge_shards(paths: Sequence[str | os.PathLike], n_rows: int | None = None) -> pd.DataFrame:
    """Concatenate prediction shard Parquet files and sort by ``row``.

    Raises ValueError for no shards, a shard without ``row``, shards with different columns,
    duplicate rows, or rows that are not exactly 0 .. n_rows-1 (``n_rows`` = the expected number
    of spectra; without it, 0 .. max(row) must all be present).
    """
    if not paths:
        raise ValueError("merge_shards: no shard files given")
    frames, columns = [], None
    for path in paths:
        frame = artifacts.load_table(path)
        if "row" not in frame.columns:
            raise ValueError(f"merge_shards: {path} has no 'row' column")
        if columns is None:
            columns = list(frame.columns)
        elif set(frame.columns) != set(columns):
            raise ValueError(f"merge_shards: {path} has columns {sorted(frame.columns)}, "
                             f"expected {sorted(columns)}")
        frames.append(frame[columns])
    merged = pd.concat(frames, ignore_index=True)
    rows = merged["row"].to_numpy()
    if not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"merge_shards: 'row' must be integer, got {rows.dtype}")
    duplicated = np.unique(rows[pd.Series(rows).duplicated().to_numpy()])
    if duplicated.size:
        raise ValueError(f"merge_shards: {duplicated.size} duplicate row(s), "
                         f"e.g. {duplicated[:5].tolist()}")
    expected = int(n_rows) if n_rows is not None else (int(rows.max()) + 1 if rows.size else 0)
    missing = np.setdiff1d(np.arange(expected), rows)
    extra = rows[(rows < 0) | (rows >= expected)]
    if missing.size or extra.size:
        raise ValueError(f"merge_shards: expected rows 0..{expected - 1}; {missing.size} missing "
                         f"(e.g. {missing[:5].tolist()}), {extra.size} out of range "
                         f"(e.g. {np.sort(extra)[:5].tolist()})")
    return merged.sort_values("row", kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------- FITS

_TTYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,67}$")


def column_unit(name: str) -> str | None:
    """FITS TUNIT of a catalogue column (:mod:`starlabels.columns`); None when it has none
    (S/N, ids, flags, logarithmic labels)."""
    info = columns.column_info(name)
    return info.unit if info else None


def _ascii(text: Any) -> str:
    return str(text).encode("ascii", "replace").decode("ascii")


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _vector_column(name: str, series: pd.Series, unit: str | None):
    """A column of equal-length numeric vectors (probabilities per bin, embeddings) as a
    fixed-width FITS array column, so FITS readers get them as Parquet readers do."""
    from astropy.io import fits

    values = [np.asarray(v) for v in series.to_list()]
    shapes = {v.shape for v in values}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1 or values[0].dtype.kind not in "iuf":
        raise ValueError(f"column {name!r}: only numeric vectors of one length can be a "
                         f"fixed-width FITS column (shapes {sorted(shapes)})")
    stacked = np.stack(values)
    n = stacked.shape[1]
    if stacked.dtype.kind in "iu":
        return fits.Column(name=name, format=f"{n}K", array=stacked.astype(np.int64), unit=unit)
    fmt, np_type = ("E", np.float32) if stacked.dtype == np.float32 else ("D", np.float64)
    return fits.Column(name=name, format=f"{n}{fmt}", array=stacked.astype(np_type), unit=unit)


def _is_vector_column(series: pd.Series) -> bool:
    first = next((v for v in series.to_list() if v is not None), None)
    return isinstance(first, (list, tuple, np.ndarray))


def _fits_column(name: str, series: pd.Series):
    """One astropy Column with the FITS type that keeps the pandas values exactly."""
    from astropy.io import fits

    unit = column_unit(name)
    if len(series) and _is_vector_column(series):
        return _vector_column(name, series, unit)
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_datetime64_any_dtype(dtype):
        series = series.astype(str).where(series.notna(), "")
        dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        if series.isna().any():
            raise ValueError(f"column {name!r}: boolean with missing values cannot go to FITS")
        return fits.Column(name=name, format="L", array=series.to_numpy(dtype=bool), unit=unit)
    if pd.api.types.is_integer_dtype(dtype):
        if series.isna().any():        # nullable integers: NaN keeps the gap visible
            return fits.Column(name=name, format="D", unit=unit,
                               array=series.to_numpy(dtype=np.float64, na_value=np.nan))
        values = series.to_numpy()
        # FITS has signed 16/32/64-bit and unsigned 8-bit integers; widen the rest (no TZERO)
        for fmt, np_type in (("B", np.uint8), ("I", np.int16), ("J", np.int32), ("K", np.int64)):
            if np.can_cast(values.dtype, np_type, casting="safe"):
                return fits.Column(name=name, format=fmt, array=values.astype(np_type), unit=unit)
        if values.size and values.max() > np.iinfo(np.int64).max:
            raise ValueError(f"column {name!r}: unsigned values beyond int64")
        return fits.Column(name=name, format="K", array=values.astype(np.int64), unit=unit)
    if pd.api.types.is_float_dtype(dtype):
        values = series.to_numpy(dtype=np.float64 if series.dtype != np.float32 else np.float32,
                                 na_value=np.nan)
        fmt = "E" if values.dtype == np.float32 else "D"
        return fits.Column(name=name, format=fmt, array=values, unit=unit)
    if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
        # FITS strings have no null: missing values (None, NaN, pd.NA) become ''
        text = ["" if _is_missing(v) else _ascii(v) for v in series.to_list()]
        width = max([1, *map(len, text)])
        return fits.Column(name=name, format=f"{width}A", array=np.array(text, dtype=f"S{width}"),
                           unit=unit)
    raise ValueError(f"column {name!r}: dtype {dtype} cannot be written to FITS")


def _check_names(columns: Sequence[str]) -> None:
    bad = [c for c in columns if not _TTYPE.match(str(c))]
    if bad:
        raise ValueError(f"column names {bad} are not valid FITS TTYPE values "
                         "(letters, digits, underscore; start with a letter; <= 68 chars)")
    upper = pd.Series([str(c).upper() for c in columns])
    if upper.duplicated().any():
        raise ValueError(f"column names differ only in case: {sorted(upper[upper.duplicated()])}")


def _provenance_cards(provenance: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    versions = provenance.get("versions") or {}
    n_members = provenance.get("n_members")
    return [
        ("STARLVER", _ascii(versions.get("starlabels", __version__)), "starlabels version"),
        ("GITCOMM", _ascii(provenance.get("git_commit", "unknown")), "workflow git commit"),
        ("CONFHASH", _ascii(provenance.get("config_hash", "none")), "sha256[:16] of the config"),
        ("EXPERIM", _ascii(provenance.get("experiment", "unknown")), "experiment name"),
        ("METHOD", _ascii(provenance.get("method", "unknown")), "label method"),
        ("NMEMBER", int(n_members) if n_members is not None else -1,
         "ensemble members used (-1 = unknown)"),
        ("REFSCALE", _ascii(provenance.get("scaled_labels", "none")),
         "labels put on the catalogue scale (_raw before)"),
        ("DATE", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
         "UTC date this file was written"),
    ]


def _fit_comment(value: Any, comment: str) -> str:
    """The comment shortened so that a string value that fits one card keeps it to one card
    (astropy would truncate it with a VerifyWarning); long values continue anyway."""
    if isinstance(value, str):
        quoted = "'" + value.replace("'", "''") + "'"
        if len(quoted) <= 70:
            return comment[:max(80 - 10 - max(len(quoted), 20) - 3, 0)]
    return comment[:47]      # numbers are right-aligned in 20 columns


def _set_card(header, key: str, value: Any, comment: str) -> None:
    header[key] = (value, _fit_comment(value, comment))


def _flag_cards() -> list[tuple[str, Any, str]]:
    """FLAGBnn = name of bit n, plus the bad / warn masks (descriptions go in COMMENT cards)."""
    cards = []
    for name, bit in FLAG_BITS.items():
        n = int(bit).bit_length() - 1
        cards.append((f"FLAGB{n:02d}", name, f"{FLAG_COLUMN} bit {n} (value {bit})"))
    cards.append(("FLAGBAD", FLAG_BAD_MASK, f"{FLAG_COLUMN} & FLAGBAD != 0: do not use"))
    cards.append(("FLAGWARN", FLAG_WARN_MASK, f"{FLAG_COLUMN} & FLAGWARN != 0: use with care"))
    return cards


def _uniform_bins(label: str, edges: Sequence[float]) -> tuple[float, float]:
    """(first edge, width) of equal-width bins; the FITS keywords describe no other kind."""
    edges = np.asarray(edges, dtype=np.float64)
    widths = np.diff(edges)
    if edges.size < 2 or not np.allclose(widths, widths[0], rtol=1e-9, atol=0):
        raise ValueError(f"bins of {label}: edges are not equally spaced")
    return float(edges[0]), float(widths[0])


def build_hdulist(df: pd.DataFrame, *, labels: Sequence[str], provenance: Mapping[str, Any],
                  extname: str = "STARLABELS", bins: Mapping[str, Sequence[float]] | None = None):
    """The catalog as an astropy HDUList (primary + one binary table); see the module docstring.

    Every column gets TCOMMn (description) and TUCDn (UCD) from :mod:`starlabels.columns`; a
    ``<label>_prob`` column gets BLOWn / BWIDn, the first edge and the width of its bins (from
    ``bins``: label → bin edges)."""
    from astropy.io import fits

    labels = check_labels(list(labels))
    missing = [lab for lab in labels if lab not in df.columns]
    if missing:
        raise ValueError(f"catalog lacks label column(s) {missing}")
    _check_names(list(df.columns))
    infos = {str(c): columns.require(str(c)) for c in df.columns}
    table = fits.BinTableHDU.from_columns([_fits_column(str(c), df[c]) for c in df.columns],
                                          name=extname)
    for i, name in enumerate(map(str, df.columns), start=1):
        _set_card(table.header, f"TCOMM{i}", infos[name].description, f"description of {name}")
        _set_card(table.header, f"TUCD{i}", infos[name].ucd, f"IVOA UCD of {name}")
        label = name.removesuffix("_prob")
        if name.endswith("_prob"):
            if not bins or label not in bins:
                raise ValueError(f"column {name!r}: no bin edges given for {label}")
            low, width = _uniform_bins(label, bins[label])
            _set_card(table.header, f"BLOW{i}", low, f"first bin edge of {name}")
            _set_card(table.header, f"BWID{i}", width, f"bin width of {name}")
    primary = fits.PrimaryHDU()
    for key, value, comment in _provenance_cards(provenance):
        _set_card(primary.header, key, value, comment)
        _set_card(table.header, key, value, comment)
    primary.header["LABELS"] = (",".join(labels), "label columns of the catalog")
    for key, value, comment in _flag_cards():
        table.header[key] = (value, comment)
    for name, bit in FLAG_BITS.items():
        text = (f"{FLAG_COLUMN} bit {int(bit).bit_length() - 1} {name}: "
                f"{FLAG_DESCRIPTIONS[name]}")
        for line in textwrap.wrap(text, 72, subsequent_indent="  "):
            table.header.add_comment(line)
    # long values (EXPERIM, PROVJSON) continue over CONTINUE cards; fitsverify wants the
    # convention declared in every HDU that may use it
    for header in (primary.header, table.header):
        header["LONGSTRN"] = ("OGIP 1.0", "CONTINUE long strings may be used")
    # the whole provenance (versions, config hash, extra keys) as JSON
    primary.header["PROVJSON"] = (json.dumps(artifacts._jsonable(dict(provenance)), sort_keys=True,
                                             separators=(",", ":")), "provenance as JSON")
    return fits.HDUList([primary, table])


#: Parquet schema-metadata key of the catalogue's own description (flags, bins, labels)
CATALOG_KEY = b"starlabels.catalog"
#: the IVOA VOTable-in-Parquet convention (VOParquet 1.0): a VOTable header with every
#: column's unit, UCD and description, which TOPCAT/STILTS and astropy read
VOPARQUET_VERSION_KEY = b"IVOA.VOTable-Parquet.version"
VOPARQUET_CONTENT_KEY = b"IVOA.VOTable-Parquet.content"


def catalog_description(labels: Sequence[str],
                        bins: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """What a catalogue's numbers mean beyond its columns: labels, flag bits and masks, and the
    bin edges of each ``<label>_prob`` column."""
    return {"labels": list(labels), "flag_column": FLAG_COLUMN,
            "flag_bits": {name: {"value": int(bit), "bit": int(bit).bit_length() - 1,
                                 "description": FLAG_DESCRIPTIONS[name]}
                          for name, bit in FLAG_BITS.items()},
            "flag_bad_mask": FLAG_BAD_MASK, "flag_warn_mask": FLAG_WARN_MASK,
            "bin_edges": {k: [float(e) for e in v] for k, v in (bins or {}).items()}}


def _votable_header(hdul) -> bytes:
    """The VOTable (no rows) describing every column, from the FITS table itself so the two
    files declare the same types, shapes, units, UCDs and descriptions."""
    import io

    from astropy.io.votable.tree import VOTableFile
    from astropy.table import Table

    fits_table = Table.read(hdul[1], character_as_bytes=False)[:0]
    for i, name in enumerate(fits_table.colnames, start=1):
        fits_table[name].description = hdul[1].header[f"TCOMM{i}"]
    votable = VOTableFile.from_table(fits_table)
    for i, field in enumerate(votable.resources[0].tables[0].fields, start=1):
        field.ucd = hdul[1].header[f"TUCD{i}"]
    buffer = io.BytesIO()
    votable.to_xml(buffer)
    return buffer.getvalue()


def _parquet_table(df: pd.DataFrame, hdul, provenance: Mapping[str, Any],
                   description: Mapping[str, Any]):
    """The catalogue as an Arrow table whose every field carries unit, UCD and description
    (field metadata), with the provenance, the catalogue description, astropy's string widths
    and a VOParquet header in the schema metadata."""
    import pyarrow as pa

    arrow = pa.Table.from_pandas(df, preserve_index=False)
    fields, arrays, lengths = [], [], {}
    for i, field in enumerate(arrow.schema):
        info = columns.require(field.name)
        meta = {b"description": info.description.encode(), b"ucd": info.ucd.encode()}
        if info.unit:
            meta[b"unit"] = info.unit.encode()
        array = arrow.column(i)
        if pa.types.is_list(field.type) and len(array):
            # equal-length vectors as fixed-size lists: readers (astropy, TOPCAT) get arrays of
            # one shape, as from the FITS file's array columns
            size = len(array[0])
            array = pa.chunked_array([pa.FixedSizeListArray.from_arrays(chunk.flatten(), size)
                                      for chunk in array.chunks])
            field = pa.field(field.name, array.type)
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            # astropy's string-width convention, so it reads strings without guessing
            lengths[f"table::len::{field.name}".encode()] = str(max(
                [1, *(len(v) for v in array.to_pylist() if v is not None)])).encode()
        fields.append(field.with_metadata(meta))
        arrays.append(array)
    schema = artifacts._with_provenance(pa.schema(fields, metadata=arrow.schema.metadata),
                                        provenance)
    meta = {**dict(schema.metadata), **lengths, CATALOG_KEY: json.dumps(
        artifacts._jsonable(dict(description)), sort_keys=True).encode(),
        VOPARQUET_VERSION_KEY: b"1.0", VOPARQUET_CONTENT_KEY: _votable_header(hdul)}
    return pa.Table.from_arrays(arrays, schema=schema.with_metadata(meta))


def write_catalog(df: pd.DataFrame, fits_path: str | os.PathLike | None,
                  parquet_path: str | os.PathLike | None, *, labels: Sequence[str],
                  provenance: Mapping[str, Any], extname: str = "STARLABELS",
                  bins: Mapping[str, Sequence[float]] | None = None) -> None:
    """Write the catalog to FITS (with checksums) and/or Parquet, each atomically.

    ``provenance`` is an :func:`artifacts.provenance` mapping; the keys ``experiment``,
    ``method`` and ``n_members`` fill EXPERIM, METHOD and NMEMBER. Either path may be None.
    Both files hold the same columns; vectors (``<label>_prob``, described by ``bins``: label →
    bin edges; embeddings; distances) are fixed-width array columns in FITS, fixed-size lists
    in Parquet.
    """
    import pyarrow.parquet as pq

    hdul = build_hdulist(df, labels=labels, provenance=provenance, extname=extname, bins=bins)
    if fits_path is not None:
        with artifacts.atomic_path(fits_path) as tmp:
            hdul.writeto(tmp, overwrite=True, checksum=True)
    if parquet_path is not None:
        arrow = _parquet_table(df, hdul, provenance, catalog_description(labels, bins))
        with artifacts.atomic_path(parquet_path) as tmp:
            pq.write_table(arrow, tmp)


# ---------------------------------------------------------------- the catalogue's columns

def _inf_as_nan(values: pd.Series) -> np.ndarray:
    values = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isinf(values), np.nan, values)


def prediction_columns(pred: pd.DataFrame, labels: Sequence[str],
                       classes: Mapping[str, float] | None = None,
                       scale: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The predicted scalar columns of a shard table, label by label: ``<label>`` and every
    ``<label>_<suffix>`` the method wrote (uncertainties, percentiles, member scatter: the
    suffixes :mod:`starlabels.columns` knows), put onto the reference stars' scale by ``scale``
    (:func:`scaled_columns`), then the giant / subgiant / dwarf class of the scaled log g when
    ``classes`` (giant_logg_max, dwarf_logg_min) is given."""
    out: dict[str, np.ndarray] = {}
    for label in labels:
        for suffix in columns.LABEL_SUFFIXES:
            name = f"{label}_{suffix}" if suffix else label
            if name in pred and suffix not in ("ref", "prob"):
                # a network can overflow to ±inf: the catalogue says "no value" (NaN, flagged
                # PREDICTION_NAN) rather than print an infinite temperature
                out[name] = _inf_as_nan(pred[name])
    out = scaled_columns(out, scale)
    if classes is not None:
        out["evolutionary_class"] = evolutionary_class(out["logg"], classes["giant_logg_max"],
                                                       classes["dwarf_logg_min"])
    return out


def scaled_columns(values: Mapping[str, np.ndarray], scale: Mapping[str, Any] | None
                   ) -> dict[str, np.ndarray]:
    """``values`` (the predicted columns, label by label) put onto the reference stars' scale by
    ``scale`` (a :mod:`starlabels.reference_scale` record; None = unchanged), each
    ``<label>_raw`` placed after its ``<label>``, ``<label>_err_scale`` after ``<label>_err``."""
    if scale is None:
        return dict(values)
    from .reference_scale import apply_reference_scale

    corrected = apply_reference_scale(values, scale)
    out: dict[str, np.ndarray] = {}
    for name, column in values.items():
        out[name] = corrected.get(name, column)
        if f"{name}_raw" in corrected:
            out[f"{name}_raw"] = corrected[f"{name}_raw"]
        if f"{name}_scale" in corrected:          # <label>_err_scale after <label>_err
            out[f"{name}_scale"] = corrected[f"{name}_scale"]
    return out


def ensemble_label_ranges(metas: Sequence[Mapping[str, Any]]
                          ) -> dict[str, tuple[float, float]]:
    """Each label's training range over all members (OUTSIDE_TRAINING)."""
    return {label: (min(m["label_min"][i] for m in metas), max(m["label_max"][i] for m in metas))
            for i, label in enumerate(metas[0]["labels"])}


def bin_edges(metas: Sequence[Mapping[str, Any]]) -> dict[str, list[float]] | None:
    """label → bin edges of ``<label>_prob`` where the members predict binned distributions
    (their metadata has ``bins``), else None."""
    if "bins" not in metas[0]:
        return None
    return {b["name"]: [float(b["low"]) + float(b["width"]) * k for k in range(b["n_bins"] + 1)]
            for b in metas[0]["bins"]}


def finish_catalog(out: pd.DataFrame, pred: pd.DataFrame, labels: Sequence[str],
                   metas: Sequence[Mapping[str, Any]], cfg: Mapping[str, Any]) -> pd.DataFrame:
    """``out`` + n_members, the quality bits (``cfg``: the ``catalog`` section's thresholds;
    training ranges from the members' ``metas``) and the per-spectrum vectors of ``pred``;
    rows of ``out`` and ``pred`` correspond.

    The nearest labelled stars become one ';'-separated string: FITS and VOTable readers have
    no arrays of strings."""
    out = out.copy()
    out["n_members"] = pred["n_members"].to_numpy()
    out[FLAG_COLUMN] = compute_flags(out, list(labels), ensemble_label_ranges(metas),
                                     cfg["snr_min"], cfg["max_err"],
                                     cfg.get("catalogue_mismatch_p"))
    vectors = [c for c in pred.columns if c.endswith("_prob")
               or c in ("knn_star_id", "knn_distance", "embedding")]
    if vectors:
        extra = pred[vectors].reset_index(drop=True)
        if "knn_star_id" in extra:
            extra["knn_star_id"] = [";".join(map(str, ids)) for ids in extra["knn_star_id"]]
        out = pd.concat([out.reset_index(drop=True), extra], axis=1)
    return out


def catalog_tables(*, shards: Sequence[str | os.PathLike], table: str | os.PathLike,
                   clean_table: str | os.PathLike, model_dirs: Sequence[str | os.PathLike],
                   labels: Sequence[str], cfg: Mapping[str, Any],
                   classes: Mapping[str, float] | None = None, carry: Sequence[str] = (),
                   refined: Sequence[str | os.PathLike] | None = None,
                   scale: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The catalogue from prediction shards, the star table and the clean table.

    ``cfg`` is the experiment's ``catalog`` section (flag thresholds); ``classes``
    (giant_logg_max, dwarf_logg_min) adds a giant / subgiant / dwarf column; ``carry`` names
    input-catalogue columns copied beside the ids where the star table has them (positions,
    survey identifiers); ``refined`` (the refine stage's shard tables) adds
    ``<label>_refined``, ``<label>_refined_err``, ``<label>_combined``, ``<label>_combined_err``
    (the refined and the network's label combined), ``refine_chi2_red``, ``refine_converged``
    and the REFINE_POOR_FIT flag; ``scale`` (a :mod:`starlabels.reference_scale` record) puts the
    labels onto the reference stars' scale, keeping ``<label>_raw`` (refined labels too: the
    emulator learnt the same catalogue scale).
    """
    stars = artifacts.load_table(table)
    pred = merge_shards(list(shards), n_rows=len(stars))
    cleaned = artifacts.load_table(clean_table, columns=["keep", "reason", "cleaned"])
    out = pd.DataFrame({"spectrum_id": stars["spectrum_id"], "star_id": stars["star_id"]})
    for name in carry:
        if name in stars:
            out[name] = stars[name].to_numpy()
    out["split"] = stars["split"].to_numpy()
    out["snr"] = stars["snr"].to_numpy()
    for name, values in prediction_columns(pred, labels, classes, scale).items():
        out[name] = values
    for label in labels:
        # catalogue (reference) labels the survey gave, kept beside ours for comparison
        out[f"{label}_ref"] = stars[label].to_numpy(dtype=float) if label in stars else np.nan
    with_errors = [label for label in labels if label in stars and f"e_{label}" in stars]
    if with_errors:
        # on the catalogue's scale: the labels before the reference stars moved them
        ours = {label: out[f"{label}_raw"] if f"{label}_raw" in out else out[label]
                for label in with_errors}
        out["catalogue_chi2"], out["catalogue_chi2_p"] = catalogue_chi2(
            ours, {label: out[f"{label}_err"] for label in with_errors},
            {label: stars[label] for label in with_errors},
            {label: stars[f"e_{label}"] for label in with_errors})
    if refined:
        ref = merge_shards(list(refined), n_rows=len(stars))
        if not ref["spectrum_id"].astype(str).equals(stars["spectrum_id"].astype(str)):
            raise ValueError("refine shards do not list the star table's spectra in its order")
        for label in labels:
            for suffix in ("refined", "refined_err", "combined", "combined_err"):
                out[f"{label}_{suffix}"] = ref[f"{label}_{suffix}"].to_numpy()
        if scale is not None:
            # the emulator learnt the same catalogue labels as the network, so its labels share
            # that catalogue's scale: the same trend, evaluated at the refined (and combined)
            # labels, moves them
            from .reference_scale import apply_reference_scale

            for kind in ("refined", "combined"):
                moved = apply_reference_scale(
                    {label: out[f"{label}_{kind}"].to_numpy() for label in labels}, scale)
                for label in labels:
                    if label in moved:
                        out[f"{label}_{kind}"] = moved[label]
        for column in ("refine_chi2_red", "refine_converged", "refine_unlike_training"):
            out[column] = ref[column].to_numpy()
    out["clean_keep"] = cleaned["keep"].to_numpy(dtype=bool)
    out["clean_reason"] = cleaned["reason"].fillna("").to_numpy()
    metas = [artifacts.load_json(Path(d) / "model.json") for d in model_dirs]
    out = finish_catalog(out, pred, labels, metas, cfg)
    if refined:
        out = out.drop(columns="refine_unlike_training")   # it lives on as REFINE_POOR_FIT
    return out


def read_catalog(path: str | os.PathLike, extname: str = "STARLABELS") -> pd.DataFrame:
    """Read a catalog written by :func:`write_catalog` from FITS or Parquet.

    Column names come back as written; FITS strings are stripped of padding; the provenance
    mapping is in ``df.attrs['provenance']``.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".parquet") or name.endswith(".pq"):
        df = artifacts.load_table(path)
        df.attrs["provenance"] = artifacts.table_metadata(path)
        return df
    if not any(name.endswith(s) for s in (".fits", ".fit", ".fts", ".fits.gz")):
        raise ValueError(f"{path}: not a .fits or .parquet catalog")
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        hdu = hdul[extname] if extname in hdul else next(
            (h for h in hdul if isinstance(h, fits.BinTableHDU)), None)
        if hdu is None:
            raise ValueError(f"{path}: no binary table")
        data = hdu.data
        read = {}
        for col in hdu.columns:
            values = np.asarray(data[col.name])
            if values.dtype.kind in "SU":
                values = np.array([v.decode("ascii") if isinstance(v, bytes) else str(v)
                                   for v in values], dtype=object)
                values = np.array([v.rstrip() for v in values], dtype=object)
            else:
                values = values.astype(values.dtype.newbyteorder("="))
                if values.ndim > 1:      # array columns: one vector per row, as in Parquet
                    values = list(values)
            read[col.name] = values
        df = pd.DataFrame(read)
        raw = hdul[0].header.get("PROVJSON")
        df.attrs["provenance"] = json.loads(raw) if raw else {}
    return df


def verify_fits(path: str | os.PathLike) -> tuple[int, int, str] | None:
    """Run ``fitsverify -q``: (errors, warnings, its output line); None without the binary."""
    binary = shutil.which("fitsverify")
    if binary is None:
        return None
    out = subprocess.run([binary, "-q", str(path)], capture_output=True, text=True, timeout=120)
    text = (out.stdout + out.stderr).strip()
    if "verification OK" in text:
        return 0, 0, text
    match = re.search(r"(\d+)\s+warnings?\s+and\s+(\d+)\s+errors?", text)
    if not match:
        raise RuntimeError(f"cannot parse fitsverify output: {text!r}")
    return int(match.group(2)), int(match.group(1)), text
