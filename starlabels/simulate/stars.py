"""Each simulated star's own nuisances: microturbulence, rotation, macroturbulence, and how many
times the survey observed it.

A spectroscopic pipeline fits these (or marginalises over them); a simulator that sets them from
Teff and log g hands the labels to anything that measures line widths. Every column is drawn for
all stars at once from the stars' own random stream, always with the same number of draws, so
switching one knob on or off never moves another's random numbers.

``cfg`` is the experiment's ``simulate`` section (validated: every key present).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from .physics import microturbulence_kms


def macroturbulence_relation(teff: np.ndarray, logg: np.ndarray) -> np.ndarray:
    """ζ (km/s): the Doyle et al. (2014) dwarf relation, 3.2 + 2.3 t + 2.0 t² with
    t = (Teff − 5777)/1000, plus 0.5 km/s per dex below log g 4.44 (giants' larger convective
    velocities)."""
    t = (np.asarray(teff, dtype=float) - 5777.0) / 1000.0
    return 3.2 + 2.3 * t + 2.0 * t ** 2 + 0.5 * (4.44 - np.asarray(logg, dtype=float))


def draw_star_nuisances(truth: pd.DataFrame, rng: np.random.Generator,
                        cfg: Mapping[str, Any]) -> None:
    """Add vmic_kms, vsini_kms, vmac_kms and n_visits to ``truth`` (in place)."""
    stars, observing = cfg["stars"], cfg["observing"]
    n = len(truth)
    teff = truth["teff"].to_numpy(dtype=float)
    logg = truth["logg"].to_numpy(dtype=float)
    z_vmic, z_vmac = rng.normal(size=n), rng.normal(size=n)
    e_rot = rng.exponential(size=n)
    repeat_u = rng.random(n)
    visits = rng.integers(2, int(observing["max_visits"]) + 1, size=n)

    # the relation itself (scalar, as the forward model evaluates it) keeps ξ exactly when the
    # scatter is off
    vmic = np.array([microturbulence_kms(t, g) for t, g in zip(teff, logg)])
    if stars["microturbulence_scatter_kms"] > 0:
        vmic = np.clip(vmic + stars["microturbulence_scatter_kms"] * z_vmic, 0.3, 4.0)
    rot = stars["rotation"]
    mean_vsini = np.where(teff < rot["kraft_break_teff"], rot["slow_mean_kms"], rot["fast_mean_kms"])
    vsini = np.minimum(mean_vsini * e_rot, rot["max_kms"])
    mac = stars["macroturbulence"]
    vmac = np.clip(mac["scale"] * macroturbulence_relation(teff, logg) + mac["scatter_kms"] * z_vmac,
                   0.0, 10.0)
    truth["vmic_kms"] = vmic
    truth["vsini_kms"] = vsini
    truth["vmac_kms"] = vmac
    truth["n_visits"] = np.where(repeat_u < observing["repeat_fraction"], visits, 1).astype(np.int64)
