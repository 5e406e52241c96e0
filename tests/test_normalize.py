"""Tests of the normalize stage on analytic spectra: Gaussian lines on a tilted blaze + noise."""
from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import curve_fit

from starlabels import artifacts
from starlabels.grid import WavelengthGrid
from starlabels.io.spectrum import Spectrum, SpectrumFormatError
from starlabels.batch import RejectSpectrum
from starlabels.normalize import normalize_config, normalize_star, normalize_survey
from starlabels.spectral import (C_KMS, MASKED_FLUX, air_to_vacuum, doppler_shift, grid_segments,
                                 resample_flux)

GRID = WavelengthGrid.from_config([
    {"name": "HR10", "start": 5400.0, "end": 5460.0, "step": 0.05},
    {"name": "HR21", "start": 8480.0, "end": 8560.0, "step": 0.05},
])
# rest-frame air wavelengths of the test lines per setup, and the range each setup observes
LINES = {"HR10": (5410.0, 5425.3, 5440.1, 5452.7), "HR21": (8498.02, 8520.0, 8542.09)}
NATIVE_RANGE = {"HR10": (5396.0, 5464.0), "HR21": (8476.0, 8564.0)}
LINE_DEPTH, LINE_SIGMA = 0.5, 0.15
NATIVE_STEP = 0.04


def line_profile(wavelength_air_rest: np.ndarray, setup: str) -> np.ndarray:
    """The true normalised flux: Gaussian absorption lines on a continuum of 1."""
    profile = np.ones_like(wavelength_air_rest, dtype=np.float64)
    for centre in LINES[setup]:
        profile -= LINE_DEPTH * np.exp(-0.5 * ((wavelength_air_rest - centre) / LINE_SIGMA) ** 2)
    return profile


def true_on_grid(setup: str) -> np.ndarray:
    """The true normalised flux averaged over each grid pixel of the segment ``setup``."""
    wavelength = dict((n, w) for n, w, _ in grid_segments(GRID))[setup]
    fine = np.arange(wavelength[0] - 1.0, wavelength[-1] + 1.0, 0.001)
    return resample_flux(fine, line_profile(fine, setup), wavelength)[0]


def make_spectrum(star_id: str, setup: str, *, rv_kms: float = 0.0, header_rv: float | None = None,
                  snr: float = 100.0, seed: int = 0, medium: str = "air",
                  throughput: float = 1000.0, tilt: float = 0.3, spectrum_id: str | None = None,
                  path: str = "") -> Spectrum:
    """A spectrum as an archive would give it: observed frame, blaze × lines, Gaussian noise.

    ``rv_kms`` is the star's true velocity; ``header_rv`` what the file claims (default: true).
    """
    rng = np.random.default_rng(seed)
    lo, hi = NATIVE_RANGE[setup]
    wavelength_air = np.arange(lo, hi, NATIVE_STEP)
    x = (wavelength_air - lo) / (hi - lo) * 2.0 - 1.0
    blaze = throughput * (1.0 + tilt * x - 0.4 * x ** 2)
    rest = doppler_shift(wavelength_air, -rv_kms)
    sigma = blaze / snr
    flux = blaze * line_profile(rest, setup) + sigma * rng.standard_normal(wavelength_air.size)
    wavelength = wavelength_air if medium == "air" else air_to_vacuum(wavelength_air)
    return Spectrum(spectrum_id=spectrum_id or f"{star_id}_{setup}", star_id=star_id, setup=setup,
                    wavelength=wavelength, flux=flux, ivar=1.0 / sigma ** 2,
                    mask=np.zeros(wavelength.size, bool), medium=medium,
                    rv_kms=rv_kms if header_rv is None else header_rv, path=path)


def both_setups(star_id: str, seed: int = 0, **kw) -> list[Spectrum]:
    return [make_spectrum(star_id, "HR10", seed=seed, **kw),
            make_spectrum(star_id, "HR21", seed=seed + 1000, **kw)]


def segment(array: np.ndarray, name: str) -> np.ndarray:
    return array[GRID.segment_slices[name]]


def line_centre(flux: np.ndarray, name: str, rest: float) -> float:
    """Centre of a Gaussian fitted to the line depth within ±1 Å of ``rest``."""
    wavelength = dict((n, w) for n, w, _ in grid_segments(GRID))[name]
    near = np.abs(wavelength - rest) < 1.2
    def model(w, a, mu, s):
        return a * np.exp(-0.5 * ((w - mu) / s) ** 2)
    w_near = wavelength[near]
    depth = 1.0 - segment(flux, name)[near]
    (a, mu, s), _ = curve_fit(model, w_near, depth, p0=(depth.max(), w_near[np.argmax(depth)], 0.2))
    return float(mu)


