"""Diagnostic and science figures, written as PNG files (Agg backend, no display needed).

Every function draws one figure, writes it atomically (temporary file + rename, so a half-written
PNG never sits where Snakemake expects a finished one), closes it and returns the path. Figure
sizes are fixed multiples of :data:`PANEL_SIZE` at :data:`DPI`, so the pixel size of each PNG
is known in advance. Axis titles come from :data:`starlabels.labels.LABELS`. NaN values are
dropped per panel, never passed to matplotlib's limits.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import artifacts  # noqa: E402
from .labels import LABELS  # noqa: E402

DPI = 120
PANEL_SIZE = (3.6, 3.4)       # inches (width, height) per panel
#: panels per row: a figure wider than three panels (1 296 px) is shrunk by the report's
#: ~1 000 px content column until 8-pt text is smaller than 9 screen pixels
MAX_COLUMNS = 3
# above this many points scatter plots become density maps (a 36 904-star scatter is a blob)
DENSITY_THRESHOLD = 3000


def _latex(name: str) -> str:
    return LABELS[name].latex if name in LABELS else name


def _save(fig, path: str | os.PathLike, dpi: int) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    path = Path(path)
    try:
        with artifacts.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return path


def _closes_figures(plot: Callable[..., Path]) -> Callable[..., Path]:
    """Close every figure a plot function opened, also when it fails half-way: a long
    validation run must not pile up open figures (matplotlib keeps them all in memory)."""
    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        before = set(plt.get_fignums())
        try:
            return plot(*args, **kwargs)
        finally:
            for number in set(plt.get_fignums()) - before:
                plt.close(number)
    return wrapper


def _figure(width: float, height: float):
    """A figure of ``width`` x ``height`` inches with constrained layout (no bbox trimming, so
    the PNG is exactly width*dpi x height*dpi pixels)."""
    return plt.figure(figsize=(width, height), layout="constrained")


def _panel_grid(n: int) -> tuple[int, int]:
    """(rows, columns) for ``n`` panels, at most :data:`MAX_COLUMNS` per row."""
    columns = max(1, min(n, MAX_COLUMNS))
    return -(-max(n, 1) // columns), columns


def _panels(fig, n: int) -> list:
    """``n`` axes on a :func:`_panel_grid`; unused grid cells are removed."""
    rows, columns = _panel_grid(n)
    axes = list(fig.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.remove()
    return axes[:n]


def _no_data(ax, text: str = "no finite data") -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def _finite(*arrays: np.ndarray) -> np.ndarray:
    ok = np.ones(len(arrays[0]), dtype=bool)
    for a in arrays:
        ok &= np.isfinite(a)
    return ok


def _values(df: pd.DataFrame, column: str) -> np.ndarray:
    return df[column].to_numpy(dtype=np.float64, na_value=np.nan)


def _label_format(name: str) -> str:
    return "{:.0f}" if name == "teff" else "{:.3f}"


# ---------------------------------------------------------------- label comparisons

def _pairs(pred: pd.DataFrame, ref: pd.DataFrame, labels: Sequence[str]
           ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(reference, predicted) arrays per label: matched on ``spectrum_id`` when both tables
    have it, else by position (then the tables must have the same length)."""
    if "spectrum_id" in pred.columns and "spectrum_id" in ref.columns:
        merged = pred[["spectrum_id", *labels]].merge(ref[["spectrum_id", *labels]],
                                                      on="spectrum_id", suffixes=("_p", "_r"))
        return {lab: (_values(merged, f"{lab}_r"), _values(merged, f"{lab}_p")) for lab in labels}
    if len(pred) != len(ref):
        raise ValueError(f"pred has {len(pred)} rows and ref {len(ref)}; give both a spectrum_id "
                         "column to match them")
    return {lab: (_values(ref, lab), _values(pred, lab)) for lab in labels}


