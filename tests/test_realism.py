"""Each realism knob of the simulator changes the spectra (or labels) the way its schema
description says, and by the expected amount where the physics gives one."""
import numpy as np
import pandas as pd
import pytest

from starlabels.config import section
from starlabels.simulate import instrument as I
from starlabels.simulate.catalogue import observe_catalog_labels
from starlabels.simulate.physics import (Broadening, Exposure, ForwardModel, Instrument,
                                         load_linelist, load_telluric_lines, microturbulence_kms)
from starlabels.simulate.stars import draw_star_nuisances, macroturbulence_relation
from starlabels.simulate.survey import draw_labels, raw_counts
from starlabels.spectral import C_KMS, FWHM_TO_SIGMA, fit_continuum

LINES = load_linelist()
SUN = dict(teff=5777.0, logg=4.44, fe_h=0.0, mg_fe=0.0, al_fe=0.0)
IDEAL = section("simulate", {"realism": "ideal"})
REAL = section("simulate", {})


def knob(**changes):
    """The ideal simulate section with some knobs set (nested keys as 'a.b')."""
    cfg = section("simulate", {"realism": "ideal"})
    for key, value in changes.items():
        node = cfg
        *path, last = key.split("__")
        for part in path:
            node = node[part]
        node[last] = value
    return cfg


def one_line(wavelength, species="Fe I", log_gf=-3.5, chi=3.0):
    lines = pd.DataFrame({"wavelength_air": [wavelength], "species": [species],
                          "excitation_potential": [chi], "log_gf": [log_gf], "broadening": [1.0]})
    lines["element"] = lines["species"].str.split().str[0]
    lines["ion"] = lines["species"].str.split().str[1].map({"I": 1, "II": 2})
    return lines


def velocity_variance(wavelength, flux, centre):
    """Second moment (km/s)² of a weak absorption line's depth profile about its centre."""
    v = (wavelength / centre - 1.0) * C_KMS
    near = np.abs(v) < 150
    d = np.clip(1.0 - flux[near], 0, None)
    mean = np.sum(d * v[near]) / d.sum()
    return np.sum(d * (v[near] - mean) ** 2) / d.sum()


# ---------------------------------------------------------------- stars

def test_microturbulence_scatters_around_the_relation_and_strengthens_saturated_lines():
    truth = draw_labels(4000, np.random.default_rng(1), "ges_field", IDEAL["stars"])
    draw_star_nuisances(truth, np.random.default_rng(2), IDEAL)
    relation = np.array([microturbulence_kms(t, g) for t, g in zip(truth.teff, truth.logg)])
    np.testing.assert_array_equal(truth["vmic_kms"], relation)      # knob off: the relation
    draw_star_nuisances(truth, np.random.default_rng(2),
                        knob(stars__microturbulence_scatter_kms=0.25))
    assert np.std(truth["vmic_kms"] - relation) == pytest.approx(0.25, rel=0.05)
    # a saturated line's equivalent width grows with ξ (the curve of growth's flat part:
    # W ∝ v_D √ln τ₀), a weak one's does not
    for log_gf, gain in ((-1.5, 1.15), (-4.5, None)):
        model = ForwardModel([Instrument("x", 20000, np.arange(5990.0, 6010.0, 0.02))],
                             one_line(6000.0, log_gf=log_gf, chi=2.5))
        ew = [np.sum(1 - model.flux(SUN, star=Broadening(vmic_kms=v))) for v in (0.8, 1.8)]
        if gain:
            assert ew[1] > gain * ew[0]
        else:
            assert ew[1] == pytest.approx(ew[0], rel=0.02)


