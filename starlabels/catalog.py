"""The label catalog: quality bit flags, merging prediction shards, FITS + Parquet output.

Conventions (after SDSS-V Astra, without its hard-coded paths):

- every row carries an int32 ``flags`` bit mask (:data:`FLAG_BITS`); :data:`FLAG_BAD_MASK` marks
  bits that make a row unusable, :data:`FLAG_WARN_MASK` those that call for care;
- FITS column names (TTYPE) are written **as-is** (the lower-case names used in every table of the
  pipeline, e.g. ``teff``, ``teff_std``), so the FITS and Parquet catalogs have identical columns
  and :func:`read_catalog` returns the same DataFrame from either. FITS column names are
  case-insensitive, so names differing only in case are refused;
- the units of a label and of its derived columns (``<label>_std`` and friends) come from
  :data:`starlabels.labels.LABELS`; a few other well-known columns (radial velocity, coordinates)
  get theirs from :data:`KNOWN_UNITS`;
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

from . import __version__, artifacts
from .labels import LABELS, check_labels

# ---------------------------------------------------------------- flags

FLAG_BITS: dict[str, int] = {
    "CLEAN_REJECTED": 1 << 0,
    "LOW_SNR": 1 << 1,
    "HIGH_SPREAD": 1 << 2,
    "OUTSIDE_TRAINING": 1 << 3,
    "PREDICTION_NAN": 1 << 4,
    "IN_TRAINING_SET": 1 << 5,
    "REFINE_POOR_FIT": 1 << 6,
}

FLAG_DESCRIPTIONS: dict[str, str] = {
    "CLEAN_REJECTED": "t-SNE cleaning rejected this training spectrum (clean_keep false)",
    "LOW_SNR": "S/N below the configured minimum, or S/N unknown",
    "HIGH_SPREAD": "ensemble std of at least one label above its configured maximum",
    "OUTSIDE_TRAINING": "at least one predicted label outside the training label range",
    "PREDICTION_NAN": "at least one predicted label is not finite",
    "IN_TRAINING_SET": "spectrum was in the training split: in-sample prediction",
    "REFINE_POOR_FIT": "the refine stage's best-fit model does not describe the spectrum "
                       "(refine_chi2_red above the threshold set on the valid split): unlike "
                       "the training set (a defect, a binary, emission, a rare star)",
}

#: rows with any of these bits must not be used
FLAG_BAD_MASK: int = FLAG_BITS["PREDICTION_NAN"]
#: rows with any of these bits are usable with care (IN_TRAINING_SET is information only)
FLAG_WARN_MASK: int = (FLAG_BITS["CLEAN_REJECTED"] | FLAG_BITS["LOW_SNR"]
                       | FLAG_BITS["HIGH_SPREAD"] | FLAG_BITS["OUTSIDE_TRAINING"]
                       | FLAG_BITS["REFINE_POOR_FIT"])


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
                  snr_min: float | None, max_std: Mapping[str, float]) -> np.ndarray:
    """int32 bit mask per row (see :data:`FLAG_BITS`).

    Columns used: the predicted ``<label>`` columns; ``<label>_std`` for labels in ``max_std``;
    ``snr`` unless ``snr_min`` is None; ``clean_keep`` (bool, from :func:`attach_clean`),
    ``split`` and ``refine_unlike_training`` (the refine stage's χ² verdict) when present. Labels missing from ``training_ranges`` / ``max_std`` are not tested
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
    for label, limit in max_std.items():
        if label in values:
            flags[column(f"{label}_std") > float(limit)] |= FLAG_BITS["HIGH_SPREAD"]
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
    return flags


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

#: units of columns that are not labels; the label columns take theirs from LABELS
KNOWN_UNITS: dict[str, str] = {
    "rv": "km/s", "vrad": "km/s", "v_rad": "km/s", "vsini": "km/s", "vmic": "km/s",
    "ra": "deg", "dec": "deg", "glon": "deg", "glat": "deg",
}
#: suffixes of columns that share their label's unit: teff_std, teff_ref, teff_err, ...
LABEL_SUFFIXES = ("std", "std_raw", "std_cal", "err", "ref", "true", "mean", "median", "raw",
                  "cal", "bias", "resid", "q16", "q84", "members_std", "refined", "refined_err",
                  "refined_err_formal")

_TTYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,67}$")


