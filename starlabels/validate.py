"""The validate stage: metrics against known truth, and the plots a person looks at.

Metrics (written to ``metrics.json``):

* **precision** — per label, bias / σ / robust σ (1.4826·MAD) / N of (predicted − reference) for
  the evaluation sample (Gaia-ESO: the test split; MARVELS: the calibration stars), against the
  simulator's true labels (``vs_true``, spectra without injected defects; ``vs_true_all`` with
  them) and against the catalogue or literature labels (``vs_reference``);
* **uncertainty** (simulated surveys) — per label, how well ``<label>_err`` describes the real
  error: coverage of the 50/68/90/95 % intervals with bootstrap intervals, the robust spread of
  z = (pred − true)/err, σ and coverage per S/N tercile (:mod:`starlabels.scoring`); the same
  coverage for the uncalibrated ``_err_raw`` and the members' scatter ``_err_members``;
* **uncertainty on the catalogue's scale** (simulated surveys with catalogue offsets) — the same
  against the truth plus the simulated catalogue's own systematic offset, the part of the error
  a calibration against catalogue labels can see (:func:`catalogue_scale_scores`);
* **bias by true label** and the **α-rich sequence** (share of [Mg/Fe]-rich stars in a
  metallicity window, true vs catalogue): regression toward the mean, measured;
* **paper comparison** — the published system's own quantities computed our way beside the
  published values (``validate.paper``): training precision (σ against the catalogue labels on
  the training spectra, in-sample) and internal precision (median members' scatter);
* **clean** — fraction of injected defective training spectra the t-SNE stage rejected, per defect
  type, and the fraction of good training spectra it rejected; per chemical population (the
  Al-rich/Mg-poor stars it must keep), per evolutionary class, and for catalogue outliers;
  normalize rejects per reason;
* **repeat pairs** — for stars observed more than once, z = (x₁ − x₂)/sqrt(σ₁² + σ₂²) over every
  pair of their spectra, per label, with σ the catalogue's per-spectrum uncertainty
  (``<label>_err``): spread 1 and 68 % within
  |z| < 1 when the uncertainties are right (how surveys check them);
* **giant classes** (MARVELS) — giant / sub-giant / dwarf fractions of the giant candidates from
  the predicted log g, beside the simulated truth (its log g, and the classes the simulator drew
  for this seed from its prior);
* **network gradients** — mean |∂label/∂flux| near each element's lines relative to elsewhere;
* **precision report** (simulated surveys) — per label and S/N bin: σ and bias of
  (predicted − true), the median idealised and marginalised Cramér–Rao bounds of the simulator's
  own forward model (``starlabels.limits``), σ's ratio to each, and the z-spread and 68 %
  coverage of ``<label>_err``; where the catalogue has refined labels (the refine stage), the
  same for them beside it;
* **targets** — the experiment's acceptance targets (``validate.targets``) beside the measured
  figure, and whether each is met;
* **reference stars** — the stars with literature labels (Gaia FGK benchmark stars, MARVELS
  calibration stars): each one's predicted labels beside the literature's, and bias / σ of the
  differences (also a small table in the log).

What differs between surveys (evaluation split, what their reference labels are, giant classes)
comes from their records in :mod:`starlabels.surveys`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import artifacts, scoring, surveys
from .grid import WavelengthGrid
from .labels import LABEL_ELEMENTS


def label_stats(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    d = np.asarray(pred, dtype=float) - np.asarray(ref, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return {"n": 0, "bias": float("nan"), "sigma": float("nan"), "robust_sigma": float("nan")}
    return {"n": int(d.size), "bias": float(np.mean(d)), "sigma": float(np.std(d, ddof=1))
            if d.size > 1 else 0.0,
            "robust_sigma": scoring.robust_spread(d)}


def error_calibration(pred: np.ndarray, err: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Spread of z = (pred − true)/err and the share of |z| ≤ 1 (68 % coverage)."""
    pred, err, true = (np.asarray(a, dtype=float) for a in (pred, err, true))
    ok = np.isfinite(pred) & np.isfinite(true) & np.isfinite(err) & (err > 0)
    if not ok.any():
        return {"n": 0, "z_sigma": float("nan"), "coverage_68": float("nan")}
    z = (pred[ok] - true[ok]) / err[ok]
    return {"n": int(ok.sum()), "z_sigma": float(np.std(z)),
            "coverage_68": float(np.mean(np.abs(z) <= 1.0))}


def precision_block(cat: pd.DataFrame, truth: pd.DataFrame, labels: Sequence[str],
                    rows: np.ndarray) -> dict[str, Any]:
    """Precision of the rows ``rows`` of ``cat`` (joined to ``truth`` on star_id)."""
    sub = cat.loc[rows].merge(truth, on="star_id", how="left", suffixes=("", "_true"))
    clean = sub["defect"].fillna("").eq("").to_numpy() if "defect" in sub else \
        np.ones(len(sub), dtype=bool)
    out: dict[str, Any] = {"n_stars": int(len(sub)), "n_without_defects": int(clean.sum()),
                           "vs_true": {}, "vs_true_all": {}, "vs_reference": {}}
    for label in labels:
        true = sub[f"{label}_true"].to_numpy(dtype=float)
        pred = sub[label].to_numpy(dtype=float)
        out["vs_true"][label] = label_stats(pred[clean], true[clean])
        out["vs_true"][label]["sigma_ci95"] = scoring.sigma_ci(pred[clean] - true[clean])[
            "sigma_ci95"]
        out["vs_true_all"][label] = label_stats(pred, true)
        out["vs_reference"][label] = label_stats(pred, sub[f"{label}_ref"].to_numpy(dtype=float))
    return out


