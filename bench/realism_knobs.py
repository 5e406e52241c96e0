#!/usr/bin/env python
"""Realism knobs — what each knob of the simulator costs: its Cramér–Rao bound and, optionally,
the demo CNN's precision.

For each knob, the demo_ges survey is drawn with ``realism: ideal`` and only that knob at its
realistic value (the schema default): the same stars for every knob (true labels, S/N, RV from
the ideal draw), their nuisances from the knob's configuration. For a fixed sample of stars with
70 ≤ S/N < 120, ``starlabels.limits.star_bounds`` gives the idealised bound (nuisances known,
independent photon noise) and the marginalised one (the nuisances the knob frees, and its noise);
the table reports their medians. Rows ``ideal`` (every knob off) and ``realistic`` (every knob
on) bracket the rest.

``--train`` also runs the demo_ges pipeline per knob (``snakemake`` with a configuration file
that sets the knob; outputs in ``<out>/realism/<knob>/``) and records the CNN's σ against the
true labels on the test split (``metrics.json``). That costs a full acquire → validate run per
knob (≈5 min each on 2 cores); ``--knobs`` picks some.

Knobs that bias rather than scatter (flat ripple, high-order blaze, sky residuals, wavelength
solution, catalogue labels) leave both bounds unchanged: a variance bound cannot show them.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import _common as C

#: each knob: the simulate-section leaves it sets to their realistic (schema default) values
KNOBS: dict[str, list[str]] = {
    "microturbulence_scatter": ["stars.microturbulence_scatter_kms"],
    "rotation": ["stars.rotation.slow_mean_kms", "stars.rotation.fast_mean_kms"],
    "macroturbulence": ["stars.macroturbulence.scale", "stars.macroturbulence.scatter_kms"],
    "electron_donors": ["stars.electron_donors"],
    "class_fraction_prior": ["stars.class_fraction_concentration"],
    "al_fe_relation": ["stars.al_fe.mg_fe_slope", "stars.al_fe.fe_h_slope", "stars.al_fe.offset",
                       "stars.al_fe.scatter"],
    "al_rich_mg_poor": ["stars.al_rich_mg_poor.fraction"],
    "residual_rv": ["observing.residual_rv_kms"],
    "repeat_visits": ["observing.repeat_fraction"],
    "telluric": ["observing.telluric.strength"],
    "sky": ["observing.sky.peak_electrons", "observing.sky.subtraction_residual",
            "observing.sky.subtraction_shift_pixels"],
    "resolution_taper": ["instrument.resolution_taper"],
    "resolution_fibre": ["instrument.resolution_fibre_sigma"],
    "flat_ripple": ["instrument.flat_ripple.amplitude"],
    "continuum_high_order": ["instrument.continuum_high_order.amplitude"],
    "read_noise": ["instrument.read_noise_electrons"],
    "correlated_noise": ["instrument.noise_correlation_pixels"],
    "plate_wavelength_distortion": ["instrument.plate_wavelength_distortion.amplitude_kms"],
    "catalogue_errors_follow_star": ["catalogue.errors_follow_star"],
    "catalogue_teff_logg_correlation": ["catalogue.teff_logg_error_correlation"],
    "catalogue_offsets": [f"catalogue.systematic_offsets.{k}"
                          for k in ("teff", "logg", "fe_h", "mg_fe", "al_fe")],
    "catalogue_outliers": ["catalogue.outlier_fraction"],
}
EXPERIMENT = "demo_ges"
SNR_BIN = (70.0, 120.0)


def _get(tree: dict, path: str) -> Any:
    for part in path.split("."):
        tree = tree[part]
    return tree


def _set(tree: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = copy.deepcopy(value)


def knob_overlay(knob: str | None) -> dict[str, Any]:
    """The simulate-section overlay of a row: ideal plus the knob at its schema default;
    None = every knob on (the realistic set)."""
    from starlabels.config import section

    if knob is None:
        return {"realism": "realistic"}
    realistic = section("simulate", {})
    overlay: dict[str, Any] = {"realism": "ideal"}
    for leaf in KNOBS.get(knob, []):
        _set(overlay, leaf, _get(realistic, leaf))
    return overlay


def demo_experiment() -> tuple[dict[str, Any], dict[str, Any]]:
    """(the validated demo_ges block, its simulate block as config.yaml writes it: the knobs
    it leaves out are what a row's preset fills)."""
    from starlabels.config import validate_config

    raw = yaml.safe_load((C.REPO / "config.yaml").read_text())
    config = validate_config(raw)
    return config["experiments"][EXPERIMENT], raw["experiments"][EXPERIMENT]["simulate"]


def bounds_for(knob: str | None, exp: dict[str, Any], simulate: dict[str, Any], n_stars: int,
               sample: int, seed: int) -> dict[str, Any]:
    """Median idealised and marginalised bounds of the sample stars under one row's config."""
    from starlabels.config import section
    from starlabels.grid import WavelengthGrid
    from starlabels.limits import nuisances_for, star_bounds
    from starlabels.simulate.physics import (Broadening, ForwardModel, Instrument, LABEL_ORDER,
                                             load_telluric_lines)
    from starlabels.simulate.stars import draw_star_nuisances
    from starlabels.simulate.survey import STREAM_NUISANCES, draw_ges_stars, observed_linelist

    base = dict(simulate, n_stars=n_stars)
    ideal = section("simulate", dict(base, realism="ideal"))
    truth, _ = draw_ges_stars(ideal)        # the same stars for every row
    overlay = knob_overlay(knob if knob != "ideal" else "none")
    cfg = section("simulate", {**base, **overlay})
    draw_star_nuisances(truth, np.random.default_rng([int(cfg["seed"]), STREAM_NUISANCES]), cfg)
    rows = np.flatnonzero(truth["snr"].between(*SNR_BIN, inclusive="left").to_numpy())
    pick = np.sort(np.random.default_rng(seed).choice(rows, min(sample, rows.size),
                                                      replace=False))
    grid = WavelengthGrid.from_config(exp["grid"]["segments"])
    resolution = {s["name"]: float(s["resolution"]) for s in cfg["setups"]}
    model = ForwardModel([Instrument(g.name, resolution[g.name], g.wavelength_air)
                          for g in grid.segments], observed_linelist(cfg)[1],
                         electron_donors=bool(cfg["stars"]["electron_donors"]),
                         telluric=load_telluric_lines())
    nuisances, exposure = nuisances_for(cfg, int(exp["normalize"]["continuum"]["order"]),
                                        exp["grid"], catalogue_rv=True)
    labels = list(exp["labels"])
    found: dict[str, dict[str, list[float]]] = {"ideal": {k: [] for k in labels},
                                                "marginalised": {k: [] for k in labels}}
    start = time.perf_counter()
    for i in pick:
        row = truth.iloc[i]
        star = {k: float(row[k]) for k in LABEL_ORDER}
        broadening = Broadening(vmic_kms=float(row["vmic_kms"]), vsini_kms=float(row["vsini_kms"]),
                                vmac_kms=float(row["vmac_kms"]))
        result = star_bounds(model, star, float(row["snr"]), nuisances, labels, star=broadening,
                             exposure=exposure)
        for kind, values in result.items():
            for label in labels:
                found[kind][label].append(values[label])
    return {"n_stars": int(pick.size), "seconds": time.perf_counter() - start,
            "overlay": overlay,
            "median": {kind: {k: float(np.median(v)) for k, v in per.items()}
                       for kind, per in found.items()},
            "nuisances": {"continuum_order": nuisances.continuum_order,
                          "rv_sigma_kms": nuisances.rv_sigma_kms,
                          "vmic_sigma_kms": nuisances.vmic_sigma_kms,
                          "broadening": nuisances.broadening,
                          "resolution_sigma": nuisances.resolution_sigma,
                          "telluric": nuisances.telluric,
                          "read_noise_electrons": nuisances.read_noise_electrons}}


def train_knob(knob: str | None, exp_name: str, out: Path, cores: int) -> dict[str, Any]:
    """Run the demo_ges pipeline with one row's simulate overlay; σ vs true from metrics.json."""
    name = knob or "realistic"
    folder = out / "realism" / name
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "config.yaml"
    overlay = knob_overlay(knob if knob != "ideal" else "none")
    config_file.write_text(yaml.safe_dump({"run": [exp_name], "experiments": {
        exp_name: {"simulate": overlay}}}))
    metrics = folder / exp_name / "metrics.json"
    # the target first: --config takes every argument after it as a key=value pair
    cmd = [sys.executable, "-m", "snakemake", str(metrics), "--cores", str(cores),
           "--configfile", str(config_file), "--config", f"results={folder}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=C.REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: snakemake failed\n{proc.stderr[-3000:]}")
    m = json.loads(metrics.read_text())
    return {"seconds": time.perf_counter() - start,
            "sigma_vs_true": {k: v["sigma"] for k, v in m["precision"]["vs_true"].items()}}


def main() -> None:
    p = C.parser(__doc__.splitlines()[1])
    p.add_argument("--knobs", nargs="*", default=None,
                   help=f"rows to run (default all: ideal, {', '.join(KNOBS)}, realistic)")
    p.add_argument("--sample", type=int, default=None,
                   help="stars per row (default 40; quick 3)")
    p.add_argument("--train", action="store_true",
                   help="also train the demo CNN per row and record its σ (minutes per row)")
    args = p.parse_args()
    C.resolve_paths(args)
    rows = args.knobs or (["ideal", "rotation", "read_noise", "realistic"] if args.quick
                          else ["ideal", *KNOBS, "realistic"])
    unknown = sorted(set(rows) - set(KNOBS) - {"ideal", "realistic"})
    if unknown:
        raise SystemExit(f"unknown knob(s) {unknown}; choose from ideal, realistic, {list(KNOBS)}")
    sample = args.sample or (3 if args.quick else 40)
    n_stars = 400 if args.quick else None
    run = C.Run("realism_knobs", args)
    exp, simulate = demo_experiment()
    n_stars = n_stars or int(exp["simulate"]["n_stars"])
    table: dict[str, Any] = {}
    for row in rows:
        knob = None if row == "realistic" else row
        C.say(f"realism_knobs: {row}")
        table[row] = bounds_for(knob, exp, simulate, n_stars, sample, seed=0)
        if args.train:
            table[row]["cnn"] = train_knob(knob, EXPERIMENT, args.out, args.threads)
        C.say(f"realism_knobs: {row}: {table[row]['median']} ({table[row]['seconds']:.0f} s)")
    run.parameters = {"experiment": EXPERIMENT, "n_stars_drawn": n_stars,
                      "stars_per_row": sample, "snr_bin": list(SNR_BIN), "rows": rows,
                      "trained": bool(args.train),
                      "code_path": "starlabels.limits.star_bounds on the demo_ges grid"}
    run.figures = {"rows": table}
    run.notes = [
        "Each row: realism ideal plus the row's knob at its schema default ('realistic' = every "
        "knob on); the same stars (labels, S/N) in every row, their nuisances drawn per row.",
        "Medians over the sample stars with 70 <= S/N < 120 of the idealised bound (labels "
        "only, nuisances known, independent photon noise) and the marginalised one (continuum "
        "order of normalize, and whatever nuisances and noise the row frees).",
        "Population, catalogue and repeat-visit knobs change the training labels and the sample, "
        "not a star's spectrum: their bounds equal the ideal row's by construction.",
    ]
    run.write()


if __name__ == "__main__":
    main()
