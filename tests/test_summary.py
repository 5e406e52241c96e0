"""The report's tables: metrics per label and the catalogue summary, as HTML pages."""
from __future__ import annotations

import numpy as np
import pandas as pd

from starlabels import artifacts
from starlabels.catalog import FLAG_BITS
from starlabels.summary import catalog_summary, metrics_table, targets_table, write_tables

METRICS = {
    "experiment": "tiny_ges", "labels": ["teff", "logg"], "evaluation_split": "test",
    "precision": {"vs_true": {"teff": {"sigma": 91.0, "bias": -25.0, "n": 900},
                              "logg": {"sigma": 0.14, "bias": -0.06, "n": 900}},
                  "n_stars": 1011},
    "uncertainty": {"teff": {"coverage68": 0.27, "coverage95": 0.5}},
    "targets": {"sigma_vs_true.teff": {"measured": 91.0, "target": 100.0, "met": True},
                "sigma_vs_true.logg": {"measured": 0.14, "target": 0.1, "met": False},
                "err_coverage68.teff": {"measured": 0.27, "target": [0.63, 0.73], "met": False}},
}


def test_metrics_table_has_one_row_per_label_with_targets():
    table = metrics_table(METRICS)
    assert table["label"].tolist() == ["Teff", "log g (dex, g in cm s-2)"]
    assert table["σ vs_true"].tolist() == [91.0, 0.14]
    assert table["68% coverage"].iloc[0] == 0.27 and np.isnan(table["68% coverage"].iloc[1])
    assert table["95% coverage"].iloc[0] == 0.5
    assert table["met"].tolist() == ["yes", "NO"]
    targets = targets_table(METRICS)
    assert targets["wanted"].tolist() == ["≤ 100", "≤ 0.1", "0.63 – 0.73"]
    assert targets["met"].tolist() == ["yes", "NO", "NO"]


def test_catalog_summary_counts_flags_and_uncertainties(tmp_path):
    cat = pd.DataFrame({"teff": [5000.0, 5500.0, np.nan, 6000.0],
                        "teff_err": [50.0, 60.0, 70.0, 80.0],
                        "label_flags": np.array([0, FLAG_BITS["LOW_SNR"],
                                                 FLAG_BITS["LOW_SNR"] | FLAG_BITS["PREDICTION_NAN"],
                                                 0], dtype=np.int32)})
    per_label, bits = catalog_summary(cat, ["teff"])
    row = per_label.iloc[0]
    assert row["N finite"] == 3 and row["median"] == 5500.0 and row["median err"] == 65.0
    counts = dict(zip(bits["flag"], bits["stars"]))
    assert counts["LOW_SNR"] == 2 and counts["PREDICTION_NAN"] == 1 and counts["none set"] == 2
    metrics, parquet = tmp_path / "metrics.json", tmp_path / "cat.parquet"
    artifacts.save_json(metrics, METRICS)
    artifacts.save_table(parquet, cat)
    write_tables(metrics=metrics, catalog=parquet, labels=["teff"],
                 metrics_html=tmp_path / "m.html", catalog_html=tmp_path / "c.html")
    page = (tmp_path / "c.html").read_text()
    assert "catalogue of 4 stars" in page and "PREDICTION_NAN" in page and "<table" in page
    assert "validation metrics" in (tmp_path / "m.html").read_text()