def test_rotation_widens_a_weak_line_by_the_rotation_profiles_second_moment():
    # Gray's profile with ε = 0.6 has ⟨x²⟩ = [(1−ε)/4 + 2ε/15] / [(1−ε) + 2ε/3] = 0.225:
    # a weak line's velocity variance grows by 0.225 v sin i²
    w0 = 6000.0
    model = ForwardModel([Instrument("hi", 2_000_000, np.arange(5995.0, 6005.0, 0.002))],
                         one_line(w0), sampling_kms=0.25)
    base = velocity_variance(model.instruments[0].wavelength, model.flux(SUN), w0)
    for vsini in (8.0, 20.0):
        spun = model.flux(SUN, star=Broadening(vsini_kms=vsini))
        grown = velocity_variance(model.instruments[0].wavelength, spun, w0) - base
        assert grown == pytest.approx(0.225 * vsini ** 2, rel=0.03)
    # the knob: cool stars rotate slowly, stars above the Kraft break faster
    truth = draw_labels(6000, np.random.default_rng(3), "ges_field", IDEAL["stars"])
    draw_star_nuisances(truth, np.random.default_rng(4), REAL)
    hot = truth.teff > REAL["stars"]["rotation"]["kraft_break_teff"]
    assert truth.loc[~hot, "vsini_kms"].mean() == pytest.approx(3.0, rel=0.1)
    assert truth.loc[hot, "vsini_kms"].mean() > 3 * truth.loc[~hot, "vsini_kms"].mean()
    draw_star_nuisances(truth, np.random.default_rng(4), IDEAL)
    assert (truth["vsini_kms"] == 0).all()


def test_macroturbulence_widens_a_weak_line_by_its_gaussian_variance():
    # isotropic Gaussian macroturbulence exp(−(v/ζ)²) has variance ζ²/2
    w0 = 6000.0
    model = ForwardModel([Instrument("hi", 2_000_000, np.arange(5995.0, 6005.0, 0.002))],
                         one_line(w0), sampling_kms=0.25)
    base = velocity_variance(model.instruments[0].wavelength, model.flux(SUN), w0)
    wide = model.flux(SUN, star=Broadening(vmac_kms=5.0))
    grown = velocity_variance(model.instruments[0].wavelength, wide, w0) - base
    assert grown == pytest.approx(5.0 ** 2 / 2, rel=0.03)
    truth = draw_labels(4000, np.random.default_rng(5), "ges_field", IDEAL["stars"])
    draw_star_nuisances(truth, np.random.default_rng(6), REAL)
    giants = truth.population == "giant"
    assert truth.loc[giants, "vmac_kms"].mean() > truth.loc[~giants, "vmac_kms"].mean()
    resid = truth["vmac_kms"] - macroturbulence_relation(truth.teff, truth.logg)
    assert np.std(resid[truth["vmac_kms"] > 0.5]) == pytest.approx(0.5, rel=0.15)


def test_electron_donors_let_magnesium_weaken_ionised_lines():
    model = {d: ForwardModel([Instrument("HR10", 19800, np.arange(5420.0, 5430.0, 0.05))],
                             LINES, electron_donors=d) for d in (False, True)}
    fe2 = 5425.26                                          # Fe II: τ ∝ 1/Pe
    star = dict(SUN, teff=5000.0, logg=3.0)
    i = np.argmin(np.abs(model[True].wavelength - fe2))

    def depth(m, mg):
        return 1 - m.flux(dict(star, mg_fe=mg))[i]

    assert depth(model[False], 0.4) == pytest.approx(depth(model[False], -0.2), abs=1e-12)
    assert depth(model[True], 0.4) < depth(model[True], -0.2) - 0.002


# ---------------------------------------------------------------- populations

def test_al_fe_has_its_own_relation_and_scatter():
    labels = draw_labels(20000, np.random.default_rng(7), "ges_field", REAL["stars"])
    disc = labels[labels.chemical_population == "disc"]
    disc = disc[(disc.al_fe > -0.39) & (disc.al_fe < 0.59) & (disc.mg_fe > -0.29)
                & (disc.fe_h > -1.49) & (disc.mg_fe < 0.49)]
    a = np.column_stack([disc.mg_fe, disc.fe_h, np.ones(len(disc))])
    coef, *_ = np.linalg.lstsq(a, disc.al_fe, rcond=None)
    assert coef[0] == pytest.approx(0.5, abs=0.05) and coef[1] == pytest.approx(0.1, abs=0.03)
    assert np.std(disc.al_fe - a @ coef) == pytest.approx(0.08, rel=0.1)
    # [Mg/Fe] explains well under half of [Al/Fe]'s variance (it explained most before)
    assert np.corrcoef(disc.mg_fe, disc.al_fe)[0, 1] ** 2 < 0.5