# ---------------------------------------------------------------- normalize_star

def test_normalisation_recovers_the_true_normalised_flux_within_noise():
    flux, ivar, info = normalize_star(both_setups("star", seed=1), GRID, {})
    assert flux.shape == ivar.shape == (GRID.n_pixels,)
    for name in ("HR10", "HR21"):
        resid = segment(flux, name) - true_on_grid(name)
        chi = resid * np.sqrt(segment(ivar, name))
        # noise per grid pixel ≈ 1/(100·sqrt(1.25)) = 0.009; the continuum is good to ≪ that
        assert abs(np.median(resid)) < 0.002
        assert np.std(resid) < 0.0095
        # ivar propagated: normalised residuals have unit scatter (resampling makes it ~0.85)
        assert 0.75 < np.std(chi) < 1.15
    assert 100.0 < info["snr"] < 125.0          # S/N 100 per 0.04 Å → ~112 per 0.05 Å pixel
    assert info["masked_fraction"] == 0.0
    assert info["n_spectra"] == 2 and info["setups"] == ["HR10", "HR21"]
    assert info["dropped"] == []


def test_rest_frame_shift_puts_lines_back_at_rest_wavelength():
    rv = 50.0
    shift = 5425.3 * rv / C_KMS                 # 0.9 Å: 18 pixels
    spectra = both_setups("star", rv_kms=rv)
    flux, _, info = normalize_star(spectra, GRID, {})
    assert info["rv_used"] == rv
    for name, rest in (("HR10", 5425.3), ("HR21", 8520.0)):
        assert line_centre(flux, name, rest) == pytest.approx(rest, abs=0.01)
    # without rest-framing the line stays where it was observed
    observed, _, info = normalize_star(spectra, GRID, {"rest_frame": False})
    assert info["rv_used"] == 0.0
    assert line_centre(observed, "HR10", 5425.3 + shift) == pytest.approx(
        doppler_shift(5425.3, rv), abs=0.01)


def test_catalogue_rv_wins_over_the_header_and_nan_falls_back():
    rv = 50.0
    # the header RV is missing (NaN): the catalogue value is used
    spectra = both_setups("star", rv_kms=rv, header_rv=math.nan)
    flux, _, info = normalize_star(spectra, GRID, {}, rv_kms=rv)
    assert info["rv_used"] == rv
    assert line_centre(flux, "HR10", 5425.3) == pytest.approx(5425.3, abs=0.01)
    # the header claims 0 but the catalogue knows better
    spectra = both_setups("star", rv_kms=rv, header_rv=0.0)
    flux, _, info = normalize_star(spectra, GRID, {}, rv_kms=rv)
    assert info["rv_used"] == rv
    assert line_centre(flux, "HR21", 8520.0) == pytest.approx(8520.0, abs=0.01)
    # a NaN catalogue value and a NaN header: no shift at all
    spectra = both_setups("star", rv_kms=0.0, header_rv=math.nan)
    _, _, info = normalize_star(spectra, GRID, {}, rv_kms=math.nan)
    assert info["rv_used"] == 0.0


def test_vacuum_input_lands_at_the_air_wavelength():
    air_flux, _, _ = normalize_star(both_setups("star", seed=5), GRID, {})
    vac_flux, _, _ = normalize_star(both_setups("star", seed=5, medium="vacuum"), GRID, {})
    for name, rest in (("HR10", 5440.1), ("HR21", 8542.09)):
        assert line_centre(vac_flux, name, rest) == pytest.approx(rest, abs=0.01)
    # same noise realisation, same pixels: the two agree to well below the noise
    assert np.max(np.abs(vac_flux - air_flux)) < 0.01
    # a grid declared in vacuum converts air spectra the other way
    vac_grid_flux, _, _ = normalize_star(both_setups("star", seed=5), GRID, {"medium": "vacuum"})
    assert line_centre(vac_grid_flux, "HR10", air_to_vacuum(5440.1)) == pytest.approx(
        air_to_vacuum(5440.1), abs=0.01)


