import numpy as np
import pandas as pd

from starlabels.selection import assign_split, hash_uniform, training_quality


def test_split_is_deterministic_and_order_independent():
    ids = [f"star{i}" for i in range(2000)]
    a = assign_split(ids, 0.1, 0.3, seed=7)
    b = assign_split(ids[::-1], 0.1, 0.3, seed=7)[::-1]
    np.testing.assert_array_equal(a, b)
    frac = {k: np.mean(a == k) for k in ("train", "valid", "test")}
    assert abs(frac["test"] - 0.3) < 0.04 and abs(frac["valid"] - 0.1) < 0.03
    assert not np.array_equal(a, assign_split(ids, 0.1, 0.3, seed=8))


def test_hash_uniform_range():
    u = hash_uniform([str(i) for i in range(1000)], 1)
    assert u.min() >= 0 and u.max() < 1 and 0.45 < u.mean() < 0.55


def test_training_cuts():
    stars = pd.DataFrame({"teff": [5000, 3500, 5000, 5000, np.nan], "e_teff": [50, 50, np.nan, 50, 50],
                          "snr": [50, 50, 50, 10, 50]})
    ok = training_quality(stars, ["teff"], {"teff_range": [4000, 7000], "snr_min": 20,
                                           "require_finite_errors": True})
    np.testing.assert_array_equal(ok, [True, False, False, False, False])


def test_marvels_calibration_split_is_not_truncated(tmp_path):
    from starlabels.artifacts import save_table
    from starlabels.io.marvels import write_marvels_star_catalog
    from starlabels.selection import marvels_stars

    names = ["TYC 1-1-1", "TYC 2-2-1", "TYC 3-3-1"]
    write_marvels_star_catalog(tmp_path / "c.fits", pd.DataFrame({
        "STARNAME": names, "PLATE": ["P1"] * 3, "TEFF": [5500.0, np.nan, 5800.0],
        "TEFF_E": [50.0, np.nan, 50.0], "LOG_G": [4.4, np.nan, 4.3], "LOG_G_E": [0.1, np.nan, 0.1],
        "FEH": [0.0, np.nan, -0.2], "FEH_E": [0.05, np.nan, 0.05],
        "RPM_LOG_G": ["dwarf", "giant", "dwarf"]}))
    save_table(tmp_path / "lit.parquet", pd.DataFrame({"star_id": ["TYC 3-3-1"], "teff": [5850.0],
                                                       "e_teff": [40.0], "reference": ["x"]}))
    stars = marvels_stars(str(tmp_path / "c.fits"), str(tmp_path / "lit.parquet"),
                          ["teff", "logg", "fe_h"], {"teff_range": [4000, 7000], "snr_min": 0,
                                                     "valid_fraction": 0.0, "test_fraction": 0.0,
                                                     "seed": 1})
    assert stars.set_index("star_id").loc["TYC 3-3-1", "split"] == "calibration"
    assert stars.set_index("star_id").loc["TYC 3-3-1", "teff"] == 5850.0     # literature value
    assert stars.set_index("star_id").loc["TYC 2-2-1", "split"] == "target"
    assert stars.set_index("star_id").loc["TYC 1-1-1", "split"] == "train"


def test_marvels_dr12_vocabulary_selects_the_main_sequence(tmp_path):
    """DR12 Mainseq stars are the fine-tuning sample; Giant and Refstar (known planet hosts,
    no luminosity class) are predicted but never trained on."""
    from test_io_marvels import DR12_ROWS, dr12_marvels_star

    from starlabels.artifacts import save_table
    from starlabels.selection import marvels_stars

    catalog = dr12_marvels_star(tmp_path / "marvelsStar.fits", DR12_ROWS)
    save_table(tmp_path / "lit.parquet", pd.DataFrame({"star_id": pd.Series(dtype=str),
                                                       "reference": pd.Series(dtype=str)}))
    stars = marvels_stars(catalog, str(tmp_path / "lit.parquet"), ["teff", "logg", "fe_h"],
                          {"teff_range": [4000, 7000], "snr_min": 0, "valid_fraction": 0.0,
                           "test_fraction": 0.0, "seed": 1}).set_index("star_id")
    assert stars.loc[["TYC 3010-01494-1", "TYC 0001-1-1"], "split"].tolist() == ["train"] * 2
    assert stars.loc[["TYC 3011-00003-1", "HIP 14810", "TYC 0002-2-1", "TYC 0003-3-1"],
                     "split"].tolist() == ["target"] * 4