def test_al_rich_mg_poor_stars_are_metal_poor_giants_with_stronger_al_lines():
    labels = draw_labels(20000, np.random.default_rng(8), "ges_field", REAL["stars"])
    rich = labels[labels.chemical_population == "al_rich_mg_poor"]
    assert len(rich) / len(labels) == pytest.approx(0.015, rel=0.2)
    assert (rich.population == "giant").all() and rich.fe_h.between(-1.4, -0.6).all()
    field = labels[(labels.chemical_population == "disc") & labels.fe_h.between(-1.4, -0.6)]
    assert rich.al_fe.mean() > field.al_fe.mean() + 0.4
    assert rich.mg_fe.mean() < field.mg_fe.mean() - 0.1
    none = draw_labels(5000, np.random.default_rng(8), "dwarfs", REAL["stars"])
    assert (none.chemical_population == "disc").all()       # only populations with giants
    # at fixed Mg and Teff/log g, the Al-rich star's Al I 8773 line is deeper
    model = ForwardModel([Instrument("HR21", 16200, np.arange(8765.0, 8780.0, 0.05))], LINES)
    star = dict(teff=4600.0, logg=1.8, fe_h=-1.0, mg_fe=0.1)
    i = np.argmin(np.abs(model.wavelength - 8773.90))
    normal, rich_flux = (model.flux(dict(star, al_fe=a)) for a in (0.2, 0.8))
    assert 1 - rich_flux[i] > (1 - normal[i]) + 0.03


def test_class_fractions_are_drawn_per_seed_from_the_prior():
    drawn = []
    for seed in range(6):
        labels = draw_labels(3000, np.random.default_rng(seed), "giant_candidates",
                             REAL["stars"], np.random.default_rng([seed, 1]))
        drawn.append(labels.population.value_counts(normalize=True).get("giant", 0.0))
    assert np.std(drawn) > 0.03                       # Dir(40 × mean): σ(giant) ≈ 0.07
    assert np.mean(drawn) == pytest.approx(0.65, abs=0.08)
    fixed = [draw_labels(3000, np.random.default_rng(s), "giant_candidates", IDEAL["stars"])
             .population.value_counts(normalize=True)["giant"] for s in range(6)]
    assert np.std(fixed) < 0.02                       # binomial noise only


# ---------------------------------------------------------------- exposure and instrument

def test_residual_rv_and_fibre_resolution_are_drawn_per_exposure():
    rng = np.random.default_rng(9)
    draws = [I.draw_conditions(rng, REAL) for _ in range(3000)]
    assert np.std([d.residual_rv_kms for d in draws]) == pytest.approx(0.5, rel=0.05)
    assert np.std([d.exposure.resolution_scale for d in draws]) == pytest.approx(0.03, rel=0.05)
    ideal = I.draw_conditions(rng, IDEAL)
    assert ideal.residual_rv_kms == 0 and ideal.exposure == Exposure()


def test_residual_rv_shifts_the_lines_against_the_archive_rv(tmp_path):
    from starlabels.simulate import survey

    survey.prepare_workers(knob(observing__residual_rv_kms=3.0), 1, tmp_path)
    row = dict(SUN, rv_kms=10.0, vmic_kms=1.0, vsini_kms=0.0, vmac_kms=0.0)
    model = survey._WORKER_STATE["model"]
    w = model.instruments[0].wavelength
    at = survey._observe_star(row, I.Conditions(residual_rv_kms=0.0))[0]
    off = survey._observe_star(row, I.Conditions(residual_rv_kms=2.0))[0]
    lags = np.arange(-40, 41)
    cc = [np.sum((1 - at[50:-50]) * (1 - np.roll(off, -k)[50:-50])) for k in lags]
    shift = lags[int(np.argmax(cc))] * (w[1] - w[0])
    assert shift == pytest.approx(5450 * 2.0 / C_KMS, abs=w[1] - w[0])