def test_two_beams_coadd_to_higher_snr_without_continuum_steps():
    single_snr = 40.0
    beam_a = both_setups("star", seed=10, snr=single_snr)
    # the second beam: other throughput and blaze tilt, and a flagged stretch in HR10
    beam_b = both_setups("star", seed=20, snr=single_snr, throughput=450.0, tilt=-0.2)
    flagged = (beam_b[0].wavelength > 5428.0) & (beam_b[0].wavelength < 5436.0)
    beam_b[0].mask[flagged] = True
    flux_a, _, info_a = normalize_star(beam_a, GRID, {})
    flux_ab, ivar_ab, info_ab = normalize_star(beam_a + beam_b, GRID, {})
    assert info_ab["n_spectra"] == 4
    assert 1.3 < info_ab["snr"] / info_a["snr"] < 1.55          # ≈ sqrt(2)
    truth = true_on_grid("HR10")
    rms_a = np.std(segment(flux_a, "HR10") - truth)
    rms_ab = np.std(segment(flux_ab, "HR10") - truth)
    assert 1.25 < rms_a / rms_ab < 1.6
    # where beam B is flagged only beam A contributes: no jump of the continuum level
    wavelength = dict((n, w) for n, w, _ in grid_segments(GRID))["HR10"]
    inside = (wavelength > 5429.0) & (wavelength < 5435.0)
    resid = segment(flux_ab, "HR10") - truth
    assert abs(np.mean(resid[inside])) < 3 * rms_a / np.sqrt(inside.sum())
    # and there the ivar is that of one beam: about half of the coadd's
    ratio = np.median(segment(ivar_ab, "HR10")[inside]) / np.median(segment(ivar_ab, "HR10"))
    assert 0.4 < ratio < 0.6


def test_bad_pixels_are_masked_with_the_continuum_convention():
    spectra = both_setups("star", seed=3)
    hr10 = spectra[0]
    zeroed = (hr10.wavelength > 5420.0) & (hr10.wavelength < 5421.0)       # a dead detector run
    hr10.flux[zeroed] = 0.0
    nan_pixels = (hr10.wavelength > 5445.0) & (hr10.wavelength < 5445.5)
    hr10.flux[nan_pixels] = np.nan
    flux, ivar, info = normalize_star(spectra, GRID, {})
    wavelength = dict((n, w) for n, w, _ in grid_segments(GRID))["HR10"]
    masked = segment(ivar, "HR10") == 0
    for lo, hi in ((5420.0, 5421.0), (5445.0, 5445.5)):
        core = (wavelength > lo + 0.05) & (wavelength < hi - 0.05)
        assert masked[core].all()
        # only the pixels the bad run touches are lost (± one partly covered pixel)
        assert not masked[(wavelength > hi + 0.1) & (wavelength < hi + 1.0)].any()
    assert np.all(flux[ivar == 0] == MASKED_FLUX)
    assert np.all(np.isfinite(flux)) and np.all(ivar >= 0)
    assert info["masked_fraction"] == pytest.approx(np.mean(ivar == 0))
    assert 0 < info["masked_fraction"] < 0.02


def test_partial_coverage_masks_the_grid_edge():
    spectrum = make_spectrum("star", "HR10")
    short = spectrum.wavelength < 5455.0               # the grid segment runs to 5460
    spectrum = Spectrum(spectrum.spectrum_id, "star", "HR10", spectrum.wavelength[short],
                        spectrum.flux[short], spectrum.ivar[short], spectrum.mask[short])
    flux, ivar, info = normalize_star([spectrum, make_spectrum("star", "HR21")], GRID, {})
    wavelength = dict((n, w) for n, w, _ in grid_segments(GRID))["HR10"]
    assert np.all(segment(ivar, "HR10")[wavelength > 5455.0] == 0)
    assert np.all(segment(flux, "HR10")[wavelength > 5455.0] == MASKED_FLUX)
    assert np.all(segment(ivar, "HR10")[wavelength < 5454.9] > 0)


def _only(spectrum: Spectrum, keep: np.ndarray) -> Spectrum:
    return Spectrum(spectrum.spectrum_id, spectrum.star_id, spectrum.setup,
                    spectrum.wavelength[keep], spectrum.flux[keep], spectrum.ivar[keep],
                    spectrum.mask[keep])


