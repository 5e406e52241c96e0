"""What each catalogue column means: description, IVOA UCD1+ and unit, found by column name.

One registry serves the FITS catalogue (TCOMMn, TUCDn, TUNITn), the Parquet one (field metadata
and the embedded VOTable header) and the documentation. A name is looked up as

- one of :data:`COLUMNS` (identifiers, positions, S/N, flags, ...), or
- ``<label>`` or ``<label>_<suffix>`` with the label from :data:`starlabels.labels.LABELS` and
  the suffix from :data:`LABEL_SUFFIXES`: the suffix says what the number is (an uncertainty, a
  percentile, the survey's own value), the label what quantity it is of.

Units are strings that astropy parses in FITS and VOUnit syntax without a warning. Logarithmic
quantities (log g, [X/Y]) have none: neither standard has a logarithmic unit astropy accepts
(``dex`` and ``log(cm.s**-2)`` are refused), so their descriptions say "dex" instead.
"""
from __future__ import annotations

from dataclasses import dataclass

from .labels import LABELS


@dataclass(frozen=True)
class ColumnInfo:
    description: str
    #: IVOA UCD1+ (checked against the controlled vocabulary in the tests)
    ucd: str
    #: FITS / VOUnit unit string; None = dimensionless or logarithmic
    unit: str | None = None


@dataclass(frozen=True)
class Suffix:
    """``<label>_<suffix>``: a description template ({label} = the label's words) and the UCD
    built from the label's (``{ucd}``); ``same_unit`` = the label's unit applies."""
    description: str
    ucd: str
    same_unit: bool = True


#: columns that are not about one label
COLUMNS: dict[str, ColumnInfo] = {
    "spectrum_id": ColumnInfo("identifier of the (coadded) spectrum", "meta.id"),
    "star_id": ColumnInfo("survey identifier of the star (Gaia-ESO CNAME, MARVELS name)",
                          "meta.id;meta.main"),
    "row": ColumnInfo("row of the spectrum in the normalized flux matrix", "meta.record"),
    "split": ColumnInfo("role of the star: train, valid, test, calibration or target",
                        "meta.code.class"),
    "ra": ColumnInfo("right ascension (ICRS) from the input catalogue", "pos.eq.ra;meta.main",
                     "deg"),
    "dec": ColumnInfo("declination (ICRS) from the input catalogue", "pos.eq.dec;meta.main",
                      "deg"),
    "plate": ColumnInfo("MARVELS plate the spectrum was observed on", "meta.id;obs.field"),
    "files": ColumnInfo("input files the spectrum was read from (';'-separated)", "meta.ref.uri"),
    "snr": ColumnInfo("median S/N per pixel of the normalized spectrum",
                      "stat.snr"),
    "rv_used": ColumnInfo("radial velocity removed to reach the rest frame",
                          "spect.dopplerVeloc.opt", "km/s"),
    "rv_source": ColumnInfo("where rv_used came from: table, header or none", "meta.note"),
    "n_members": ColumnInfo("number of ensemble members that predicted the labels",
                            "meta.number"),
    "clean_keep": ColumnInfo("kept by the t-SNE cleaning of the training set", "meta.code.qual"),
    "clean_reason": ColumnInfo("why the t-SNE cleaning rejected the spectrum", "meta.note"),
    "label_flags": ColumnInfo("quality bit flags of the labels (FLAGBnn keywords)",
                              "meta.code.qual"),
    "evolutionary_class": ColumnInfo("giant, subgiant or dwarf from the predicted log g",
                                     "src.class.luminosity"),
    "knn_star_id": ColumnInfo("nearest labelled training stars (';'-separated)",
                              "meta.id.cross"),
    "knn_distance": ColumnInfo("embedding distance to each nearest labelled star",
                               "stat.value"),
    "embedding": ColumnInfo("L2-normalised network embedding of the spectrum", "stat.value"),
    "refine_chi2_red": ColumnInfo("reduced chi-square of the refine stage's best fit",
                                  "stat.fit.chi2"),
    "refine_converged": ColumnInfo("the refine stage's fit converged", "meta.code.status"),
    "catalogue_chi2": ColumnInfo("chi-square, survey catalogue labels vs ours, 1 dof per label",
                                 "stat.fit.chi2"),
    "catalogue_chi2_p": ColumnInfo("probability of a chi-square >= catalogue_chi2 by chance",
                                   "stat.probability"),
}

#: ``<label>_<suffix>`` columns ("" = the label itself)
LABEL_SUFFIXES: dict[str, Suffix] = {
    "": Suffix("{label} predicted by the ensemble", "{ucd}"),
    "err": Suffix("calibrated total 1-sigma uncertainty of {label}", "stat.error;{ucd}"),
    "raw": Suffix("{label} before the catalogue's scale", "{ucd}"),
    "err_scale": Suffix("systematic 1-sigma error of the {label} scale",
                        "stat.error.sys;{ucd}"),
    "err_raw": Suffix("uncalibrated 1-sigma uncertainty of {label}", "stat.error;{ucd}"),
    "err_members": Suffix("scatter of the members' {label} (model part)", "stat.stdev;{ucd}"),
    "refined": Suffix("{label} from the refine stage's spectral fit", "{ucd}"),
    "refined_err": Suffix("calibrated 1-sigma uncertainty of {label}_refined",
                          "stat.error;{ucd}"),
    "combined": Suffix("{label}, network and fit combined by their errors", "{ucd}"),
    "combined_err": Suffix("1-sigma uncertainty of the combined {label}", "stat.error;{ucd}"),
    "q16": Suffix("16th percentile of the {label} distribution", "stat.percentile;{ucd}"),
    "q84": Suffix("84th percentile of the {label} distribution", "stat.percentile;{ucd}"),
    "ref": Suffix("{label} in the survey's own catalogue", "{ucd}"),
    "prob": Suffix("probability of each {label} bin; edges in header",
                   "stat.probability", same_unit=False),
}


def column_info(name: str) -> ColumnInfo | None:
    """The registry entry of column ``name`` (None for a name it does not know)."""
    if name in COLUMNS:
        return COLUMNS[name]
    for label in LABELS.values():
        if name == label.name:
            suffix = LABEL_SUFFIXES[""]
        elif name.startswith(f"{label.name}_") and name[len(label.name) + 1:] in LABEL_SUFFIXES:
            suffix = LABEL_SUFFIXES[name[len(label.name) + 1:]]
        else:
            continue
        return ColumnInfo(suffix.description.format(label=label.words),
                          suffix.ucd.format(ucd=label.ucd),
                          label.unit if suffix.same_unit else None)
    return None


def require(name: str) -> ColumnInfo:
    """:func:`column_info`, or a ValueError naming the column: no catalogue column goes out
    undescribed."""
    info = column_info(name)
    if info is None:
        raise ValueError(f"catalogue column {name!r} has no description: add it to "
                         f"starlabels.columns (COLUMNS, or LABEL_SUFFIXES for <label>_<suffix>)")
    return info