def clean_metrics(truth: pd.DataFrame, stars: pd.DataFrame, cleaned: pd.DataFrame,
                  rejects: pd.DataFrame) -> dict[str, Any]:
    """How well the clean stage removed injected defects from the training set.

    The sample is the training candidates that reached the clean stage (splits it cleaned);
    normalize rejects are counted separately per defect type. Good spectra are those with
    neither an injected defect nor a catastrophic catalogue label (``catalogue_outlier``: a
    wrong training label, rightly rejected; reported on its own).
    """
    extra = [col for col in ("chemical_population", "population", "catalogue_outlier")
             if col in truth]
    t = truth[["star_id", "defect", *extra]].copy()
    t["defect"] = t["defect"].fillna("")
    c = pd.DataFrame({"star_id": stars["star_id"], "cleaned": cleaned["cleaned"].to_numpy(),
                      "keep": cleaned["keep"].to_numpy(), "reason": cleaned["reason"].to_numpy()})
    c = c[c["cleaned"]].merge(t, on="star_id", how="left")
    c["defect"] = c["defect"].fillna("")
    bad = c["defect"] != ""
    wrong_label = c["catalogue_outlier"].fillna(False).astype(bool) if "catalogue_outlier" in c \
        else pd.Series(False, index=c.index)
    fine = ~bad & ~wrong_label
    out: dict[str, Any] = {
        "n_cleaned": int(len(c)),
        "n_defective": int(bad.sum()),
        "defective_rejected_fraction": float((~c.loc[bad, "keep"]).mean()) if bad.any() else None,
        "good_rejected_fraction": float((~c.loc[fine, "keep"]).mean()) if fine.any() else None,
        "per_defect": {},
    }
    for kind, grp in c[bad].groupby("defect"):
        out["per_defect"][kind] = {"n": int(len(grp)),
                                   "rejected_fraction": float((~grp["keep"]).mean())}
    good = c[~bad]
    # real stars the cleaning must keep (chemically peculiar) and the classes it might bias;
    # catalogue outliers count here too: their spectra are fine, their labels are not
    for column, key in (("chemical_population", "per_population"), ("population", "per_class")):
        if column in good:
            out[key] = {str(k): {"n": int(len(g)), "kept_fraction": float(g["keep"].mean())}
                        for k, g in good.groupby(column)}
    if "catalogue_outlier" in good:
        wrong = good[good["catalogue_outlier"].fillna(False).astype(bool)]
        out["catalogue_outliers"] = {
            "n": int(len(wrong)),
            "rejected_fraction": float((~wrong["keep"]).mean()) if len(wrong) else None}
    reached = set(stars["star_id"])
    lost = t[~t["star_id"].isin(reached)]
    out["normalize_rejected"] = {
        "n": int(len(lost)),
        "per_defect": {k or "none": int(v) for k, v in lost["defect"].value_counts().items()},
        "per_broken_file": {k or "none": int(v) for k, v in
                            truth.loc[truth["star_id"].isin(lost["star_id"]), "broken"]
                            .fillna("").value_counts().items()} if "broken" in truth else {},
        "per_reason": {str(k): int(v) for k, v in rejects["reason"].str.split(":").str[0]
                       .value_counts().items()} if len(rejects) else {},
    }
    return out


def giant_fractions(logg: np.ndarray, giant_max: float, dwarf_min: float) -> dict[str, float]:
    logg = np.asarray(logg, dtype=float)
    logg = logg[np.isfinite(logg)]
    if logg.size == 0:
        return {"giant": float("nan"), "subgiant": float("nan"), "dwarf": float("nan"), "n": 0}
    return {"giant": float(np.mean(logg < giant_max)),
            "subgiant": float(np.mean((logg >= giant_max) & (logg < dwarf_min))),
            "dwarf": float(np.mean(logg >= dwarf_min)), "n": int(logg.size)}


def uncertainty_column(cat: pd.DataFrame, label: str) -> str | None:
    """The catalogue's per-spectrum uncertainty of ``label`` (``<label>_err``), None where it
    has none."""
    return f"{label}_err" if f"{label}_err" in cat else None


def repeat_pairs(cat: pd.DataFrame, labels: Sequence[str],
                 exclude_stars: set[str] | None = None) -> dict[str, Any]:
    """Repeat-pair z-scores per label, z = (x₁ − x₂)/sqrt(σ₁² + σ₂²) over every pair of spectra of
    one star (stars in ``exclude_stars``, e.g. with injected defects, left out).

    Reported for held-out spectra (not in the training split) and, separately, for training
    spectra (in-sample: their predictions were fitted to one shared catalogue label). Per label:
    pairs, z spread (std and 1.4826 MAD) and the fraction with |z| < 1 (0.68 when the
    uncertainties are right), and which column gave σ.
    """
    exclude = exclude_stars or set()
    out: dict[str, Any] = {}
    for name, rows in (("held_out", ~cat["split"].eq("train")), ("training", cat["split"].eq("train"))):
        sub = cat[rows.to_numpy() & ~cat["star_id"].isin(exclude).to_numpy()]
        groups = [g.index.to_numpy() for _, g in sub.groupby("star_id") if len(g) > 1]
        first = np.concatenate([np.repeat(g[:-1], np.arange(len(g) - 1, 0, -1)) for g in groups]
                               ) if groups else np.array([], dtype=int)
        second = np.concatenate([np.concatenate([g[i + 1:] for i in range(len(g) - 1)])
                                 for g in groups]) if groups else np.array([], dtype=int)
        block: dict[str, Any] = {"n_stars": len(groups), "n_pairs": int(first.size), "labels": {}}
        for label in labels:
            column = uncertainty_column(cat, label)
            if column is None:
                continue
            x1, x2 = (cat.loc[idx, label].to_numpy(dtype=float) for idx in (first, second))
            s1, s2 = (cat.loc[idx, column].to_numpy(dtype=float) for idx in (first, second))
            z = (x1 - x2) / np.sqrt(s1 ** 2 + s2 ** 2)
            z = z[np.isfinite(z)]
            block["labels"][label] = {
                "uncertainty": column, "n_pairs": int(z.size),
                "z_sigma": float(np.std(z)) if z.size > 1 else float("nan"),
                "z_robust_sigma": scoring.robust_spread(z),
                "fraction_within_1": float(np.mean(np.abs(z) < 1)) if z.size else float("nan"),
                "rms_difference": float(np.sqrt(np.mean((x1 - x2) ** 2))) if x1.size
                else float("nan")}
        out[name] = block
    return out