def column_unit(name: str) -> str | None:
    """FITS TUNIT for a catalog column, or None when it has no unit (S/N, ids, flags)."""
    for label in LABELS.values():
        if name == label.name or any(name == f"{label.name}_{s}" for s in LABEL_SUFFIXES):
            return label.unit
    return KNOWN_UNITS.get(name)


def column_description(name: str) -> str | None:
    """A short TTYPE comment for label columns and the flags column."""
    for label in LABELS.values():
        if name == label.name:
            return f"{label.description} (ensemble mean)"
        if name == f"{label.name}_std":
            return f"ensemble std of {label.name}"
        if name == f"{label.name}_refined":
            return f"{label.name} from the refine stage's spectral fit"
        if name == f"{label.name}_refined_err":
            return f"calibrated error of {label.name}_refined"
    if name == "flags":
        return "quality bit flags, see FLAGBnn keywords"
    return None


def _ascii(text: Any) -> str:
    return str(text).encode("ascii", "replace").decode("ascii")


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _fits_column(name: str, series: pd.Series):
    """One astropy Column with the FITS type that keeps the pandas values exactly."""
    from astropy.io import fits

    unit = column_unit(name)
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
        cards.append((f"FLAGB{n:02d}", name, f"flags bit {n} (value {bit})"))
    cards.append(("FLAGBAD", FLAG_BAD_MASK, "flags & FLAGBAD != 0: do not use"))
    cards.append(("FLAGWARN", FLAG_WARN_MASK, "flags & FLAGWARN != 0: use with care"))
    return cards


def build_hdulist(df: pd.DataFrame, *, labels: Sequence[str], provenance: Mapping[str, Any],
                  extname: str = "STARLABELS"):
    """The catalog as an astropy HDUList (primary + one binary table); see the module docstring."""
    from astropy.io import fits

    labels = check_labels(list(labels))
    missing = [lab for lab in labels if lab not in df.columns]
    if missing:
        raise ValueError(f"catalog lacks label column(s) {missing}")
    _check_names(list(df.columns))
    table = fits.BinTableHDU.from_columns([_fits_column(str(c), df[c]) for c in df.columns],
                                          name=extname)
    for i, name in enumerate(df.columns, start=1):
        text = column_description(str(name))
        if text:
            table.header.comments[f"TTYPE{i}"] = _fit_comment(str(name), text)
    primary = fits.PrimaryHDU()
    for key, value, comment in _provenance_cards(provenance):
        _set_card(primary.header, key, value, comment)
        _set_card(table.header, key, value, comment)
    primary.header["LABELS"] = (",".join(labels), "label columns of the catalog")
    for key, value, comment in _flag_cards():
        table.header[key] = (value, comment)
    for name, bit in FLAG_BITS.items():
        text = f"flags bit {int(bit).bit_length() - 1} {name}: {FLAG_DESCRIPTIONS[name]}"
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


def write_catalog(df: pd.DataFrame, fits_path: str | os.PathLike | None,
                  parquet_path: str | os.PathLike | None, *, labels: Sequence[str],
                  provenance: Mapping[str, Any], extname: str = "STARLABELS") -> None:
    """Write the catalog to FITS (with checksums) and/or Parquet, each atomically.

    ``provenance`` is an :func:`artifacts.provenance` mapping; the keys ``experiment``,
    ``method`` and ``n_members`` fill EXPERIM, METHOD and NMEMBER. Either path may be None.
    """
    if fits_path is not None:
        hdul = build_hdulist(df, labels=labels, provenance=provenance, extname=extname)
        with artifacts.atomic_path(fits_path) as tmp:
            hdul.writeto(tmp, overwrite=True, checksum=True)
    if parquet_path is not None:
        artifacts.save_table(parquet_path, df, provenance)

# ---------------------------------------------------------------- the catalogue's columns