@_closes_figures
def one_to_one(pred: pd.DataFrame, ref: pd.DataFrame, labels: Sequence[str],
               path: str | os.PathLike, ref_name: str = "true", *, dpi: int = DPI) -> Path:
    """Predicted vs reference label, one column per label, residuals underneath.

    Each panel shows the 1:1 line and bias = mean(pred - ref), sigma = std(pred - ref) and N
    over the pairs where both are finite. Labels missing from either table are skipped.
    """
    labels = [lab for lab in labels if lab in pred.columns and lab in ref.columns]
    if not labels:
        raise ValueError("one_to_one: no label present in both tables")
    pairs = _pairs(pred, ref, labels)
    rows, columns = _panel_grid(len(labels))
    fig = _figure(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * 1.3 * rows)
    grid = fig.add_gridspec(2 * rows, columns, height_ratios=[3, 1] * rows)
    for j, label in enumerate(labels):
        row, column = divmod(j, columns)
        ax = fig.add_subplot(grid[2 * row, column])
        ax_res = fig.add_subplot(grid[2 * row + 1, column], sharex=ax)
        x, y = pairs[label]
        ok = _finite(x, y)
        ax.set_title(_latex(label))
        ax.set_ylabel(f"predicted {_latex(label)}")
        ax_res.set_xlabel(f"{ref_name} {_latex(label)}")
        ax_res.set_ylabel("pred − " + ref_name)
        plt.setp(ax.get_xticklabels(), visible=False)
        if not ok.any():
            _no_data(ax)
            continue
        x, y = x[ok], y[ok]
        diff = y - x
        alpha = 0.6 if ok.sum() < 1000 else 0.15
        ax.scatter(x, y, s=4, alpha=alpha, lw=0, rasterized=True)
        lo, hi = np.min([x.min(), y.min()]), np.max([x.max(), y.max()])
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="k", lw=0.8)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        fmt = _label_format(label)
        sigma = diff.std(ddof=1) if diff.size > 1 else np.nan
        stats = f"bias {fmt.format(diff.mean())}\nσ {fmt.format(sigma)}\nN {diff.size}"
        ax.text(0.04, 0.96, stats, transform=ax.transAxes, va="top", fontsize=8,
                bbox=dict(facecolor="white", alpha=0.8, lw=0))
        ax_res.scatter(x, diff, s=4, alpha=alpha, lw=0, rasterized=True)
        ax_res.axhline(0.0, color="k", lw=0.8)
    return _save(fig, path, dpi)


# ---------------------------------------------------------------- science plots

@_closes_figures
def kiel_diagram(df: pd.DataFrame, path: str | os.PathLike, color: str | None = "fe_h", *,
                 dpi: int = DPI) -> Path:
    """Teff (decreasing to the right) vs log g (decreasing upwards), coloured by ``color``.

    Stars without a finite colour value are drawn in grey underneath.
    """
    fig = _figure(PANEL_SIZE[0] * 1.4, PANEL_SIZE[1] * 1.2)
    ax = fig.add_subplot()
    teff, logg = _values(df, "teff"), _values(df, "logg")
    ok = _finite(teff, logg)
    ax.set_xlabel(_latex("teff"))
    ax.set_ylabel(_latex("logg"))
    if not ok.any():
        _no_data(ax)
    else:
        c = _values(df, color)[ok] if color and color in df.columns else np.full(ok.sum(), np.nan)
        has_c = np.isfinite(c)
        size = 6 if ok.sum() < 5000 else 2
        ax.scatter(teff[ok][~has_c], logg[ok][~has_c], s=size, color="0.6", lw=0, rasterized=True)
        if has_c.any():
            lo, hi = np.percentile(c[has_c], [1, 99])
            points = ax.scatter(teff[ok][has_c], logg[ok][has_c], c=c[has_c], s=size, lw=0,
                                cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-6,
                                rasterized=True)
            fig.colorbar(points, ax=ax, label=_latex(color))
        ax.set_title(f"Kiel diagram (N = {ok.sum()})")
    ax.invert_xaxis()
    ax.invert_yaxis()
    return _save(fig, path, dpi)


