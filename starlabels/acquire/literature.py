"""Literature labels of reference stars: the resource tables and the calibration table the
normalize stage reads.

Two tables ship with the package (:mod:`starlabels.data`):

* ``benchmark_stars.csv`` — Gaia FGK benchmark stars (Teff, log g, [Fe/H] of their third
  version, Soubiran et al. 2024; the Sun's nominal values), the reference scale Gaia-ESO is
  calibrated on;
* ``marvels_calibration_stars.csv`` — the 30 MARVELS calibration stars of the deep-REMAP
  comparison (Ghezzi et al. 2014, AJ 148, 105). Its rows are NOT in this repository: they must be
  filled from the paper, so the table ships with its header only and an experiment that
  requires the comparison refuses to run until it has rows.

Every row names its reference and says whether its values were checked against the published
table (``verified``); values are never made up to fill a gap. Lines starting with '#' are comments.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .. import config, data, surveys
from ..batch import Log

BENCHMARK_STARS = data.path("benchmark_stars.csv")
MARVELS_CALIBRATION_STARS = data.path("marvels_calibration_stars.csv")

#: label columns (value, 1σ error) every literature table has
LABEL_COLUMNS = ("teff", "e_teff", "logg", "e_logg", "fe_h", "e_fe_h")
BENCHMARK_COLUMNS = ("name", "star_id", *LABEL_COLUMNS, "reference", "verified", "check")
MARVELS_CALIBRATION_COLUMNS = ("star_id", *LABEL_COLUMNS, "reference", "verified", "check")
#: what the normalize stage's calibration table holds (the simulated path writes the same)
CALIBRATION_COLUMNS = ("star_id", *LABEL_COLUMNS, "reference")
_PLAUSIBLE = {"teff": (2500.0, 10000.0), "logg": (-0.5, 5.5), "fe_h": (-5.0, 1.0)}


class LiteratureTableError(ValueError):
    """A literature resource table that cannot be used as is; the message names file and row."""


def _as_bool(values: pd.Series, path: Path) -> np.ndarray:
    """'true'/'false' (any case) → bool; anything else is an error naming the value."""
    text = values.astype(str).str.strip().str.lower()
    bad = ~text.isin(["true", "false"])
    if bad.any():
        raise LiteratureTableError(f"{path}: column 'verified' must be true or false, got "
                                   f"{sorted(set(values[bad].astype(str)))[:5]}")
    return (text == "true").to_numpy()


def read_literature_table(path: str | Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read and check a literature CSV: the declared columns, numeric labels in a plausible
    range, a reference on every row, ``verified`` true/false. An empty table (header only) is
    returned empty with the declared columns."""
    path = data.resolve(path)
    if not path.exists():
        raise LiteratureTableError(f"{path}: literature table not found")
    table = pd.read_csv(path, comment="#", dtype=str, keep_default_na=False,
                        skipinitialspace=True)
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise LiteratureTableError(f"{path}: missing column(s) {missing}; expected {list(columns)}")
    table = table[list(columns)].copy()
    for column in LABEL_COLUMNS:
        numbers = pd.to_numeric(table[column].replace("", np.nan), errors="coerce")
        bad = numbers.isna() & table[column].ne("")
        if bad.any():
            raise LiteratureTableError(f"{path}: column {column!r} has non-numbers "
                                       f"{table.loc[bad, column].tolist()[:5]}")
        table[column] = numbers.astype(float)
    for label, (lo, hi) in _PLAUSIBLE.items():
        out = table[label].notna() & ~table[label].between(lo, hi)
        if out.any():
            raise LiteratureTableError(f"{path}: {label} outside [{lo}, {hi}] in row(s) "
                                       f"{table.index[out].tolist()}: unit mix-up?")
    no_reference = table["reference"].str.strip() == ""
    if no_reference.any():
        raise LiteratureTableError(f"{path}: row(s) {table.index[no_reference].tolist()} name no "
                                   f"reference")
    table["verified"] = _as_bool(table["verified"], path)
    return table.reset_index(drop=True)


def load_benchmark_stars(path: str | Path = BENCHMARK_STARS) -> pd.DataFrame:
    """The Gaia FGK benchmark stars table (name, survey star_id where known, labels, errors,
    reference, verified, check)."""
    return read_literature_table(path, BENCHMARK_COLUMNS)


def load_marvels_calibration_stars(path: str | Path = MARVELS_CALIBRATION_STARS
                                   ) -> pd.DataFrame:
    """The MARVELS calibration stars (MARVELS star_id, literature labels, reference)."""
    table = read_literature_table(path, MARVELS_CALIBRATION_COLUMNS)
    duplicated = table["star_id"][table["star_id"].duplicated()]
    if len(duplicated):
        raise LiteratureTableError(f"{data.resolve(path)}: star_id repeated: "
                                   f"{duplicated.tolist()[:5]}")
    return table


def empty_calibration() -> pd.DataFrame:
    """The calibration table with no rows (the layout the simulated Gaia-ESO survey writes)."""
    frame = pd.DataFrame({c: pd.Series(dtype=float) for c in LABEL_COLUMNS})
    frame.insert(0, "star_id", pd.Series(dtype=str))
    frame["reference"] = pd.Series(dtype=str)
    return frame


def calibration_table(survey: str, cfg: Mapping[str, Any], log: Log = print) -> pd.DataFrame:
    """Literature labels for the normalize stage (``calibration_stars.parquet``).

    ``cfg`` is the experiment's ``reference_stars`` section: ``table`` (a resource CSV or null),
    ``required`` (refuse an empty table), ``use_unverified`` (keep rows not yet checked against
    the paper); keys it leaves out take the schema's defaults. The survey's record says which
    layout the table has. Only rows with a survey star_id can be matched to observed spectra.
    """
    cfg = config.section("reference_stars", cfg)
    if not cfg["table"]:
        if cfg["required"]:
            raise LiteratureTableError("reference_stars.required is true but reference_stars.table is "
                                       "null: name the literature table to compare with")
        return empty_calibration()
    table = surveys.get(survey).reference_stars(cfg["table"])
    path = data.resolve(cfg["table"])
    if table.empty and cfg["required"]:
        raise LiteratureTableError(
            f"{path} has no rows, so the calibration comparison cannot run. The MARVELS "
            f"calibration stars' literature labels (Ghezzi et al. 2014, AJ 148, 105) must be "
            f"copied into it from the paper, one row per star with its reference; until then "
            f"set reference_stars.required: false to run without the comparison.")
    unverified = ~table["verified"]
    if unverified.any() and not cfg["use_unverified"]:
        log(f"calibration: {int(unverified.sum())} of {len(table)} rows of {path} are not "
            f"verified against their paper and are left out (reference_stars.use_unverified: true "
            f"keeps them)")
        table = table[~unverified]
    matched = table[table["star_id"].astype(str).str.strip() != ""]
    if len(matched) < len(table):
        log(f"calibration: {len(table) - len(matched)} rows of {path} have no survey star_id "
            f"yet and cannot be matched to spectra")
    if matched.empty and cfg["required"]:
        raise LiteratureTableError(f"{path}: no usable rows (verified, with a survey star_id) "
                                   f"and reference_stars.required is true")
    out = matched[list(CALIBRATION_COLUMNS)].reset_index(drop=True)
    out["star_id"] = out["star_id"].astype(str).str.strip()
    return out


__all__ = ["BENCHMARK_STARS", "MARVELS_CALIBRATION_STARS", "LiteratureTableError",
           "load_benchmark_stars", "load_marvels_calibration_stars", "calibration_table",
           "empty_calibration", "read_literature_table"]
