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
