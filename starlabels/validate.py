"""The validate stage: metrics against known truth, and the plots a person looks at.

Metrics (written to ``metrics.json``):

* **precision** — per label, bias / σ / robust σ (1.4826·MAD) / N of (predicted − reference) for
  the evaluation sample (Gaia-ESO: the test split; MARVELS: the calibration stars), against the
  simulator's true labels (``vs_true``, spectra without injected defects; ``vs_true_all`` with
  them) and against the catalogue or literature labels (``vs_reference``);
* **ensemble calibration** — spread of z = (pred − true)/σ_ensemble and the fraction of true labels
  inside ±1σ (68% coverage);
* **clean** — fraction of injected defective training spectra the t-SNE stage rejected, per defect
  type, and the fraction of good training spectra it rejected; normalize rejects per reason;
* **giant classes** (MARVELS) — giant / sub-giant / dwarf fractions of the giant candidates from
  the predicted log g, beside the simulated truth;
* **network gradients** — mean |∂label/∂flux| near each element's lines relative to elsewhere;
* **precision report** (simulated surveys) — per label and S/N bin: σ and bias of
  (predicted − true), the median Cramér–Rao bound of the simulator's own forward model
  (``starlabels.limits``), their ratio, and the ensemble's z-spread and 68 % coverage; where the
  catalogue has refined labels (the refine stage), the same for them beside it;
* **targets** — the experiment's acceptance targets (``validate.targets.sigma_vs_true``) beside
  the measured σ against true labels, and whether each is met.

What differs between surveys (evaluation split, what their reference labels are, giant classes)
comes from their records in :mod:`starlabels.surveys`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import artifacts, surveys
from .grid import WavelengthGrid
from .labels import LABEL_ELEMENTS


def label_stats(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    d = np.asarray(pred, dtype=float) - np.asarray(ref, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return {"n": 0, "bias": float("nan"), "sigma": float("nan"), "robust_sigma": float("nan")}
    return {"n": int(d.size), "bias": float(np.mean(d)), "sigma": float(np.std(d, ddof=1))
            if d.size > 1 else 0.0,
            "robust_sigma": float(1.4826 * np.median(np.abs(d - np.median(d))))}


def ensemble_calibration(pred: np.ndarray, std: np.ndarray, true: np.ndarray) -> dict[str, float]:
    pred, std, true = (np.asarray(a, dtype=float) for a in (pred, std, true))
    ok = np.isfinite(pred) & np.isfinite(true) & np.isfinite(std) & (std > 0)
    if not ok.any():
        return {"n": 0, "z_sigma": float("nan"), "coverage_68": float("nan")}
    z = (pred[ok] - true[ok]) / std[ok]
    return {"n": int(ok.sum()), "z_sigma": float(np.std(z)),
            "coverage_68": float(np.mean(np.abs(z) <= 1.0))}


def precision_block(cat: pd.DataFrame, truth: pd.DataFrame, labels: Sequence[str],
                    rows: np.ndarray) -> dict[str, Any]:
    """Precision of the rows ``rows`` of ``cat`` (joined to ``truth`` on star_id)."""
    sub = cat.loc[rows].merge(truth, on="star_id", how="left", suffixes=("", "_true"))
    clean = sub["defect"].fillna("").eq("").to_numpy() if "defect" in sub else \
        np.ones(len(sub), dtype=bool)
    out: dict[str, Any] = {"n_stars": int(len(sub)), "n_without_defects": int(clean.sum()),
                           "vs_true": {}, "vs_true_all": {}, "vs_reference": {}, "ensemble": {}}
    for label in labels:
        true = sub[f"{label}_true"].to_numpy(dtype=float)
        pred = sub[label].to_numpy(dtype=float)
        out["vs_true"][label] = label_stats(pred[clean], true[clean])
        out["vs_true_all"][label] = label_stats(pred, true)
        out["vs_reference"][label] = label_stats(pred, sub[f"{label}_ref"].to_numpy(dtype=float))
        out["ensemble"][label] = ensemble_calibration(pred[clean],
                                                      sub[f"{label}_std"].to_numpy()[clean],
                                                      true[clean])
    return out


def clean_metrics(truth: pd.DataFrame, stars: pd.DataFrame, cleaned: pd.DataFrame,
                  rejects: pd.DataFrame) -> dict[str, Any]:
    """How well the clean stage removed injected defects from the training set.

    The sample is the training candidates that reached the clean stage (splits it cleaned);
    normalize rejects are counted separately per defect type.
    """
    t = truth[["star_id", "defect"]].copy()
    t["defect"] = t["defect"].fillna("")
    c = pd.DataFrame({"star_id": stars["star_id"], "cleaned": cleaned["cleaned"].to_numpy(),
                      "keep": cleaned["keep"].to_numpy(), "reason": cleaned["reason"].to_numpy()})
    c = c[c["cleaned"]].merge(t, on="star_id", how="left")
    c["defect"] = c["defect"].fillna("")
    bad = c["defect"] != ""
    out: dict[str, Any] = {
        "n_cleaned": int(len(c)),
        "n_defective": int(bad.sum()),
        "defective_rejected_fraction": float((~c.loc[bad, "keep"]).mean()) if bad.any() else None,
        "good_rejected_fraction": float((~c.loc[~bad, "keep"]).mean()) if (~bad).any() else None,
        "per_defect": {},
    }
    for kind, grp in c[bad].groupby("defect"):
        out["per_defect"][kind] = {"n": int(len(grp)),
                                   "rejected_fraction": float((~grp["keep"]).mean())}
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


def gradient_line_ratios(wavelength: np.ndarray, gradients: np.ndarray, labels: Sequence[str],
                         lines: pd.DataFrame, half_width: float = 0.5) -> dict[str, float]:
    """Mean |gradient| within ±half_width Å of the label's element lines / mean elsewhere."""
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
                     log=print) -> pd.DataFrame:
    """Per label and S/N bin: σ, bias, median CRLB, σ/CRLB, z-spread and 68 % coverage.

    Only evaluation stars without injected defects count. The CRLB uses the model that made
    the observed spectra (observed line list with the synthetic gap, each grid segment at its
    setup's resolving power, rest frame) and photon noise at the star's measured S/N on the
    experiment grid; it is computed for up to ``crlb_sample`` stars and its median taken per bin.
    """
    import time

    from .limits import star_crlb
    from .simulate.physics import ForwardModel, Instrument
    from .simulate.survey import observed_linelist

    sub = cat.loc[rows].merge(truth, on="star_id", how="left", suffixes=("", "_true"))
    sub = sub[sub["defect"].fillna("").eq("")].reset_index(drop=True)
    grid = WavelengthGrid.from_config(grid_cfg["segments"])
    resolution = {s["name"]: float(s["resolution"]) for s in simulate_cfg["setups"]}
    missing = [seg.name for seg in grid.segments if seg.name not in resolution]
    if missing:
        raise ValueError(f"grid segment(s) {missing} have no simulate.setups entry with the "
                         f"same name, so their resolving power is unknown")
    model = ForwardModel([Instrument(seg.name, resolution[seg.name], seg.wavelength_air)
                          for seg in grid.segments], observed_linelist(simulate_cfg)[1])
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(sub), size=min(crlb_sample, len(sub)), replace=False))
    start = time.perf_counter()
    bounds = {label: np.full(len(sub), np.nan) for label in labels}
    all_labels = ("teff", "logg", "fe_h", "mg_fe", "al_fe")
    # labels the experiment predicts were suffixed _true by the merge; the others (nuisance
    # parameters of the spectrum, e.g. [Mg/Fe] for MARVELS) keep their own names
    true_col = {k: f"{k}_true" if f"{k}_true" in sub else k for k in all_labels}
    for i in pick:
        star = {k: float(sub.at[i, true_col[k]]) for k in all_labels}
        crlb = star_crlb(model, star, float(sub.at[i, "snr"]), labels)
        for label in labels:
            bounds[label][i] = crlb[label]
    log(f"validate: CRLB of {pick.size} stars in {time.perf_counter() - start:.1f} s")
    snr = sub["snr"].to_numpy(dtype=float)
    edges = list(snr_bins)
    out = []
    for label in labels:
        err = sub[label].to_numpy(dtype=float) - sub[f"{label}_true"].to_numpy(dtype=float)
        std = sub[f"{label}_std"].to_numpy(dtype=float)
        for lo, hi in zip(edges[:-1], edges[1:]):
            inbin = (snr >= lo) & (snr < hi) & np.isfinite(err)
            stats = label_stats(err[inbin], np.zeros(inbin.sum()))
            cal = ensemble_calibration(err[inbin], std[inbin], np.zeros(inbin.sum()))
            crlb = np.nanmedian(bounds[label][inbin]) if np.isfinite(bounds[label][inbin]).any() \
                else np.nan
            row = {"label": label, "snr_lo": lo, "snr_hi": hi, "n": stats["n"],
                   "sigma": stats["sigma"], "bias": stats["bias"], "crlb": crlb,
                   "sigma_over_crlb": stats["sigma"] / crlb if crlb > 0 else np.nan,
                   "z_sigma": cal["z_sigma"], "coverage_68": cal["coverage_68"]}
            if f"{label}_refined" in sub:
                # the refine stage's labels beside the network's and the bound
                row.update(refined_stats(sub, label, inbin, stats["sigma"], crlb))
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
    cal = ensemble_calibration(err[use], sub[f"{label}_refined_err"].to_numpy(dtype=float)[use],
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


def validate(*, catalog: str, table: str, flux: str, clean_table: str, rejects: str,
             truth: str | None,
             model_dirs: Sequence[str], labels: Sequence[str], survey: str,
             grid_cfg: Mapping[str, Any], cfg: Mapping[str, Any], metrics: str,
             plots: Mapping[str, str], experiment: str, linelist: str | None = None,
             simulate_cfg: Mapping[str, Any] | None = None, log=print,
             config_hash: str = "none", method: str | None = None,
             method_report: str | None = None,
             refine_report: str | None = None) -> dict[str, Any]:
    """Compute metrics.json and draw the validation plots (paths in ``plots``).

    ``truth`` is None for real data: metrics are then against the catalogue / literature labels
    only, the one-to-one-with-truth plot is empty, and precision vs S/N is against the
    catalogue labels. ``cfg`` is the ``validate`` section (keys left out take the schema's
    defaults). A method's own report (``method_report``, e.g. deep-REMAP's calibration and
    ablation) is merged in under the method's name, the refine stage's report
    (``refine_report``) under ``refine``."""
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
    targets = {k: v for k, v in cfg["targets"]["sigma_vs_true"].items() if v is not None}
    if truth is not None and targets:
        result["targets"] = {
            label: {"sigma_vs_true": result["precision"]["vs_true"][label]["sigma"],
                    "target": targets[label],
                    "met": bool(result["precision"]["vs_true"][label]["sigma"]
                                <= targets[label])}
            for label in labels if label in targets}
    if truth is not None:
        result["clean"] = clean_metrics(true, stars, cleaned, rej)
        log(f"validate: {eval_split} σ vs true: " + ", ".join(
            f"{k}={v['sigma']:.3g}" for k, v in result["precision"]["vs_true"].items()))
        cl = result["clean"]
        log(f"validate: clean rejected {cl['defective_rejected_fraction']} of defective and "
            f"{cl['good_rejected_fraction']} of good training spectra")
    else:
        result["clean"] = clean_summary(cleaned, rej)
        log(f"validate: no truth (real data); {eval_split} σ vs reference: " + ", ".join(
            f"{k}={v['sigma']:.3g}" for k, v in result["precision"]["vs_reference"].items()))

    if record.classes and truth is None and "rpm_class" in stars:
        # real MARVELS: the giant candidates are the catalogue's reduced-proper-motion giants
        giants = set(stars.loc[stars["rpm_class"].eq("giant"), "star_id"])
        cand = cat[cat["star_id"].isin(giants)]
        result["giant_candidates"] = {"predicted": giant_fractions(
            cand["logg"], cfg["giant_logg_max"], cfg["dwarf_logg_min"])}
    if record.classes and "sample" in true:
        cand = cat.merge(true[["star_id", "sample", "logg"]].rename(columns={"logg": "logg_true"}),
                         on="star_id")
        cand = cand[cand["sample"] == "giant_candidate"]
        gmax, dmin = cfg["giant_logg_max"], cfg["dwarf_logg_min"]
        result["giant_candidates"] = {
            "predicted": giant_fractions(cand["logg"], gmax, dmin),
            "true": giant_fractions(cand["logg_true"], gmax, dmin),
        }

    # network gradients on a sample of the evaluation split (the paper's gradient figure)
    grid = WavelengthGrid.from_config(grid_cfg["segments"])
    matrix = artifacts.load_matrix(flux)
    rng = np.random.default_rng(0)
    sample = rows if rows.size <= cfg["gradient_sample"] else \
        np.sort(rng.choice(rows, cfg["gradient_sample"], replace=False))
    lines = load_linelist(linelist)
    if sample.size:
        grads = input_gradients(list(model_dirs), np.asarray(matrix[sample]), device="cpu")
        result["gradient_line_ratio"] = gradient_line_ratios(grid.wavelength_air, grads, labels,
                                                             lines)
        diag = lines[lines["species"].isin(["Mg I", "Al I", "Ca II"])]
        P.gradient_spectrum(grid.wavelength_air, grads, list(labels), plots["gradients"],
                            lines=diag, segment_slices=grid.segment_slices)
    else:
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
    if {"mg_fe", "al_fe"} & set(labels):
        P.abundance_trends(cat, plots["abundances"])
    else:                 # MARVELS / deep-REMAP: the metallicity distribution per sample
        P.metallicity_distribution(cat, plots["abundances"], group="split")
    P.tsne_map(cleaned, plots["tsne"])

    if simulate_cfg is not None and truth is not None:
        report = precision_report(cat, true, labels, rows, simulate_cfg, grid_cfg,
                                  cfg["snr_bins"], cfg["crlb_sample"], log=log)
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


# ---------------------------------------------------------------- network gradients

def input_gradients(model_dirs: Sequence[str], flux_rows: np.ndarray, device: str,
                    batch_size: int = 256) -> np.ndarray:
    """Mean over spectra and members of |∂label/∂flux|, shape (n_labels, n_pixels), physical units.

    Each method's point estimate (its record's ``point_estimate``) gives the labels as a function
    of the flux and the span that turns them into label units: for the regression CNN the
    networks output scaled labels y = (label − min)/(max − min), so ∂label/∂flux =
    (max − min)·∂y/∂flux. Evaluated in eval mode (no dropout). Per-spectrum gradients come from the
    gradient of the batch sum, exact because no layer mixes spectra within a batch.
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
    total = torch.zeros((n_labels, n_pixels), dtype=torch.float64, device=device)
    with torch.enable_grad():
        for model, meta in members:
            model.requires_grad_(False)  # gradients with respect to the flux only
            point_estimate, span = methods.get(meta["method"]).point_estimate(model, meta, device)
            for start in range(0, flux_rows.shape[0], batch_size):
                x = torch.from_numpy(flux_rows[start:start + batch_size]).to(device)
                x.requires_grad_(True)
                out = point_estimate(x)
                for j in range(n_labels):
                    (grad,) = torch.autograd.grad(out[:, j].sum(), x,
                                                  retain_graph=j < n_labels - 1)
                    total[j] += grad.abs().sum(dim=0).double() * span[j]
    return (total / (flux_rows.shape[0] * len(members))).cpu().numpy()