def gradient_line_ratios(wavelength: np.ndarray, gradients: np.ndarray, labels: Sequence[str],
                         lines: pd.DataFrame, half_width: float = 0.5) -> dict[str, float]:
    """Mean of ``gradients`` (pass magnitudes) within ±half_width Å of the label's element lines
    / mean elsewhere."""
    out = {}
    for i, label in enumerate(labels):
        elements = LABEL_ELEMENTS.get(label)
        if not elements:
            continue
        centres = lines.loc[lines["element"].isin(elements), "wavelength_air"].to_numpy()
        near = np.zeros(wavelength.size, dtype=bool)
        for w0 in centres:
            near |= np.abs(wavelength - w0) <= half_width
        if near.any() and (~near).any():
            out[label] = float(np.mean(gradients[i, near]) / np.mean(gradients[i, ~near]))
    return out


def precision_report(cat: pd.DataFrame, truth: pd.DataFrame, labels: Sequence[str],
                     rows: np.ndarray, simulate_cfg: Mapping[str, Any],
                     grid_cfg: Mapping[str, Any], snr_bins: Sequence[float], crlb_sample: int,
                     log=print, continuum: Mapping[str, Any] | None = None,
                     catalogue_rv: bool = True) -> pd.DataFrame:
    """Per label and S/N bin: σ, bias, the median idealised and marginalised CRLB, σ over each,
    and the z-spread and 68 % coverage of ``<label>_err``.

    Only evaluation stars without injected defects count. The bounds use the model that made
    the observed spectra (observed line list with the synthetic gap, the star's true broadening,
    each grid segment at its setup's resolving power, rest frame) at the star's measured S/N on
    the experiment grid; the marginalised one frees the nuisances of the simulated survey
    (:func:`starlabels.limits.nuisances_for`: the normaliser's ``continuum`` order, the RV, with
    the catalogue's RV error when normalize uses it (``catalogue_rv``), ...). Computed for up to
    ``crlb_sample`` stars; the median is taken per bin.
    """
    import time

    from . import config
    from .limits import nuisances_for, star_bounds
    from .simulate.physics import Broadening, ForwardModel, Instrument, load_telluric_lines
    from .simulate.survey import observed_linelist

    continuum = config.section("normalize.continuum", continuum)

    sub = cat.loc[rows].merge(truth, on="star_id", how="left", suffixes=("", "_true"))
    sub = sub[sub["defect"].fillna("").eq("")].reset_index(drop=True)
    grid = WavelengthGrid.from_config(grid_cfg["segments"])
    resolution = {s["name"]: float(s["resolution"]) for s in simulate_cfg["setups"]}
    missing = [seg.name for seg in grid.segments if seg.name not in resolution]
    if missing:
        raise ValueError(f"grid segment(s) {missing} have no simulate.setups entry with the "
                         f"same name, so their resolving power is unknown")
    model = ForwardModel([Instrument(seg.name, resolution[seg.name], seg.wavelength_air)
                          for seg in grid.segments], observed_linelist(simulate_cfg)[1],
                         electron_donors=bool(simulate_cfg["stars"]["electron_donors"]),
                         telluric=load_telluric_lines())
    nuisances, exposure = nuisances_for(simulate_cfg, int(continuum["order"]), grid_cfg,
                                        catalogue_rv)
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(sub), size=min(crlb_sample, len(sub)), replace=False))
    start = time.perf_counter()
    bounds = {kind: {label: np.full(len(sub), np.nan) for label in labels}
              for kind in ("ideal", "marginalised")}
    all_labels = ("teff", "logg", "fe_h", "mg_fe", "al_fe")
    # labels the experiment predicts were suffixed _true by the merge; the others (nuisance
    # parameters of the spectrum, e.g. [Mg/Fe] for MARVELS) keep their own names
    true_col = {k: f"{k}_true" if f"{k}_true" in sub else k for k in all_labels}
    for i in pick:
        star = {k: float(sub.at[i, true_col[k]]) for k in all_labels}
        broadening = Broadening(**{k: float(sub.at[i, k]) for k in ("vmic_kms", "vsini_kms",
                                                                     "vmac_kms") if k in sub})
        result = star_bounds(model, star, float(sub.at[i, "snr"]), nuisances, labels,
                             star=broadening, exposure=exposure)
        for kind, crlb in result.items():
            for label in labels:
                bounds[kind][label][i] = crlb[label]
    log(f"validate: idealised and marginalised CRLB of {pick.size} stars in "
        f"{time.perf_counter() - start:.1f} s")
    snr = sub["snr"].to_numpy(dtype=float)
    edges = list(snr_bins)
    out = []
    for label in labels:
        err = sub[label].to_numpy(dtype=float) - sub[f"{label}_true"].to_numpy(dtype=float)
        unc = sub[f"{label}_err"].to_numpy(dtype=float)
        for lo, hi in zip(edges[:-1], edges[1:]):
            inbin = (snr >= lo) & (snr < hi) & np.isfinite(err)
            stats = label_stats(err[inbin], np.zeros(inbin.sum()))
            cal = error_calibration(err[inbin], unc[inbin], np.zeros(inbin.sum()))
            crlb = {kind: np.nanmedian(b[label][inbin]) if np.isfinite(b[label][inbin]).any()
                    else np.nan for kind, b in bounds.items()}
            row = {"label": label, "snr_lo": lo, "snr_hi": hi, "n": stats["n"],
                   "sigma": stats["sigma"], "bias": stats["bias"], "crlb": crlb["ideal"],
                   "sigma_over_crlb": stats["sigma"] / crlb["ideal"]
                   if crlb["ideal"] > 0 else np.nan,
                   "crlb_marginalised": crlb["marginalised"],
                   "sigma_over_crlb_marginalised": stats["sigma"] / crlb["marginalised"]
                   if crlb["marginalised"] > 0 else np.nan,
                   "z_sigma": cal["z_sigma"], "coverage_68": cal["coverage_68"]}
            if f"{label}_refined" in sub:
                # the refine stage's labels beside the network's and the bound
                row.update(refined_stats(sub, label, inbin, stats["sigma"], crlb["ideal"]))
            out.append(row)
    return pd.DataFrame(out)


