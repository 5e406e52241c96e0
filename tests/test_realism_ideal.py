"""`realism: ideal` reproduces the simulator as it was before the realism knobs, bit for bit.

tests/data/simulator_before_realism.npz was written by the simulator at commit cdb9306 (before
the knobs existed) for the two tiny surveys below: every 7th pixel of every spectrum file (flux
as stored, ivar as read), the wavelength range of each file, and the truth and catalogue labels.
"""
from pathlib import Path

import numpy as np
import pytest

from starlabels.artifacts import load_table
from starlabels.config import validate_config
from starlabels.io.gaia_eso import read_ges_catalog, read_ges_spectrum
from starlabels.io.marvels import read_marvels_plate, read_marvels_star_catalog
from starlabels.simulate.survey import simulate_gaia_eso, simulate_marvels

REFERENCE = Path(__file__).parent / "data" / "simulator_before_realism.npz"


def _configs(realism):
    exp = validate_config({"experiments": {"e": {"simulate": {"realism": realism}}},
                           "run": ["e"]})["experiments"]["e"]["simulate"]
    # field stars only: the reference predates the benchmark stars (which draw from streams of
    # their own and leave the field stars as they were)
    ges = dict(exp, n_stars=8, defect_fraction=0.5, broken_file_fraction=0.0, seed=77,
               benchmark_stars={"table": None, "snr": 150.0}, setups=[
        {"name": "HR10", "resolution": 19800, "start": 5334.0, "end": 5624.0, "step": 0.25},
        {"name": "HR21", "resolution": 16200, "start": 8479.0, "end": 9006.0, "step": 0.25}])
    marvels = dict(exp, seed=78, n_dwarfs=5, n_calibration=2, n_giant_candidates=5,
                   stars_per_plate=4, defect_fraction=0.3,
                   label_errors={"teff": [60.0, 120.0], "logg": [0.08, 0.2], "fe_h": [0.04, 0.1],
                                 "mg_fe": [0.02, 0.06], "al_fe": [0.03, 0.08]},
                   setups=[{"name": "MARVELS", "resolution": 11000, "start": 5000.0,
                            "end": 5700.0, "step": 0.25}])
    return ges, marvels


def _simulate(tmp_path, realism):
    ges, marvels = _configs(realism)
    out = {}
    simulate_gaia_eso(ges, tmp_path / "g", tmp_path / "g.parquet", threads=1, log=lambda m: None)
    for path in sorted(load_table(tmp_path / "g" / "manifest.parquet")["path"]):
        s = read_ges_spectrum(path)
        name = Path(path).name if "visit" not in path else "/".join(Path(path).parts[-2:])
        out[f"ges/{name}/flux"] = s.flux[::7].astype(np.float32)
        out[f"ges/{name}/ivar"] = s.ivar[::7]
        out[f"ges/{name}/wave"] = np.array([s.wavelength[0], s.wavelength[-1], s.wavelength.size])
    cat = read_ges_catalog(tmp_path / "g" / "catalog.fits")
    for c in ["teff", "logg", "fe_h", "mg_fe", "al_fe", "e_teff", "e_al_fe", "vrad"]:
        out[f"ges_catalog/{c}"] = cat[c].to_numpy(dtype=float)
    truth = load_table(tmp_path / "g.parquet")
    for c in ["teff", "logg", "fe_h", "mg_fe", "al_fe", "snr", "rv_kms"]:
        out[f"ges_truth/{c}"] = truth[c].to_numpy(dtype=float)
    out["ges_truth/defect"] = truth["defect"].to_numpy(dtype=str)
    simulate_marvels(marvels, tmp_path / "m", tmp_path / "m.parquet", threads=1,
                     log=lambda m: None)
    for path in sorted(load_table(tmp_path / "m" / "manifest.parquet")["path"]):
        for s in read_marvels_plate(path):
            out[f"marvels/{s.spectrum_id}/flux"] = s.flux[::7].astype(np.float32)
            out[f"marvels/{s.spectrum_id}/ivar"] = s.ivar[::7]
            out[f"marvels/{s.spectrum_id}/wave"] = np.array([s.wavelength[0], s.wavelength[-1],
                                                             s.wavelength.size])
    truth = load_table(tmp_path / "m.parquet")
    for c in ["teff", "logg", "fe_h", "snr", "rv_kms"]:
        out[f"marvels_truth/{c}"] = truth[c].to_numpy(dtype=float)
    cat = read_marvels_star_catalog(tmp_path / "m" / "catalog.fits")
    for c in ["teff", "logg", "fe_h"]:
        out[f"marvels_catalog/{c}"] = cat[c].to_numpy(dtype=float)
    return out


def test_ideal_preset_reproduces_the_simulator_before_the_realism_knobs(tmp_path):
    reference = dict(np.load(REFERENCE))
    now = _simulate(tmp_path, "ideal")
    assert sorted(now) == sorted(reference)
    for key, value in reference.items():
        np.testing.assert_array_equal(now[key], value, err_msg=key)


def test_realistic_preset_changes_every_spectrum(tmp_path):
    reference = dict(np.load(REFERENCE))
    now = _simulate(tmp_path, "realistic")
    spectra = [k for k in reference if k.endswith("/flux")]
    assert spectra
    for key in spectra:
        if key in now:
            assert not np.array_equal(now[key], reference[key]), key
