"""Write the README's result tables from measured files, never by hand.

Reads ``bench/results/default_run_seed*.json`` (``bench/default_run.py``: the default run's wall
time and each experiment's metrics.json, one file per base seed) and
``bench/results/peer_cannon.json`` (``bench/peer_cannon.py``), ``refine_throughput.json``,
``realism_knobs*.json``, and replaces each block of the
README between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->`` with a table built from
them, naming the machine, the date and the commit the figures came from.

    python bench/readme_tables.py            # rewrite README.md in place
    python bench/readme_tables.py --check    # exit 1 if README.md differs from the files
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
README = REPO / "README.md"
PRIMARY_SEED = 1234          # the config's train.seed: the run the catalogue figures come from
NAMES = {"teff": "Teff", "logg": "log g", "fe_h": "[Fe/H]", "mg_fe": "[Mg/Fe]",
         "al_fe": "[Al/Fe]"}
UNITS = {"teff": " K"}


def fmt(label: str, value: float | None, digits: int | None = None) -> str:
    if value is None or value != value:
        return "—"
    if label == "teff":
        return f"{value:.0f}" if digits is None else f"{value:.{digits}f}"
    return f"{value:.3f}" if digits is None else f"{value:.{digits}f}"


def interval(label: str, ci: list[float]) -> str:
    return f"[{fmt(label, ci[0])}, {fmt(label, ci[1])}]"


def share(value: float, ci: list[float] | None = None) -> str:
    text = f"{value:.2f}"
    return text if ci is None else f"{text} [{ci[0]:.2f}, {ci[1]:.2f}]"


def load_runs() -> dict[int, dict[str, Any]]:
    runs = {}
    for path in sorted(RESULTS.glob("default_run_seed*.json")):
        data = json.loads(path.read_text())
        runs[int(data["parameters"]["train_seed"])] = data
    if PRIMARY_SEED not in runs:
        raise SystemExit(f"no {RESULTS}/default_run_seed{PRIMARY_SEED}.json: run "
                         f"bench/default_run.py --train-seed {PRIMARY_SEED} first")
    return runs


def provenance_line(run: dict[str, Any]) -> str:
    m, v = run["machine"], run["versions"]
    return (f"Measured {run['created_utc'][:10]} on {m['cpu_model']} ({m['usable_cores']} "
            f"cores, {m['ram_gib']} GiB, {'GPU ' + m['gpu'] if m['gpu'] else 'no GPU'}), "
            f"commit {str(v['starlabels_git_commit'])[:10]}, torch {v['torch']}; "
            f"`python bench/default_run.py --train-seed {run['parameters']['train_seed']}`.")


def block_default_run(runs: dict[int, dict[str, Any]], peer: dict | None) -> str:
    def minutes(wall: float) -> str:
        return f"{int(wall // 60)} min {wall % 60:.0f} s"

    # the target as bench/default_run.py recorded it with each run
    limit = runs[PRIMARY_SEED]["targets"]["wall_seconds"]["limit"]
    lines = [provenance_line(runs[PRIMARY_SEED]), "",
             f"| base seed | wall time (target ≤ {limit / 60:.0f} min) | job-seconds "
             "| then `ablation` target | machine |", "|---|---|---|---|---|"]
    for seed, run in sorted(runs.items()):
        f = run["figures"]
        wall, ablation = f["wall_seconds"], f.get("ablation") or {}
        met = run["targets"]["wall_seconds"]["met"]
        after = (f"{minutes(ablation['wall_seconds'])} "
                 f"({sum(ablation['job_seconds'].values()):.0f} job-s)") if ablation else "not run"
        lines.append(f"| {seed} | {minutes(wall)} ({'met' if met else 'missed'}) "
                     f"| {sum(f['job_seconds'].values()):.0f} | {after} "
                     f"| {run['machine']['cpu_model']}, load before "
                     f"{run['load_average']['before'][0]} |")
    jobs = runs[PRIMARY_SEED]["figures"]["job_seconds"]
    slow = sorted(jobs.items(), key=lambda kv: -kv[1])[:6]
    lines += ["", "Longest jobs of the default run (seed %d): " % PRIMARY_SEED
              + ", ".join(f"{k} {v:.0f} s" for k, v in slow) + "."]
    return "\n".join(lines)


def block_ges_precision(runs: dict[int, dict[str, Any]], peer: dict | None) -> str:
    m = runs[PRIMARY_SEED]["figures"]["metrics"]["demo_ges"]
    labels = m["labels"]
    targets = m.get("targets", {})
    lines = [provenance_line(runs[PRIMARY_SEED]) + f" Test stars without injected defects: "
             f"{m['precision']['n_without_defects']}, against the true labels; intervals are "
             f"bootstrap 95 %.", "",
             "| label | σ (target) | bias | σ, other seeds | The Cannon σ | ours / Cannon "
             "| σ lowest → highest S/N third | 68 % coverage of `_err` | 95 % coverage |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label in labels:
        p = m["precision"]["vs_true"][label]
        t = targets.get(f"sigma_vs_true.{label}")
        target = f" (≤ {fmt(label, t['target'])}: {'met' if t['met'] else 'missed'})" if t else ""
        others = [r["figures"]["metrics"]["demo_ges"]["precision"]["vs_true"][label]["sigma"]
                  for s, r in sorted(runs.items()) if s != PRIMARY_SEED]
        spread = (", ".join(fmt(label, v) for v in others)) if others else "—"
        cannon, ratio = "—", "—"
        if peer is not None and label in peer["figures"]["labels"]:
            c = peer["figures"]["labels"][label]
            cannon = (f"{fmt(label, c['cannon']['sigma'])} "
                      f"{interval(label, c['cannon']['sigma_ci95'])}")
            ratio = f"{c['network_over_cannon']:.2f}"
        u = m.get("uncertainty", {}).get(label)
        terc = cov68 = cov95 = "—"
        if u:
            ts = u["snr_terciles"]
            terc = f"{fmt(label, ts[0]['sigma'])} → {fmt(label, ts[-1]['sigma'])} " \
                   f"(×{u['sigma_high_over_low_snr']:.2f})"
            cov68 = share(u["coverage68"], u["coverage68_ci95"])
            cov95 = share(u["coverage95"], u["coverage95_ci95"])
        lines.append(f"| {NAMES[label]} | {fmt(label, p['sigma'])}{UNITS.get(label, '')} "
                     f"{interval(label, p['sigma_ci95'])}{target} | {fmt(label, p['bias'])} | "
                     f"{spread} | {cannon} | {ratio} | {terc} | {cov68} | {cov95} |")
    seeds = ", ".join(str(s) for s in sorted(runs) if s != PRIMARY_SEED)
    lines += ["", f"σ, other seeds: the same run with train.seed {seeds or '(none measured)'}."]
    if peer is not None:
        t = peer["figures"]["timing"]
        lines.append(
            f"The Cannon (annieslasso {peer['parameters']['cannon']['version']}, quadratic, "
            f"`python bench/peer_cannon.py --run <results>/demo_ges`) trained on the same "
            f"{peer['parameters']['n_train']} spectra in {t['cannon_train_seconds']:.0f} s on "
            f"{t['cannon_processes']} process(es); each of the {t['network_members']} network "
            f"members took {min(t['network_train_seconds_per_member']):.0f}–"
            f"{max(t['network_train_seconds_per_member']):.0f} s.")
        rs = peer["figures"].get("reference_scale")
        if rs:
            chosen = {k: v["cannon"].get("version") for k, v in peer["figures"]["labels"].items()}
            # which labels the run anchored on the reference stars and which it put onto the
            # dwarfs' scale by the abundance trends (the network's record says)
            methods = {k: v.get("method", "reference_stars")
                       for k, v in m.get("reference_scale", {}).items()}
            anchored = [k for k in rs["labels"] if methods.get(k) != "abundance_trend"]
            trended = [k for k in rs["labels"] if methods.get(k) == "abundance_trend"]
            trend_text = (f"; its {' and '.join(NAMES[k] for k in trended)} were put onto the "
                          f"dwarfs' scale by its own labels of the test stars, as the run's "
                          f"were by the stars outside training" if trended else "")
            lines.append(
                f"The Cannon also labelled the same {rs['n_reference_spectra']} benchmark spectra "
                f"and its own trend was fitted and removed the same way "
                f"({', '.join(NAMES[k] for k in anchored)}){trend_text}; its column is its "
                f"better of that and its labels as they come (here: "
                + (", ".join(f"{NAMES[k]} {'scaled' if v == 'cannon_scaled' else 'as it comes'}"
                             for k, v in chosen.items())
                   if "cannon_scaled" in chosen.values() else "as they come, on every label")
                + "); both versions: [Reference-star scale](#reference-star-scale).")
    return "\n".join(lines)


def block_ges_uncertainty(runs: dict[int, dict[str, Any]], peer: dict | None) -> str:
    m = runs[PRIMARY_SEED]["figures"]["metrics"]["demo_ges"]
    lines = ["| label | S/N third | N | σ | median `_err` | 68 % coverage | 95 % coverage |",
             "|---|---|---|---|---|---|---|"]
    for label, u in m.get("uncertainty", {}).items():
        for k, t in enumerate(u["snr_terciles"]):
            lo = "0" if t["snr_lo"] == float("-inf") else f"{t['snr_lo']:.0f}"
            hi = "∞" if t["snr_hi"] == float("inf") else f"{t['snr_hi']:.0f}"
            lines.append(f"| {NAMES[label]} | {lo}–{hi} | {t['n']} | "
                         f"{fmt(label, t['sigma'])} {interval(label, t['sigma_ci95'])} | "
                         f"{fmt(label, t['median_err'])} | {t['coverage68']:.2f} | "
                         f"{t['coverage95']:.2f} |")
    lines += ["", "| label | 68 % coverage: calibrated `_err` / raw `_err_raw` / members' scatter "
              "| robust spread of z = residual/`_err` |", "|---|---|---|"]
    for label, u in m.get("uncertainty", {}).items():
        lines.append(f"| {NAMES[label]} | {u['coverage68']:.2f} / {u['raw']['coverage68']:.2f}"
                     f" / {u['members']['coverage68']:.2f} | {u['z_robust_spread']:.2f} |")
    return "\n".join(lines)


def block_ges_catalogue_scale(runs: dict[int, dict[str, Any]], peer: dict | None) -> str:
    """Coverage against the truth beside coverage against the truth plus the simulated
    catalogue's own offsets (metrics.json ``uncertainty_catalogue_scale``)."""
    m = runs[PRIMARY_SEED]["figures"]["metrics"]["demo_ges"]
    scale = m.get("uncertainty_catalogue_scale")
    if not scale:
        return "The measured run predates this figure (metrics.json has no " \
               "`uncertainty_catalogue_scale`)."
    others = [s for s in sorted(runs) if s != PRIMARY_SEED]
    lines = ["| label | vs truth: σ / bias / 68 % / 95 % coverage | vs truth + catalogue offset, "
             "labels on the catalogue's scale: σ / bias / 68 % [95 % interval] / 95 % coverage"
             + "".join(f" | 68 % coverage, seed {s}: vs truth → + offset" for s in others) + " |",
             "|---|---|---" + "|---" * len(others) + "|"]
    for label, c in scale.items():
        u = m["uncertainty"][label]
        p = m["precision"]["vs_true"][label]
        row = (f"| {NAMES[label]} | {fmt(label, p['sigma'])} / {fmt(label, p['bias'])} / "
               f"{u['coverage68']:.2f} / {u['coverage95']:.2f} | {fmt(label, c['sigma'])} / "
               f"{fmt(label, c['bias'])} / {c['coverage68']:.2f} "
               f"[{c['coverage68_ci95'][0]:.2f}, {c['coverage68_ci95'][1]:.2f}] / "
               f"{c['coverage95']:.2f}")
        for s in others:
            mo = runs[s]["figures"]["metrics"]["demo_ges"]
            co = (mo.get("uncertainty_catalogue_scale") or {}).get(label)
            row += (f" | {mo['uncertainty'][label]['coverage68']:.2f} → "
                    + (f"{co['coverage68']:.2f}" if co else "—"))
        lines.append(row + " |")
    return "\n".join(lines)