def _lsf_variance(model, w0, exposure):
    w = model.instruments[0].wavelength
    return velocity_variance(w, model.flux(SUN, exposure=exposure), w0)


def test_resolution_falls_towards_the_setups_ends_and_with_the_fibre_scale():
    wave = np.arange(5300.0, 5700.0, 0.02)
    lines = pd.concat([one_line(5500.0), one_line(5696.0)], ignore_index=True)
    model = ForwardModel([Instrument("s", 20000, wave)], lines)
    sharp = ForwardModel([Instrument("s", 1_000_000, wave)], lines)
    intrinsic = {w0: _lsf_variance(sharp, w0, Exposure()) for w0 in (5500.0, 5696.0)}

    def lsf(w0, exposure):
        return _lsf_variance(model, w0, exposure) - intrinsic[w0]

    expected = (C_KMS / 20000 * FWHM_TO_SIGMA) ** 2          # a Gaussian LSF's variance
    assert lsf(5500.0, Exposure()) == pytest.approx(expected, rel=0.03)
    taper = Exposure(resolution_taper=0.2)
    x = 2 * (5696.0 - wave[0]) / (wave[-1] - wave[0]) - 1
    # σ_LSF ∝ 1/R: variance grows as 1/(1 − t x²)² at the end, unchanged at the centre
    assert lsf(5696.0, taper) / lsf(5696.0, Exposure()) == pytest.approx(
        1 / (1 - 0.2 * x ** 2) ** 2, rel=0.03)
    assert lsf(5500.0, taper) == pytest.approx(lsf(5500.0, Exposure()), rel=0.01)
    assert lsf(5500.0, Exposure(resolution_scale=0.9)) / lsf(5500.0, Exposure()) == \
        pytest.approx(1 / 0.81, rel=0.03)


def _effects(cfg, wavelength, resolution=16200.0, seed=0):
    return I.detector_effects(wavelength, resolution, I.draw_conditions(
        np.random.default_rng(seed), cfg), cfg, np.random.default_rng(seed + 1),
        I.load_sky_lines())


def test_flat_ripple_survives_continuum_normalisation():
    wave = np.arange(5334.0, 5624.0, 0.05)
    assert _effects(IDEAL, wave).throughput is None
    cfg = knob(instrument__flat_ripple={"amplitude": 0.01, "period_angstrom": [10.0, 40.0]})
    ripple = _effects(cfg, wave).throughput
    assert 0 < np.max(np.abs(ripple - 1)) <= 0.01
    cont = fit_continuum(wave, ripple, np.ones_like(wave), order=3)
    resid = ripple / cont - 1
    assert np.std(resid) > 0.8 * np.std(ripple - 1)      # the order-3 fit cannot follow it
    spectrum = np.abs(np.fft.rfft(ripple - ripple.mean()))
    period = (wave[-1] - wave[0]) / np.argmax(spectrum) * (wave.size - 1) / wave.size
    assert 10.0 <= period <= 40.0 * 1.1


def test_high_order_blaze_shapes_survive_the_continuum_fit():
    wave = np.arange(8479.0, 9006.0, 0.05)
    cfg = knob(instrument__continuum_high_order={"amplitude": 0.004, "lowest_degree": 4,
                                                  "max_degree": 8})
    shape = _effects(cfg, wave).throughput
    assert np.sqrt(np.mean((shape - 1) ** 2)) == pytest.approx(0.004, rel=1e-6)
    cont = fit_continuum(wave, shape, np.ones_like(wave), order=3, iterations=1)
    assert np.std(shape / cont - 1) > 0.9 * 0.004        # Chebyshev degrees ≥ 4: orthogonal


