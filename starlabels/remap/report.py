"""The deep-REMAP report: what the distributions are worth on stars no phase trained on.

:func:`remap_report` writes ``remap_report.json`` (merged into ``metrics.json`` by validate):
calibration on the held-out stars before and after temperature scaling, σ / bias / coverage of
member 0 and of the ensemble on the calibration stars, the giant / sub-giant / dwarf fractions of
the giant candidates, the reliability diagram and the map of the embedding. The experiment's
acceptance targets (``validate.targets``: the calibration stars' σ, the held-out 68 % coverage) are
reported with whether each is met.

:func:`ablation_report` writes the ablation study (``ablation.md``, ``ablation.json``): the same
table on the calibration stars with the ablation members beside member 0 and the ensemble. It is
its own target (``snakemake ablation``), not part of the catalogue's run: the ablation members are
as many trainings again as the ensemble, and the catalogue does not depend on them.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import artifacts
from ..batch import Log

if TYPE_CHECKING:           # the annotation only: the functions import .ensemble where they use it
    from .ensemble import EnsembleTransform

#: seed of the embedding map's subsample and t-SNE layout (a picture, not a result)
EMBEDDING_MAP_SEED = 0


def remap_report(*, flux: str, table: str, catalog: str, truth: str | None,
                 model_dirs: Sequence[str], classes: Mapping[str, float], metrics: str,
                 reliability_plot: str, embedding_plot: str, targets: Mapping[str, Any],
                 log: Log = print, config_hash: str = "none",
                 ensemble_calibration: str | None = None) -> dict:
    """Calibration on held-out stars (before/after temperature scaling), member 0 and the
    ensemble on the calibration stars, giant-class fractions, reliability diagram and embedding
    map of a deep_remap experiment.

    ``targets`` is the experiment's ``validate.targets`` section (``coverage68``,
    ``calibration_stars_sigma``)."""
    from .. import plots as P
    from ..validate import giant_fractions
    from . import evaluate as E
    from .ensemble import load_ensemble_transform

    stars = artifacts.load_table(table)
    truth_df = artifacts.load_table(truth) if truth else None
    member_meta = [artifacts.load_json(Path(d) / "model.json") for d in model_dirs]
    labels = list(member_meta[0]["labels"])
    result: dict[str, Any] = {"members": [{"member": m["member"], "temperatures": m["temperatures"],
                                           "calibration_split": m["calibration"]}
                                          for m in member_meta]}
    ensemble = load_ensemble_transform(ensemble_calibration, model_dirs)
    result["calibration_level"] = "ensemble" if ensemble else "member"
    if ensemble_calibration:
        result["ensemble_calibration"] = artifacts.load_json(ensemble_calibration)

    # held-out stars: observed test split + calibration stars (no phase trained on them)
    heldout = np.flatnonzero(stars["split"].isin(["test", "calibration"]).to_numpy())
    ref, kind = E.reference_labels(stars.iloc[heldout], truth_df, labels)
    result["reference"] = kind
    cal = E.heldout_calibration(E.load_rows(flux, heldout), ref, list(model_dirs),
                                ensemble=ensemble)
    result["heldout"] = cal["metrics"]
    result["heldout"]["splits"] = stars.iloc[heldout]["split"].value_counts().to_dict()
    for label, m in cal["metrics"]["labels"].items():
        log(f"remap: held-out {label}: 68% coverage {m['coverage68_before']:.2f} → "
            f"{m['coverage68_after']:.2f}, ECE {m['ece_before']:.3f} → {m['ece_after']:.3f}, "
            f"σ {m['sigma_after']:.4g} (vs {kind} labels, {m['n_after']} stars)")
    if targets["coverage68"] is not None:
        low, high = targets["coverage68"]
        result["coverage_target"] = {
            label: {"coverage68": m["coverage68_after"], "target": [low, high],
                    "met": bool(low <= m["coverage68_after"] <= high)}
            for label, m in cal["metrics"]["labels"].items()}
    P.reliability_diagram(cal["curves"], reliability_plot)

    # member 0 and the ensemble on the calibration stars
    calib_stars, text, _ = _calibration_star_table(flux, stars, truth_df, labels, model_dirs,
                                                   {}, ensemble)
    result["calibration_stars"] = calib_stars
    result["calibration_star_targets"] = {
        label: {"sigma": calib_stars["ensemble"][label]["sigma"], "target": target,
                "met": bool(calib_stars["ensemble"][label]["sigma"] <= target)}
        for label, target in targets["calibration_stars_sigma"].items()
        if label in labels and target is not None}
    log(text)

    # giant / sub-giant / dwarf classes of the giant candidates
    cat = artifacts.load_table(catalog)
    if truth_df is not None and "sample" in truth_df:
        cand_ids = set(truth_df.loc[truth_df["sample"].eq("giant_candidate"), "star_id"])
    else:
        cand_ids = set(stars.loc[stars.get("rpm_class", pd.Series(dtype=str)).eq("giant"),
                                 "star_id"])
    # one row per star: a repeatedly observed candidate counts once (its first visit)
    cand = cat[cat["star_id"].isin(cand_ids)].drop_duplicates("star_id")
    gmax, dmin = classes["giant_logg_max"], classes["dwarf_logg_min"]

    classes_out: dict[str, Any] = {"n": int(len(cand)),
                                   "predicted": giant_fractions(cand["logg"], gmax, dmin)}
    if truth_df is not None:
        true_logg = cand[["star_id"]].merge(truth_df[["star_id", "logg"]], on="star_id")["logg"]
        classes_out["true"] = giant_fractions(true_logg, gmax, dmin)
        classes_out["difference_points"] = {
            c: 100 * (classes_out["predicted"][c] - classes_out["true"][c]) for c in
            ("giant", "subgiant", "dwarf")}
        classes_out["giant_within_5_points"] = bool(
            abs(classes_out["difference_points"]["giant"]) <= 5.0)
    result["giant_candidates"] = classes_out
    log(f"remap: giant candidates {classes_out}")

    # embedding map: t-SNE of the first member's embedding of every catalogue star
    emb = np.stack(cat["embedding"].to_numpy()).astype(np.float64)
    from openTSNE import TSNE

    rng = np.random.default_rng(EMBEDDING_MAP_SEED)
    show = np.sort(rng.choice(len(cat), min(len(cat), 5000), replace=False))
    xy = np.asarray(TSNE(perplexity=30, random_state=EMBEDDING_MAP_SEED, n_jobs=1).fit(emb[show]))
    P.embedding_map(xy, cat.iloc[show].reset_index(drop=True), labels, embedding_plot)

    result["provenance"] = artifacts.provenance(None, config_hash=config_hash,
                                                stage="remap_report")
    artifacts.save_json(metrics, result)
    return result


def _calibration_star_table(flux: str, stars: pd.DataFrame, truth_df: pd.DataFrame | None,
                            labels: Sequence[str], model_dirs: Sequence[str],
                            ablation_dirs: Mapping[str, str],
                            ensemble: EnsembleTransform | None
                            ) -> tuple[dict[str, Any], str, str]:
    """σ, bias and 68 % coverage on the calibration stars of member 0 (``full``), the ensemble
    and each ablation member; (dict, Markdown, what the labels compared with are)."""
    from . import evaluate as E
    from .train import VARIANTS

    calib = np.flatnonzero(stars["split"].eq("calibration").to_numpy())
    variants: dict[str, list[str]] = {"full": [str(model_dirs[0])],
                                      "ensemble": [str(d) for d in model_dirs]}
    variants.update({name: [str(d)] for name, d in ablation_dirs.items()})
    descriptions = dict(VARIANTS, ensemble=f"all {len(model_dirs)} members, probabilities "
                                           f"averaged (the catalogue's labels)")
    calib_ref, kind = E.reference_labels(stars.iloc[calib], truth_df, list(labels))
    table, text = E.ablation_table(E.load_rows(flux, calib), calib_ref, kind, variants,
                                   descriptions,
                                   ensembles={"ensemble": ensemble} if ensemble else None)
    return table, text, kind


def ablation_report(*, flux: str, table: str, truth: str | None, model_dirs: Sequence[str],
                    ablation_dirs: Mapping[str, str], ablation_md: str, ablation_json: str,
                    log: Log = print, config_hash: str = "none",
                    ensemble_calibration: str | None = None) -> dict:
    """The ablation study of a deep_remap experiment: each ablation member (one part of the
    recipe switched off, member 0's seed) beside member 0 and the ensemble on the calibration
    stars; ``ablation.md`` (the table) and ``ablation.json`` (the figures, with provenance)."""
    from .ensemble import load_ensemble_transform

    stars = artifacts.load_table(table)
    truth_df = artifacts.load_table(truth) if truth else None
    labels = list(artifacts.load_json(Path(model_dirs[0]) / "model.json")["labels"])
    ensemble = load_ensemble_transform(ensemble_calibration, model_dirs)
    ablation, text, kind = _calibration_star_table(flux, stars, truth_df, labels, model_dirs,
                                                   ablation_dirs, ensemble)
    log(text)
    result = {"reference": kind, "variants": ablation,
              "provenance": artifacts.provenance(None, config_hash=config_hash,
                                                 stage="ablation_report")}
    with artifacts.atomic_path(ablation_md) as tmp:
        Path(tmp).write_text(text)
    artifacts.save_json(ablation_json, result)
    return result