def catalog_tables(*, shards: Sequence[str | os.PathLike], table: str | os.PathLike,
                   clean_table: str | os.PathLike, model_dirs: Sequence[str | os.PathLike],
                   labels: Sequence[str], cfg: Mapping[str, Any],
                   classes: Mapping[str, float] | None = None,
                   refined: Sequence[str | os.PathLike] | None = None
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The catalogue from prediction shards, the star table and the clean table: (the scalar
    columns for FITS, the same plus the per-spectrum vectors for Parquet).

    ``cfg`` is the experiment's ``catalog`` section (flag thresholds); ``classes``
    (giant_logg_max, dwarf_logg_min) adds a giant / subgiant / dwarf column; ``refined`` (the
    refine stage's shard tables) adds ``<label>_refined``, ``<label>_refined_err``,
    ``refine_chi2_red``, ``refine_converged`` and the REFINE_POOR_FIT flag.
    """
    stars = artifacts.load_table(table)
    pred = merge_shards(list(shards), n_rows=len(stars))
    cleaned = artifacts.load_table(clean_table, columns=["keep", "reason", "cleaned"])
    out = pd.DataFrame({"spectrum_id": stars["spectrum_id"], "star_id": stars["star_id"],
                        "split": stars["split"], "snr": stars["snr"]})
    for label in labels:
        out[label] = pred[label].to_numpy()
        out[f"{label}_std"] = pred[f"{label}_std"].to_numpy()
        # deep_remap: the distribution's 16th/84th percentiles and the members' disagreement
        for suffix in ("q16", "q84", "members_std"):
            if f"{label}_{suffix}" in pred:
                out[f"{label}_{suffix}"] = pred[f"{label}_{suffix}"].to_numpy()
    if classes is not None:
        out["evolutionary_class"] = evolutionary_class(out["logg"].to_numpy(),
                                                       classes["giant_logg_max"],
                                                       classes["dwarf_logg_min"])
    for label in labels:
        # catalogue (reference) labels the survey gave, kept beside ours for comparison
        out[f"{label}_ref"] = stars[label].to_numpy(dtype=float) if label in stars else np.nan
    if refined:
        ref = merge_shards(list(refined), n_rows=len(stars))
        if not ref["spectrum_id"].astype(str).equals(stars["spectrum_id"].astype(str)):
            raise ValueError("refine shards do not list the star table's spectra in its order")
        for label in labels:
            for suffix in ("refined", "refined_err"):
                out[f"{label}_{suffix}"] = ref[f"{label}_{suffix}"].to_numpy()
        for column in ("refine_chi2_red", "refine_converged", "refine_unlike_training"):
            out[column] = ref[column].to_numpy()
    out["n_members"] = pred["n_members"].to_numpy()
    out["clean_keep"] = cleaned["keep"].to_numpy(dtype=bool)
    out["clean_reason"] = cleaned["reason"].fillna("").to_numpy()
    metas = [artifacts.load_json(Path(d) / "model.json") for d in model_dirs]
    ranges = {label: (min(m["label_min"][i] for m in metas), max(m["label_max"][i] for m in metas))
              for i, label in enumerate(metas[0]["labels"])}
    out["flags"] = compute_flags(out, list(labels), ranges, cfg["snr_min"], cfg["max_std"])
    if refined:
        out = out.drop(columns="refine_unlike_training")   # it lives on as REFINE_POOR_FIT
    # per-spectrum vectors (probabilities per bin, nearest labelled stars, embedding) are
    # Parquet list columns; the FITS catalogue keeps the scalar columns
    vectors = [c for c in pred.columns if c.endswith("_prob")
               or c in ("knn_star_id", "knn_distance", "embedding")]
    full = pd.concat([out, pred[vectors].reset_index(drop=True)], axis=1) if vectors else out
    return out, full



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
        columns = {}
        for col in hdu.columns:
            values = np.asarray(data[col.name])
            if values.dtype.kind in "SU":
                values = np.array([v.decode("ascii") if isinstance(v, bytes) else str(v)
                                   for v in values], dtype=object)
                values = np.array([v.rstrip() for v in values], dtype=object)
            else:
                values = values.astype(values.dtype.newbyteorder("="))
            columns[col.name] = values
        df = pd.DataFrame(columns)
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