def test_read_noise_raises_the_noise_at_low_counts_only():
    wave = np.arange(5334.0, 5624.0, 0.05)
    flux = np.ones(wave.size)
    flux[::10] = 0.05                                     # deep line cores: few photons
    snr = 20.0
    plain = raw_counts(wave, flux, snr, np.random.default_rng(1))[1]
    read = raw_counts(wave, flux, snr, np.random.default_rng(1),
                      effects=I.DetectorEffects(read_noise_electrons=15.0))[1]
    continuum = flux == 1
    # S/N at the continuum stays the catalogue's; in the cores σ grows as sqrt(1 + r²/(n f c))
    np.testing.assert_allclose(read[continuum] / plain[continuum], 1.0, rtol=0.06)
    n = 0.5 * (snr ** 2 + np.sqrt(snr ** 4 + 4 * snr ** 2 * 15.0 ** 2))
    ratio = read[~continuum] / plain[~continuum]
    assert np.median(ratio) == pytest.approx(snr / np.sqrt(n) * np.sqrt(1 + 225 / (n * 0.05)),
                                             rel=0.1)
    assert np.median(ratio) > 1.5


def test_correlated_noise_correlates_neighbouring_pixels_as_configured():
    wave = np.arange(0, 40000) * 0.05 + 5000.0
    flux = np.ones(wave.size)
    resid = {}
    for sigma_px in (0.0, 0.8):
        rng = np.random.default_rng(3)
        counts, sigma, qual = raw_counts(wave, flux, 50.0, rng, effects=I.DetectorEffects(
            correlation_pixels=sigma_px), extra_rng=np.random.default_rng(4))
        clean = raw_counts(wave, flux, 1e12, np.random.default_rng(3))[0]  # expected counts
        r = ((counts - clean) / sigma)[qual == 0]
        resid[sigma_px] = r
    assert abs(np.corrcoef(resid[0.0][:-1], resid[0.0][1:])[0, 1]) < 0.02
    rho = I.noise_autocorrelation(0.8)
    assert np.corrcoef(resid[0.8][:-1], resid[0.8][1:])[0, 1] == pytest.approx(rho[1], abs=0.02)
    assert np.std(resid[0.8]) == pytest.approx(1.0, rel=0.02)   # σ column stays per pixel


def test_sky_lines_and_their_residuals_appear_where_the_sky_emits():
    hr10 = np.arange(5334.0, 5624.0, 0.05)
    hr21 = np.arange(8479.0, 9006.0, 0.05)
    assert _effects(IDEAL, hr21).sky_electrons is None
    cfg = knob(observing__sky={"peak_electrons": 400.0, "subtraction_residual": 0.05,
                               "subtraction_shift_pixels": 0.1})
    e10, e21 = _effects(cfg, hr10, 19800.0), _effects(cfg, hr21)
    near = np.abs(hr10 - 5577.34) < 1.0
    assert e10.sky_electrons[near].max() == pytest.approx(4.0 * 400.0, rel=0.05)   # [O I]
    assert e10.sky_electrons[~near].max() < 1e-3
    assert e21.sky_electrons[np.abs(hr21 - 8827.10) < 0.3].max() > 300                # OH
    assert np.any(e21.sky_residual_electrons != 0)
    # sky photons add noise at the sky lines, not elsewhere
    flux = np.ones(hr10.size)
    with_sky = raw_counts(hr10, flux, 30.0, np.random.default_rng(1), effects=e10)[1]
    without = raw_counts(hr10, flux, 30.0, np.random.default_rng(1))[1]
    assert with_sky[near].max() > 1.5 * without[near].max()
    np.testing.assert_allclose(with_sky[~near & (np.abs(hr10 - 5577.34) > 3)],
                               without[~near & (np.abs(hr10 - 5577.34) > 3)], rtol=1e-9)