def block_ges_science(runs: dict[int, dict[str, Any]], peer: dict | None) -> str:
    m = runs[PRIMARY_SEED]["figures"]["metrics"]["demo_ges"]
    lines = []
    for ratio, seq in m.get("alpha_sequence", {}).items():
        lo, hi = seq["window_fe_h"]
        t = m.get("targets", {}).get(f"alpha_sequence_points.{ratio}")
        lines.append(
            f"α-rich sequence: among test stars with {lo} < [Fe/H] < {hi}, "
            f"{100 * seq['true']:.0f} % (95 % interval {100 * seq['true_ci95'][0]:.0f}–"
            f"{100 * seq['true_ci95'][1]:.0f} %) truly have {NAMES[ratio]} > {seq['threshold']}; "
            f"in the catalogue (its own labels select and count) {100 * seq['catalogue']:.0f} % "
            f"— {seq['catalogue_minus_true_points']:+.1f} "
            f"points" + (f" (target ±{t['target']:.0f}: {'met' if t['met'] else 'missed'})"
                         if t else "") + "; the same stars counted with their predicted "
            f"{NAMES[ratio]}: {100 * seq['true_stars_predicted']:.0f} %.")
        others = []
        for s, r in sorted(runs.items()):
            o = r["figures"]["metrics"]["demo_ges"]
            if s == PRIMARY_SEED or ratio not in o.get("alpha_sequence", {}):
                continue
            ot = o.get("targets", {}).get(f"alpha_sequence_points.{ratio}")
            others.append(f"{s}: {o['alpha_sequence'][ratio]['catalogue_minus_true_points']:+.1f}"
                          + (f" ({'met' if ot['met'] else 'missed'})" if ot else ""))
        if others:
            lines[-1] += f" Other seeds, points: {'; '.join(others)}."
        if peer is not None and "alpha_sequence" in peer["figures"]:
            c = peer["figures"]["alpha_sequence"]["cannon"]
            lines[-1] += f" The Cannon: {100 * c['catalogue']:.0f} %."
    lines += ["", "| label | bias in the lowest → highest eighth of the true label |", "|---|---|"]
    for label, bins in m.get("bias_by_true_label", {}).items():
        if bins:
            lines.append(f"| {NAMES[label]} | " + " · ".join(fmt(label, b["bias"], None)
                                                             for b in bins) + " |")
    return "\n".join(lines)


