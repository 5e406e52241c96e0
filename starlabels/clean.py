"""t-SNE cleaning of the training set (Ambrosch et al. 2023 removed bad spectra this way).

The paper says only that t-SNE was used to remove bad training spectra; the recipe here is our
documented default (papers.md §1, tag [E]), every threshold a config value:

1. **Selection.** Only rows whose ``split`` is in ``splits`` (default train + valid) are cleaned.
   Every other row (test, target) is returned with ``keep=True``, ``cleaned=False``, reason
   ``'not cleaned (split X)'`` and NaN embedding: targets are never cleaned.
2. **PCA.** The continuum-normalised flux of the selected rows is reduced to ``pca_components``
   principal components. The basis is fitted on a random subsample of at most
   ``pca_fit_rows`` (5000) spectra with a seeded randomized SVD, and every selected spectrum is
   then projected in row chunks, so a memory-mapped 36 904 x 16 000 matrix is never copied whole.
3. **PCA residual.** Each spectrum's reconstruction residual RMS measures what the main modes of
   the training set cannot describe: cosmic-ray spikes, emission, zeroed pixel runs. The residual
   is *held out*: the subsample is split in two halves, each half gets its own basis, and a
   spectrum's residual comes from the basis it did not help fit (rows outside the subsample average
   both). Otherwise a strong defect in a fitted spectrum earns its own component and hides itself.
   Because the residual of a good spectrum scales with its noise, the robust z of log(residual) is
   taken relative to spectra of similar S/N (running median / MAD in ``residual_snr_bins``
   quantile bins of the table's ``snr``; a global median / MAD when S/N is absent).
   z > ``residual_z`` -> reason ``pca_residual``. The RMS dilutes defects confined to a few
   Ångström, so a second statistic, the **residual peak** (largest |running mean of the residual
   over ``residual_window`` pixels| in units of the spectrum's own pixel noise), is compared the
   same way: z > ``residual_peak_z`` -> reason ``pca_peak``.
4. **Embedding.** 2-D openTSNE (``perplexity``, ``seed``, ``n_jobs``) of the PCA scores, with
   openTSNE's own choice of negative gradients: Barnes–Hut below 10 000 spectra, FFT
   interpolation above.
5. **Isolated spectra.** For each point, the mean distance to its ``n_neighbors`` nearest embedding
   neighbours; robust z (median, 1.4826 MAD) of its log > ``outlier_z`` -> ``embedding_outlier``.
6. **Label-model residual.** Spectra that disagree with *their own labels*: a quadratic-in-labels
   model of the flux (The Cannon's) is fitted per pixel over the cleaned rows, with iterative
   clipping; residuals in units of each pixel's scatter across stars give an RMS and a windowed
   peak per spectrum, compared at similar S/N; z > ``label_model_z`` -> ``label_model_residual``
   / ``label_model_peak``. This catches what the PCA can learn as a mode (emission at fixed rest
   wavelengths, scattered light making every line too shallow for the labels, a companion's
   lines, a wrong label). The same model gives each spectrum's **line-depth scale** k
   (1 − flux ≈ k (1 − model), least squares weighted by the pixels' scatter): scattered light,
   veiling or a companion's continuum make every line shallower by one factor, k < 1, which the
   RMS dilutes; robust z of −k at similar S/N > ``depth_scale_z`` -> ``line_depth_scale``.
6b. **Support of the own labels.** The tests that judge a spectrum by *other* stars (the line
   depths the population's model predicts, the neighbours' labels of step 7) reject it only
   where its own labels also fit it poorly (label-model RMS or peak z > ``label_support_z``): a
   chemically peculiar star — an Al-rich, Mg-poor globular-cluster escapee — sits among
   neighbours with other abundances, yet its spectrum agrees with its labels.
   Thresholds were chosen on the realistic simulated Gaia-ESO survey of the demo (seed 2023,
   ~226 injected defects and 33 Al-rich/Mg-poor stars among ~2 830 training spectra) and
   checked on another seed (99, 218 defects, 48 Al-rich stars): 81 % / 81 % of defective and
   2.5 % / 2.9 % of good spectra rejected, 100 % / 96 % of the Al-rich/Mg-poor stars kept
   (without the depth scale and the support rule: 66 % at 3.0 %, 82 % kept).
7. **Label disagreement.** Spectra that look alike should have alike labels. For every label, the
   median of the label over the ``n_neighbors`` nearest embedding neighbours (excluding the
   spectrum itself and other spectra of the same ``star_id``, which share its labels and would
   vouch for a wrong one) and their scatter ``s = max(1.4826 MAD, label_floor[label])``;
   ``|label - median| / s > label_z`` marks the label; a spectrum with at least
   ``min_flagged_labels`` marked labels is rejected with one reason
   ``label_disagreement:<label>`` per marked label. Unknown (NaN) labels are never marked.

Reasons are joined with ';'. The result is a per-row table (see :func:`tsne_clean`).

Reproducibility: the same flux, table, config (``seed``) *and* ``n_jobs`` give identical output;
a different thread count changes the t-SNE layout slightly. Cost, measured on 2 shared cores
with n_jobs=1: 36 904 x 16 000 float32 memmap in ~100 s (PCA 14 s, t-SNE 84 s), ~2.8 GB resident
of which 2.4 GB is the page-cached flux file.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from threadpoolctl import threadpool_limits

from . import config
from .labels import check_labels

MAD_TO_SIGMA = 1.4826  # MAD of a Gaussian times this is its standard deviation

REASON_PCA = "pca_residual"
REASON_PEAK = "pca_peak"
REASON_MODEL = "label_model_residual"
REASON_MODEL_PEAK = "label_model_peak"
REASON_DEPTH = "line_depth_scale"
REASON_OUTLIER = "embedding_outlier"
REASON_LABEL = "label_disagreement"


# ---------------------------------------------------------------- robust statistics

def robust_z(x: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD) over the finite values; NaN stays NaN.

    If the MAD is zero (more than half the values identical) the mean absolute deviation
    (times sqrt(pi/2)) is used instead, and if that is zero too every z is 0.
    """
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    z = np.full(x.shape, np.nan)
    if not finite.any():
        return z
    med = np.median(x[finite])
    dev = np.abs(x[finite] - med)
    scale = MAD_TO_SIGMA * np.median(dev)
    if scale <= 0:
        scale = np.sqrt(np.pi / 2) * dev.mean()
    z[finite] = (x[finite] - med) / scale if scale > 0 else 0.0
    return z