@_closes_figures
def abundance_trends(df: pd.DataFrame, path: str | os.PathLike, *,
                     truth: pd.DataFrame | None = None, window: Sequence[float] | None = None,
                     threshold: float | None = None, dpi: int = DPI) -> Path:
    """[Mg/Fe] and [Al/Fe] vs [Fe/H] (thin / thick disc sequences); one column per present
    ratio. With ``truth`` (the same stars' true labels, same row order) a first row draws the
    truth and a second the catalogue, on the same axes, so a lost or shifted sequence shows.
    ``window``/``threshold`` outline the α-rich box the metrics count.

    Up to :data:`DENSITY_THRESHOLD` stars are drawn as points, more as a log-density map.
    """
    ratios = [lab for lab in ("mg_fe", "al_fe") if lab in df.columns]
    if "fe_h" not in df.columns or not ratios:
        raise ValueError("abundance_trends needs fe_h and at least one of mg_fe, al_fe")
    rows = [("catalogue", df)] if truth is None else [("true", truth), ("catalogue", df)]
    fig = _figure(PANEL_SIZE[0] * len(ratios), PANEL_SIZE[1] * len(rows))
    axes = fig.subplots(len(rows), len(ratios), squeeze=False, sharex=True, sharey="col")
    for r, (name, frame) in enumerate(rows):
        fe_h = _values(frame, "fe_h")
        for ax, ratio in zip(axes[r], ratios):
            y = _values(frame, ratio)
            ok = _finite(fe_h, y)
            ax.set_xlabel(_latex("fe_h"))
            ax.set_ylabel(f"{_latex(ratio)} ({name})")
            if not ok.any():
                _no_data(ax)
                continue
            if ok.sum() > DENSITY_THRESHOLD:
                art = ax.hexbin(fe_h[ok], y[ok], gridsize=60, bins="log", mincnt=1,
                                cmap="viridis", rasterized=True)
                fig.colorbar(art, ax=ax, label="stars per cell")
            else:
                ax.scatter(fe_h[ok], y[ok], s=5, alpha=0.6, lw=0, rasterized=True,
                           color="k" if name == "true" else "tab:blue")
            ax.axhline(0.0, color="0.5", lw=0.6, ls=":")
            if window is not None and threshold is not None and ratio == "mg_fe":
                ax.axvspan(window[0], window[1], color="tab:orange", alpha=0.12, lw=0)
                ax.axhline(threshold, color="tab:orange", lw=0.8, ls="--")
                inside = ok & (fe_h > window[0]) & (fe_h < window[1])
                share = np.mean(y[inside] > threshold) if inside.any() else np.nan
                ax.set_title(f"{name}: N = {ok.sum()}; α-rich in box {100 * share:.0f} %",
                             fontsize=8)
            else:
                ax.set_title(f"{name}: N = {ok.sum()}", fontsize=8)
    return _save(fig, path, dpi)