def block_ges_reference_scale(runs: dict[int, dict[str, Any]], peer: dict | None) -> str:
    """The reference-star scale of demo_ges (metrics.json ``reference_scale``, every seed) and
    what it does to the test stars' σ (peer_cannon.json: the network's ``_raw`` against its
    catalogue labels, and The Cannon put onto its own scale the same way)."""
    m = runs[PRIMARY_SEED]["figures"]["metrics"]["demo_ges"]
    scale = m.get("reference_scale")
    if not scale:
        return "The measured run put no label onto a reference scale."
    lines = ["| label | trend (seed %d): constant, per 1000 K, per dex of log g (± 1σ) | "
             "other seeds | stars used (clipped) | reference stars' offset bias / robust σ: "
             "before → after (leave-one-out) | test stars' σ vs truth: `_raw` → catalogue | "
             "The Cannon: as it comes → on its own reference scale |" % PRIMARY_SEED,
             "|---|---|---|---|---|---|---|"]
    for label, fit in scale.items():
        if not fit.get("applied"):
            lines.append(f"| {NAMES[label]} | not applied: {fit.get('reason', '')} "
                         f"| | | | | |")
            continue
        coef = ", ".join(f"{c:+.3g} ± {e:.2g}" for c, e in zip(fit["coefficients"],
                                                               fit["coefficient_errors"]))
        others = "; ".join(
            ", ".join(f"{c:+.3g}" for c in r["figures"]["metrics"]["demo_ges"]
                      ["reference_scale"][label].get("coefficients", []))
            for s, r in sorted(runs.items()) if s != PRIMARY_SEED) or "—"
        if fit.get("method") == "abundance_trend":
            # no reference star has this label: the survey's own stars, giants and dwarfs on
            # one scale; the truth's per-class bias shows whether it worked
            used = f"{fit['n_used']} of {fit['n_inside']} survey spectra (abundance trend)"
            classes = m.get("scale_by_class", {}).get(label, {})
            offsets = "; ".join(
                f"{cls} {fmt(label, classes['raw'][cls]['median_bias'])} → "
                f"{fmt(label, classes['catalogue'][cls]['median_bias'])}"
                for cls in ("dwarf", "subgiant", "giant") if cls in classes.get("raw", {})
            ) or "—"
            offsets = f"no reference stars; test stars' median bias vs truth {offsets}"
        else:
            clipped = ", ".join(fit["clipped"]) or "none"
            used = f"{fit['n_used']} ({clipped})"
            b, a = fit["before"], fit["after_loo"]
            offsets = (f"{fmt(label, b['bias'])} / {fmt(label, b['sigma'])} → "
                       f"{fmt(label, a['bias'])} / {fmt(label, a['sigma'])}")
        test = cannon = "—"
        if peer is not None and label in peer["figures"]["labels"]:
            c = peer["figures"]["labels"][label]
            if "network_raw" in c:
                test = (f"{fmt(label, c['network_raw']['sigma'])} → "
                        f"{fmt(label, c['network']['sigma'])}")
            if "cannon_scaled" in c:
                cannon = (f"{fmt(label, c['cannon_raw']['sigma'])} → "
                          f"{fmt(label, c['cannon_scaled']['sigma'])}")
        lines.append(f"| {NAMES[label]} | {coef} | {others} | {used} | "
                     f"{offsets} | {test} | {cannon} |")
    return "\n".join(lines)