@pytest.mark.parametrize("damage, reason", [
    ("nan", "all-NaN flux"),
    ("zero", "zero flux"),
    ("missing", "no coverage of grid segment HR21"),
    ("masked", r"masked fraction 0\.\d\d > 0\.25"),
    ("continuum", "continuum fit failed in segment HR21"),
    ("noivar", r"no valid pixels"),
])
def test_each_reject_reason(damage, reason):
    spectra = both_setups("bad", seed=7)
    hr10, hr21 = spectra
    if damage == "nan":
        spectra = [make_spectrum("bad", "HR10")]
        spectra[0].flux[:] = np.nan
    elif damage == "zero":
        spectra = [make_spectrum("bad", "HR10")]
        spectra[0].flux[:] = 0.0
    elif damage == "missing":
        spectra = [hr10]
    elif damage == "masked":
        hr10.mask[: int(0.8 * hr10.mask.size)] = True       # 0.8 · 1200/2801 ≈ 0.35 of the grid
    elif damage == "continuum":
        # three good pixels cannot carry a cubic
        keep = np.zeros(hr21.wavelength.size, bool)
        keep[[500, 501, 502]] = True
        spectra = [hr10, _only(hr21, keep)]
    elif damage == "noivar":
        spectra = [make_spectrum("bad", "HR10")]
        spectra[0].ivar[:] = 0.0
    with pytest.raises(RejectSpectrum, match=reason):
        normalize_star(spectra, GRID, {})


def test_dead_beam_is_dropped_but_the_star_is_kept():
    spectra = both_setups("star", seed=2)
    dead = make_spectrum("star", "HR10", spectrum_id="dead_beam")
    dead.wavelength[:] = np.nan                  # MARVELS writes dead beams all-NaN
    dead.flux[:] = np.nan
    # a setup the grid does not use (HR15N) is read but contributes nothing
    wavelength = np.arange(6450.0, 6800.0, 0.05)
    other = Spectrum("hr15n", "star", "HR15N", wavelength, np.full(wavelength.size, 5.0),
                     np.ones(wavelength.size), np.zeros(wavelength.size, bool))
    flux, ivar, info = normalize_star(spectra + [dead, other], GRID, {})
    assert info["n_spectra"] == 2 and info["setups"] == ["HR10", "HR21"]
    assert info["dropped"] == ["dead_beam: all-NaN flux",
                               "hr15n: not used (no usable overlap with the grid)"]
    assert np.all(np.isfinite(flux))


def test_config_errors_are_raised_early():
    with pytest.raises(ValueError, match="continuum.method"):
        normalize_config({"continuum": {"method": "spline"}})
    with pytest.raises(ValueError, match="medium"):
        normalize_config({"medium": "water"})
    assert normalize_config({"continuum": {"order": 5}})["continuum"]["sigma_low"] == 2.0


# ---------------------------------------------------------------- normalize_survey

def read_pickled(path: str) -> list[Spectrum]:
    """Test reader: a pickled list of Spectrum; anything else is a SpectrumFormatError."""
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh)
    except Exception as exc:
        raise SpectrumFormatError(path, f"not a pickled spectrum list ({exc})") from None
    return obj


def _write(path: Path, spectra) -> str:
    with open(path, "wb") as fh:
        pickle.dump(spectra, fh)
    return str(path)


