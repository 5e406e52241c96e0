"""The simulator's physics behaves as the module docstring says, and surveys are reproducible."""
import numpy as np
import pandas as pd
import pytest

from starlabels.artifacts import load_table
from starlabels.config import section, validate_config
from starlabels.simulate.physics import ForwardModel, Instrument, load_linelist
from starlabels.simulate.survey import cname, draw_labels, simulate_gaia_eso, simulate_phoenix_grid
from starlabels.spectral import C_KMS

LINES = load_linelist()
SUN = dict(teff=5777.0, logg=4.44, fe_h=0.0, mg_fe=0.0, al_fe=0.0)


@pytest.fixture(scope="module")
def model():
    return ForwardModel([Instrument("HR10", 19800, np.arange(5342.0, 5616.0, 0.1)),
                         Instrument("HR21", 16200, np.arange(8487.0, 8998.0, 0.1))], LINES)


def depth(model, labels, wavelength):
    f = model.flux(labels)
    return 1.0 - f[np.argmin(np.abs(model.wavelength - wavelength))]


def test_line_list_has_the_papers_diagnostic_lines():
    wl = LINES.set_index("species")["wavelength_air"]
    for species, w0 in [("Mg I", 5528.41), ("Mg I", 8717.83), ("Mg I", 8736.02), ("Mg I", 8806.76),
                        ("Al I", 8772.87), ("Al I", 8773.90), ("Ca II", 8498.02),
                        ("Ca II", 8542.09), ("Ca II", 8662.14)]:
        assert np.any(np.isclose(wl.loc[[species]].to_numpy(), w0, atol=0.02)), (species, w0)
    assert (LINES["species"] == "Fe I").sum() > 100 and (LINES["species"] == "Fe II").sum() >= 10


def test_flux_is_normalised_and_finite(model):
    f = model.flux(SUN)
    assert np.all(np.isfinite(f)) and f.max() <= 1.0 + 1e-9 and f.min() > 0.0
    assert 0.9 < np.median(f) <= 1.0


@pytest.mark.parametrize("label, wavelength, step", [
    ("fe_h", 5383.37, 0.3), ("mg_fe", 8736.02, 0.3), ("al_fe", 8773.90, 0.3),
])
def test_abundance_lines_deepen_with_their_abundance(model, label, wavelength, step):
    lo, hi = dict(SUN, **{label: -step}), dict(SUN, **{label: step})
    assert depth(model, hi, wavelength) > depth(model, lo, wavelength) + 0.01


def test_mg_lines_ignore_al_abundance(model):
    a = depth(model, dict(SUN, al_fe=-0.3), 8736.02)
    b = depth(model, dict(SUN, al_fe=0.3), 8736.02)
    assert abs(a - b) < 1e-3


def test_ca_triplet_wings_carry_gravity(model):
    # 7 Å from the 8542 core: pressure-broadened wing
    assert depth(model, dict(SUN, logg=4.6), 8535.0) > depth(model, dict(SUN, logg=3.5), 8535.0) + 0.02


def test_ionised_lines_weaken_with_gravity_neutral_lines_barely(model):
    fe2 = depth(model, dict(SUN, logg=3.0), 5425.26) - depth(model, dict(SUN, logg=4.6), 5425.26)
    fe1 = depth(model, dict(SUN, logg=3.0), 5522.45) - depth(model, dict(SUN, logg=4.6), 5522.45)
    assert fe2 > 0.03 and abs(fe1) < fe2 / 2


def test_low_excitation_lines_strengthen_in_cool_stars(model):
    assert depth(model, dict(SUN, teff=4800), 5497.52) > depth(model, dict(SUN, teff=6300), 5497.52) + 0.1


def test_radial_velocity_moves_lines(model):
    inst = model.instruments[0]
    rest = model.flux_per_setup(SUN)[0]
    moved = model.flux_per_setup(SUN, rv_kms=30.0)[0]
    core = lambda f, w0: inst.wavelength[np.argmin(np.where(np.abs(inst.wavelength - w0) < 1.5, f, 9))]
    shift = core(moved, 5383.37) - core(rest, 5383.37)
    assert shift == pytest.approx(5383.37 * 30.0 / C_KMS, abs=0.1)