def block_paper(runs: dict[int, dict[str, Any]], peer: dict | None) -> str:
    lines = ["| experiment | label | paper: training precision | ours: training precision "
             "(in-sample, vs catalogue labels) | paper: internal precision | ours: internal "
             "precision (median members' scatter) | paper: σ vs literature, calibration stars "
             "| ours: σ vs truth, out of sample |", "|---|---|---|---|---|---|---|---|"]
    for experiment, m in runs[PRIMARY_SEED]["figures"]["metrics"].items():
        comparison = m.get("paper_comparison", {}).get("labels", {})
        for label in m["labels"]:
            c = comparison.get(label, {})
            lines.append(
                f"| {experiment} | {NAMES[label]} | {fmt(label, c.get('paper_training_precision'))}"
                f" | {fmt(label, c.get('training_precision', {}).get('sigma'))} | "
                f"{fmt(label, c.get('paper_internal_precision'))} | "
                f"{fmt(label, c.get('internal_precision'))} | "
                f"{fmt(label, c.get('paper_calibration_stars_sigma'))} | "
                f"{fmt(label, m['precision']['vs_true'][label]['sigma'])} |")
    refs = {m.get("paper_comparison", {}).get("reference", "")
            for m in runs[PRIMARY_SEED]["figures"]["metrics"].values()}
    lines += ["", "Sources: " + "; ".join(r for r in sorted(refs) if r) + "."]
    return "\n".join(lines)