def refined_stats(sub: pd.DataFrame, label: str, rows: np.ndarray, network_sigma: float,
                  crlb: float) -> dict[str, float]:
    """σ, bias, z-spread and 68 % coverage of ``<label>_refined`` (with
    ``<label>_refined_err``) against ``<label>_true`` over ``rows``, with its ratios to the
    network's σ and to the Cramér–Rao bound."""
    err = sub[f"{label}_refined"].to_numpy(dtype=float) - sub[f"{label}_true"].to_numpy(dtype=float)
    use = rows & np.isfinite(err)
    stats = label_stats(err[use], np.zeros(use.sum()))
    cal = error_calibration(err[use], sub[f"{label}_refined_err"].to_numpy(dtype=float)[use],
                               np.zeros(use.sum()))
    return {"n_refined": stats["n"], "sigma_refined": stats["sigma"],
            "bias_refined": stats["bias"], "z_sigma_refined": cal["z_sigma"],
            "coverage_68_refined": cal["coverage_68"],
            "refined_over_network": stats["sigma"] / network_sigma if network_sigma > 0
            else np.nan,
            "refined_over_crlb": stats["sigma"] / crlb if crlb > 0 else np.nan}


def no_truth(cat: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """The truth table of real data: every star, every true label unknown (NaN), no defects.

    Metrics against truth then come out empty (n = 0) while those against the catalogue or
    literature labels are computed as for simulated surveys."""
    frame = pd.DataFrame({"star_id": pd.unique(cat["star_id"].astype(str))})
    for label in labels:
        frame[label] = np.nan
    frame["defect"] = ""
    return frame


def clean_summary(cleaned: pd.DataFrame, rejects: pd.DataFrame) -> dict[str, Any]:
    """What the clean and normalize stages removed, without truth to say whether rightly."""
    c = cleaned[cleaned["cleaned"]]
    return {"n_cleaned": int(len(c)),
            "rejected_fraction": float((~c["keep"]).mean()) if len(c) else None,
            "per_reason": {str(k): int(v) for k, v in c.loc[~c["keep"], "reason"]
                           .fillna("").str.split(";").str[0].value_counts().items()},
            "normalize_rejected": {
                "n": int(len(rejects)),
                "per_reason": {str(k): int(v) for k, v in rejects["reason"].str.split(":")
                               .str[0].value_counts().items()} if len(rejects) else {}}}


def reference_precision_by_snr(cat: pd.DataFrame, labels: Sequence[str], rows: np.ndarray,
                               snr_bins: Sequence[float]) -> pd.DataFrame:
    """Per label and S/N bin: σ and bias of (predicted − catalogue/literature label) — the
    precision-vs-S/N view for real data, where neither truth nor a Cramér–Rao bound exists."""
    sub = cat.loc[rows]
    snr = sub["snr"].to_numpy(dtype=float)
    edges = list(snr_bins)
    out = []
    for label in labels:
        diff = sub[label].to_numpy(dtype=float) - sub[f"{label}_ref"].to_numpy(dtype=float)
        for lo, hi in zip(edges[:-1], edges[1:]):
            inbin = (snr >= lo) & (snr < hi) & np.isfinite(diff)
            stats = label_stats(diff[inbin], np.zeros(inbin.sum()))
            out.append({"label": label, "snr_lo": lo, "snr_hi": hi, "n": stats["n"],
                        "sigma": stats["sigma"], "bias": stats["bias"]})
    return pd.DataFrame(out)


def reference_stars_block(cat: pd.DataFrame, calibration: pd.DataFrame,
                          labels: Sequence[str]) -> dict[str, Any]:
    """The predicted labels of the stars with literature labels (the calibration table: Gaia
    FGK benchmark stars for Gaia-ESO, the calibration stars for MARVELS) beside those labels.

    Per star: name (where the table has one), split, S/N and, per label, the literature value
    and error, the prediction and its calibrated error; per label, bias / σ / robust σ / N of
    (predicted − literature). Stars of the table without a prediction are listed by star_id.
    """
    compared = [label for label in labels if label in calibration.columns]
    lit = calibration.drop_duplicates("star_id").set_index("star_id")
    pred = cat.drop_duplicates("star_id").set_index("star_id")
    found = [sid for sid in lit.index if sid in pred.index]
    stars = []
    for sid in found:
        entry: dict[str, Any] = {"star_id": sid,
                                 "name": str(lit.at[sid, "name"]) if "name" in lit else sid,
                                 "split": str(pred.at[sid, "split"]) if "split" in pred else "",
                                 "snr": float(pred.at[sid, "snr"]) if "snr" in pred else None}
        for label in compared:
            entry[label] = {
                "literature": float(lit.at[sid, label]),
                "e_literature": float(lit.at[sid, f"e_{label}"]) if f"e_{label}" in lit
                else float("nan"),
                "predicted": float(pred.at[sid, label]),
                # before the reference-star scale, where the catalogue was put onto it (the
                # scale was fitted to these stars: see reference_scale's leave-one-out figures)
                "predicted_raw": float(pred.at[sid, f"{label}_raw"])
                if f"{label}_raw" in pred else float(pred.at[sid, label]),
                "predicted_err": float(pred.at[sid, f"{label}_err"])
                if f"{label}_err" in pred else float("nan")}
        stars.append(entry)
    return {"n": len(stars), "labels": compared, "stars": stars,
            "vs_literature": {label: label_stats([s[label]["predicted"] for s in stars],
                                                 [s[label]["literature"] for s in stars])
                              for label in compared},
            "not_predicted": [sid for sid in lit.index if sid not in pred.index]}


def reference_scale_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """Per label of the reference-star scale (:mod:`starlabels.reference_scale`): whether it
    was applied, the coefficients, the stars used and clipped, and the offsets' bias / robust σ
    before and after (leave-one-out)."""
    out: dict[str, Any] = {}
    for label, fit in record["labels"].items():
        method = fit["method"]
        if not fit.get("applied"):
            out[label] = {"applied": False, "method": method, "reason": fit.get("reason", "")}
            continue
        out[label] = {"applied": True, "method": method, "terms": ["constant", *record["terms"]],
                      "coefficients": fit["coefficients"],
                      "coefficient_errors": np.sqrt(np.diag(fit["covariance"])).tolist(),
                      "n_used": fit["n_used"]}
        if method == "abundance_trend":
            # fitted on the survey's own stars: how many, and how far they scatter about it
            out[label].update(n_inside=fit["n_inside"], residual_sigma=fit["residual_sigma"])
        else:
            out[label].update(chi2_red=fit["chi2_red"],
                              clipped=[name for name, u in zip(record["names"], fit["used"])
                                       if not u],
                              before=fit["before"], after_loo=fit["after_loo"])
    return out


def scale_by_class(cat: pd.DataFrame, true_labels: pd.DataFrame, labels: Sequence[str],
                   rows: np.ndarray) -> dict[str, Any]:
    """Whether the catalogue's scale puts giants and dwarfs on one scale, against the truth: per
    label the catalogue moved (``<label>_raw`` beside it), the median of predicted − true of the
    evaluation stars without defects in each true evolutionary class (the truth's
    ``population``), before (``raw``) and after (``catalogue``) the move."""
    sub = evaluation_stars(cat, true_labels, rows)
    if "population" not in sub:
        return {}
    out: dict[str, Any] = {}
    for label in labels:
        if f"{label}_raw" not in sub:
            continue
        entry: dict[str, Any] = {}
        for kind, column in (("raw", f"{label}_raw"), ("catalogue", label)):
            residual = sub[column].to_numpy(dtype=float) - sub[f"{label}_true"].to_numpy(float)
            entry[kind] = {}
            for cls in sorted(sub["population"].dropna().unique()):
                pick = (sub["population"] == cls).to_numpy() & np.isfinite(residual)
                if pick.any():
                    entry[kind][str(cls)] = {"n": int(pick.sum()),
                                             "median_bias": float(np.median(residual[pick]))}
        out[label] = entry
    return out


def reference_stars_lines(block: Mapping[str, Any]) -> list[str]:
    """The block as a small table for the log: one line per star, predicted and literature
    value of each label."""
    labels = block["labels"]
    head = f"  {'star':26s} {'split':11s}" + "".join(f" {label + ' pred/lit':>21s}"
                                                     for label in labels)
    lines = [f"validate: {block['n']} reference stars, predicted vs literature labels:", head]
    for star in block["stars"]:
        cells = "".join(f" {star[label]['predicted']:10.4g}/{star[label]['literature']:<10.4g}"
                        for label in labels)
        lines.append(f"  {star['name'][:26]:26s} {star['split'][:11]:11s}{cells}")
    stats = block["vs_literature"]
    lines.append("  bias / σ: " + ", ".join(f"{label} {stats[label]['bias']:+.3g} / "
                                            f"{stats[label]['sigma']:.3g}" for label in labels))
    return lines


def validate(*, catalog: str, table: str, flux: str, clean_table: str, rejects: str,
             truth: str | None, ivar: str | None = None,
             model_dirs: Sequence[str], labels: Sequence[str], survey: str,
             grid_cfg: Mapping[str, Any], cfg: Mapping[str, Any], metrics: str,
             plots: Mapping[str, str], experiment: str, linelist: str | None = None,
             simulate_cfg: Mapping[str, Any] | None = None, log=print,
             config_hash: str = "none", method: str | None = None,
             method_report: str | None = None, calibration: str | None = None,
             continuum: Mapping[str, Any] | None = None,
             refine_report: str | None = None,
             reference_scale: str | None = None) -> dict[str, Any]:
    """Compute metrics.json and draw the validation plots (paths in ``plots``).

    ``calibration`` is the survey's table of stars with literature labels; their predictions
    are reported beside those labels under ``reference_stars`` (and as a table in the log).

    ``truth`` is None for real data: metrics are then against the catalogue / literature labels
    only, the one-to-one-with-truth plot is empty, and precision vs S/N is against the
    catalogue labels. ``cfg`` is the ``validate`` section (keys left out take the schema's
    defaults). A method's own report (``method_report``, e.g. deep-REMAP's calibration and
    classes) is merged in under the method's name, the refine stage's report
    (``refine_report``) under ``refine``. ``continuum`` is the normalize stage's continuum
    section (its order sets the continuum nuisances of the marginalised bound)."""
    from . import config
    from . import plots as P
    from .simulate.physics import load_linelist

    cfg = config.section("validate", cfg)
    record = surveys.get(survey)

    cat = artifacts.load_table(catalog)
    stars = artifacts.load_table(table)
    cleaned = artifacts.load_table(clean_table)
    rej = artifacts.load_table(rejects)
    true = artifacts.load_table(truth) if truth is not None else no_truth(cat, labels)
    true_labels = true.rename(columns={k: f"{k}_true" for k in labels})
    result: dict[str, Any] = {"experiment": experiment, "survey": survey, "labels": list(labels),
                              "n_catalog": int(len(cat)), "n_normalize_rejected": int(len(rej)),
                              "truth": truth is not None}

    eval_split = record.evaluation_split
    rows = np.flatnonzero(cat["split"].to_numpy() == eval_split)
    result["evaluation_split"] = eval_split
    result["precision"] = precision_block(cat, true_labels, labels, rows)
    if truth is not None:
        result.update(truth_scores(cat, true_labels, labels, rows, cfg))
        if simulate_cfg is not None:
            result["uncertainty_catalogue_scale"] = catalogue_scale_scores(
                cat, true_labels, labels, rows, simulate_cfg["catalogue"]["systematic_offsets"])
    result["paper_comparison"] = paper_comparison(cat, labels, rows, cfg["paper"])
    result["targets"] = target_report(result, labels, cfg["targets"])
    for name, entry in result["targets"].items():
        log(f"validate: target {name}: {entry['measured']:.4g} vs {entry['target']} — "
            f"{'met' if entry['met'] else 'MISSED'}")
    if truth is not None:
        result["clean"] = clean_metrics(true, stars, cleaned, rej)
        log(f"validate: {eval_split} σ vs true: " + ", ".join(
            f"{k}={v['sigma']:.3g}" for k, v in result["precision"]["vs_true"].items()))
        cl = result["clean"]
        log(f"validate: clean rejected {cl['defective_rejected_fraction']} of defective and "
            f"{cl['good_rejected_fraction']} of good training spectra; kept per chemical "
            f"population: {cl.get('per_population')}")
    else:
        result["clean"] = clean_summary(cleaned, rej)
        log(f"validate: no truth (real data); {eval_split} σ vs reference: " + ", ".join(
            f"{k}={v['sigma']:.3g}" for k, v in result["precision"]["vs_reference"].items()))

    if reference_scale is not None:
        result["reference_scale"] = reference_scale_summary(artifacts.load_json(reference_scale))
        for label, fit in result["reference_scale"].items():
            log(f"validate: reference scale {label}: {fit}")
        if truth is not None:
            result["scale_by_class"] = scale_by_class(cat, true_labels, labels, rows)
            for label, entry in result["scale_by_class"].items():
                log(f"validate: {label} median predicted − true per class, before → after the "
                    f"catalogue's scale: " + ", ".join(
                        f"{cls} {entry['raw'][cls]['median_bias']:+.4g} → "
                        f"{entry['catalogue'][cls]['median_bias']:+.4g}"
                        for cls in entry["raw"] if cls in entry["catalogue"]))
    if calibration is not None:
        block = reference_stars_block(cat, artifacts.load_table(calibration), labels)
        result["reference_stars"] = block
        if block["n"]:
            for line in reference_stars_lines(block):
                log(line)
    defective = set(true.loc[true["defect"].fillna("").ne(""), "star_id"]) \
        if "defect" in true else set()
    result["repeat_pairs"] = repeat_pairs(cat, labels, defective)
    held = result["repeat_pairs"]["held_out"]
    if held["n_pairs"]:
        log(f"validate: {held['n_pairs']} held-out repeat pairs; z spread " + ", ".join(
            f"{k}={v['z_sigma']:.2f} ({v['uncertainty']})" for k, v in held["labels"].items()))

    if record.classes and truth is None and "rpm_class" in stars:
        # real MARVELS: the giant candidates are the catalogue's reduced-proper-motion giants
        giants = set(stars.loc[stars["rpm_class"].eq("giant"), "star_id"])
        cand = cat[cat["star_id"].isin(giants)]
        result["giant_candidates"] = {"predicted": giant_fractions(
            cand["logg"], cfg["giant_logg_max"], cfg["dwarf_logg_min"])}
    if record.classes and "sample" in true:
        cand = cat.merge(true[["star_id", "sample", "logg", *(["population"] if "population"
                                                              in true else [])]]
                         .rename(columns={"logg": "logg_true"}), on="star_id")
        # one row per star: a repeatedly observed candidate counts once (its first visit)
        cand = cand[cand["sample"] == "giant_candidate"].drop_duplicates("star_id")
        gmax, dmin = cfg["giant_logg_max"], cfg["dwarf_logg_min"]
        result["giant_candidates"] = {
            "predicted": giant_fractions(cand["logg"], gmax, dmin),
            "true": giant_fractions(cand["logg_true"], gmax, dmin),
        }
        if "population" in cand:
            # the classes the simulator drew for this seed from its prior (not fixed in code)
            drawn = cand["population"].value_counts(normalize=True)
            result["giant_candidates"]["true_drawn_classes"] = {
                k: float(drawn.get(k, 0.0)) for k in ("giant", "subgiant", "dwarf")}

    # network gradients (the paper's gradient figure): signed, averaged over similar stars
    grid = WavelengthGrid.from_config(grid_cfg["segments"])
    matrix = artifacts.load_matrix(flux)
    sample, sample_what = gradient_sample(cat, rows, cfg, log=log)
    lines = load_linelist(linelist)
    if sample.size:
        # catalogue rows are the normalized matrices' rows, in order
        flux_rows = np.asarray(matrix[sample])
        ivar_rows = np.asarray(artifacts.load_matrix(ivar)[sample]) if ivar is not None else None
        grads = input_gradients(list(model_dirs), flux_rows, device="cpu", ivar_rows=ivar_rows,
                                signed=bool(cfg["gradients"]["signed"]))
        result["gradients"] = {"n_stars": int(sample.size), "stars": sample_what,
                               "signed": bool(cfg["gradients"]["signed"]),
                               "line_ratio": gradient_line_ratios(grid.wavelength_air,
                                                                  np.abs(grads), labels, lines)}
        diag = lines[lines["species"].isin(["Mg I", "Al I", "Ca II"])]
        P.gradient_spectrum(grid.wavelength_air, grads, list(labels), plots["gradients"],
                            lines=diag, segment_slices=grid.segment_slices,
                            signed=bool(cfg["gradients"]["signed"]))
    else:
        result["gradients"] = {"n_stars": 0, "stars": sample_what}
        P.gradient_spectrum(grid.wavelength_air, np.zeros((len(labels), grid.n_pixels)),
                            list(labels), plots["gradients"], lines=None,
                            segment_slices=grid.segment_slices)

    ev = cat.loc[rows].merge(true_labels, on="star_id", how="left")
    P.one_to_one(ev[list(labels)], ev[[f"{k}_true" for k in labels]].set_axis(list(labels), axis=1),
                 list(labels), plots["one_to_one_true"], ref_name="true")
    P.one_to_one(ev[list(labels)], ev[[f"{k}_ref" for k in labels]].set_axis(list(labels), axis=1),
                 list(labels), plots["one_to_one_reference"],
                 ref_name=record.reference_name)
    P.kiel_diagram(cat, plots["kiel"])
    if {"mg_fe", "al_fe"} & set(labels) and "fe_h" in labels:
        # simulated: the evaluation stars' catalogue labels beside their true labels (both
        # disc sequences must be there); real data: the whole catalogue
        P.abundance_trends(ev if truth is not None else cat, plots["abundances"],
                           truth=ev[[f"{k}_true" for k in labels]].set_axis(list(labels), axis=1)
                           if truth is not None else None,
                           window=cfg["alpha_sequence"]["fe_h_window"],
                           threshold=cfg["alpha_sequence"]["threshold"])
    else:                 # MARVELS / deep-REMAP: the metallicity distribution per sample
        P.metallicity_distribution(cat, plots["abundances"], group="split")
    P.tsne_map(cleaned, plots["tsne"])
    P.coverage_diagram(result.get("uncertainty", {}), plots["coverage"])

    if simulate_cfg is not None and truth is not None:
        report = precision_report(cat, true, labels, rows, simulate_cfg, grid_cfg,
                                  cfg["snr_bins"], cfg["crlb_sample"], log=log,
                                  continuum=continuum,
                                  catalogue_rv=record.rv_column is not None)
        result["precision_report"] = report.to_dict(orient="records")
        P.precision_vs_snr(report, plots["precision_vs_snr"])
    else:
        report = reference_precision_by_snr(cat, labels, rows, cfg["snr_bins"])
        result["precision_vs_reference_by_snr"] = report.to_dict(orient="records")
        P.precision_vs_snr(report, plots["precision_vs_snr"])

    if method_report is not None:
        result[method] = artifacts.load_json(method_report)
    if refine_report is not None:
        result["refine"] = artifacts.load_json(refine_report)
    result["provenance"] = artifacts.provenance(None, config_hash=config_hash, stage="validate")
    artifacts.save_json(metrics, result)
    return result


# ---------------------------------------------------------------- scores against truth

def evaluation_stars(cat: pd.DataFrame, true_labels: pd.DataFrame, rows: np.ndarray
                     ) -> pd.DataFrame:
    """The catalogue's evaluation ``rows`` beside their truth (``true_labels``: the truth table
    with the labels suffixed ``_true``), without the spectra that carry an injected defect."""
    sub = cat.loc[rows].merge(true_labels, on="star_id", how="left", suffixes=("", "_truth"))
    if "defect" in sub:
        sub = sub[sub["defect"].fillna("").eq("")]
    return sub


def truth_scores(cat: pd.DataFrame, true_labels: pd.DataFrame, labels: Sequence[str],
                 rows: np.ndarray, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The uncertainty report, bias by true label and α-rich sequence of the evaluation stars
    without injected defects (``true_labels``: the truth with labels suffixed ``_true``)."""
    sub = evaluation_stars(cat, true_labels, rows)
    out: dict[str, Any] = {"uncertainty": {}, "bias_by_true_label": {}}
    snr = sub["snr"].to_numpy(dtype=float)
    for label in labels:
        pred = sub[label].to_numpy(dtype=float)
        true = sub[f"{label}_true"].to_numpy(dtype=float)
        if f"{label}_err" in sub:
            out["uncertainty"][label] = scoring.uncertainty_report(
                pred, sub[f"{label}_err"].to_numpy(dtype=float), true, snr,
                raw=sub[f"{label}_err_raw"].to_numpy(dtype=float)
                if f"{label}_err_raw" in sub else None,
                members=sub[f"{label}_err_members"].to_numpy(dtype=float)
                if f"{label}_err_members" in sub else None)
        out["bias_by_true_label"][label] = scoring.bias_by_label(pred, true)
    seq = cfg["alpha_sequence"]
    if "fe_h" in labels and seq["ratio"] in labels:
        out["alpha_sequence"] = {seq["ratio"]: scoring.abundance_sequence(
            sub["fe_h_true"].to_numpy(dtype=float), sub[f"{seq['ratio']}_true"].to_numpy(float),
            sub["fe_h"].to_numpy(dtype=float), sub[seq["ratio"]].to_numpy(dtype=float),
            seq["fe_h_window"], seq["threshold"])}
    return out


def catalogue_scale_scores(cat: pd.DataFrame, true_labels: pd.DataFrame, labels: Sequence[str],
                           rows: np.ndarray, offsets: Mapping[str, Sequence[float]]
                           ) -> dict[str, Any]:
    """What the valid-split calibration can see, measured: per label, σ, bias and the coverage
    of ``<label>_err`` for the evaluation stars without injected defects, against the truth
    *plus the simulated catalogue's own systematic offset* (``simulate.catalogue.
    systematic_offsets``), with the labels on the catalogue's scale (``<label>_raw`` where the
    reference stars moved them). The network learns that offset from its training labels and
    the valid split's catalogue labels carry it too, so no calibration against them can widen
    ``_err`` for it; the gap between these figures and the ``uncertainty`` block is the part of
    the error only reference stars, the abundance trends (:mod:`starlabels.abundance_trends`)
    or the simulator can see."""
    from .simulate.catalogue import systematic_offset

    sub = evaluation_stars(cat, true_labels, rows)
    # the offsets depend on the star's true Teff and log g, labels of the experiment or not
    true_stars = {k: sub[f"{k}_true" if k in labels else k] for k in ("teff", "logg")}
    out: dict[str, Any] = {}
    for label in labels:
        if label not in offsets or f"{label}_err" not in sub:
            continue
        column = f"{label}_raw" if f"{label}_raw" in sub else label
        target = (sub[f"{label}_true"].to_numpy(dtype=float)
                  + systematic_offset(true_stars, offsets, label))
        residual = sub[column].to_numpy(dtype=float) - target
        err = sub[f"{label}_err"].to_numpy(dtype=float)
        ok = np.isfinite(residual) & np.isfinite(err) & (err > 0)
        block = scoring.sigma_ci(residual[ok])
        block.update(column=column, bias=float(np.mean(residual[ok])) if ok.any() else None,
                     **{k: v for k, v in scoring.coverage_report(residual[ok] / err[ok]).items()
                        if k != "n"})
        out[label] = block
    return out


def paper_comparison(cat: pd.DataFrame, labels: Sequence[str], rows: np.ndarray,
                     paper: Mapping[str, Any]) -> dict[str, Any]:
    """Our figures computed the way the published system computed its own, beside its values:
    training precision = σ(pred − catalogue label) on the training spectra (in-sample: these
    are the spectra the members learned from), internal precision = the median members' scatter
    over the evaluation stars."""
    train = cat["split"].eq("train").to_numpy()
    out: dict[str, Any] = {"reference": paper["reference"], "labels": {}}
    for label in labels:
        entry: dict[str, Any] = {}
        if f"{label}_ref" in cat:
            entry["training_precision"] = label_stats(cat.loc[train, label].to_numpy(float),
                                                      cat.loc[train, f"{label}_ref"].to_numpy(float))
        if f"{label}_err_members" in cat:
            scatter = cat.loc[rows, f"{label}_err_members"].to_numpy(dtype=float)
            scatter = scatter[np.isfinite(scatter)]
            entry["internal_precision"] = float(np.median(scatter)) if scatter.size else \
                float("nan")
        for key in ("training_precision", "internal_precision", "calibration_stars_sigma"):
            if paper[key].get(label) is not None:
                entry[f"paper_{key}"] = float(paper[key][label])
        out["labels"][label] = entry
    return out


def target_report(result: Mapping[str, Any], labels: Sequence[str],
                  targets: Mapping[str, Any]) -> dict[str, Any]:
    """Each acceptance target of ``validate.targets`` that applies to what was measured, keyed
    ``<target>.<label>[.<where>]``: the measured figure, the target, and whether it is met."""
    measured: dict[str, float] = {}
    wanted: dict[str, Any] = {}
    vs_true = result["precision"]["vs_true"] if result.get("truth") else {}
    for label in labels:
        limit = targets["sigma_vs_true"].get(label)
        if limit is not None and label in vs_true:
            measured[f"sigma_vs_true.{label}"] = vs_true[label]["sigma"]
            wanted[f"sigma_vs_true.{label}"] = limit
        if label not in result.get("uncertainty", ()):
            continue
        unc = result["uncertainty"][label]
        for level in ("68", "95"):
            band = targets[f"err_coverage{level}"]
            if band is None:
                continue
            measured[f"err_coverage{level}.{label}"] = unc[f"coverage{level}"]
            wanted[f"err_coverage{level}.{label}"] = list(band)
            for k, tercile in enumerate(unc["snr_terciles"]):
                key = f"err_coverage{level}.{label}.snr_tercile_{k + 1}"
                measured[key] = tercile[f"coverage{level}"]
                wanted[key] = list(band)
        ratio = targets["snr_sigma_ratio"].get(label)
        if ratio is not None:
            measured[f"snr_sigma_ratio.{label}"] = unc["sigma_high_over_low_snr"]
            wanted[f"snr_sigma_ratio.{label}"] = ratio
    points = targets["alpha_sequence_points"]
    sequences = result["alpha_sequence"] if "alpha_sequence" in result else {}
    for ratio_label, seq in sequences.items():
        if points is not None:
            measured[f"alpha_sequence_points.{ratio_label}"] = abs(
                seq["catalogue_minus_true_points"])
            wanted[f"alpha_sequence_points.{ratio_label}"] = points
    return scoring.targets_met(measured, wanted)


# ---------------------------------------------------------------- network gradients

def input_gradients(model_dirs: Sequence[str], flux_rows: np.ndarray, device: str,
                    batch_size: int = 256, ivar_rows: np.ndarray | None = None,
                    signed: bool = True) -> np.ndarray:
    """Mean over spectra and members of ∂label/∂flux (``signed``; else of |∂label/∂flux|),
    shape (n_labels, n_pixels), physical units.

    Each method's point estimate (its record's ``point_estimate``) gives the labels as a function
    of the flux (and, for networks that read the noise, of ``ivar_rows``, held fixed) and the
    span that turns them into label units: for the regression CNN the networks output scaled
    labels y = (label − min)/(max − min), so ∂label/∂flux = (max − min)·∂y/∂flux. The group's
    gradients are signed and averaged over similar stars (solar twins): where a line deepens with
    the label the gradient is negative. Evaluated in eval mode (no dropout). Per-spectrum
    gradients come from the gradient of the batch sum, exact because no layer mixes spectra
    within a batch.
    """
    import torch

    from . import methods
    from .members import load_ensemble, resolve_device

    device = resolve_device(device)
    flux_rows = np.array(flux_rows, dtype=np.float32)  # a writable copy (inputs may be memmaps)
    if flux_rows.ndim == 1:
        flux_rows = flux_rows[None, :]
    members = load_ensemble(model_dirs, device)
    n_pixels = int(members[0][1]["n_pixels"])
    n_labels = len(members[0][1]["labels"])
    if flux_rows.ndim != 2 or flux_rows.shape[1] != n_pixels or flux_rows.shape[0] == 0:
        raise ValueError(f"flux_rows must have shape (n_spectra>0, {n_pixels}), "
                         f"got {flux_rows.shape}")
    if ivar_rows is not None:
        ivar_rows = np.array(ivar_rows, dtype=np.float32).reshape(flux_rows.shape)
    total = torch.zeros((n_labels, n_pixels), dtype=torch.float64, device=device)
    with torch.enable_grad():
        for model, meta in members:
            model.requires_grad_(False)  # gradients with respect to the flux only
            point_estimate, span = methods.get(meta["method"]).point_estimate(model, meta, device)
            for start in range(0, flux_rows.shape[0], batch_size):
                x = torch.from_numpy(flux_rows[start:start + batch_size]).to(device)
                v = None if ivar_rows is None else \
                    torch.from_numpy(ivar_rows[start:start + batch_size]).to(device)
                x.requires_grad_(True)
                out = point_estimate(x, v)
                for j in range(n_labels):
                    (grad,) = torch.autograd.grad(out[:, j].sum(), x,
                                                  retain_graph=j < n_labels - 1)
                    grad = grad if signed else grad.abs()
                    total[j] += grad.sum(dim=0).double() * span[j]
    return (total / (flux_rows.shape[0] * len(members))).cpu().numpy()


def gradient_sample(cat: pd.DataFrame, rows: np.ndarray, cfg: Mapping[str, Any],
                    log=print) -> tuple[np.ndarray, str]:
    """Catalogue rows whose gradients are averaged, and what they are: the evaluation stars
    whose *predicted* labels fall in ``cfg['gradients']`` box (the group's solar twins), or a
    seeded random sample of them; at most ``gradient_sample`` rows."""
    g = cfg["gradients"]
    chosen = np.asarray(rows)
    what = "random evaluation stars"
    if g["selection"] == "box":
        inside = np.ones(chosen.size, dtype=bool)
        for label in ("teff", "logg", "fe_h"):
            if label in cat:
                lo, hi = g[label]
                v = cat[label].to_numpy(dtype=float)[chosen]
                inside &= (v > lo) & (v < hi)
        chosen = chosen[inside]
        what = ("evaluation stars with predicted labels in the box "
                + ", ".join(f"{lab} {g[lab][0]:g}..{g[lab][1]:g}" for lab in ("teff", "logg",
                                                                             "fe_h")))
        log(f"validate: {chosen.size} gradient stars ({what})")
    if chosen.size > cfg["gradient_sample"]:
        rng = np.random.default_rng(0)
        chosen = np.sort(rng.choice(chosen, cfg["gradient_sample"], replace=False))
    return chosen, what
