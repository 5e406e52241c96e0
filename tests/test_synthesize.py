"""Tests of the synthesize stage on analytic 'PHOENIX-like' models (vacuum, high resolution)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import curve_fit

from starlabels import artifacts
from starlabels.grid import WavelengthGrid
from starlabels.io.spectrum import Spectrum, SpectrumFormatError
from starlabels.batch import RejectSpectrum
from starlabels.spectral import MASKED_FLUX, grid_segments
from starlabels.spectral import C_KMS, air_to_vacuum, vacuum_to_air
from starlabels.synthesize import (augment, degrade, draw_resolution, model_split,
                                   synthesize_config, synthesize_grid)

GRID = WavelengthGrid.from_config([
    {"name": "A", "start": 5400.0, "end": 5440.0, "step": 0.05},
    {"name": "B", "start": 5460.0, "end": 5500.0, "step": 0.05},
])
LINES_AIR = (5410.0, 5425.0, 5470.0, 5488.0)      # rest air wavelengths of the model's lines
SOURCE_R = 100_000.0                               # the test models' own resolving power
MODEL_STEP = 0.01                                  # vacuum Å; 2.3 pixels per σ of a line
BASE = {"resolution": 20_000.0, "source_resolution": SOURCE_R, "resolution_jitter": 0.0,
        "rv_jitter_kms": 0.0, "zero_runs": {"probability": 0.0}}


def cfg(**overrides) -> dict:
    out = dict(BASE)
    out.update(overrides)
    return out


def model_wavelength() -> np.ndarray:
    return np.arange(5370.0, 5530.0, MODEL_STEP)


def model_flux(wavelength_vacuum: np.ndarray, depth: float = 0.9, slope: float = -3.0
               ) -> np.ndarray:
    """A Planck-like sloped continuum (erg/s/cm²/Å scale) with lines of FWHM λ/SOURCE_R."""
    air = vacuum_to_air(wavelength_vacuum)
    profile = np.ones_like(air)
    for centre in LINES_AIR:
        sigma = centre / SOURCE_R / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        profile -= depth * np.exp(-0.5 * ((air - centre) / sigma) ** 2)
    return 3e14 * (wavelength_vacuum / 5450.0) ** slope * profile


def make_model(teff=5800.0, logg=4.5, fe_h=0.0, alpha=0.0, name="lte05800-4.50-0.0",
               **kw) -> Spectrum:
    wavelength = model_wavelength()
    flux = model_flux(wavelength, **kw)
    return Spectrum(spectrum_id=name, star_id=name, setup="PHOENIX-HiRes", wavelength=wavelength,
                    flux=flux, ivar=np.full(flux.size, 1e20), mask=np.zeros(flux.size, bool),
                    medium="vacuum", meta={"teff": teff, "logg": logg, "fe_h": fe_h,
                                           "alpha": alpha})


def seg_wavelength(name: str) -> np.ndarray:
    return dict((n, w) for n, w, _ in grid_segments(GRID))[name]


def segment(array: np.ndarray, name: str) -> np.ndarray:
    return array[GRID.segment_slices[name]]


def fit_line(flux: np.ndarray, name: str, centre: float) -> tuple[float, float]:
    """(centre, FWHM) of a Gaussian + constant fitted to the line depth within ±1.5 Å."""
    wavelength = seg_wavelength(name)
    near = np.abs(wavelength - centre) < 1.5
    def model(w, a, mu, s, c):
        return a * np.exp(-0.5 * ((w - mu) / s) ** 2) + c
    depth = 1.0 - segment(flux, name)[near]
    p0 = (depth.max(), wavelength[near][np.argmax(depth)], 0.12, 0.0)
    (a, mu, s, c), _ = curve_fit(model, wavelength[near], depth, p0=p0)
    return float(mu), float(2.0 * np.sqrt(2.0 * np.log(2.0)) * abs(s))


# ---------------------------------------------------------------- degrade

@pytest.mark.parametrize("resolution", [20_000.0, 50_000.0])
def test_degraded_line_fwhm_is_lambda_over_r_at_the_air_wavelength(resolution):
    flux = degrade(make_model(), GRID, resolution, cfg())
    assert flux.shape == (GRID.n_pixels,) and np.all(np.isfinite(flux))
    for name, centre in (("A", 5425.0), ("B", 5470.0)):
        mu, fwhm = fit_line(flux, name, centre)
        # averaging over 0.05 Å pixels adds Δ²/12 to σ²; the model's own λ/SOURCE_R must
        # have been taken out (at R = 50 000 leaving it in would add 12 %)
        expected = np.sqrt((centre / resolution) ** 2 + 8 * np.log(2) * 0.05 ** 2 / 12)
        assert fwhm == pytest.approx(expected, rel=0.02)
        assert mu == pytest.approx(centre, abs=0.005)        # vacuum → air: a 1.5 Å shift
    # continuum-normalised: line-free pixels sit at 1
    line_free = np.ones(GRID.n_pixels, bool)
    for name, _, columns in grid_segments(GRID):
        for centre in LINES_AIR:
            line_free[columns] &= np.abs(seg_wavelength(name) - centre) > 1.0
    assert np.median(np.abs(flux[line_free] - 1.0)) < 0.001


def test_degrade_per_segment_resolution_and_no_air_conversion():
    flux = degrade(make_model(), GRID, {"A": 20_000.0, "B": 11_000.0}, cfg())
    assert fit_line(flux, "A", 5425.0)[1] == pytest.approx(5425.0 / 20_000.0, rel=0.025)
    assert fit_line(flux, "B", 5488.0)[1] == pytest.approx(5488.0 / 11_000.0, rel=0.025)
    # with vacuum_to_air off the lines stay at their vacuum wavelengths
    vacuum = degrade(make_model(), GRID, 20_000.0, cfg(vacuum_to_air=False))
    mu, _ = fit_line(vacuum, "A", air_to_vacuum(5425.0))
    assert mu == pytest.approx(air_to_vacuum(5425.0), abs=0.005)


def test_degrade_with_rng_jitters_the_resolution_within_bounds():
    jitter = 0.2
    c = cfg(resolution_jitter=jitter)
    rng = np.random.default_rng(5)
    widths = [fit_line(degrade(make_model(), GRID, 20_000.0, c, rng=rng), "A", 5425.0)[1]
              for _ in range(6)]
    resolutions = 5425.0 / np.array(widths)
    assert np.all(resolutions > 20_000.0 * (1 - jitter) * 0.97)
    assert np.all(resolutions < 20_000.0 * (1 + jitter) * 1.03)
    assert np.ptp(resolutions) > 1000.0           # it really varies from copy to copy
    drawn = [draw_resolution({"A": 1e4, "B": 2e4}, c, np.random.default_rng(i)) for i in range(20)]
    # one factor for all segments
    assert all(d["B"] == pytest.approx(2 * d["A"]) for d in drawn)


def test_degrade_rejects_a_model_that_misses_a_segment():
    model = make_model()
    short = model.wavelength < 5450.0
    cut = Spectrum(model.spectrum_id, model.star_id, model.setup, model.wavelength[short],
                   model.flux[short], model.ivar[short], model.mask[short], medium="vacuum",
                   meta=model.meta)
    with pytest.raises(RejectSpectrum, match="no coverage of grid segment B"):
        degrade(cut, GRID, 20_000.0, cfg())
    nan_model = make_model()
    nan_model.flux[:] = np.nan
    with pytest.raises(RejectSpectrum, match="all-NaN flux"):
        degrade(nan_model, GRID, 20_000.0, cfg())


def test_config_checks():
    with pytest.raises(ValueError, match="resolution is required"):
        synthesize_config({"resolution": None})
    with pytest.raises(ValueError, match="below source_resolution"):
        synthesize_config({"resolution": 600_000.0})
    with pytest.raises(ValueError, match=r"segment\(s\) \['B'\]"):
        synthesize_config({"resolution": {"A": 20_000.0}}, GRID)
    # keys left out take the schema's defaults (synthetic.synthesize.snr)
    assert synthesize_config({"resolution": 1e4})["snr"] == {"min": 30.0, "max": 200.0}


# ---------------------------------------------------------------- augment

@pytest.fixture(scope="module")
def degraded():
    return degrade(make_model(), GRID, 20_000.0, cfg())


def test_augment_snr_is_within_the_configured_range(degraded):
    c = cfg(snr={"min": 20.0, "max": 200.0})
    rng = np.random.default_rng(1)
    drawn, measured, chi = [], [], []
    for _ in range(40):
        flux, ivar, info = augment(degraded, GRID, c, rng)
        noise = (flux - degraded) / np.sqrt(degraded)           # photon-like: σ ∝ sqrt(flux)
        drawn.append(info["snr"])
        measured.append(1.0 / np.std(noise))
        # the ivar describes the noise that was added (1602 pixels: ±1.8 % per draw)
        chi.append((flux - degraded) * np.sqrt(ivar))
        assert info["n_zero_pixels"] == 0 and info["rv_shift"] == 0.0
    assert np.std(np.concatenate(chi)) == pytest.approx(1.0, abs=0.01)
    drawn, measured = np.array(drawn), np.array(measured)
    assert np.all((measured > 20.0 * 0.92) & (measured < 200.0 * 1.08))
    np.testing.assert_allclose(measured, drawn, rtol=0.08)
    assert np.all((drawn >= 20.0) & (drawn <= 200.0))
    # log-uniform: both ends of the range are reached
    assert drawn.min() < 40.0 and drawn.max() > 100.0


def test_augment_zero_runs_use_the_masked_convention(degraded):
    c = cfg(zero_runs={"probability": 1.0, "max_length": 40})
    rng = np.random.default_rng(2)
    lengths = []
    for _ in range(30):
        flux, ivar, info = augment(degraded, GRID, c, rng)
        masked = np.flatnonzero(ivar == 0)
        assert masked.size == info["n_zero_pixels"] > 0
        assert np.all(np.diff(masked) == 1)                       # one contiguous run
        assert np.all(flux[masked] == MASKED_FLUX)
        # inside one segment (segments are separate detectors)
        assert sum(np.isin(masked, np.arange(GRID.n_pixels)[sl]).all()
                   for sl in GRID.segment_slices.values()) == 1
        lengths.append(masked.size)
    assert max(lengths) <= 40 and min(lengths) < 40
    flux, ivar, info = augment(degraded, GRID, cfg(zero_runs={"probability": 0.0}), rng)
    assert info["n_zero_pixels"] == 0 and np.all(ivar > 0)


def test_augment_masks_pixels_the_model_did_not_cover(degraded):
    partial = degraded.copy()
    partial[100:110] = np.nan
    flux, ivar, _ = augment(partial, GRID, cfg(), np.random.default_rng(3))
    assert np.all(ivar[100:110] == 0) and np.all(flux[100:110] == MASKED_FLUX)
    assert np.all(ivar[:100] > 0) and np.all(ivar[110:] > 0)


def test_augment_rv_shift_moves_lines_by_lambda_v_over_c(degraded):
    c = cfg(rv_jitter_kms=10.0, snr={"min": 1e4, "max": 1e4})
    rng = np.random.default_rng(4)
    mu0, _ = fit_line(degraded, "B", 5470.0)
    for _ in range(3):
        flux, _, info = augment(degraded, GRID, c, rng)
        assert info["rv_shift"] != 0.0
        mu, _ = fit_line(flux, "B", 5470.0)
        assert mu - mu0 == pytest.approx(5470.0 * info["rv_shift"] / C_KMS, abs=0.004)


def test_augment_is_reproducible_from_the_seed(degraded):
    c = cfg(rv_jitter_kms=2.0, zero_runs={"probability": 0.5, "max_length": 10})
    a = augment(degraded, GRID, c, np.random.default_rng(7), resolution=2e4)
    b = augment(degraded, GRID, c, np.random.default_rng(7), resolution=2e4)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[2] == b[2] and a[2]["resolution"] == 2e4


# ---------------------------------------------------------------- synthesize_grid

def read_wave(path: str) -> np.ndarray:
    return np.load(path)


def read_model(path: str, wavelength_vacuum: np.ndarray) -> Spectrum:
    """Test reader: an .npz with flux and the labels; anything else is a SpectrumFormatError."""
    try:
        with np.load(path) as data:
            flux = data["flux"]
            meta = {k: float(data[k]) for k in ("teff", "logg", "fe_h", "alpha") if k in data}
    except Exception as exc:
        raise SpectrumFormatError(path, f"not a model file ({exc})") from None
    if flux.size != wavelength_vacuum.size:
        raise SpectrumFormatError(path, f"flux has {flux.size} pixels, wavelength "
                                        f"{wavelength_vacuum.size}")
    stem = Path(path).stem
    return Spectrum(stem, stem, "PHOENIX-HiRes", wavelength_vacuum, flux,
                    np.full(flux.size, 1e20), ~np.isfinite(flux), medium="vacuum",
                    path=path, meta=meta)


def write_model(path: Path, flux: np.ndarray, **labels) -> str:
    np.savez(path, flux=flux, **labels)
    return str(path)


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("phoenix")
    wave_path = tmp / "WAVE.npy"
    np.save(wave_path, model_wavelength())
    paths = []
    for i, teff in enumerate(np.arange(5000.0, 6600.0, 200.0)):         # 8 good models
        flux = model_flux(model_wavelength(), depth=0.5 + 0.05 * i, slope=-2.0 - 0.2 * i)
        paths.append(write_model(tmp / f"lte{int(teff):05d}-4.50-0.0.npz", flux, teff=teff,
                                 logg=4.5, fe_h=-0.5 + 0.1 * i, alpha=0.0))
        if i == 2:
            (tmp / "bad").mkdir()
            garbage = tmp / "bad" / "garbage.npz"
            garbage.write_bytes(b"not a zip file")
            paths.append(str(garbage))
            paths.append(write_model(tmp / "bad" / "noalpha.npz", model_flux(model_wavelength()),
                                     teff=5000.0, logg=4.0, fe_h=0.0))
            paths.append(write_model(tmp / "bad" / "short.npz", np.ones(100), teff=5000.0,
                                     logg=4.0, fe_h=0.0, alpha=0.0))
    (tmp / "copy").mkdir()
    paths.append(write_model(tmp / "copy" / Path(paths[0]).name, model_flux(model_wavelength()),
                             teff=1.0, logg=1.0, fe_h=1.0, alpha=1.0))
    c = {"resolution": 20_000.0, "source_resolution": SOURCE_R, "n_augment": 3,
         "valid_fraction": 0.5, "seed": 42, "resolution_jitter": 0.05,
         "zero_runs": {"probability": 0.3, "max_length": 20}}
    runs = {}
    for threads in (1, 2):
        out = {k: tmp / f"t{threads}_{k}" for k in ("flux.npy", "ivar.npy", "table.parquet",
                                                     "rejects.parquet")}
        lines: list[str] = []
        counts = synthesize_grid(paths, wave_path, read_wave, read_model, GRID, c,
                                 out["flux.npy"], out["ivar.npy"], out["table.parquet"],
                                 out["rejects.parquet"], threads=threads, log=lines.append,
                                 metadata={"grid": "test"})
        runs[threads] = (counts, out, lines)
    return paths, c, runs


def test_grid_table_rows_and_splits(grid_run):
    paths, c, runs = grid_run
    counts, out, lines = runs[1]
    table = artifacts.load_table(out["table.parquet"])
    assert list(table.columns) == ["spectrum_id", "star_id", "row", "teff", "logg", "fe_h",
                                   "alpha", "snr", "rv_shift", "resolution", "n_zero_pixels",
                                   "split", "source"]
    assert counts["n_accepted"] == 8 and counts["n_rows"] == 24 and len(table) == 24
    assert list(table["row"]) == list(range(24))
    stems = [Path(p).stem for p in paths if "bad" not in p and "copy" not in p]
    assert list(table["spectrum_id"]) == [f"{s}-a{k}" for s in stems for k in range(3)]
    assert list(table["star_id"]) == [s for s in stems for _ in range(3)]
    assert set(table["source"]) == {"phoenix"}
    # copies of one model never straddle train/valid, and both splits occur
    per_model = table.groupby("star_id")["split"].nunique()
    assert (per_model == 1).all()
    assert set(table["split"]) == {"train", "valid"}
    for stem, split in table.groupby("star_id")["split"].first().items():
        assert split == model_split(stem, 42, 0.5)
    # labels from the model header, augmentation parameters within their ranges
    assert table.groupby("star_id")["teff"].nunique().eq(1).all()
    assert table["teff"].min() == 5000.0 and table["teff"].max() == 6400.0
    assert table["snr"].between(20.0, 200.0).all()
    assert table["resolution"].between(20_000 * 0.95, 20_000 * 1.05).all()
    assert table["resolution"].nunique() > 1
    assert (table["rv_shift"] != 0).all()


def test_grid_rejects_every_bad_file(grid_run):
    paths, c, runs = grid_run
    counts, out, lines = runs[1]
    rejects = artifacts.load_table(out["rejects.parquet"])
    by_id = dict(zip(rejects["spectrum_id"], rejects["reason"]))
    assert set(by_id) == {"garbage", "noalpha", "short", Path(paths[0]).stem}
    assert by_id["garbage"].startswith("unreadable: ")
    assert by_id["short"].startswith("unreadable: ") and "100 pixels" in by_id["short"]
    assert by_id["noalpha"] == "missing label alpha in model header"
    assert by_id[Path(paths[0]).stem] == "duplicate model file name"
    assert set(rejects["stage"]) == {"synthesize"}
    assert counts["n_rejected"] == 4 and counts["n_files"] == len(paths)
    assert any("rejects by reason" in line for line in lines)
    assert sum("model files (" in line for line in lines) >= 5


def test_grid_matrices_float32_masked_convention_and_metadata(grid_run):
    _, _, runs = grid_run
    counts, out, _ = runs[1]
    flux = artifacts.load_matrix(out["flux.npy"])
    ivar = artifacts.load_matrix(out["ivar.npy"])
    assert isinstance(flux, np.memmap) and flux.dtype == np.float32 and ivar.dtype == np.float32
    assert flux.shape == ivar.shape == (24, GRID.n_pixels)
    table = artifacts.load_table(out["table.parquet"])
    np.testing.assert_array_equal((np.asarray(ivar) == 0).sum(axis=1), table["n_zero_pixels"])
    assert np.all(np.asarray(flux)[np.asarray(ivar) == 0] == MASKED_FLUX)
    assert (table["n_zero_pixels"] > 0).any()
    meta = artifacts.table_metadata(out["table.parquet"])
    assert meta["grid_hash"] == GRID.hash() and meta["grid"] == "test"


def test_grid_is_identical_with_one_and_two_processes(grid_run):
    _, _, runs = grid_run
    (_, out1, _), (_, out2, _) = runs[1], runs[2]
    for name in ("flux.npy", "ivar.npy"):
        np.testing.assert_array_equal(np.load(out1[name]), np.load(out2[name]))
    for name in ("table.parquet", "rejects.parquet"):
        pd.testing.assert_frame_equal(artifacts.load_table(out1[name]),
                                      artifacts.load_table(out2[name]))


def test_model_split_fraction_and_stability():
    stems = [f"lte{t:05d}-{g:.2f}-0.0" for t in range(3000, 7000, 100) for g in (1.0, 2.5, 4.5)]
    splits = [model_split(s, 42, 0.1) for s in stems]
    assert 0.04 < splits.count("valid") / len(splits) < 0.18
    assert splits == [model_split(s, 42, 0.1) for s in stems]
    assert {model_split(s, 42, 0.0) for s in stems} == {"train"}