def block_marvels(runs: dict[int, dict[str, Any]], peer: dict | None) -> str:
    lines = ["| base seed | calibration stars σ Teff / log g / [Fe/H] (paper 75 K / 0.12 / 0.08) "
             "| held-out 68 % coverage Teff / log g / [Fe/H] (target 0.60–0.76) | giants "
             "predicted / true |", "|---|---|---|---|"]
    for seed, run in sorted(runs.items()):
        m = run["figures"]["metrics"].get("demo_marvels")
        if m is None:
            continue
        r = m.get("deep_remap", {})
        sig = r.get("calibration_star_targets", {})
        cov = r.get("coverage_target", {})
        giants = m.get("giant_candidates", {})
        lines.append(
            f"| {seed} | " + " / ".join(fmt(k, sig.get(k, {}).get("sigma")) for k in
                                        ("teff", "logg", "fe_h"))
            + " | " + " / ".join(f"{cov[k]['coverage68']:.2f}" + ("" if cov[k]["met"] else " ✗")
                                 for k in ("teff", "logg", "fe_h") if k in cov)
            + f" | {100 * giants.get('predicted', {}).get('giant', float('nan')):.1f} % / "
              f"{100 * giants.get('true', {}).get('giant', float('nan')):.1f} % |")
    return "\n".join(lines)


def block_ges_limit(runs: dict[int, dict[str, Any]], peer: dict | None) -> str:
    """σ against the true labels per S/N bin beside the simulator's idealised and marginalised
    Cramér–Rao bounds (metrics.json ``precision_report``)."""
    m = runs[PRIMARY_SEED]["figures"]["metrics"]["demo_ges"]
    lines = ["| label | S/N | N | σ | CRLB idealised | CRLB marginalised | σ / marginalised |",
             "|---|---|---|---|---|---|---|"]
    for row in m.get("precision_report", []):
        label = row["label"]
        digits = 1 if label == "teff" else 4
        lines.append(f"| {NAMES[label]} | {row['snr_lo']:g}–{row['snr_hi']:g} | {row['n']} | "
                     f"{fmt(label, row['sigma'])} | {fmt(label, row['crlb'], digits)} | "
                     f"{fmt(label, row['crlb_marginalised'], digits)} | "
                     f"{row['sigma_over_crlb_marginalised']:.1f} |")
    return "\n".join(lines)


