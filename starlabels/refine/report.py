"""The refine stage's report (``refine_report.json``, merged into metrics.json under ``refine``)
and its figure of data, model and residuals around the Mg I and Al I lines.

Against the simulator's truth (evaluation stars without injected defects): σ and 68 % coverage
of refined and network labels, overall, at S/N ≥ the target's minimum and per S/N bin; how often
REFINE_POOR_FIT flags the spectra with each kind of injected defect and the good ones; the
acceptance targets (``validate.targets.refine``) beside the measured values. Without truth (real
data): the same against the catalogue's labels, and the flagged fraction.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import artifacts, surveys
from ..catalog import FLAG_BITS, FLAG_COLUMN
from ..grid import WavelengthGrid
from ..labels import ELEMENT_RATIOS
from ..members import shard_rows
from ..validate import error_calibration, label_stats
from .jobs import network_errors

Log = Callable[[str], Any]
#: the lines the figure shows: (species, half-width of the window in Å)
FIGURE_SPECIES = ("Mg I", "Al I")
WINDOW_HALF_WIDTH = 2.0


def compare(pred: np.ndarray, err: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """σ, bias, robust σ, z-spread and 68 % coverage of ``pred`` ± ``err`` against ``ref``."""
    stats = label_stats(pred, ref)
    cov = error_calibration(pred, err, ref)
    return {**stats, "z_sigma": cov["z_sigma"], "coverage_68": cov["coverage_68"]}


def precision(sub: pd.DataFrame, labels: Sequence[str], ref_suffix: str,
              snr_bins: Sequence[float], snr_min: float) -> dict[str, Any]:
    """Per label, network, refined and combined labels against ``<label><ref_suffix>``: over
    all rows and at S/N ≥ ``snr_min`` (with the refined / network ratio of σ); network and
    refined per S/N bin."""
    snr = sub["snr"].to_numpy(dtype=float)
    out: dict[str, Any] = {}
    for label in labels:
        ref = sub[f"{label}{ref_suffix}"].to_numpy(dtype=float)
        network = (sub[label].to_numpy(dtype=float), network_errors(sub, label))
        refined = (sub[f"{label}_refined"].to_numpy(dtype=float),
                   sub[f"{label}_refined_err"].to_numpy(dtype=float))
        combined = (sub[f"{label}_combined"].to_numpy(dtype=float),
                    sub[f"{label}_combined_err"].to_numpy(dtype=float))
        entry: dict[str, Any] = {}
        for name, rows in (("all", np.ones(len(sub), dtype=bool)),
                           ("snr_min", snr >= snr_min)):
            net = compare(network[0][rows], network[1][rows], ref[rows])
            ref_ = compare(refined[0][rows], refined[1][rows], ref[rows])
            entry[name] = {"network": net, "refined": ref_,
                           "combined": compare(combined[0][rows], combined[1][rows],
                                               ref[rows]),
                           "sigma_ratio": ref_["sigma"] / net["sigma"] if net["sigma"] > 0
                           else float("nan")}
        entry["by_snr"] = []
        for lo, hi in zip(snr_bins[:-1], snr_bins[1:]):
            rows = (snr >= lo) & (snr < hi)
            entry["by_snr"].append({"snr_lo": lo, "snr_hi": hi,
                                    "network": compare(network[0][rows], network[1][rows],
                                                       ref[rows]),
                                    "refined": compare(refined[0][rows], refined[1][rows],
                                                       ref[rows])})
        out[label] = entry
    return out


#: the two χ² tests of a spectrum: the refine fit's (the spectrum against the emulator at its
#: best labels) and the catalogue's (the survey's own labels against ours). A spectrum whose
#: catalogue entry belongs to another star, or whose zeroed pixels normalize masked, fits the
#: emulator well: only the second can see the first kind.
CHI2_BITS = FLAG_BITS["REFINE_POOR_FIT"] | FLAG_BITS["CATALOGUE_MISMATCH"]


def flag_rates(sub: pd.DataFrame, bits: int = FLAG_BITS["REFINE_POOR_FIT"]) -> dict[str, Any]:
    """How often any of ``bits`` (default REFINE_POOR_FIT) flags the spectra with each injected
    defect and the good ones."""
    flagged = (sub[FLAG_COLUMN].to_numpy() & bits) != 0
    defect = sub["defect"].fillna("").astype(str).to_numpy()
    bad = defect != ""
    out: dict[str, Any] = {
        "n_defective": int(bad.sum()), "n_good": int((~bad).sum()),
        "defective_flagged_fraction": float(flagged[bad].mean()) if bad.any() else None,
        "good_flagged_fraction": float(flagged[~bad].mean()) if (~bad).any() else None,
        "per_defect": {}}
    for kind in sorted(set(defect[bad])):
        rows = defect == kind
        out["per_defect"][kind] = {"n": int(rows.sum()),
                                   "flagged_fraction": float(flagged[rows].mean())}
    return out


def check_targets(prec: Mapping[str, Any], flags: Mapping[str, Any] | None,
                  targets: Mapping[str, Any]) -> dict[str, Any]:
    """Each configured target beside the measured value and whether it is met."""
    out: dict[str, Any] = {}
    for label, limit in targets["sigma_ratio"].items():
        if limit is None or label not in prec:
            continue
        value = prec[label]["snr_min"]["sigma_ratio"]
        out[f"sigma_ratio_{label}"] = {"measured": value, "target": limit,
                                       "met": bool(value <= limit)}
    if targets["coverage68"] is not None:
        lo, hi = targets["coverage68"]
        for label in prec:
            value = prec[label]["all"]["refined"]["coverage_68"]
            out[f"coverage68_{label}"] = {"measured": value, "target": [lo, hi],
                                          "met": bool(lo <= value <= hi)}
    if flags is not None:
        # the refine fit's own χ² flag, then with the catalogue's χ² beside it
        for rates, suffix in ((flags, ""), (flags.get("with_catalogue"), "_with_catalogue")):
            if rates is None:
                continue
            for key, limit, test in (
                    ("defective_flagged_fraction", targets["flagged_defective_min"],
                     np.greater_equal),
                    ("good_flagged_fraction", targets["flagged_good_max"], np.less_equal)):
                if limit is not None and rates[key] is not None:
                    out[key + suffix] = {"measured": rates[key], "target": limit,
                                         "met": bool(test(rates[key], limit))}
    return out


def figure_windows(wavelength: np.ndarray, lines: pd.DataFrame
                   ) -> list[tuple[str, float, float, list[float]]]:
    """Windows around the Mg I and Al I lines on the grid; lines closer than a window merge."""
    picked = lines[lines["species"].isin(FIGURE_SPECIES)
                   & lines["wavelength_air"].between(wavelength.min(), wavelength.max())]
    picked = picked.sort_values("wavelength_air")
    windows: list[tuple[str, float, float, list[float]]] = []
    for species, w0 in zip(picked["species"], picked["wavelength_air"]):
        if windows and windows[-1][0].startswith(species) and w0 - windows[-1][3][-1] < \
                2 * WINDOW_HALF_WIDTH:
            name, lo, _, centres = windows[-1]
            windows[-1] = (name, lo, w0 + WINDOW_HALF_WIDTH, centres + [w0])
        else:
            windows.append((species, w0 - WINDOW_HALF_WIDTH, w0 + WINDOW_HALF_WIDTH, [w0]))
    return [(f"{name} {np.mean(c):.0f} Å", lo, hi, c) for name, lo, hi, c in windows]


def plot_rows(sub: pd.DataFrame, n: int) -> np.ndarray:
    """Up to ``n`` catalogue rows spread in S/N (quantiles) among converged fits."""
    use = sub[np.isfinite(sub["refine_chi2_red"]) & sub["refine_converged"].astype(bool)]
    if use.empty:
        use = sub[np.isfinite(sub["refine_chi2_red"])]
    if use.empty:
        return np.array([], dtype=int)
    order = use.sort_values("snr")
    picks = np.unique(np.round(np.linspace(0, len(order) - 1, min(n, len(order)))).astype(int))
    return order["catalog_row"].to_numpy()[picks]


def model_rows(model_files: Sequence[str], rows: np.ndarray, n_total: int) -> np.ndarray:
    """Best-fit model spectra of catalogue ``rows`` from the per-shard model files."""
    out = []
    for row in rows:
        for shard, path in enumerate(model_files):
            span = shard_rows(n_total, shard, len(model_files))
            if span.start <= row < span.stop:
                out.append(np.array(artifacts.load_matrix(path)[row - span.start]))
                break
    return np.array(out, dtype=np.float32)


def refine_report(*, catalog: str, truth: str | None, flux: str, ivar: str,
                  model_files: Sequence[str], calibration: str, labels: Sequence[str],
                  survey: str, grid_cfg: Mapping[str, Any], plot_stars: int,
                  snr_bins: Sequence[float], targets: Mapping[str, Any],
                  lines: pd.DataFrame, metrics: str, plot: str, log: Log,
                  metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``metrics`` (JSON) and ``plot`` (see the module docstring)."""
    from .. import plots

    cat = artifacts.load_table(catalog)
    cat["catalog_row"] = np.arange(len(cat))
    calib = artifacts.load_json(calibration)
    record = surveys.get(survey)
    fitted = np.isfinite(cat[f"{labels[0]}_refined"].to_numpy(dtype=float))
    flagged = (cat[FLAG_COLUMN].to_numpy() & FLAG_BITS["REFINE_POOR_FIT"]) != 0
    result: dict[str, Any] = {
        **dict(metadata), "n_catalog": int(len(cat)), "n_fitted": int(fitted.sum()),
        "converged_fraction": float(cat.loc[fitted, "refine_converged"].mean())
        if fitted.any() else None,
        "flagged_fraction": float(flagged[fitted].mean()) if fitted.any() else None,
        "chi2_red_threshold": calib["chi2_red_threshold"],
        "calibration": {label: {"slope": v["scale"]["slope"], **v["errors"]}
                        for label, v in calib["labels"].items()},
        "evaluation_split": record.evaluation_split, "truth": truth is not None}
    ev = cat[cat["split"].to_numpy() == record.evaluation_split]
    if truth is not None:
        true = artifacts.load_table(truth)
        ev = ev.merge(true[["star_id", "defect", *labels]].rename(
            columns={k: f"{k}_true" for k in labels}), on="star_id", how="left")
        good = ev[ev["defect"].fillna("").eq("")]
        result["precision"] = precision(good, labels, "_true", list(snr_bins),
                                        targets["snr_min"])
        result["flags"] = flag_rates(ev)
        result["flags"]["with_catalogue"] = flag_rates(ev, CHI2_BITS)
        show = good
    else:
        result["precision_vs_reference"] = precision(ev, labels, "_ref", list(snr_bins),
                                                     targets["snr_min"])
        result["flags"] = None
        show = ev
    if truth is not None:
        result["targets"] = check_targets(result["precision"], result["flags"], targets)
    rows = plot_rows(show, plot_stars)
    grid = WavelengthGrid.from_config(grid_cfg["segments"])
    windows = figure_windows(grid.wavelength_air, lines)
    if rows.size and windows:
        rows = np.sort(rows)
        data = np.array(artifacts.load_matrix(flux)[rows])
        weights = np.array(artifacts.load_matrix(ivar)[rows])
        model = model_rows(list(model_files), rows, len(cat))
        sub = cat.iloc[rows]
        true_of = show.set_index("catalog_row").loc[rows]
        titles = []
        for r, (_, star) in enumerate(sub.iterrows()):
            parts = [f"S/N {star['snr']:.0f}", f"χ²/pix {star['refine_chi2_red']:.2f}"]
            for label in labels:
                if label in ELEMENT_RATIOS:
                    value = f"{label} {star[f'{label}_refined']:.2f}±" \
                            f"{star[f'{label}_refined_err']:.2f}"
                    if f"{label}_true" in true_of:
                        value += f" (true {true_of.iloc[r][f'{label}_true']:.2f})"
                    parts.append(value)
            titles.append("\n".join(parts))
        plots.spectrum_fits(grid.wavelength_air, data, weights, model, titles, windows, plot)
        result["plot_rows"] = rows.tolist()
    else:
        plots.spectrum_fits(grid.wavelength_air, np.ones((1, grid.n_pixels)),
                            np.zeros((1, grid.n_pixels)), np.full((1, grid.n_pixels), np.nan),
                            ["no fitted evaluation star"], windows or [("none", 0.0, 1.0, [])],
                            plot)
    artifacts.save_json(metrics, result)
    if truth is not None:
        log("refine_report: " + "; ".join(
            f"{k} σ {v['snr_min']['network']['sigma']:.3g} → {v['snr_min']['refined']['sigma']:.3g}"
            f" (×{v['snr_min']['sigma_ratio']:.2f}), coverage "
            f"{v['all']['refined']['coverage_68']:.2f}" for k, v in result["precision"].items()))
        fl = result["flags"]
        both = fl["with_catalogue"]
        log(f"refine_report: REFINE_POOR_FIT on {fl['defective_flagged_fraction']} of defective "
            f"and {fl['good_flagged_fraction']} of good spectra; with CATALOGUE_MISMATCH "
            f"{both['defective_flagged_fraction']} and {both['good_flagged_fraction']}")
    return result