def build_survey(tmp_path: Path) -> tuple[list[list[str]], pd.DataFrame, dict[str, str]]:
    """Units of files for good and crafted bad stars; returns units, catalogue, expected reasons."""
    units: list[list[str]] = []
    good = [f"good{i}" for i in range(8)]
    for i, star in enumerate(good):
        rv = 30.0 if star == "good3" else 0.0
        files = [_write(tmp_path / f"{star}_{s.setup}.pkl", [s])
                 for s in both_setups(star, seed=100 + 2 * i, rv_kms=rv,
                                      header_rv=math.nan if star == "good3" else None)]
        units.append(files)
    expected: dict[str, str] = {}

    nan_star = both_setups("bad_nan")
    for s in nan_star:
        s.flux[:] = np.nan
    units.append([_write(tmp_path / f"bad_nan_{s.setup}.pkl", [s]) for s in nan_star])
    expected["bad_nan"] = "all-NaN flux"

    zero_star = both_setups("bad_zero")
    for s in zero_star:
        s.flux[:] = 0.0
    units.append([_write(tmp_path / f"bad_zero_{s.setup}.pkl", [s]) for s in zero_star])
    expected["bad_zero"] = "zero flux"

    units.append([_write(tmp_path / "bad_missing_HR10.pkl",
                         [make_spectrum("bad_missing", "HR10")])])
    expected["bad_missing"] = "no coverage of grid segment HR21"

    masked = both_setups("bad_masked")
    masked[1].mask[: int(0.9 * masked[1].mask.size)] = True
    units.append([_write(tmp_path / f"bad_masked_{s.setup}.pkl", [s]) for s in masked])
    expected["bad_masked"] = "masked fraction"

    garbage = tmp_path / "garbage_HR10.pkl"
    garbage.write_bytes(b"SIMPLE  =  T / not really FITS")
    units.append([str(garbage)])
    expected["garbage_HR10.pkl"] = "unreadable: "

    # one unreadable file of a star: the file and the star (now missing HR10) are both rejected
    half = tmp_path / "bad_half_HR10.pkl"
    half.write_bytes(b"\x00" * 10)
    units.append([str(half), _write(tmp_path / "bad_half_HR21.pkl",
                                    [make_spectrum("bad_half", "HR21")])])
    expected["bad_half_HR10.pkl"] = "unreadable: "
    expected["bad_half"] = "no coverage of grid segment HR10"

    # a reader result that is not a list of spectra: any exception must become a reject
    units.append([_write(tmp_path / "weird.pkl", {"not": "spectra"})])
    expected["weird.pkl"] = "unreadable: "

    # a plate: several stars in one file, one of them not in the catalogue
    plate = (both_setups("plate_a", seed=300) + both_setups("stranger", seed=301)
             + both_setups("plate_b", seed=302))
    units.append([_write(tmp_path / "plate.pkl", plate)])
    expected["stranger"] = "not in catalogue"

    # good1 observed again in a later unit
    units.append([_write(tmp_path / "good1_again.pkl", both_setups("good1", seed=400))])

    stars = sorted(set(good) | {"bad_nan", "bad_zero", "bad_missing", "bad_masked", "bad_half",
                                "plate_a", "plate_b", "never_observed"})
    catalogue = pd.DataFrame({
        "star_id": stars,
        "teff": np.linspace(4500, 6500, len(stars)),
        "logg": np.linspace(1.5, 4.5, len(stars)),
        "split": ["train" if i % 3 else "valid" for i in range(len(stars))],
        "vrad": [30.0 if s == "good3" else np.nan for s in stars],
        "snr": np.arange(len(stars), dtype=float),         # collides with the computed snr
    })
    return units, catalogue, expected


def run_survey(tmp_path: Path, units, catalogue, threads: int, tag: str):
    lines: list[str] = []
    paths = {k: tmp_path / f"{tag}_{k}" for k in ("flux.npy", "ivar.npy", "table.parquet",
                                                  "rejects.parquet")}
    counts = normalize_survey(units, read_pickled, GRID, catalogue, {}, paths["flux.npy"],
                              paths["ivar.npy"], paths["table.parquet"],
                              paths["rejects.parquet"], threads=threads, log=lines.append,
                              metadata={"survey": "test"})
    return counts, paths, lines


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("survey")
    units, catalogue, expected = build_survey(tmp_path)
    one = run_survey(tmp_path, units, catalogue, threads=1, tag="t1")
    two = run_survey(tmp_path, units, catalogue, threads=2, tag="t2")
    return units, catalogue, expected, one, two


def test_survey_table_and_rejects_partition_the_input(survey):
    units, catalogue, expected, (counts, paths, lines), _ = survey
    table = artifacts.load_table(paths["table.parquet"])
    rejects = artifacts.load_table(paths["rejects.parquet"])
    accepted = [f"good{i}" for i in range(8)] + ["plate_a", "plate_b"]
    # unit order, then star order within a unit
    assert list(table["spectrum_id"]) == accepted
    assert list(table["star_id"]) == accepted
    assert list(table["row"]) == list(range(len(accepted)))
    assert set(table["spectrum_id"]).isdisjoint(rejects["spectrum_id"][
        ~rejects["reason"].str.startswith("duplicate")])
    # every crafted bad input is rejected for its reason, and nothing else is
    by_id = dict(zip(rejects["spectrum_id"], rejects["reason"]))
    for spectrum_id, reason in expected.items():
        assert by_id[spectrum_id].startswith(reason), (spectrum_id, by_id[spectrum_id])
    duplicate = rejects[rejects["reason"].str.startswith("duplicate")]
    assert list(duplicate["spectrum_id"]) == ["good1"]
    assert len(rejects) == len(expected) + 1
    assert set(rejects["stage"]) == {"normalize"}
    assert list(rejects.columns) == list(artifacts.empty_rejects().columns)
    # every file appears: in the table's files, or in a reject's path
    all_files = {p for unit in units for p in unit}
    listed = {p for col in (table["files"], rejects["path"]) for v in col for p in v.split(";")}
    assert all_files <= listed
    assert counts["n_accepted"] == len(accepted) and counts["n_rejected"] == len(rejects)
    assert counts["n_units"] == len(units)
    assert counts["n_catalogue_unobserved"] == 1          # never_observed
    assert counts["per_reason"]["unreadable"] == 3
    assert counts["per_reason"]["masked fraction > 0.25"] == 1