def test_jacobian_matches_direct_difference(model):
    jac = model.jacobian(SUN, label_names=("fe_h",))
    direct = (model.flux(dict(SUN, fe_h=0.02)) - model.flux(dict(SUN, fe_h=-0.02))) / 0.04
    np.testing.assert_allclose(jac[:, 0], direct, atol=1e-9)


def test_population_matches_description():
    ideal = section("simulate", {"realism": "ideal"})["stars"]      # fixed class fractions
    labels = draw_labels(20000, np.random.default_rng(0), "ges_field", ideal)
    frac = labels["population"].value_counts(normalize=True)
    assert abs(frac["dwarf"] - 0.55) < 0.02 and abs(frac["giant"] - 0.35) < 0.02
    thick = labels["fe_h"] < -0.6
    assert labels.loc[thick, "mg_fe"].mean() > labels.loc[~thick, "mg_fe"].mean() + 0.1
    assert labels["teff"].between(4000, 7000).all() and labels["logg"].between(1, 5).all()
    with pytest.raises(ValueError, match="population"):
        draw_labels(5, np.random.default_rng(0), "halo", ideal)


def test_cname_format():
    assert cname(15 * 18.5, -32.05) == "18300000-3203000"


def _tiny_ges_cfg(n):
    cfg = validate_config({"experiments": {"e": {}}, "run": ["e"]})["experiments"]["e"]["simulate"]
    cfg.update(n_stars=n, defect_fraction=0.5, setups=[
        {"name": "HR10", "resolution": 19800, "start": 5334.0, "end": 5624.0, "step": 0.2},
        {"name": "HR21", "resolution": 16200, "start": 8479.0, "end": 9006.0, "step": 0.2}])
    return cfg


def test_gaia_eso_survey_is_reproducible_across_worker_counts(tmp_path):
    from starlabels.io.gaia_eso import read_ges_catalog, read_ges_spectrum

    cfg = _tiny_ges_cfg(12)
    simulate_gaia_eso(cfg, tmp_path / "a", tmp_path / "a.parquet", threads=1, log=lambda m: None)
    simulate_gaia_eso(cfg, tmp_path / "b", tmp_path / "b.parquet", threads=2, log=lambda m: None)
    ta, tb = load_table(tmp_path / "a.parquet"), load_table(tmp_path / "b.parquet")
    pd.testing.assert_frame_equal(ta, tb)
    assert (ta["defect"] != "").sum() >= 2
    ma = load_table(tmp_path / "a" / "manifest.parquet")
    assert (ta["population"] != "benchmark").sum() == 12      # + the benchmark stars
    # one HR10 + HR21 pair per visit; repeat visits of a star are units of their own
    assert len(ma) == 2 * ta["n_visits"].sum() and set(ma["setup"]) == {"HR10", "HR21"}
    assert ma.groupby("unit")["star_id"].nunique().eq(1).all()
    assert ma["unit"].nunique() == ta["n_visits"].sum()
    for pa in ma["path"][:4]:
        sa = read_ges_spectrum(pa)
        sb = read_ges_spectrum(pa.replace(str(tmp_path / "a"), str(tmp_path / "b")))
        np.testing.assert_array_equal(sa.flux, sb.flux)
    cat = read_ges_catalog(tmp_path / "a" / "catalog.fits")
    merged = cat.merge(ta, on="star_id", suffixes=("", "_true"))
    good = (merged["defect"] != "label_mismatch") & ~merged["catalogue_outlier"]
    # catalogue labels = truth + errors of the configured size
    assert np.all(np.abs(merged.loc[good, "teff"] - merged.loc[good, "teff_true"]) < 5 * 80)
    assert np.all(np.abs(merged.loc[good, "mg_fe"] - merged.loc[good, "mg_fe_true"]) < 5 * 0.06)


