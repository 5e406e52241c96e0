"""Gaia FGK benchmark stars in the simulated Gaia-ESO survey.

Gaia-ESO observes the Gaia FGK benchmark stars to anchor its parameter scale, and the CNN paper
reports its labels for them beside their literature values. The simulated survey does the same:
every verified row of the benchmark table (``simulate.benchmark_stars.table``, by default
the packaged ``benchmark_stars.csv``) becomes a star

* whose true Teff, log g and [Fe/H] are the table's values (the table gives no [Mg/Fe] or
  [Al/Fe]: the star gets the mean of the simulated disc populations at its [Fe/H]);
* observed in every setup at ``simulate.benchmark_stars.snr`` with a radial velocity drawn like a
  field star's, without injected defects or broken files;
* in the parameter catalogue with GES_TYPE 'GE_SD_BM' (Gaia-ESO's benchmark type) and labels
  carrying the survey's usual errors;
* in the calibration table with the table's labels and reference, which selection keeps out of
  training and validate compares the predicted labels with (``metrics.json``: reference_stars).

Their nuisances (microturbulence, rotation, macroturbulence) are drawn as a field star's; each is
observed once. Random numbers come from streams of their own (``[seed, STREAM_BENCHMARKS, k]``),
so adding or removing benchmark stars leaves every field star exactly as it was.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import numpy as np
import pandas as pd

#: GES_TYPE of the benchmark stars in Gaia-ESO's catalogues
BENCHMARK_GES_TYPE = "GE_SD_BM"


class BenchmarkStars(NamedTuple):
    truth: pd.DataFrame        # rows of the survey's truth table
    catalog: pd.DataFrame      # rows of the DR5.1-like catalogue
    calibration: pd.DataFrame  # the calibration table (star_id, literature labels, reference)


def disc_mean_abundances(fe_h: np.ndarray,
                         al_fe_cfg: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """[Mg/Fe], [Al/Fe] of the simulated Milky-Way disc averaged over its thin and thick parts
    at this [Fe/H] (the relations :func:`starlabels.simulate.survey.draw_labels` scatters
    around; ``al_fe_cfg`` is ``simulate.stars.al_fe``)."""
    from .survey import disc_mg_fe, thick_disc_share

    fe_h = np.asarray(fe_h, dtype=float)
    thick_share = thick_disc_share(fe_h)
    mg_fe = (thick_share * disc_mg_fe(fe_h, np.ones(fe_h.shape, bool))
             + (1 - thick_share) * disc_mg_fe(fe_h, np.zeros(fe_h.shape, bool)))
    al_fe = (al_fe_cfg["mg_fe_slope"] * mg_fe + al_fe_cfg["offset"]
             + al_fe_cfg["fe_h_slope"] * fe_h)
    return mg_fe, al_fe


def benchmark_stars(cfg: Mapping[str, Any], seed: int, setups: str,
                    log: Callable[[str], Any] = print) -> BenchmarkStars:
    """The benchmark stars of the simulated Gaia-ESO survey from its ``simulate`` section (see
    the module docstring); empty frames when ``benchmark_stars.table`` is null or has no
    verified row with Teff, log g and [Fe/H]."""
    from ..acquire.literature import LABEL_COLUMNS, empty_calibration, load_benchmark_stars
    from .catalogue import observe_catalog_labels
    from .stars import draw_star_nuisances
    from .survey import STREAM_BENCHMARKS, cname, ges_catalog_frame

    bcfg = cfg["benchmark_stars"]
    table = load_benchmark_stars(bcfg["table"]) if bcfg["table"] else None
    usable = (pd.DataFrame() if table is None else
              table[table["verified"] & table[["teff", "logg", "fe_h"]].notna().all(axis=1)])
    if usable.empty:
        return BenchmarkStars(pd.DataFrame(), pd.DataFrame(), empty_calibration())
    usable = usable.reset_index(drop=True)
    k = len(usable)
    rng = np.random.default_rng([int(seed), STREAM_BENCHMARKS])
    ra, dec = rng.uniform(0, 360, k), rng.uniform(-70, 20, k)
    mg_fe, al_fe = disc_mean_abundances(usable["fe_h"].to_numpy(), cfg["stars"]["al_fe"])
    rv = cfg["rv_kms"]
    truth = pd.DataFrame({
        # CNAMEs from random coordinates, marked so that no field star's can coincide
        "star_id": [f"{cname(a, d)}BM{i}" for i, (a, d) in enumerate(zip(ra, dec))],
        "teff": usable["teff"].to_numpy(), "logg": usable["logg"].to_numpy(),
        "fe_h": usable["fe_h"].to_numpy(), "mg_fe": mg_fe, "al_fe": al_fe,
        "population": "benchmark", "chemical_population": "disc", "ra": ra, "dec": dec,
        "snr": np.full(k, float(bcfg["snr"])),
        "rv_kms": np.clip(rng.normal(rv["mean"], rv["sigma"], k), -rv["max_abs"], rv["max_abs"]),
        "defect": "", "broken": "", "name": usable["name"].to_numpy(),
    })
    draw_star_nuisances(truth, np.random.default_rng([int(seed), STREAM_BENCHMARKS, 1]), cfg)
    truth["n_visits"] = np.ones(k, dtype=np.int64)
    cat = observe_catalog_labels(truth, rng, cfg["label_errors"], cfg["catalogue"],
                                 np.random.default_rng([int(seed), STREAM_BENCHMARKS, 2]))
    rv_error = cfg["observing"]["catalogue_rv_error_kms"]
    catalog = ges_catalog_frame(truth, cat, truth["rv_kms"] + rng.normal(0, rv_error, k), setups,
                                cfg["solar_abundances"], BENCHMARK_GES_TYPE, rv_error)
    calibration = pd.DataFrame({"star_id": truth["star_id"],
                                **{c: usable[c].to_numpy(dtype=float) for c in LABEL_COLUMNS},
                                "reference": usable["reference"].to_numpy(),
                                "name": usable["name"].to_numpy()})
    log(f"simulate gaia_eso: {k} Gaia FGK benchmark stars at S/N {float(bcfg['snr']):g} "
        f"({', '.join(usable['name'])})")
    return BenchmarkStars(truth, catalog, calibration)


__all__ = ["BENCHMARK_GES_TYPE", "BenchmarkStars", "benchmark_stars", "disc_mean_abundances"]
