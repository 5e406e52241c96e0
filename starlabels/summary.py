"""The tables of the Snakemake report: the validation metrics and a summary of the catalogue.

Each is a small self-contained HTML page (the report shows HTML results in a frame), built with
pandas' own HTML writer; the same numbers are in ``metrics.json`` and the catalogue.
"""
from __future__ import annotations

import html
import os
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import artifacts
from .catalog import FLAG_BITS, FLAG_COLUMN, FLAG_DESCRIPTIONS
from .labels import LABELS

_STYLE = ("body{font-family:sans-serif;font-size:14px;margin:1em}"
          "table{border-collapse:collapse;margin-bottom:1.5em}"
          "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
          "th{background:#eee}")


def metrics_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per label: σ and bias of every comparison in ``metrics['precision']`` (against
    the true labels, the reference labels, ...), the 68 % and 95 % coverage of ``<label>_err``
    (``metrics['uncertainty']``), and the σ target with whether it is met, where the experiment
    has one (``metrics['targets']['sigma_vs_true.<label>']``)."""
    precision = metrics.get("precision", {})
    uncertainty = metrics.get("uncertainty", {})
    targets = metrics["targets"] if "targets" in metrics else {}
    rows = []
    for label in metrics["labels"]:
        row: dict[str, Any] = {"label": LABELS[label].words if label in LABELS else label}
        for comparison, per_label in precision.items():
            stats = per_label.get(label) if isinstance(per_label, Mapping) else None
            if not isinstance(stats, Mapping):
                continue
            if "sigma" in stats:
                row[f"σ {comparison}"] = stats["sigma"]
                row[f"bias {comparison}"] = stats.get("bias")
                row[f"N {comparison}"] = stats.get("n")
        if label in uncertainty:
            row["68% coverage"] = uncertainty[label]["coverage68"]
            row["95% coverage"] = uncertainty[label]["coverage95"]
        target = targets.get(f"sigma_vs_true.{label}")
        if target is not None:
            row["target σ"] = target["target"]
            row["met"] = "yes" if target["met"] else "NO"
        rows.append(row)
    return pd.DataFrame(rows)


def targets_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Every acceptance target of ``metrics['targets']``: what, measured, target, met."""
    targets = metrics["targets"] if "targets" in metrics else {}
    return pd.DataFrame([{"target": key, "measured": entry["measured"],
                          "wanted": (f"{entry['target'][0]:g} – {entry['target'][1]:g}"
                                     if isinstance(entry["target"], (list, tuple))
                                     else f"≤ {entry['target']:g}"),
                          "met": "yes" if entry["met"] else "NO"}
                         for key, entry in targets.items()],
                        columns=["target", "measured", "wanted", "met"])


def catalog_summary(catalog: pd.DataFrame, labels: Sequence[str]) -> tuple[pd.DataFrame,
                                                                           pd.DataFrame]:
    """(per label: stars with a finite value, median, 16th-84th percentile range, median
    uncertainty; per flag bit: how many stars carry it)."""
    rows = []
    for label in labels:
        values = catalog[label].to_numpy(dtype=np.float64)
        ok = np.isfinite(values)
        error = f"{label}_err" if f"{label}_err" in catalog else None
        rows.append({
            "label": LABELS[label].words if label in LABELS else label,
            "unit": (LABELS[label].unit or "dex") if label in LABELS else "",
            "N finite": int(ok.sum()),
            "median": float(np.median(values[ok])) if ok.any() else np.nan,
            "16th pct": float(np.percentile(values[ok], 16)) if ok.any() else np.nan,
            "84th pct": float(np.percentile(values[ok], 84)) if ok.any() else np.nan,
            f"median {error.removeprefix(label + '_') if error else 'uncertainty'}":
                float(np.nanmedian(catalog[error])) if error else np.nan,
        })
    flags = catalog[FLAG_COLUMN].to_numpy()
    bits = [{"bit": str(int(bit).bit_length() - 1), "flag": name,
             "stars": int(((flags & bit) != 0).sum()), "meaning": FLAG_DESCRIPTIONS[name]}
            for name, bit in FLAG_BITS.items()]
    bits.append({"bit": "", "flag": "none set", "stars": int((flags == 0).sum()),
                 "meaning": "no bit set"})
    return pd.DataFrame(rows), pd.DataFrame(bits)


def _page(title: str, tables: Sequence[tuple[str, pd.DataFrame]], note: str = "") -> str:
    body = "".join(f"<h4>{html.escape(caption)}</h4>"
                   + frame.to_html(index=False, border=0, float_format=lambda v: f"{v:.4g}",
                                   na_rep="–")
                   for caption, frame in tables)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body><h3>{html.escape(title)}</h3>"
            f"{f'<p>{html.escape(note)}</p>' if note else ''}{body}</body></html>")


def write_tables(*, metrics: str | os.PathLike, catalog: str | os.PathLike,
                 labels: Sequence[str], metrics_html: str | os.PathLike,
                 catalog_html: str | os.PathLike) -> None:
    """The report's two pages: the metrics (from metrics.json) and the catalogue summary."""
    values = artifacts.load_json(metrics)
    experiment = values.get("experiment", "")
    note = (f"evaluation split: {values.get('evaluation_split')}; σ and bias of predicted − "
            f"reference label; coverage = fraction of true labels inside the 68 % / 95 % "
            f"interval of the calibrated uncertainty <label>_err")
    with artifacts.atomic_path(metrics_html) as tmp:
        tmp.write_text(_page(f"{experiment}: validation metrics",
                             [("precision per label", metrics_table(values)),
                              ("acceptance targets (validate.targets)", targets_table(values))],
                             note))
    cat = artifacts.load_table(catalog)
    per_label, bits = catalog_summary(cat, labels)
    with artifacts.atomic_path(catalog_html) as tmp:
        tmp.write_text(_page(f"{experiment}: catalogue of {len(cat)} stars",
                             [("labels", per_label), (f"quality bits ({FLAG_COLUMN})", bits)]))
