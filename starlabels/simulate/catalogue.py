"""The survey's own catalogue labels for the simulated stars: truth plus what a real pipeline adds.

* **Errors that depend on the star** (``errors_follow_star``): within each label's
  ``label_errors`` range [lo, hi], a star sits higher the lower its S/N and the further it is
  from the solar-type stars pipelines are tuned on (cool or hot, metal-poor, giant), with some
  random spread; otherwise uniform in the range.
* **Correlated Teff–log g errors** (``teff_logg_error_correlation``): a spectroscopic solution
  that is too hot is also too high in gravity (ionisation balance).
* **Systematic offsets** (``systematic_offsets``): a × (4.44 − log g) + b × (5777 − Teff)/1000
  per label, the smooth differences between pipelines seen in giants and cool stars.
* **Catastrophic outliers** (``outlier_fraction``): labels from a wrong branch of the
  Teff–log g–[Fe/H] degeneracy; marked in the truth table (``catalogue_outlier``).

The reported errors (``e_<label>``) are the σ of the random part, as a pipeline would report
them: offsets and outliers are not in them. ``catalogue_cfg`` is the ``simulate.catalogue``
section.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .physics import LABEL_ORDER



def wrong_branch(dteff: np.ndarray) -> dict[str, np.ndarray]:
    """How the other labels move with a Teff error on the wrong branch of the degeneracy: a
    hotter solution needs a higher gravity (ionisation balance) and more metals (line depths);
    [X/Fe] shift slightly the other way."""
    return {"teff": dteff, "logg": 0.002 * dteff, "fe_h": 0.0006 * dteff,
            "mg_fe": -0.0002 * dteff, "al_fe": -0.0002 * dteff}


def error_position(truth: pd.DataFrame, spread: np.ndarray) -> np.ndarray:
    """Where each star's error sits in its [lo, hi] range, 0 … 1 (see module docstring);
    ``spread`` is a uniform random number per star."""
    snr = truth["snr"].to_numpy(dtype=float)
    teff = truth["teff"].to_numpy(dtype=float)
    logg = truth["logg"].to_numpy(dtype=float)
    fe_h = truth["fe_h"].to_numpy(dtype=float)
    low_snr = np.clip(30.0 / snr, 0.0, 1.0)
    unusual_teff = np.clip(np.abs(teff - 5777.0) / 1500.0, 0.0, 1.0)
    metal_poor = np.clip(-0.3 - fe_h, 0.0, 1.0)
    giant = np.clip((4.0 - logg) / 3.0, 0.0, 1.0)
    q = (0.45 * low_snr + 0.2 * unusual_teff + 0.2 * metal_poor + 0.15 * giant
         + 0.3 * (spread - 0.5))
    return np.clip(q, 0.0, 1.0)


def systematic_offset(truth: pd.DataFrame | Mapping[str, np.ndarray],
                      offsets: Mapping[str, Sequence[float]], label: str) -> np.ndarray:
    """The catalogue's smooth offset of ``label`` for these true stars (module docstring):
    a × (4.44 − log g) + b × (5777 − Teff)/1000, [a, b] = ``offsets[label]``."""
    a, b = offsets[label]
    below_logg = 4.44 - np.asarray(truth["logg"], dtype=float)
    cooler = (5777.0 - np.asarray(truth["teff"], dtype=float)) / 1000.0
    return a * below_logg + b * cooler


def observe_catalog_labels(truth: pd.DataFrame, rng: np.random.Generator,
                           label_errors: Mapping[str, list[float]],
                           catalogue_cfg: Mapping[str, Any] | None = None,
                           extra_rng: np.random.Generator | None = None) -> pd.DataFrame:
    """Catalogue labels and their reported errors for the stars of ``truth``.

    ``rng`` draws the error sizes and the Gaussian errors in the same order whatever the knobs;
    ``extra_rng`` draws the outliers. Without ``catalogue_cfg``: truth + N(0, error), error
    uniform in [lo, hi]. Adds ``catalogue_outlier`` to ``truth`` (in place) when configured.
    """
    n = len(truth)
    errors, z = {}, {}
    for label in LABEL_ORDER:
        lo, hi = label_errors[label]
        errors[label] = rng.uniform(lo, hi, n)
        z[label] = rng.normal(0.0, 1.0, n)
    out = {}
    if catalogue_cfg is None:
        for label in LABEL_ORDER:
            out[label] = truth[label].to_numpy() + z[label] * errors[label]
            out[f"e_{label}"] = errors[label]
        return pd.DataFrame(out, index=truth.index)

    if catalogue_cfg["errors_follow_star"]:
        for label in LABEL_ORDER:
            lo, hi = label_errors[label]
            spread = (errors[label] - lo) / (hi - lo) if hi > lo else np.full(n, 0.5)
            errors[label] = lo + (hi - lo) * error_position(truth, spread)
    rho = float(catalogue_cfg["teff_logg_error_correlation"])
    z["logg"] = rho * z["teff"] + np.sqrt(1.0 - rho ** 2) * z["logg"]
    offsets = catalogue_cfg["systematic_offsets"]
    for label in LABEL_ORDER:
        out[label] = truth[label].to_numpy() + z[label] * errors[label] \
            + systematic_offset(truth, offsets, label)
        out[f"e_{label}"] = errors[label]

    u = extra_rng.random(n)
    sign = np.where(extra_rng.random(n) < 0.5, -1.0, 1.0)
    dteff = sign * extra_rng.uniform(300.0, 800.0, n)
    outlier = u < catalogue_cfg["outlier_fraction"]
    for label, shift in wrong_branch(dteff).items():
        out[label] = np.where(outlier, out[label] + shift, out[label])
    truth["catalogue_outlier"] = outlier
    return pd.DataFrame(out, index=truth.index)