def test_survey_table_columns_and_metadata(survey):
    _, catalogue, _, (counts, paths, lines), _ = survey
    table = artifacts.load_table(paths["table.parquet"])
    assert list(table.columns[:10]) == ["spectrum_id", "star_id", "row", "snr", "masked_fraction",
                                        "rv_used", "n_spectra", "files", "setups", "dropped"]
    assert {"teff", "logg", "split", "vrad", "catalog_snr"} <= set(table.columns)
    cat = catalogue.set_index("star_id")
    for _, row in table.iterrows():
        assert row["teff"] == cat.loc[row["star_id"], "teff"]
        assert row["split"] == cat.loc[row["star_id"], "split"]
        assert row["catalog_snr"] == cat.loc[row["star_id"], "snr"]
    assert table.set_index("star_id").loc["good3", "rv_used"] == 30.0      # from the catalogue
    assert table["n_spectra"].tolist() == [2] * len(table)
    assert (table["snr"] > 80).all()
    meta = artifacts.table_metadata(paths["table.parquet"])
    assert meta["grid_hash"] == GRID.hash() and meta["n_pixels"] == GRID.n_pixels
    assert meta["survey"] == "test" and "git_commit" in meta and "config_hash" in meta


def test_survey_matrices_are_float32_memmaps_matching_normalize_star(survey):
    _, _, _, (counts, paths, lines), _ = survey
    flux = artifacts.load_matrix(paths["flux.npy"])
    ivar = artifacts.load_matrix(paths["ivar.npy"])
    assert isinstance(flux, np.memmap) and isinstance(ivar, np.memmap)
    assert flux.dtype == np.float32 and ivar.dtype == np.float32
    assert flux.shape == ivar.shape == (counts["n_accepted"], GRID.n_pixels)
    expected, expected_ivar, _ = normalize_star(both_setups("good2", seed=104), GRID, {})
    np.testing.assert_array_equal(flux[2], expected.astype(np.float32))
    np.testing.assert_array_equal(ivar[2], expected_ivar.astype(np.float32))
    assert np.all(np.isfinite(flux)) and np.all(flux[ivar == 0] == MASKED_FLUX)
    # no staging or temporary files are left behind
    leftovers = [p.name for p in paths["flux.npy"].parent.iterdir()
                 if p.name.startswith(".") or "staging" in p.name]
    assert leftovers == []


def test_survey_is_identical_with_one_and_two_processes(survey):
    _, _, _, (counts1, paths1, _), (counts2, paths2, _) = survey
    for name in ("flux.npy", "ivar.npy"):
        np.testing.assert_array_equal(np.load(paths1[name]), np.load(paths2[name]))
    for name in ("table.parquet", "rejects.parquet"):
        pd.testing.assert_frame_equal(artifacts.load_table(paths1[name]),
                                      artifacts.load_table(paths2[name]))
    assert counts1["per_reason"] == counts2["per_reason"]


def test_survey_logs_progress_and_reject_counts(survey):
    _, _, _, (counts, paths, lines), _ = survey
    progress = [line for line in lines if re.search(r"\d+/\d+ units \(\d+%\)", line)]
    assert len(progress) >= 5 and "spectra/s" in progress[-1] and "100%" in progress[-1]
    assert any("rejects by reason" in line for line in lines)
    assert any(re.search(r"\s3\s+unreadable$", line) for line in lines)


def test_survey_rejects_duplicate_catalogue_rows(tmp_path):
    catalogue = pd.DataFrame({"star_id": ["a", "a"], "teff": [5000.0, 5100.0]})
    with pytest.raises(ValueError, match="duplicate star_id"):
        normalize_survey([], read_pickled, GRID, catalogue, {}, tmp_path / "f.npy",
                         tmp_path / "i.npy", tmp_path / "t.parquet", tmp_path / "r.parquet")