def block_refine(runs: dict[int, dict[str, Any]], peer: dict | None) -> str:
    """The refine stage against the network, test stars without defects (metrics.json
    ``refine``), with its targets."""
    m = runs[PRIMARY_SEED]["figures"]["metrics"]["demo_ges"]
    r = m.get("refine")
    if not r or "precision" not in r:
        return "The refine stage did not run in the measured default run."
    lines = ["| label | network σ, S/N ≥ 50 | refined σ, S/N ≥ 50 | ratio (target) | refined 68 % "
             "coverage (target 0.63–0.73) | combined σ, S/N ≥ 50 / all | combined 68 % "
             "coverage |", "|---|---|---|---|---|---|---|"]
    targets = r.get("targets", {})
    for label, e in r["precision"].items():
        t = targets.get(f"sigma_ratio_{label}")
        c = targets.get(f"coverage68_{label}")
        lines.append(
            f"| {NAMES[label]} | {fmt(label, e['snr_min']['network']['sigma'])} | "
            f"{fmt(label, e['snr_min']['refined']['sigma'])} | {e['snr_min']['sigma_ratio']:.2f}"
            + (f" (≤ {t['target']:g}: {'met' if t['met'] else 'missed'})" if t else "")
            + f" | {e['all']['refined']['coverage_68']:.2f}"
            + (f" ({'met' if c['met'] else 'missed'})" if c else "")
            + (f" | {fmt(label, e['snr_min']['combined']['sigma'])} / "
               f"{fmt(label, e['all']['combined']['sigma'])} | "
               f"{e['all']['combined']['coverage_68']:.2f} |" if "combined" in e["all"]
               else " | — | — |"))
    f = r.get("flags") or {}
    if f:
        d, g = targets.get("defective_flagged_fraction"), targets.get("good_flagged_fraction")
        lines += ["", f"REFINE_POOR_FIT (χ²/pixel above the valid stars' threshold "
                      f"{r['chi2_red_threshold']:.2f}): "
                      f"{100 * f['defective_flagged_fraction']:.0f} % "
                      f"of the {f['n_defective']} test spectra with injected defects"
                  + (f" (target ≥ {100 * d['target']:.0f} %: {'met' if d['met'] else 'missed'})"
                     if d else "")
                  + f", {100 * f['good_flagged_fraction']:.1f} % of the {f['n_good']} good ones"
                  + (f" (target ≤ {100 * g['target']:.0f} %: {'met' if g['met'] else 'missed'})"
                     if g else "") + "; per defect: "
                  + ", ".join(f"{k} {100 * v['flagged_fraction']:.0f} % (N={v['n']})"
                              for k, v in f["per_defect"].items()) + "."]
        both = f.get("with_catalogue")
        if both:
            d = targets.get("defective_flagged_fraction_with_catalogue")
            g = targets.get("good_flagged_fraction_with_catalogue")
            lines += ["", "REFINE_POOR_FIT or CATALOGUE_MISMATCH (the survey catalogue's labels "
                          "against ours, p below the configured limit): "
                          f"{100 * both['defective_flagged_fraction']:.0f} % of the defective"
                      + (f" (target ≥ {100 * d['target']:.0f} %: "
                         f"{'met' if d['met'] else 'missed'})" if d else "")
                      + f", {100 * both['good_flagged_fraction']:.1f} % of the good"
                      + (f" (target ≤ {100 * g['target']:.0f} %: "
                         f"{'met' if g['met'] else 'missed'})" if g else "") + "; per defect: "
                      + ", ".join(f"{k} {100 * v['flagged_fraction']:.0f} %"
                                  for k, v in both["per_defect"].items()) + "."]
    jobs = runs[PRIMARY_SEED]["figures"]["job_seconds"]
    refine_jobs = {k: v for k, v in jobs.items() if k.startswith("demo_ges/")
                   and ("refine" in k or k.endswith("train_emulator"))}
    if refine_jobs:
        lines += ["", "Refine jobs' wall time: " + ", ".join(
            f"{k.split('/', 1)[1]} {v:.0f} s" for k, v in sorted(refine_jobs.items())) + "."]
    return "\n".join(lines)


