"""Which stars carry training labels, and the train / valid / test split.

Each survey's catalogue is read through its reader and turned into one *stars table* (one row per
star: star_id, labels, label errors, S/N, RV, ``split``). Splits:

* ``train`` / ``valid`` / ``test`` — labelled stars passing the catalogue cuts, assigned by a hash
  of (seed, star_id) so the split never depends on row order or on which other stars exist;
* ``calibration`` — stars with literature labels (MARVELS calibration stars);
* ``target`` — everything else: labelled stars failing the cuts and unlabelled stars. They are
  predicted but never trained on.

``selection`` is the experiment's ``selection`` section; keys it leaves out take the schema's
defaults. Each survey's stars function takes the same keyword arguments, as its record in
:mod:`starlabels.surveys` calls it.
"""
from __future__ import annotations

import hashlib
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import config


def hash_uniform(star_ids: Sequence[str], seed: int) -> np.ndarray:
    """A deterministic number in [0, 1) per star id (sha256 of 'seed:star_id')."""
    out = np.empty(len(star_ids))
    for i, sid in enumerate(star_ids):
        digest = hashlib.sha256(f"{seed}:{sid}".encode()).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    return out


def assign_split(star_ids: Sequence[str], valid_fraction: float, test_fraction: float,
                 seed: int) -> np.ndarray:
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError(f"selection: valid_fraction + test_fraction = "
                         f"{valid_fraction + test_fraction} leaves no training stars")
    u = hash_uniform(star_ids, seed)
    # object dtype: a fixed-width '<U5' array would silently truncate later labels
    # ('calibration' → 'calib')
    return np.where(u < test_fraction, "test",
                    np.where(u < test_fraction + valid_fraction, "valid", "train")).astype(object)


def training_quality(stars: pd.DataFrame, labels: Sequence[str], cfg: Mapping[str, Any]
                     ) -> np.ndarray:
    """Catalogue cuts for training stars: finite labels (and errors), Teff range, S/N, and
    (``exclude_flags``) the survey's quality flags."""
    cfg = config.section("selection", cfg)
    ok = np.ones(len(stars), dtype=bool)
    for label in labels:
        ok &= np.isfinite(stars[label].to_numpy(dtype=float))
        if cfg["require_finite_errors"] and f"e_{label}" in stars:
            ok &= np.isfinite(stars[f"e_{label}"].to_numpy(dtype=float))
    lo, hi = cfg["teff_range"]
    teff = stars["teff"].to_numpy(dtype=float)
    ok &= (teff >= lo) & (teff <= hi)
    if "snr" in stars:
        snr = stars["snr"].to_numpy(dtype=float)
        ok &= ~(snr < cfg["snr_min"])          # unknown S/N does not exclude
    if cfg["exclude_flags"] and "flags" in stars:
        ok &= ~flagged(stars["flags"], cfg["exclude_flags"])
    return ok


def flagged(flags: pd.Series, codes: Sequence[str]) -> np.ndarray:
    """True where a star's '|'-separated catalogue flags contain one of ``codes``.

    A code matches a flag that equals it or starts with it followed by '-' or '_', so '10302'
    matches the Gaia-ESO flag '10302-11-00-00' but not '103021'.
    """
    codes = [str(c).strip() for c in codes if str(c).strip()]
    out = np.zeros(len(flags), dtype=bool)
    for i, text in enumerate(flags.fillna("").astype(str)):
        tokens = [t.strip() for t in text.split("|") if t.strip()]
        out[i] = any(t == c or t.startswith((c + "-", c + "_")) for t in tokens for c in codes)
    return out


def gaia_eso_stars(catalog_path: str, labels: Sequence[str], selection: Mapping[str, Any],
                   solar: Mapping[str, float], calibration_path: str | None = None
                   ) -> pd.DataFrame:
    """Stars table from a Gaia-ESO parameter catalogue (MG1/AL1 → [Mg/Fe]/[Al/Fe] with the
    ``solar_abundances``). Its reference labels are the catalogue's own. Stars of the
    calibration table (``calibration_path``: the Gaia FGK benchmark stars and their literature
    labels) are the ``calibration`` split: predicted, compared with the literature by
    validate, never trained on."""
    from .artifacts import load_table
    from .io.gaia_eso import read_ges_catalog

    selection = config.section("selection", selection)
    stars = read_ges_catalog(catalog_path, solar_mg=solar["mg"], solar_al=solar["al"])
    stars = stars.drop_duplicates("star_id").reset_index(drop=True)
    if selection["exclude_flags"]:
        from .io.gaia_eso import read_ges_flags

        flags = read_ges_flags(catalog_path).drop_duplicates("star_id").set_index("star_id")
        stars["flags"] = flags["flags"].reindex(stars["star_id"]).fillna("").to_numpy()
    good = training_quality(stars, labels, selection)
    split = assign_split(stars["star_id"].tolist(), selection["valid_fraction"],
                         selection["test_fraction"], selection["seed"])
    stars["split"] = np.where(good, split, "target").astype(object)
    if calibration_path is not None:
        literature = load_table(calibration_path)
        stars.loc[stars["star_id"].isin(literature["star_id"]), "split"] = "calibration"
    return stars


def marvels_stars(catalog_path: str, calibration_path: str, labels: Sequence[str],
                  selection: Mapping[str, Any], solar: Mapping[str, float] | None = None
                  ) -> pd.DataFrame:
    """Stars table from the MARVELS star catalogue and the calibration stars' literature table.

    Catalogue dwarfs with labels (RPM_LOG_g Mainseq in DR12, 'dwarf' in the simulated
    catalogue) are the fine-tuning sample (train/valid/test by hash); calibration stars take
    their literature labels; RPM giants and known planet hosts (DR12 Refstar, no luminosity
    class) are targets. The catalogue gives no abundances, so ``solar`` is not used.
    """
    from .artifacts import load_table
    from .io.marvels import RPM_DWARF, read_marvels_star_catalog

    selection = config.section("selection", selection)
    stars = read_marvels_star_catalog(catalog_path).drop_duplicates("star_id")
    stars = stars.reset_index(drop=True)
    literature = load_table(calibration_path)
    good = training_quality(stars, labels, selection) & stars["rpm_class"].eq(RPM_DWARF).to_numpy()
    split = np.where(good, assign_split(stars["star_id"].tolist(), selection["valid_fraction"],
                                        selection["test_fraction"], selection["seed"]),
                     "target").astype(object)
    calib = stars["star_id"].isin(literature["star_id"]).to_numpy()
    split[calib] = "calibration"
    stars["split"] = split
    if len(literature):
        lit = literature.set_index("star_id")
        rows = stars.index[calib]
        for col in [c for c in lit.columns if c in stars.columns]:
            stars.loc[rows, col] = lit.loc[stars.loc[rows, "star_id"], col].to_numpy()
        stars["label_source"] = np.where(calib, "literature", "catalogue")
    return stars