def test_survey_with_nothing_accepted_writes_empty_outputs(tmp_path):
    garbage = tmp_path / "g.pkl"
    garbage.write_bytes(b"nope")
    catalogue = pd.DataFrame({"teff": [5000.0]}, index=pd.Index(["a"], name="star_id"))
    counts = normalize_survey([[str(garbage)]], read_pickled, GRID, catalogue, {},
                              tmp_path / "f.npy", tmp_path / "i.npy", tmp_path / "t.parquet",
                              tmp_path / "r.parquet", log=lambda _: None)
    assert counts["n_accepted"] == 0 and counts["n_rejected"] == 1
    assert np.load(tmp_path / "f.npy").shape == (0, GRID.n_pixels)
    table = artifacts.load_table(tmp_path / "t.parquet")
    assert len(table) == 0 and "teff" in table.columns
    assert len(artifacts.load_table(tmp_path / "r.parquet")) == 1


def test_repeat_visits_become_rows_of_their_own(tmp_path):
    """Units with visit numbers: each visit of a star is its own row (same star_id), coadded
    within the visit; the same visit met twice is still a duplicate."""
    units = [[_write(tmp_path / "a1.pkl", both_setups("a", seed=1))],
             [_write(tmp_path / "a2.pkl", both_setups("a", seed=2))],
             [_write(tmp_path / "b1.pkl", both_setups("b", seed=3))],
             [_write(tmp_path / "a2_again.pkl", both_setups("a", seed=4))]]
    catalogue = pd.DataFrame({"star_id": ["a", "b"], "teff": [5000.0, 5500.0],
                              "split": ["test", "test"]})
    paths = {k: tmp_path / k for k in ("flux.npy", "ivar.npy", "table.parquet", "rejects.parquet")}
    counts = normalize_survey(units, read_pickled, GRID, catalogue, {}, paths["flux.npy"],
                              paths["ivar.npy"], paths["table.parquet"],
                              paths["rejects.parquet"], log=lambda m: None,
                              visits=[1, 2, 1, 2])
    table = artifacts.load_table(paths["table.parquet"])
    rejects = artifacts.load_table(paths["rejects.parquet"])
    assert list(table["spectrum_id"]) == ["a", "a_v2", "b"]
    assert list(table["star_id"]) == ["a", "a", "b"]
    assert list(rejects["spectrum_id"]) == ["a_v2"]
    assert rejects["reason"].iloc[0].startswith("duplicate")
    flux = np.load(paths["flux.npy"])
    assert flux.shape[0] == 3 and not np.array_equal(flux[0], flux[1])   # independent noise
    assert counts["n_catalogue_unobserved"] == 0
    with pytest.raises(ValueError, match="visit numbers"):
        normalize_survey(units, read_pickled, GRID, catalogue, {}, paths["flux.npy"],
                         paths["ivar.npy"], paths["table.parquet"], paths["rejects.parquet"],
                         visits=[1])


# ---------------------------------------------------------------- inputs that lie or repeat

def run_small_survey(tmp_path: Path, units, stars, **kw):
    paths = [tmp_path / name for name in ("flux.npy", "ivar.npy", "table.parquet",
                                          "rejects.parquet")]
    catalogue = pd.DataFrame({"star_id": stars, "teff": 5000.0, "split": "train"})
    counts = normalize_survey(units, read_pickled, GRID, catalogue, {}, *paths,
                              log=lambda _: None, **kw)
    return (counts, artifacts.load_table(paths[2]), artifacts.load_table(paths[3]),
            artifacts.load_matrix(paths[0]), artifacts.load_matrix(paths[1]))