def block_marvels_ablation(runs: dict[int, dict[str, Any]], peer: dict | None) -> str:
    """deep-REMAP's ablation on the calibration stars (the ablation target's ablation.json)."""
    f = runs[PRIMARY_SEED]["figures"]
    m = f["metrics"].get("demo_marvels")
    ablation = (f.get("ablation") or {}).get("figures", {}).get("demo_marvels", {}).get(
        "variants", {})
    if not ablation:
        return "The measured run did not run the ablation target."
    labels = [k for k in ("teff", "logg", "fe_h") if m and k in m["labels"]]
    lines = ["| variant | members | " + " | ".join(f"σ / bias {NAMES[k]}" for k in labels)
             + " |", "|---|---|" + "---|" * len(labels)]
    for name, v in ablation.items():
        lines.append(f"| {name}: {v.get('description', '')} | {v.get('n_members', '—')} | "
                     + " | ".join(f"{fmt(k, v[k]['sigma'])} / {fmt(k, v[k]['bias'])}"
                                  for k in labels if k in v) + " |")
    return "\n".join(lines)


def block_ges_clean(runs: dict[int, dict[str, Any]], peer: dict | None) -> str:
    """The t-SNE cleaning of demo_ges's training spectra (metrics.json ``clean``)."""
    c = runs[PRIMARY_SEED]["figures"]["metrics"]["demo_ges"].get("clean")
    if not c:
        return "No clean metrics in the measured run."
    text = (f"t-SNE clean of {c['n_cleaned']} training spectra, {c['n_defective']} with injected "
            f"defects: {100 * c['defective_rejected_fraction']:.1f} % of the defective and "
            f"{100 * c['good_rejected_fraction']:.1f} % of the good spectra rejected. Per defect: "
            + ", ".join(f"{k} {100 * v['rejected_fraction']:.0f} % (N={v['n']})"
                        for k, v in c.get("per_defect", {}).items()) + ".")
    for name, what in (("per_population", "chemical population"),
                       ("per_class", "evolutionary class")):
        if c.get(name):
            text += f" Good spectra kept per {what}: " + ", ".join(
                f"{k} {100 * v['kept_fraction']:.1f} % (N={v['n']})"
                for k, v in c[name].items()) + "."
    outliers = c.get("catalogue_outliers")
    if outliers and outliers["n"]:
        text += (f" Stars with a wrong-branch catalogue label: {outliers['n']}, "
                 f"{100 * outliers['rejected_fraction']:.0f} % rejected.")
    nr = c.get("normalize_rejected")
    if nr:
        text += (f" Normalize rejected {nr['n']} spectra, each with its reason ("
                 + ", ".join(f"{k}: {v}" for k, v in nr.get("per_reason", {}).items()) + ").")
    return text


def _bounds(values: dict[str, float]) -> str:
    return " / ".join(fmt(k, values[k], 1 if k == "teff" else 4) for k in NAMES if k in values)


def block_refine_throughput(runs: dict[int, dict[str, Any]], peer: dict | None) -> str:
    """Refine throughput at survey size (``refine_throughput.json``:
    ``bench/refine_throughput.py --run <default run>/demo_ges``)."""
    path = RESULTS / "refine_throughput.json"
    if not path.exists():
        return "`bench/refine_throughput.py` has not been run on this machine kind."
    r = json.loads(path.read_text())
    f, p, m = r["figures"], r["parameters"], r["machine"]
    target = r["targets"]["seconds_at_36904"]
    verdict = ("not the full size: no verdict" if target["measured"] is None
               else "met" if target["met"] else "missed")
    peaks = [s["peak_rss_bytes"] / 2**20 for s in f["per_shard"]]
    return "\n".join([
        f"Measured {r['created_utc'][:10]} on {m['cpu_model']} ({m['usable_cores']} cores, "
        f"{'GPU ' + m['gpu'] if m['gpu'] else 'no GPU'}), commit "
        f"{str(r['versions']['starlabels_git_commit'])[:10]}; `python bench/refine_throughput.py "
        f"--run <seed {PRIMARY_SEED} run>/demo_ges`.", "",
        f"{f['n_rows']:,} stars ({p['base_rows']:,} of the run's spectra tiled, "
        f"{p['n_pixels']:,} px, emulator `{p['emulator_kind']}`) refined in {p['n_shards']} "
        f"shards, {p['jobs']} jobs of one thread at a time: **{f['seconds']:.0f} s** "
        f"({f['stars_per_s']:.0f} stars/s; target ≤ {target['limit']:.0f} s: {verdict}); "
        f"each job {min(f['shard_process_seconds']):.1f}–{max(f['shard_process_seconds']):.1f} s "
        f"of which {f['job_overhead_seconds_mean']:.1f} s on average is start-up and loading; "
        f"peak RSS per job {min(peaks):.0f}–{max(peaks):.0f} MiB against "
        f"{f['shard_matrix_bytes_max'] / 2**20:.0f} MiB of flux and ivar per shard "
        f"({f['matrix_bytes_flux_plus_ivar'] / 2**30:.2f} GiB in all); "
        f"{100 * f['converged_fraction']:.1f} % converged."])