def robust_z_given(x: np.ndarray, covariate: np.ndarray | None, n_bins: int,
                   min_per_bin: int = 50) -> np.ndarray:
    """Robust z of ``x`` relative to rows with a similar ``covariate`` (e.g. S/N).

    Rows are put in ``n_bins`` quantile bins of the covariate; the median and scaled MAD of ``x``
    per bin are interpolated linearly in the covariate (so the reference has no steps). Rows with
    a non-finite covariate, or too few rows for two bins of ``min_per_bin``, fall back to
    :func:`robust_z` over all rows.
    """
    x = np.asarray(x, dtype=np.float64)
    z = robust_z(x)
    if covariate is None or n_bins < 2:
        return z
    c = np.asarray(covariate, dtype=np.float64)
    ok = np.isfinite(c) & np.isfinite(x)
    n_bins = min(int(n_bins), int(ok.sum()) // min_per_bin)
    if n_bins < 2:
        return z
    edges = np.quantile(c[ok], np.linspace(0.0, 1.0, n_bins + 1))
    which = np.clip(np.searchsorted(edges, c[ok], side="right") - 1, 0, n_bins - 1)
    centres, medians, scales = [], [], []
    for b in range(n_bins):
        xb, cb = x[ok][which == b], c[ok][which == b]
        if xb.size < 3:
            continue
        med = np.median(xb)
        scale = MAD_TO_SIGMA * np.median(np.abs(xb - med))
        if scale <= 0:
            scale = np.sqrt(np.pi / 2) * np.mean(np.abs(xb - med))
        centres.append(np.median(cb))
        medians.append(med)
        scales.append(scale)
    centres, medians, scales = map(np.asarray, (centres, medians, scales))
    if centres.size < 2 or not np.all(scales > 0):
        return z
    order = np.argsort(centres)
    centres, medians, scales = centres[order], medians[order], scales[order]
    med_at = np.interp(c[ok], centres, medians)
    scale_at = np.interp(c[ok], centres, scales)
    z[ok] = (x[ok] - med_at) / scale_at
    return z


# ---------------------------------------------------------------- PCA on a memory map

def _chunk_rows(n_pixels: int, budget_bytes: int = 64 * 2**20) -> int:
    """Rows per chunk so that one float64 chunk stays near ``budget_bytes``."""
    return max(1, budget_bytes // (8 * max(1, n_pixels)))


def _read_rows(flux: np.ndarray, rows: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Rows of a (memory-mapped) flux matrix; non-finite pixels become continuum (1)."""
    block = np.array(flux[rows], dtype=dtype)
    np.nan_to_num(block, copy=False, nan=1.0, posinf=1.0, neginf=1.0)
    return block


def _fit_basis(block: np.ndarray, n_components: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean spectrum and leading principal directions (k, n_pixels), both float64.

    The SVD runs in the block's precision (float32 from the flux matrix): half the memory and
    about twice the speed of float64, and the directions only need to span the main modes.
    """
    from sklearn.utils.extmath import randomized_svd

    mean = block.mean(axis=0, dtype=np.float64)
    centred = block - mean.astype(block.dtype)
    k = int(min(n_components, centred.shape[0] - 1, centred.shape[1]))
    if k < 1:
        raise ValueError(f"PCA needs at least 2 spectra, got {centred.shape[0]}")
    _, _, vt = randomized_svd(centred, k, n_oversamples=10, n_iter=4, random_state=seed)
    return mean, vt.astype(np.float64)


def pca_scores_and_residuals(flux: np.ndarray, rows: np.ndarray, *, n_components: int = 50,
                             fit_rows: int = 5000, seed: int = 42, window: int = 7
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA scores (len(rows), k), held-out residual RMS and residual peak of ``flux[rows]``.

    The peak is the largest |running mean of the residual over ``window`` pixels| divided by the
    spectrum's own pixel noise / sqrt(window) (noise from the MAD of first differences, which
    ignores smooth model misfit). An RMS over thousands of pixels dilutes a local defect — an
    emission core, a masked run where lines should be, a shallow Ca II core under scattered
    light — that the windowed peak shows at many σ.

    The basis used for the scores is fitted on a seeded random subsample of at most ``fit_rows``
    of ``rows``. Two more bases, one per random half of that subsample, give each spectrum a
    residual from a basis it did not help fit (see the module docstring). The matrix is read in
    row chunks: only the subsample (float32) and one float64 chunk are ever held in memory.
    """
    rows = np.asarray(rows, dtype=np.int64)
    n, n_pixels = rows.size, flux.shape[1]
    if n < 4:
        raise ValueError(f"PCA cleaning needs at least 4 spectra, got {n}")
    rng = np.random.default_rng(seed)
    n_fit = min(int(fit_rows), n)
    sub = np.sort(rng.choice(n, size=n_fit, replace=False))
    half = rng.permutation(sub)
    halves = (np.sort(half[: n_fit // 2]), np.sort(half[n_fit // 2:]))

    block = _read_rows(flux, rows[sub], dtype=np.float32)
    mean, basis = _fit_basis(block, n_components, seed)
    # both halves are subsets of the sorted ``sub``: their positions inside ``block``
    half_fits = [_fit_basis(block[np.searchsorted(sub, h)], n_components, seed) for h in halves]
    del block

    # which half's basis a row was *not* fitted with: 1 for half 0, 0 for half 1, -1 = average
    held_out = np.full(n, -1, dtype=np.int8)
    held_out[halves[0]] = 1
    held_out[halves[1]] = 0

    scores = np.empty((n, basis.shape[0]), dtype=np.float64)
    resid_ss = np.empty(n, dtype=np.float64)
    resid_peak = np.empty(n, dtype=np.float64)
    window = max(1, min(int(window), n_pixels))
    step = _chunk_rows(n_pixels)
    for start in range(0, n, step):
        sl = slice(start, min(start + step, n))
        y = _read_rows(flux, rows[sl])
        y -= mean
        scores[sl] = y @ basis.T
        # residual vectors about each half's own mean: r = (y + d) - ((y + d) V^T) V,
        # d = mean - mean_half
        resid = []
        for mean_h, basis_h in half_fits:
            yd = y + (mean - mean_h)
            resid.append(yd - (yd @ basis_h.T) @ basis_h)
        which = held_out[sl][:, None]
        r = np.where(which == 0, resid[0], np.where(which == 1, resid[1],
                                                    0.5 * (resid[0] + resid[1])))
        del resid
        resid_ss[sl] = np.einsum("ij,ij->i", r, r)
        resid_peak[sl] = _windowed_peak(r, window)
    resid_rms = np.sqrt(np.maximum(resid_ss, 0.0) / n_pixels)
    return scores, resid_rms, resid_peak


def _running_mean_peak(values: np.ndarray, window: int) -> np.ndarray:
    """max |running mean over ``window`` pixels| per row (cumulative sums, O(n_pixels))."""
    csum = np.cumsum(np.pad(values, ((0, 0), (1, 0))), axis=1)
    return np.abs(csum[:, window:] - csum[:, :-window]).max(axis=1) / window


def _windowed_peak(resid: np.ndarray, window: int) -> np.ndarray:
    """max |running mean over ``window`` pixels| / (pixel noise / sqrt(window)) per row."""
    noise = MAD_TO_SIGMA * np.median(np.abs(np.diff(resid, axis=1)), axis=1) / np.sqrt(2.0)
    return _running_mean_peak(resid, window) / np.maximum(noise / np.sqrt(window), 1e-12)


# ---------------------------------------------------------------- label-model residuals

def _quadratic_design(x: np.ndarray) -> np.ndarray:
    """[1, x_i, x_i x_j (i ≤ j)] per row: The Cannon's quadratic-in-labels vectorizer."""
    n, k = x.shape
    cols = [np.ones(n), *[x[:, i] for i in range(k)],
            *[x[:, i] * x[:, j] for i in range(k) for j in range(i, k)]]
    return np.stack(cols, axis=1)


def label_model_residuals(flux: np.ndarray, rows: np.ndarray, label_values: np.ndarray,
                          snr: np.ndarray | None, *, iterations: int = 3, clip_z: float = 3.0,
                          window: int = 7, n_bins: int = 10, scatter_rows: int = 5000,
                          seed: int = 42) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How badly each spectrum disagrees with *its own labels*: robust z of the residual RMS and
    of the residual peak against a quadratic-in-labels model of the flux (The Cannon's model),
    and the spectrum's line-depth scale k (least squares of 1 − flux = k (1 − model), weighted by
    each pixel's scatter): 1 when its lines are as deep as its labels predict, < 1 when every
    line is too shallow (scattered light, veiling, a companion's continuum).

    The model flux(labels) is fitted per pixel by least squares over the selected rows
    (normal equations accumulated in row chunks, so a survey-sized matrix is never copied),
    refitted ``iterations`` times without the rows whose residual z exceeds ``clip_z``.
    Residuals are divided by each pixel's scatter across stars (1.4826 MAD over up to
    ``scatter_rows`` rows), so pixels where the model is always poor (saturated cores) do not
    drown the pixels where a defect shows. Emission cores, scattered light (every line too
    shallow for the labels), a companion's lines, masked runs where lines belong and a label
    that belongs to another star all leave such residuals; a PCA of the spectra alone can
    learn the coherent ones (emission at fixed rest wavelengths) as a mode and miss them.
    Rows with a non-finite label get NaN.
    """
    rows = np.asarray(rows, dtype=np.int64)
    values = np.asarray(label_values, dtype=np.float64)
    ok = np.all(np.isfinite(values), axis=1)
    n_pixels = flux.shape[1]
    z_rms = np.full(rows.size, np.nan)
    z_peak = np.full(rows.size, np.nan)
    depth_scale = np.full(rows.size, np.nan)
    if ok.sum() < 3 * (1 + values.shape[1] + values.shape[1] * (values.shape[1] + 1) // 2):
        return z_rms, z_peak, depth_scale   # too few labelled spectra for a quadratic model
    fit_rows, x_all = rows[ok], values[ok]
    x_all = (x_all - x_all.mean(axis=0)) / np.where(x_all.std(axis=0) > 0, x_all.std(axis=0), 1)
    design = _quadratic_design(x_all)
    snr_ok = None if snr is None else np.asarray(snr, dtype=np.float64)[ok]
    step = _chunk_rows(n_pixels)
    use = np.ones(fit_rows.size, dtype=bool)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(fit_rows.size, size=min(scatter_rows, fit_rows.size),
                                replace=False))
    for _ in range(max(1, int(iterations))):
        xtx = design[use].T @ design[use]
        xty = np.zeros((design.shape[1], n_pixels))
        for start in range(0, fit_rows.size, step):
            sl = slice(start, min(start + step, fit_rows.size))
            keep = use[sl]
            if keep.any():
                xty += design[sl][keep].T @ _read_rows(flux, fit_rows[sl][keep])
        coef = np.linalg.solve(xtx + 1e-9 * np.eye(xtx.shape[0]), xty)
        resid_s = _read_rows(flux, fit_rows[sample]) - design[sample] @ coef
        good_s = use[sample]
        centre = np.median(resid_s[good_s], axis=0)
        scatter = MAD_TO_SIGMA * np.median(np.abs(resid_s[good_s] - centre), axis=0)
        scatter = np.maximum(scatter, 1e-4)
        rms = np.empty(fit_rows.size)
        peak = np.empty(fit_rows.size)
        scale = np.empty(fit_rows.size)
        weight = 1.0 / scatter ** 2
        for start in range(0, fit_rows.size, step):
            sl = slice(start, min(start + step, fit_rows.size))
            observed = _read_rows(flux, fit_rows[sl])
            model = design[sl] @ coef
            u = (observed - model) / scatter
            rms[sl] = np.sqrt(np.einsum("ij,ij->i", u, u) / n_pixels)
            peak[sl] = _running_mean_peak(u, window)   # u is already in units of the scatter
            model_depth = 1.0 - model
            scale[sl] = (np.einsum("ij,ij,j->i", 1.0 - observed, model_depth, weight)
                         / np.einsum("ij,ij,j->i", model_depth, model_depth, weight))
        zr = residual_z(rms, snr_ok, n_bins)
        zp = residual_z(peak, snr_ok, n_bins)
        use = ~((zr > clip_z) | (zp > clip_z))
    z_rms[ok], z_peak[ok], depth_scale[ok] = zr, zp, scale
    return z_rms, z_peak, depth_scale


# ---------------------------------------------------------------- embedding and neighbours

def tsne_embed(scores: np.ndarray, *, perplexity: float = 30.0, seed: int = 42,
               n_jobs: int = 1) -> np.ndarray:
    """2-D openTSNE embedding of PCA scores, shape (n, 2).

    Perplexity is capped at (n - 1) / 3 so that small sets still have enough neighbours. The
    negative gradients are openTSNE's "auto": Barnes–Hut below 10 000 points, FFT interpolation
    above. FFT's fixed cost per iteration dominated small sets (demo_ges's 2 637 spectra: 23.6 s
    of the clean job on 2 threads; Barnes–Hut 4-5 s); survey-sized sets keep FFT.
    """
    import openTSNE

    n = scores.shape[0]
    perplexity = float(min(perplexity, max(1.0, (n - 1) / 3.0)))
    tsne = openTSNE.TSNE(n_components=2, perplexity=perplexity, metric="euclidean",
                         negative_gradient_method="auto", random_state=seed, n_jobs=n_jobs,
                         verbose=False)
    embedding = tsne.fit(np.ascontiguousarray(scores, dtype=np.float64))
    return np.asarray(embedding, dtype=np.float64)


def _drop_self(idx: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index from its (k+1)-neighbour list (not always column 0: ties)."""
    is_self = idx == np.arange(idx.shape[0])[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(dist, order, axis=1)


def embedding_outlier_z(embedding: np.ndarray, n_neighbors: int = 15) -> np.ndarray:
    """Robust z of log(mean distance to the ``n_neighbors`` nearest other points)."""
    n = embedding.shape[0]
    k = int(min(n_neighbors, n - 1))
    dist, idx = cKDTree(embedding).query(embedding, k=k + 1)
    _, dist = _drop_self(idx, dist, k)
    mean_dist = dist.mean(axis=1)
    return robust_z(np.log(np.maximum(mean_dist, np.finfo(float).tiny)))


def independent_neighbours(embedding: np.ndarray, star_id: np.ndarray | None,
                           n_neighbors: int = 15) -> np.ndarray:
    """Indices (n, n_neighbors) of the nearest embedding neighbours from *other* stars.

    Missing slots (too few other stars) are -1. Without ``star_id`` only the point itself is
    excluded.
    """
    n = embedding.shape[0]
    k = int(min(n_neighbors, n - 1))
    if star_id is None:
        star_codes = np.arange(n)
    else:
        star_codes = pd.factorize(pd.Series(star_id).astype(str))[0]
    repeats = int(np.bincount(star_codes).max()) - 1
    # ask for enough neighbours that k of them can come from other stars (bounded for safety)
    k_query = int(min(n, k + 1 + min(repeats, 10 * k)))
    _, idx = cKDTree(embedding).query(embedding, k=k_query)
    idx = idx.reshape(n, k_query)
    other = star_codes[idx] != star_codes[:, None]
    # stable sort puts the other-star neighbours first, nearest first
    order = np.argsort(~other, axis=1, kind="stable")[:, :k]
    chosen = np.take_along_axis(idx, order, axis=1)
    chosen[~np.take_along_axis(other, order, axis=1)] = -1
    return chosen


def label_disagreement_z(values: np.ndarray, neighbours: np.ndarray, floor: float,
                         min_valid: int = 3) -> np.ndarray:
    """(label - neighbour median) / max(1.4826 neighbour MAD, floor), NaN where undecidable.

    ``neighbours`` holds row indices with -1 for empty slots; neighbours with unknown labels are
    ignored; fewer than ``min_valid`` known neighbour labels or an unknown own label give NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    nb = np.where(neighbours >= 0, values[np.clip(neighbours, 0, None)], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN neighbourhoods -> NaN
        med = np.nanmedian(nb, axis=1)
        mad = np.nanmedian(np.abs(nb - med[:, None]), axis=1)
    scatter = np.maximum(MAD_TO_SIGMA * mad, float(floor))
    scatter = np.where(scatter > 0, scatter, np.finfo(float).tiny)
    z = (values - med) / scatter
    z[np.isfinite(nb).sum(axis=1) < min_valid] = np.nan
    return z


def residual_z(resid_rms: np.ndarray, snr: np.ndarray | None, n_bins: int) -> np.ndarray:
    """Robust z of log(residual RMS) among spectra of similar S/N (log-log, ``n_bins`` bins).

    A higher-S/N spectrum has a smaller honest residual, so one global median would flag the
    noisiest spectra and miss defects in the cleanest ones.
    """
    log_resid = np.log(np.maximum(resid_rms, 1e-12))
    log_snr = None
    if snr is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            log_snr = np.log(np.where(snr > 0, snr, np.nan))
    return robust_z_given(log_resid, log_snr, n_bins)


# ---------------------------------------------------------------- the stage

def _column(table: pd.DataFrame, name: str, rows: np.ndarray) -> np.ndarray:
    """float64 values of a table column at ``rows``; missing values (None, pd.NA) become NaN."""
    return table[name].to_numpy(dtype=np.float64, na_value=np.nan)[rows]


def _config(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The clean section completed from the schema's defaults; ``n_jobs`` (threads of the t-SNE
    and the BLAS calls, not a config key: the rule passes its threads) defaults to 1."""
    c = config.section("clean", cfg)
    c.setdefault("n_jobs", 1)
    return c


def tsne_clean(flux: np.ndarray, table: pd.DataFrame, labels: Sequence[str],
               cfg: Mapping[str, Any] | None = None,
               log: Callable[[str], Any] = print) -> pd.DataFrame:
    """Flag bad training spectra with PCA residuals and a t-SNE embedding (module docstring).

    Parameters
    ----------
    flux : (n_spectra, n_pixels) continuum-normalised flux, may be a read-only memmap.
    table : one row per flux row with ``spectrum_id``, ``split``, the label columns, optionally
        ``star_id`` and ``snr``.
    labels : label columns used for the disagreement test.
    cfg : the ``clean`` config section (thresholds); missing keys take the schema's defaults;
        ``n_jobs`` (default 1) sets the threads.
    log : called with one human-readable line per step.

    Returns
    -------
    DataFrame in table row order: ``spectrum_id``, ``row``, ``cleaned``, ``keep``, ``reason``,
    ``tsne_x``, ``tsne_y``, ``pca_residual_z``, ``embedding_outlier_z``, ``label_z_<label>``
    (signed). Rows outside ``splits`` have ``cleaned=False``, ``keep=True`` and NaN statistics.
    """
    labels = check_labels(list(labels))
    c = _config(cfg)
    n_rows = len(table)
    if flux.ndim != 2 or flux.shape[0] != n_rows:
        raise ValueError(f"flux has shape {flux.shape} but the table has {n_rows} rows")
    missing = [col for col in ["spectrum_id", "split", *labels] if col not in table.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}")
    no_floor = [lab for lab in labels if lab not in c["label_floor"]]
    if no_floor:
        raise ValueError(f"label_floor has no entry for {no_floor}")

    split = table["split"].astype(str).to_numpy()
    selected = np.isin(split, list(c["splits"]))
    sel_rows = np.flatnonzero(selected)
    out = pd.DataFrame({
        "spectrum_id": table["spectrum_id"].to_numpy(),
        "row": np.arange(n_rows, dtype=np.int64),
        "cleaned": selected,
        "keep": np.ones(n_rows, dtype=bool),
        "reason": np.array(["" if sel else f"not cleaned (split {sp})"
                            for sel, sp in zip(selected, split)], dtype=object),
    })
    for col in ["tsne_x", "tsne_y", "pca_residual_z", "pca_peak_z", "label_model_z",
                "label_model_peak_z", "depth_scale_z", "embedding_outlier_z",
                *[f"label_z_{lab}" for lab in labels]]:
        out[col] = np.nan
    log(f"tsne_clean: {sel_rows.size} of {n_rows} spectra in splits {list(c['splits'])} "
        f"to clean, {n_rows - sel_rows.size} left untouched")
    if sel_rows.size == 0:
        return out
    min_rows = max(4, int(c["n_neighbors"]) + 2)
    if sel_rows.size < min_rows:
        raise ValueError(f"t-SNE cleaning needs at least {min_rows} spectra, got {sel_rows.size}")

    t0 = time.perf_counter()
    # BLAS may use only the job's threads: more threads than cores (a Snakemake job beside
    # others) made the small QR/SVD steps of the randomized SVD many times slower
    with threadpool_limits(limits=max(1, int(c["n_jobs"])), user_api="blas"):
        scores, resid, peak = pca_scores_and_residuals(flux, sel_rows,
                                                       n_components=int(c["pca_components"]),
                                                       fit_rows=int(c["pca_fit_rows"]),
                                                       seed=int(c["seed"]),
                                                       window=int(c["residual_window"]))
    snr = _column(table, "snr", sel_rows) if "snr" in table.columns else None
    z_resid = residual_z(resid, snr, int(c["residual_snr_bins"]))
    z_peak = residual_z(peak, snr, int(c["residual_snr_bins"]))
    z_model = z_model_peak = z_depth = None
    if c["label_model_z"] is not None or c["depth_scale_z"] is not None:
        t1 = time.perf_counter()
        values = np.stack([_column(table, lab, sel_rows) for lab in labels], axis=1)
        z_model, z_model_peak, depth_scale = label_model_residuals(
            flux, sel_rows, values, snr, window=int(c["residual_window"]),
            n_bins=int(c["residual_snr_bins"]), seed=int(c["seed"]))
        # one-sided: lines shallower than the labels predict, relative to spectra of similar S/N
        with np.errstate(invalid="ignore", divide="ignore"):
            log_snr = None if snr is None else np.log(np.where(snr > 0, snr, np.nan))
        z_depth = robust_z_given(-depth_scale, log_snr, int(c["residual_snr_bins"]))
        log(f"tsne_clean: quadratic label model of the flux in {time.perf_counter() - t1:.1f} s")
    log(f"tsne_clean: PCA to {scores.shape[1]} components in {time.perf_counter() - t0:.1f} s "
        f"(median residual RMS {np.median(resid):.4g})")

    t0 = time.perf_counter()
    emb = tsne_embed(scores, perplexity=float(c["perplexity"]), seed=int(c["seed"]),
                     n_jobs=int(c["n_jobs"]))
    log(f"tsne_clean: t-SNE of {sel_rows.size} spectra in {time.perf_counter() - t0:.1f} s")

    k = int(c["n_neighbors"])
    z_out = embedding_outlier_z(emb, k)
    star = table["star_id"].to_numpy()[sel_rows] if "star_id" in table.columns else None
    neighbours = independent_neighbours(emb, star, k)
    z_lab = {lab: label_disagreement_z(_column(table, lab, sel_rows), neighbours,
                                       c["label_floor"][lab])
             for lab in labels}

    reasons = _reasons(z_resid, z_out, z_lab, c, z_peak, z_model, z_model_peak, z_depth)
    out.loc[sel_rows, "tsne_x"] = emb[:, 0]
    out.loc[sel_rows, "tsne_y"] = emb[:, 1]
    out.loc[sel_rows, "pca_residual_z"] = z_resid
    out.loc[sel_rows, "pca_peak_z"] = z_peak
    if z_model is not None:
        out.loc[sel_rows, "label_model_z"] = z_model
        out.loc[sel_rows, "label_model_peak_z"] = z_model_peak
        out.loc[sel_rows, "depth_scale_z"] = z_depth
    out.loc[sel_rows, "embedding_outlier_z"] = z_out
    for lab in labels:
        out.loc[sel_rows, f"label_z_{lab}"] = z_lab[lab]
    out.loc[sel_rows, "reason"] = reasons
    out.loc[sel_rows, "keep"] = reasons == ""
    _log_summary(out, log)
    return out


def _reasons(z_resid: np.ndarray, z_out: np.ndarray, z_lab: Mapping[str, np.ndarray],
             c: Mapping[str, Any], z_peak: np.ndarray | None = None,
             z_model: np.ndarray | None = None, z_model_peak: np.ndarray | None = None,
             z_depth: np.ndarray | None = None) -> np.ndarray:
    """One ';'-joined reason string per cleaned spectrum ('' = kept)."""
    n = z_resid.size
    parts: list[list[str]] = [[] for _ in range(n)]
    # tests that judge a spectrum by other stars (its neighbours' labels, the population's line
    # depths) reject it only where its own labels also fit it poorly: a chemically peculiar star
    # looks unlike its neighbours, yet its spectrum agrees with its labels
    unsupported = np.zeros(n, dtype=bool)
    if z_model is not None and c["label_support_z"] is not None:
        worst = np.maximum(np.nan_to_num(z_model, nan=0.0), np.nan_to_num(z_model_peak, nan=0.0))
        unsupported = worst <= float(c["label_support_z"])
    if z_model is not None and c["label_model_z"] is not None:
        limit = float(c["label_model_z"])
        for i in np.flatnonzero(np.nan_to_num(z_model, nan=0.0) > limit):
            parts[i].append(REASON_MODEL)
        for i in np.flatnonzero(np.nan_to_num(z_model_peak, nan=0.0) > limit):
            parts[i].append(REASON_MODEL_PEAK)
    if z_depth is not None and c["depth_scale_z"] is not None:
        shallow = np.nan_to_num(z_depth, nan=0.0) > float(c["depth_scale_z"])
        for i in np.flatnonzero(shallow & ~unsupported):
            parts[i].append(REASON_DEPTH)
    for i in np.flatnonzero(z_resid > float(c["residual_z"])):
        parts[i].append(REASON_PCA)
    if z_peak is not None:
        for i in np.flatnonzero(z_peak > float(c["residual_peak_z"])):
            parts[i].append(REASON_PEAK)
    for i in np.flatnonzero(z_out > float(c["outlier_z"])):
        parts[i].append(REASON_OUTLIER)
    marked = {lab: np.abs(np.nan_to_num(z, nan=0.0)) > float(c["label_z"])
              for lab, z in z_lab.items()}
    n_marked = np.sum(list(marked.values()), axis=0) if marked else np.zeros(n, dtype=int)
    enough = (n_marked >= max(1, int(c["min_flagged_labels"]))) & ~unsupported
    for lab, m in marked.items():
        for i in np.flatnonzero(m & enough):
            parts[i].append(f"{REASON_LABEL}:{lab}")
    return np.array([";".join(p) for p in parts], dtype=object)


def _log_summary(out: pd.DataFrame, log: Callable[[str], Any]) -> None:
    cleaned = out[out["cleaned"]]
    rejected = cleaned[~cleaned["keep"]]
    counts: dict[str, int] = {}
    for reason in rejected["reason"]:
        for part in reason.split(";"):
            counts[part] = counts.get(part, 0) + 1
    for part in sorted(counts):
        log(f"tsne_clean:   {part}: {counts[part]}")
    log(f"tsne_clean: kept {len(cleaned) - len(rejected)}, rejected {len(rejected)} "
        f"({100.0 * len(rejected) / max(1, len(cleaned)):.1f} %) of {len(cleaned)} cleaned spectra")