@_closes_figures
def coverage_diagram(reports: Mapping[str, Mapping], path: str | os.PathLike, *,
                     dpi: int = DPI) -> Path:
    """Per label: the share of true labels inside the Gaussian interval of ``<label>_err``
    against the nominal level (50/68/90/95 %), with bootstrap intervals, for the calibrated
    errors, the raw ensemble σ and the members' scatter, and the calibrated errors in each S/N
    tercile (68 and 95 %). ``reports`` is metrics.json's ``uncertainty`` block."""
    labels = list(reports)
    columns = min(3, max(1, len(labels)))
    rows = -(-max(1, len(labels)) // columns)
    fig = _figure(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(labels):] if labels else ():
        ax.set_axis_off()
    if not labels:
        _no_data(axes[0], "no truth or no per-star uncertainties")
        return _save(fig, path, dpi)
    levels = [0.50, 0.68, 0.90, 0.95]
    for ax, label in zip(axes, labels):
        rep = reports[label]
        ax.plot([0.4, 1], [0.4, 1], color="0.6", lw=0.8, ls="--")
        got = [rep[f"coverage{round(lv * 100)}"] for lv in levels]
        lo = [rep[f"coverage{round(lv * 100)}_ci95"][0] for lv in levels]
        hi = [rep[f"coverage{round(lv * 100)}_ci95"][1] for lv in levels]
        ax.errorbar(levels, got, yerr=[np.subtract(got, lo), np.subtract(hi, got)], fmt="o-",
                    color="tab:blue", ms=4, capsize=2, label="err (calibrated)")
        for key, color, name in (("raw", "tab:orange", "err_raw"),
                                 ("members", "tab:red", "members' scatter")):
            if key in rep:
                ax.plot(levels, [rep[key][f"coverage{round(lv * 100)}"] for lv in levels],
                        "s:", color=color, ms=3, label=name)
        for k, tercile in enumerate(rep["snr_terciles"]):
            ax.plot([0.68, 0.95], [tercile["coverage68"], tercile["coverage95"]], "^",
                    color=plt.cm.viridis(k / 2), ms=4,
                    label=f"S/N {tercile['snr_lo']:.0f}–{tercile['snr_hi']:.0f}"
                    .replace("-inf", "0").replace("inf", "∞"))
        ax.set_xlim(0.4, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel(f"nominal interval, {_latex(label)}")
        ax.set_ylabel("share of true labels inside")
        ax.legend(fontsize=6, loc="upper left")
    return _save(fig, path, dpi)


@_closes_figures
def metallicity_distribution(df: pd.DataFrame, path: str | os.PathLike, *,
                             group: str | None = None, dpi: int = DPI) -> Path:
    """Histogram of predicted [Fe/H], one step histogram per value of ``group`` (e.g. split)."""
    if "fe_h" not in df.columns:
        raise ValueError("metallicity_distribution needs an fe_h column")
    fig = _figure(*PANEL_SIZE)
    ax = fig.subplots()
    fe_h = _values(df, "fe_h")
    ok = np.isfinite(fe_h)
    ax.set_xlabel(_latex("fe_h"))
    ax.set_ylabel("stars")
    if not ok.any():
        _no_data(ax)
        return _save(fig, path, dpi)
    bins = np.histogram_bin_edges(fe_h[ok], bins=30)
    groups = df[group].astype(str).to_numpy() if group and group in df.columns else None
    if groups is None:
        ax.hist(fe_h[ok], bins=bins, histtype="step", lw=1.4)
    else:
        for name in sorted(set(groups[ok])):
            sel = ok & (groups == name)
            ax.hist(fe_h[sel], bins=bins, histtype="step", lw=1.4, label=f"{name} ({sel.sum()})")
        ax.legend(fontsize=7)
    ax.set_title(f"N = {ok.sum()}")
    return _save(fig, path, dpi)


# ---------------------------------------------------------------- cleaning

_REASON_STYLE = {"pca_residual": ("x", "tab:red"), "embedding_outlier": ("s", "tab:orange")}
_LABEL_MARKERS = ["^", "v", "D", "P", "*", "h"]


def _first_reason(reason: str) -> str:
    return reason.split(";")[0] if reason else ""


@_closes_figures
def tsne_map(clean_df: pd.DataFrame, path: str | os.PathLike,
             color_by: str | np.ndarray | pd.Series | None = None, *, dpi: int = DPI) -> Path:
    """The t-SNE embedding of the cleaned spectra: kept in grey (or coloured by ``color_by``,
    a column name or per-row values), rejected marked by their first reason, with counts.
    """
    cleaned = clean_df["cleaned"].to_numpy(dtype=bool)
    x, y = _values(clean_df, "tsne_x"), _values(clean_df, "tsne_y")
    use = cleaned & _finite(x, y)
    keep = clean_df["keep"].to_numpy(dtype=bool)
    fig = _figure(PANEL_SIZE[0] * 1.8, PANEL_SIZE[1] * 1.5)
    ax = fig.add_subplot()
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    if not use.any():
        _no_data(ax, "no cleaned spectra")
        return _save(fig, path, dpi)
    kept = use & keep
    size = 4 if use.sum() < 5000 else 1.5
    colour_name = None
    if isinstance(color_by, str):
        colour_name, color_by = color_by, (_values(clean_df, color_by)
                                           if color_by in clean_df.columns else None)
    if color_by is not None:
        c = np.asarray(color_by, dtype=np.float64)
        has_c = kept & np.isfinite(c)
        ax.scatter(x[kept & ~has_c], y[kept & ~has_c], s=size, color="0.75", lw=0, rasterized=True)
        if has_c.any():
            art = ax.scatter(x[has_c], y[has_c], c=c[has_c], s=size, lw=0, cmap="viridis",
                             rasterized=True)
            fig.colorbar(art, ax=ax, label=_latex(colour_name) if colour_name else "")
    else:
        ax.scatter(x[kept], y[kept], s=size, color="0.7", lw=0, rasterized=True,
                   label=f"kept ({kept.sum()})")
    rejected = use & ~keep
    first = np.array([_first_reason(r) for r in clean_df["reason"].astype(str)], dtype=object)
    label_reasons = sorted({r for r in first[rejected] if r not in _REASON_STYLE})
    for reason in [*_REASON_STYLE, *label_reasons]:
        mask = rejected & (first == reason)
        if not mask.any():
            continue
        if reason in _REASON_STYLE:
            marker, colour = _REASON_STYLE[reason]
        else:   # one marker per disagreeing label, colours from the cycle
            marker, colour = _LABEL_MARKERS[label_reasons.index(reason) % len(_LABEL_MARKERS)], None
        ax.scatter(x[mask], y[mask], s=18, marker=marker, color=colour, lw=0.8,
                   label=f"{reason} ({mask.sum()})")
    ax.legend(loc="best", fontsize=7, markerscale=1.5, framealpha=0.8)
    ax.set_title(f"t-SNE cleaning: {kept.sum()} kept, {rejected.sum()} rejected")
    return _save(fig, path, dpi)


# ---------------------------------------------------------------- network gradients

@_closes_figures
def gradient_spectrum(wavelength: np.ndarray, gradients: np.ndarray, labels: Sequence[str],
                      path: str | os.PathLike, lines: pd.DataFrame | None = None,
                      segment_slices: Mapping[str, slice] | None = None, *,
                      signed: bool = True, dpi: int = DPI) -> Path:
    """Mean d prediction / d flux (``signed``; else its magnitude) against wavelength, one row
    per label.

    ``gradients`` (n_labels, n_pixels) is plotted as given. With ``segment_slices`` (setup name ->
    pixel slice, e.g. HR10 / HR21) each setup gets its own column, so the gap between them is not
    drawn as a line. Diagnostic ``lines`` (columns ``wavelength_air``, ``species``) are marked
    with dotted vertical lines and labelled in the top row.
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    gradients = np.atleast_2d(np.asarray(gradients, dtype=np.float64))
    if gradients.shape != (len(labels), wavelength.size):
        raise ValueError(f"gradients have shape {gradients.shape}, expected "
                         f"({len(labels)}, {wavelength.size})")
    segments = dict(segment_slices) if segment_slices else {"": slice(0, wavelength.size)}
    n_rows, n_cols = len(labels), len(segments)
    fig = _figure(4.8 * n_cols, 1.9 * n_rows + 0.6)
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharey="row")
    for j, (name, sl) in enumerate(segments.items()):
        wl = wavelength[sl]
        finite_wl = wl[np.isfinite(wl)]
        w_lo, w_hi = (finite_wl.min(), finite_wl.max()) if finite_wl.size else (0.0, 1.0)
        marks = pd.DataFrame(columns=["wavelength_air", "species"]) if lines is None else \
            lines[(lines["wavelength_air"] >= w_lo) & (lines["wavelength_air"] <= w_hi)]
        for i, label in enumerate(labels):
            ax = axes[i, j]
            g = gradients[i, sl]
            if np.isfinite(g).any():
                ax.plot(wl, g, lw=0.6, color="tab:blue")
            else:
                _no_data(ax)
            for w in marks["wavelength_air"]:
                ax.axvline(w, color="tab:red", lw=0.6, ls=":", alpha=0.8)
            if finite_wl.size:
                ax.set_xlim(w_lo, w_hi)
            if j == 0:
                name = f"∂ {_latex(label).split(' [')[0]} / ∂ flux"
                ax.set_ylabel(name if signed else f"|{name}|", fontsize=8)
            if i == 0:
                if name:
                    ax.set_title(name)
                for w, species in zip(marks["wavelength_air"], marks["species"]):
                    ax.text(w, 0.98, species, transform=ax.get_xaxis_transform(), rotation=90,
                            va="top", ha="right", fontsize=6, color="tab:red",
                            bbox=dict(facecolor="white", alpha=0.7, lw=0, pad=0.5))
            if i == n_rows - 1:
                ax.set_xlabel("air wavelength [Å]")
            else:
                plt.setp(ax.get_xticklabels(), visible=False)
    return _save(fig, path, dpi)


# ---------------------------------------------------------------- precision

@_closes_figures
def precision_vs_snr(summary: pd.DataFrame, path: str | os.PathLike, *, dpi: int = DPI) -> Path:
    """Per label, the scatter sigma (and the Cramér-Rao bounds where given)
    against S/N; each bin is drawn at its centre with its extent as a horizontal bar.

    ``summary`` columns: label, snr_lo, snr_hi, sigma, crlb and crlb_marginalised (optional),
    sigma_refined (the refine stage's labels, optional).
    """
    needed = {"label", "snr_lo", "snr_hi", "sigma"}
    if not needed <= set(summary.columns):
        raise ValueError(f"precision_vs_snr needs columns {sorted(needed)}")
    labels = list(dict.fromkeys(summary["label"].astype(str)))
    if not labels:
        raise ValueError("precision_vs_snr: empty summary")
    n_rows, columns = _panel_grid(len(labels))
    fig = _figure(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * n_rows)
    axes = _panels(fig, len(labels))
    for ax, label in zip(axes, labels):
        rows = summary[summary["label"].astype(str) == label].sort_values("snr_lo")
        lo, hi = _values(rows, "snr_lo"), _values(rows, "snr_hi")
        centre = np.where(_finite(lo, hi) & (lo > 0), np.sqrt(np.abs(lo * hi)), 0.5 * (lo + hi))
        sigma = _values(rows, "sigma")
        ok = _finite(centre, sigma)
        ax.set_xlabel("S/N")
        ax.set_ylabel(f"σ {_latex(label)}")
        if not ok.any():
            _no_data(ax)
            continue
        ax.errorbar(centre[ok], sigma[ok], xerr=[centre[ok] - lo[ok], hi[ok] - centre[ok]],
                    fmt="o-", ms=4, lw=1, capsize=0, label="σ(pred − ref)")
        if "sigma_refined" in rows.columns:
            refined = _values(rows, "sigma_refined")
            good = _finite(centre, refined)
            if good.any():
                ax.plot(centre[good], refined[good], "s-", ms=4, lw=1, color="tab:green",
                        label="σ(refined − ref)")
        for column, style, name in (("crlb", "k--", "CRLB (idealised)"),
                                    ("crlb_marginalised", "k:", "CRLB (marginalised)")):
            if column in rows.columns:
                crlb = _values(rows, column)
                good = _finite(centre, crlb)
                if good.any():
                    ax.plot(centre[good], crlb[good], style, lw=1, label=name)
        if np.all(lo[ok] > 0):
            ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    return _save(fig, path, dpi)


# ---------------------------------------------------------------- deep-REMAP

@_closes_figures
def reliability_diagram(curves: Mapping[str, Mapping[str, Mapping]], path: str | os.PathLike,
                        *, dpi: int = DPI) -> Path:
    """Per label: top-1 reliability (confidence vs accuracy) and interval coverage vs nominal,
    before (T = 1) and after the calibration (the members' temperatures or the ensemble's
    transform). ``curves[label][tag]`` holds 'reliability' (a DataFrame from
    :func:`starlabels.remap.calibration.reliability_curve`) and 'coverage' ({level: fraction})."""
    labels = list(curves)
    fig = _figure(2 * PANEL_SIZE[0], PANEL_SIZE[1] * max(1, len(labels)))
    axes = np.atleast_2d(fig.subplots(max(1, len(labels)), 2, squeeze=False))
    styles = {"before": ("tab:red", "o", "T = 1"), "after": ("tab:blue", "s", "calibrated")}
    for row, label in enumerate(labels):
        rel_ax, cov_ax = axes[row]
        for ax in (rel_ax, cov_ax):
            ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
        for tag, (color, marker, name) in styles.items():
            if tag not in curves[label]:
                continue
            rel = curves[label][tag]["reliability"]
            used = rel["count"] > 0
            rel_ax.plot(rel.loc[used, "confidence"], rel.loc[used, "accuracy"], marker=marker,
                        color=color, label=name, ms=4)
            cov = curves[label][tag]["coverage"]
            levels = sorted(float(k) for k in cov)
            cov_ax.plot(levels, [cov[f"{lv:.2f}"] for lv in levels], marker=marker,
                        color=color, label=name, ms=4)
        rel_ax.set_xlabel(f"top-bin confidence, {_latex(label)}")
        rel_ax.set_ylabel("top-bin accuracy")
        cov_ax.set_xlabel(f"nominal interval, {_latex(label)}")
        cov_ax.set_ylabel("fraction of true labels inside")
        cov_ax.axhspan(0.60, 0.76, xmin=0.6, xmax=0.76, color="0.85", zorder=0)
        rel_ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path, dpi)


@_closes_figures
def embedding_map(xy: np.ndarray, df: pd.DataFrame, labels: Sequence[str],
                  path: str | os.PathLike, *, group: str | None = "split",
                  dpi: int = DPI) -> Path:
    """A 2-D projection of the embedding, one panel per label coloured by its value."""
    xy = np.asarray(xy, dtype=np.float64)
    rows, columns = _panel_grid(len(labels))
    fig = _figure(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows)
    axes = _panels(fig, len(labels))
    groups = df[group].astype(str).to_numpy() if group and group in df.columns else None
    for ax, label in zip(axes, labels):
        value = _values(df, label)
        ok = np.isfinite(value) & np.isfinite(xy).all(axis=1)
        if not ok.any():
            _no_data(ax)
            continue
        sc = ax.scatter(xy[ok, 0], xy[ok, 1], c=value[ok], s=4, cmap="viridis", lw=0)
        if groups is not None:
            for name in sorted(set(groups[ok]) - {"target"}):
                sel = ok & (groups == name)
                ax.scatter(xy[sel, 0], xy[sel, 1], s=10, facecolors="none", edgecolors="0.2",
                           lw=0.4, label=name if ax is axes[0] else None)
        fig.colorbar(sc, ax=ax, label=_latex(label))
        ax.set_xticks([])
        ax.set_yticks([])
    if groups is not None:
        axes[0].legend(fontsize=7, loc="best", title="open circles")
    return _save(fig, path, dpi)


# ---------------------------------------------------------------- refine

@_closes_figures
def spectrum_fits(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray,
                  model: np.ndarray, titles: Sequence[str],
                  windows: Sequence[tuple[str, float, float, Sequence[float]]],
                  path: str | os.PathLike, *, dpi: int = DPI) -> Path:
    """Data, best-fit model and residuals of a few stars (rows) in a few wavelength windows
    (columns): ``windows`` = (name, low Å, high Å, line centres to mark). Masked pixels
    (ivar 0) are not drawn; residuals are in units of the pixel σ."""
    n_stars, n_win = len(titles), len(windows)
    if n_stars == 0 or n_win == 0:
        raise ValueError("spectrum_fits: no star or no window to draw")
    fig = _figure(PANEL_SIZE[0] * 0.9 * n_win, PANEL_SIZE[1] * 0.9 * n_stars)
    grid = fig.add_gridspec(2 * n_stars, n_win, height_ratios=[3, 1] * n_stars, hspace=0.08)
    for i in range(n_stars):
        for j, (name, lo, hi, centres) in enumerate(windows):
            ax = fig.add_subplot(grid[2 * i, j])
            ax_res = fig.add_subplot(grid[2 * i + 1, j], sharex=ax)
            near = (wavelength >= lo) & (wavelength <= hi) & (ivar[i] > 0)
            plt.setp(ax.get_xticklabels(), visible=False)
            if i == 0:
                ax.set_title(name, fontsize=9)
            if j == 0:
                ax.set_ylabel(titles[i], fontsize=7)
                ax_res.set_ylabel("(d − m)/σ", fontsize=7)
            if i == n_stars - 1:
                ax_res.set_xlabel("air wavelength [Å]")
            if not near.any() or not np.isfinite(model[i, near]).any():
                _no_data(ax)
                continue
            w = wavelength[near]
            sigma = 1.0 / np.sqrt(ivar[i, near])
            ax.errorbar(w, flux[i, near], yerr=sigma, fmt=".", ms=2, lw=0.5, color="0.3",
                        label="data")
            ax.plot(w, model[i, near], color="tab:red", lw=1, label="model")
            for c in centres:
                ax.axvline(c, color="tab:blue", lw=0.6, ls=":")
            ax_res.plot(w, (flux[i, near] - model[i, near]) / sigma, ".", ms=2, color="0.3")
            ax_res.axhline(0.0, color="k", lw=0.6)
            ax.tick_params(labelsize=7)
            ax_res.tick_params(labelsize=7)
            # a window is a few Å wide: the default ticks' labels run into each other
            ax_res.xaxis.set_major_locator(MaxNLocator(nbins=4))
            if i == 0 and j == 0:
                ax.legend(fontsize=6, loc="lower left")
    return _save(fig, path, dpi)