def test_telluric_lines_appear_only_in_hr21_and_stay_in_the_observers_frame():
    model = ForwardModel([Instrument("HR10", 19800, np.arange(5334.0, 5624.0, 0.05)),
                          Instrument("HR21", 16200, np.arange(8479.0, 9006.0, 0.05))], LINES,
                         telluric=load_telluric_lines())
    wet = Exposure(telluric_strength=1.5)
    dry10, dry21 = model.flux_per_setup(SUN)
    wet10, wet21 = model.flux_per_setup(SUN, exposure=wet)
    np.testing.assert_array_equal(wet10, dry10)
    assert np.min(wet21 / dry21) < 0.95
    band = model.instruments[1].wavelength > 8920
    assert np.mean(1 - wet21[band] / dry21[band]) > 3 * np.mean(1 - wet21[~band] / dry21[~band])
    # a star's RV moves its own lines, not the atmosphere's: a line-free star seen at two RVs
    # shows the same telluric spectrum
    bare = ForwardModel(model.instruments, LINES.iloc[:0], telluric=load_telluric_lines())
    np.testing.assert_allclose(bare.flux_per_setup(SUN, 40.0, exposure=wet)[1],
                               bare.flux_per_setup(SUN, -30.0, exposure=wet)[1], atol=2e-4)
    assert np.min(bare.flux_per_setup(SUN, 40.0, exposure=wet)[1]) < 0.95


def test_plate_wavelength_distortion_is_smooth_shared_and_of_the_configured_size(tmp_path):
    from starlabels.artifacts import load_table
    from starlabels.io.marvels import read_marvels_plate
    from starlabels.simulate.survey import simulate_marvels

    wave = np.arange(5000.0, 5700.0, 0.12)
    cfg = knob(instrument__plate_wavelength_distortion={"amplitude_kms": 1.0, "degree": 3})
    distorted = I.wavelength_distortion(wave, cfg, np.random.default_rng(1))
    dv = (distorted / wave - 1) * C_KMS
    assert np.sqrt(np.mean(dv ** 2)) == pytest.approx(1.0, rel=1e-6)
    x = np.linspace(-1, 1, wave.size)
    cheb = np.polynomial.chebyshev
    np.testing.assert_allclose(cheb.chebval(x, cheb.chebfit(x, dv, 3)), dv, atol=1e-6)  # smooth
    np.testing.assert_array_equal(I.wavelength_distortion(wave, IDEAL, np.random.default_rng(1)),
                                  wave)
    sim = dict(cfg, n_dwarfs=6, n_calibration=0, n_giant_candidates=6, stars_per_plate=4,
               setups=[{"name": "MARVELS", "resolution": 11000, "start": 5000.0, "end": 5700.0,
                        "step": 0.25}])
    simulate_marvels(sim, tmp_path / "m", tmp_path / "m.parquet", log=lambda m: None)
    plates = [read_marvels_plate(p) for p in
              sorted(load_table(tmp_path / "m" / "manifest.parquet")["path"])]
    for spectra in plates:                      # every beam of a plate shares its solution
        for s in spectra[1:]:
            np.testing.assert_array_equal(s.wavelength, spectra[0].wavelength)
    assert not np.array_equal(plates[0][0].wavelength, plates[1][0].wavelength)


# ---------------------------------------------------------------- catalogue labels

@pytest.fixture(scope="module")
def population():
    truth = draw_labels(20000, np.random.default_rng(11), "ges_field", IDEAL["stars"])
    truth["snr"] = np.exp(np.random.default_rng(12).normal(np.log(70), 0.5, len(truth)))
    return truth


def _catalogue(truth, **changes):
    cfg = knob(**changes)
    t = truth.copy()
    cat = observe_catalog_labels(t, np.random.default_rng(13), cfg["label_errors"],
                                 cfg["catalogue"], np.random.default_rng(14))
    return t, cat


def test_catalogue_errors_follow_the_star(population):
    _, flat = _catalogue(population)
    _, star = _catalogue(population, catalogue__errors_follow_star=True)
    low = population.snr < 40
    assert abs(flat.e_teff[low].mean() - flat.e_teff[~low].mean()) < 2.0
    assert star.e_teff[low].mean() > star.e_teff[~low].mean() + 10.0
    giants = population.logg < 3.5
    assert star.e_logg[giants].mean() > star.e_logg[~giants].mean()
    lo, hi = REAL["label_errors"]["teff"]
    assert star.e_teff.between(lo, hi).all()
    # the errors are what the catalogue scatter really is
    z = (star.teff - population.teff) / star.e_teff
    assert np.std(z) == pytest.approx(1.0, rel=0.03)