def test_a_header_naming_another_star_is_rejected_under_the_manifest_star(tmp_path):
    # b_HR10's header says "a": trusted, a's row would get b's spectrum, a's own files would be
    # rejected as a duplicate and b would be nowhere
    a = [_write(tmp_path / f"a_{s.setup}.pkl", [s]) for s in both_setups("a", seed=1)]
    b_hr10 = make_spectrum("a", "HR10", seed=50)            # OBJECT names star a
    b = [_write(tmp_path / "b_HR10.pkl", [b_hr10]),
         _write(tmp_path / "b_HR21.pkl", [make_spectrum("b", "HR21", seed=51)])]
    file_stars = {**{p: "a" for p in a}, **{p: "b" for p in b}}
    counts, table, rejects, flux, _ = run_small_survey(tmp_path, [a, b], ["a", "b"],
                                                        file_stars=file_stars)
    alone, _, _ = normalize_star(both_setups("a", seed=1), GRID, {})
    assert table["star_id"].tolist() == ["a"]
    np.testing.assert_array_equal(flux[0], alone.astype(np.float32))  # a's own spectrum only
    reasons = dict(zip(rejects["spectrum_id"] + "|" + rejects["path"], rejects["reason"]))
    assert "header names star(s) ['a'], but the manifest lists it for star b" in \
        reasons[f"b|{b[0]}"]
    assert reasons[f"b|{b[1]}"].startswith("no coverage of grid segment HR10")
    assert counts["n_catalogue_unobserved"] == 0


def test_a_file_listed_twice_is_read_once_and_not_coadded_with_itself(tmp_path):
    files = [_write(tmp_path / f"s_{s.setup}.pkl", [s]) for s in both_setups("s", seed=3)]
    counts, table, rejects, _, ivar = run_small_survey(
        tmp_path, [files + [files[0]], [files[1]]], ["s"])
    _, alone_ivar, _ = normalize_star(both_setups("s", seed=3), GRID, {})
    np.testing.assert_allclose(ivar[0], alone_ivar.astype(np.float32))   # not ×2
    assert table["star_id"].tolist() == ["s"]
    assert sorted(rejects["path"]) == sorted(files)
    assert rejects["reason"].str.startswith("listed twice in the manifest").all()
    assert counts["per_reason"] == {"listed twice in the manifest": 2}


def test_a_file_the_download_could_not_get_is_rejected_with_its_reason(tmp_path):
    files = [_write(tmp_path / f"s_{s.setup}.pkl", [s]) for s in both_setups("s", seed=3)]
    gone = str(tmp_path / "t_HR10.pkl")
    problems = {gone: "http://x/t: not the file asked for: an HTML or XML document"}
    _, table, rejects, _, _ = run_small_survey(tmp_path, [files, [gone]], ["s", "t"],
                                               file_problems=problems)
    assert table["star_id"].tolist() == ["s"]
    assert rejects.loc[0, "path"] == gone
    assert rejects.loc[0, "reason"] == f"not downloaded: {problems[gone]}"


def test_an_error_column_near_zero_never_reaches_the_matrix_as_inf(tmp_path):
    spectra = both_setups("tiny_err", seed=5)
    spectra[0].ivar[:] = 1e60                               # ERR = 1e-30
    with pytest.raises(RejectSpectrum, match=r"no valid pixels of \d+: \d+ error implying an "
                                             r"impossible S/N"):
        normalize_star(spectra, GRID, {})
    # a few such pixels are masked; the coadd and its S/N stay finite and sane
    spectra = both_setups("few", seed=6)
    spectra[0].ivar[100:110] = 1e60
    flux, ivar, info = normalize_star(spectra, GRID, {})
    assert np.isfinite(ivar.astype(np.float32)).all() and 100 < info["snr"] < 125
    files = [_write(tmp_path / f"z_{s.setup}.pkl", [s]) for s in spectra]
    _, table, _, _, ivar32 = run_small_survey(tmp_path, [files], ["few"])
    assert np.isfinite(ivar32).all() and table.loc[0, "snr"] < 125


@pytest.mark.parametrize("fill, reason", [
    (np.inf, r"no finite flux \(\d+ \+inf of \d+ pixels\)"),
    (-np.inf, r"no finite flux \(\d+ -inf of \d+ pixels\)"),
])
def test_infinite_flux_is_reported_as_such(fill, reason):
    spectrum = make_spectrum("inf", "HR10")
    spectrum.flux[:] = fill
    with pytest.raises(RejectSpectrum, match=reason):
        normalize_star([spectrum], GRID, {})


def test_a_star_rejected_for_a_gap_names_the_file_that_caused_it():
    hr10, hr21 = both_setups("gap", seed=9)
    hr10.flux[:] = np.nan                                   # readable, but all NaN
    with pytest.raises(RejectSpectrum) as caught:
        normalize_star([hr10, hr21], GRID, {})
    assert caught.value.reason == ("no coverage of grid segment HR10 "
                                   "(dropped: gap_HR10: all-NaN flux)")
    assert caught.value.key == "no coverage of grid segment HR10"