def test_phoenix_grid_files_and_holes(tmp_path):
    from starlabels.io.phoenix import read_phoenix_spectrum, read_phoenix_wave

    cfg = validate_config({"experiments": {"e": {}}, "run": ["e"]})["experiments"]["e"]["synthetic"]["simulate"]
    cfg.update(grid={"teff": [5000, 6000, 500], "logg": [4.0, 4.5, 0.5], "fe_h": [-0.5, 0.0, 0.5]},
               sampling_resolution=30000, sampling_kms=3.0, missing_fraction=0.3, seed=1)
    simulate_phoenix_grid(cfg, tmp_path, threads=1, log=lambda m: None)
    man = load_table(tmp_path / "manifest.parquet")
    spectra = man[man["kind"] == "spectrum"]
    assert 0 < len(spectra) < 12          # some of the 12 grid points are missing, like real grids
    wave = read_phoenix_wave(man.loc[man["kind"] == "wave", "path"].iloc[0])
    spec = read_phoenix_spectrum(spectra["path"].iloc[0], wave)
    assert spec.medium == "vacuum" and spec.meta["teff"] in (5000.0, 5500.0, 6000.0)
    # blackbody continuum in per-Å units: hotter models are brighter at 5300 Å
    assert np.nanmax(spec.flux) > 0


def test_benchmark_stars_are_observed_with_their_table_labels(tmp_path):
    """Every verified row of the benchmark table becomes a star whose truth is the table's
    labels, at the configured S/N, catalogued as a benchmark (GE_SD_BM), listed in the
    calibration table; the field stars are the same with or without them."""
    from starlabels.acquire.literature import load_benchmark_stars
    from starlabels.io.gaia_eso import read_ges_catalog
    from starlabels.selection import gaia_eso_stars

    table = load_benchmark_stars()
    usable = table[table["verified"] & table[["teff", "logg", "fe_h"]].notna().all(axis=1)]
    cfg = _tiny_ges_cfg(6)
    cfg["benchmark_stars"] = {"table": "benchmark_stars.csv", "snr": 180.0}
    simulate_gaia_eso(cfg, tmp_path / "a", tmp_path / "a.parquet", log=lambda m: None)
    truth = load_table(tmp_path / "a.parquet")
    bench = truth[truth["population"] == "benchmark"].reset_index(drop=True)
    assert len(bench) == len(usable) >= 10
    for label in ("teff", "logg", "fe_h"):
        np.testing.assert_array_equal(bench[label], usable[label])
    assert bench["name"].tolist() == usable["name"].tolist()
    assert (bench["snr"] == 180.0).all() and (bench["defect"] == "").all()
    catalog = read_ges_catalog(tmp_path / "a" / "catalog.fits")
    assert set(catalog.loc[catalog["ges_type"] == "GE_SD_BM", "star_id"]) == set(bench["star_id"])
    calibration = load_table(tmp_path / "a" / "calibration_stars.parquet")
    assert calibration["star_id"].tolist() == bench["star_id"].tolist()
    np.testing.assert_array_equal(calibration["e_teff"], usable["e_teff"])
    assert calibration["reference"].str.len().min() > 20
    manifest = load_table(tmp_path / "a" / "manifest.parquet")
    assert set(bench["star_id"]) <= set(manifest["star_id"])

    stars = gaia_eso_stars(str(tmp_path / "a" / "catalog.fits"), ["teff", "logg", "fe_h"],
                           {"snr_min": 0}, {"mg": 7.53, "al": 6.37},
                           calibration_path=str(tmp_path / "a" / "calibration_stars.parquet"))
    split = stars.set_index("star_id")["split"]
    assert (split[bench["star_id"]] == "calibration").all()
    assert (split.drop(bench["star_id"]) != "calibration").all()

    cfg["benchmark_stars"] = {"table": None, "snr": 180.0}
    simulate_gaia_eso(cfg, tmp_path / "b", tmp_path / "b.parquet", log=lambda m: None)
    field = truth[truth["population"] != "benchmark"].drop(columns="name")
    pd.testing.assert_frame_equal(field, load_table(tmp_path / "b.parquet"), check_dtype=False)
    assert load_table(tmp_path / "b" / "calibration_stars.parquet").empty