def block_realism(runs: dict[int, dict[str, Any]], peer: dict | None) -> str:
    """Per realism knob: the median idealised and marginalised Cramér–Rao bounds
    (``realism_knobs.json``) and the demo CNN's σ vs true where a run measured it
    (``realism_knobs_cnn.json``: ``bench/realism_knobs.py --train --tag cnn``; the realistic
    row: the default run itself)."""
    bounds = json.loads((RESULTS / "realism_knobs.json").read_text())
    trained_path = RESULTS / "realism_knobs_cnn.json"
    trained = json.loads(trained_path.read_text())["figures"]["rows"] \
        if trained_path.exists() else {}
    default = runs[PRIMARY_SEED]["figures"]["metrics"]["demo_ges"]["precision"]["vs_true"]
    rows = bounds["figures"]["rows"]
    order = ["ideal"] + [r for r in bounds["parameters"]["rows"]
                         if r not in ("ideal", "realistic")] + ["realistic"]
    lines = [f"Bounds: {bounds['created_utc'][:10]}, {bounds['machine']['cpu_model']}, "
             f"{bounds['parameters']['stars_per_row']} stars with "
             f"{bounds['parameters']['snr_bin'][0]:g} ≤ S/N < "
             f"{bounds['parameters']['snr_bin'][1]:g}. Each cell Teff (K) / log g / [Fe/H] / [Mg/Fe] / [Al/Fe] (dex).", "",
             "| row (`realism: ideal` + this knob) | idealised CRLB | marginalised CRLB | "
             "demo CNN σ vs true (test split) |", "|---|---|---|---|"]
    for name in order:
        if name not in rows:
            continue
        med = rows[name]["median"]
        if name == "realistic":
            cnn = _bounds({k: v["sigma"] for k, v in default.items()}) + \
                f" (default run, seed {PRIMARY_SEED})"
        elif name in trained and "cnn" in trained[name]:
            cnn = _bounds(trained[name]["cnn"]["sigma_vs_true"])
        else:
            cnn = "not run"
        label = {"ideal": "every knob off (`realism: ideal`)",
                 "realistic": "**every knob on (`realistic`, the default)**"}.get(name, name)
        lines.append(f"| {label} | {_bounds(med['ideal'])} | {_bounds(med['marginalised'])} | "
                     f"{cnn} |")
    return "\n".join(lines)


BLOCKS: dict[str, Callable[[dict, dict | None], str]] = {
    "default-run": block_default_run,
    "ges-precision": block_ges_precision,
    "ges-uncertainty": block_ges_uncertainty,
    "ges-catalogue-scale": block_ges_catalogue_scale,
    "ges-science": block_ges_science,
    "ges-reference-scale": block_ges_reference_scale,
    "ges-limit": block_ges_limit,
    "ges-clean": block_ges_clean,
    "refine": block_refine,
    "refine-throughput": block_refine_throughput,
    "paper-comparison": block_paper,
    "marvels": block_marvels,
    "marvels-ablation": block_marvels_ablation,
    "realism": block_realism,
}


def render(text: str, runs: dict[int, dict[str, Any]], peer: dict | None) -> str:
    for name, build in BLOCKS.items():
        pattern = re.compile(rf"(<!-- figures:{name} -->\n).*?(\n<!-- /figures:{name} -->)",
                             re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- figures:{name} --> block")
        body = build(runs, peer)
        text = pattern.sub(lambda match: match.group(1) + body + match.group(2), text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true",
                   help="exit 1 if the README's blocks differ from what the files give")
    args = p.parse_args()
    runs = load_runs()
    peer_path = RESULTS / "peer_cannon.json"
    peer = json.loads(peer_path.read_text()) if peer_path.exists() else None
    old = README.read_text()
    new = render(old, runs, peer)
    if args.check:
        sys.exit(0 if new == old else 1)
    README.write_text(new)
    print(f"README.md: {len(BLOCKS)} blocks written from {len(runs)} run(s)"
          + (" and the Cannon comparison" if peer else ""))


if __name__ == "__main__":
    main()