def test_teff_and_logg_errors_are_correlated(population):
    for rho in (0.0, 0.5):
        _, cat = _catalogue(population, catalogue__teff_logg_error_correlation=rho)
        zt = (cat.teff - population.teff) / cat.e_teff
        zg = (cat.logg - population.logg) / cat.e_logg
        assert np.corrcoef(zt, zg)[0, 1] == pytest.approx(rho, abs=0.03)


def test_systematic_offsets_depend_on_gravity_and_temperature(population):
    _, cat = _catalogue(population, catalogue__systematic_offsets={
        "teff": [25.0, 0.0], "logg": [0.0, 0.1], "fe_h": [0.0, 0.0], "mg_fe": [0.0, 0.0],
        "al_fe": [0.0, 0.0]})
    d_teff = cat.teff - population.teff
    d_logg = cat.logg - population.logg
    giants, dwarfs = population.logg < 2.5, population.logg > 4.3
    expected = 25.0 * (population.logg[giants].mean() - population.logg[dwarfs].mean())
    assert d_teff[dwarfs].mean() - d_teff[giants].mean() == pytest.approx(expected, abs=4.0)
    cool, hot = population.teff < 4800, population.teff > 6200
    assert d_logg[cool].mean() - d_logg[hot].mean() == pytest.approx(
        0.1 * (population.teff[hot].mean() - population.teff[cool].mean()) / 1000, abs=0.01)


def test_catastrophic_outliers_are_few_large_and_marked(population):
    t, cat = _catalogue(population, catalogue__outlier_fraction=0.01)
    out = t["catalogue_outlier"].to_numpy()
    assert out.mean() == pytest.approx(0.01, rel=0.2)
    d = np.abs(cat.teff - population.teff)
    assert (d[out] > 250).all() and np.median(d[~out]) < 60
    d_logg = (cat.logg - population.logg)[out] * np.sign((cat.teff - population.teff)[out])
    assert (d_logg > 0).mean() > 0.9                          # log g moves with Teff


# ---------------------------------------------------------------- repeat visits

def test_repeat_visits_are_drawn_for_the_configured_fraction():
    truth = draw_labels(5000, np.random.default_rng(15), "ges_field", IDEAL["stars"])
    draw_star_nuisances(truth, np.random.default_rng(16), REAL)
    repeated = truth.n_visits > 1
    assert repeated.mean() == pytest.approx(0.1, rel=0.15)
    assert set(truth.loc[repeated, "n_visits"]) == {2, 3}
    draw_star_nuisances(truth, np.random.default_rng(16), IDEAL)
    assert (truth.n_visits == 1).all()


def test_repeat_visits_get_independent_noise_rv_and_fibre(tmp_path):
    from starlabels.artifacts import load_table
    from starlabels.io.gaia_eso import read_ges_spectrum
    from starlabels.simulate.survey import simulate_gaia_eso

    # field stars only: the benchmark stars are observed once whatever repeat_fraction says
    cfg = dict(REAL, n_stars=3, defect_fraction=0.0, broken_file_fraction=0.0,
               benchmark_stars={"table": None, "snr": 150.0},
               observing=dict(REAL["observing"], repeat_fraction=1.0, residual_rv_kms=2.0),
               setups=[{"name": "HR10", "resolution": 19800, "start": 5334.0, "end": 5624.0,
                        "step": 0.1}])
    simulate_gaia_eso(cfg, tmp_path / "g", tmp_path / "t.parquet", log=lambda m: None)
    truth = load_table(tmp_path / "t.parquet")
    manifest = load_table(tmp_path / "g" / "manifest.parquet")
    assert (truth.n_visits >= 2).all() and len(manifest) == truth.n_visits.sum()
    star = truth.star_id.iloc[0]
    files = manifest[manifest.star_id == star].sort_values("visit")
    a, b = (read_ges_spectrum(p) for p in files.path.iloc[:2])
    assert a.rv_kms == b.rv_kms                       # the archive reports the star's RV
    fa, fb = a.flux / np.median(a.flux), b.flux / np.median(b.flux)
    assert not np.allclose(fa, fb, rtol=1e-3)
