"""Synthesize stage: PHOENIX HiRes models degraded to the survey and augmented (deep-REMAP recipe).

Per model file, ``n_augment`` copies, each:

1. :func:`degrade` — vacuum → air, Gaussian LSF to the survey's resolving power R (per copy
   jittered by ``resolution_jitter``; the model's own ``source_resolution`` is taken out in
   quadrature), flux-conserving resampling onto the grid segments, and continuum normalisation
   with the very function the normalize stage uses (:func:`starlabels.spectral.normalize_segment`),
   so synthetic and observed spectra see the same continuum definition;
2. :func:`augment` — the residual RV error left after rest-framing (shift in ln λ), photon-like
   Gaussian noise at an S/N drawn log-uniform in ``snr``, and, with probability
   ``zero_runs.probability``, a run of masked pixels like a zeroed detector run after the
   normalize stage (flux 1.0, ivar 0).

Every copy of one model shares its ``split`` (train/valid, a hash of the model's name), so the
validation loss is measured on grid points the network never saw. Random numbers come from
``default_rng([seed, file index])``: results do not depend on the number of worker processes.

Settings are the experiment's ``synthetic.synthesize`` section plus the ``continuum`` of its
``normalize`` section; keys they leave out take the configuration schema's defaults.
"""
from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import artifacts, config
from .batch import (MatrixRowStream, Progress, RejectSpectrum, exception_text, log_reject_counts,
                    no_finite_flux, ordered_map, rejects_frame, say)
from .grid import WavelengthGrid
from .io.spectrum import Spectrum, SpectrumFormatError
from .spectral import (C_KMS, MASKED_FLUX, check_continuum_config, convolve_resolution,
                       grid_segments, normalize_segment, resample_flux, vacuum_to_air)

__all__ = ["LABEL_KEYS", "synthesize_config", "draw_resolution", "degrade", "augment",
           "model_split", "synthesize_grid"]

LABEL_KEYS = ("teff", "logg", "fe_h", "alpha")
STAGE = "synthesize"
SOURCE = "phoenix"
# Noise floor for saturated line cores: σ = sqrt(max(flux, floor)) / snr keeps ivar finite.
_NOISE_FLUX_FLOOR = 0.01
# Grid pixels a model covers less than this (by its good pixels) are masked.
MODEL_MIN_COVERAGE = 0.99
# Half-width of source spectrum kept around a segment, in LSF FWHMs: the kernel spans ±1.7 FWHM,
# the rest keeps the edge padding of the convolution well away from the segment.
_MARGIN_FWHM = 8.0


# ---------------------------------------------------------------- configuration

def synthesize_config(cfg: Mapping[str, Any] | None, grid: WavelengthGrid | None = None
                      ) -> dict[str, Any]:
    """The synthesize section (with the normalize stage's ``continuum``) completed from the
    schema's defaults, checked (against ``grid`` when given)."""
    given = dict(cfg or {})
    c = config.section("synthetic.synthesize", {k: v for k, v in given.items()
                                                 if k != "continuum"})
    c["continuum"] = config.section("normalize.continuum", given.get("continuum"))
    check_continuum_config(c["continuum"])
    resolution = c["resolution"]
    if resolution is None:
        raise ValueError("synthesize.resolution is required (a number or {segment: R})")
    values = list(resolution.values()) if isinstance(resolution, Mapping) else [resolution]
    if not all(0 < float(r) < float(c["source_resolution"]) for r in values):
        raise ValueError(f"synthesize.resolution must be > 0 and below source_resolution "
                         f"{c['source_resolution']}, got {resolution}")
    if isinstance(resolution, Mapping) and grid is not None:
        missing = [s.name for s in grid.segments if s.name not in resolution]
        if missing:
            raise ValueError(f"synthesize.resolution has no R for grid segment(s) {missing}")
    if int(c["n_augment"]) < 1:
        raise ValueError("synthesize.n_augment must be ≥ 1")
    if not 0 < float(c["snr"]["min"]) <= float(c["snr"]["max"]):
        raise ValueError("synthesize.snr needs 0 < min ≤ max")
    if float(c["rv_jitter_kms"]) < 0 or not 0 <= float(c["resolution_jitter"]) < 1:
        raise ValueError("synthesize: rv_jitter_kms ≥ 0 and 0 ≤ resolution_jitter < 1 required")
    if not 0 <= float(c["zero_runs"]["probability"]) <= 1 or int(c["zero_runs"]["max_length"]) < 1:
        raise ValueError("synthesize.zero_runs: probability in [0, 1] and max_length ≥ 1 "
                         "required")
    if not 0 <= float(c["valid_fraction"]) <= 1:
        raise ValueError("synthesize.valid_fraction must be in [0, 1]")
    return c


def _segment_resolution(resolution: float | Mapping[str, float], name: str) -> float:
    return float(resolution[name]) if isinstance(resolution, Mapping) else float(resolution)


def draw_resolution(resolution: float | Mapping[str, float], cfg: Mapping[str, Any],
                    rng: np.random.Generator) -> float | dict[str, float]:
    """R scaled by one factor 1 + u, u ~ U(-j, j), j = resolution_jitter (same for all segments:
    an instrument's focus changes its resolving power coherently)."""
    jitter = float(cfg["resolution_jitter"])
    scale = 1.0 + rng.uniform(-jitter, jitter) if jitter > 0 else 1.0
    if isinstance(resolution, Mapping):
        return {name: float(r) * scale for name, r in resolution.items()}
    return float(resolution) * scale


def _mean_resolution(resolution: float | Mapping[str, float]) -> float:
    """One number for the table: R itself, or the mean over segments of a per-segment R."""
    if isinstance(resolution, Mapping):
        return float(np.mean([float(r) for r in resolution.values()]))
    return float(resolution)


# ---------------------------------------------------------------- degrade

def _margin(wavelength_end: float, resolution: float) -> float:
    return _MARGIN_FWHM * wavelength_end / resolution


def _to_grid_frame(spec: Spectrum, cfg: Mapping[str, Any]) -> np.ndarray:
    """The model's wavelengths in the grid's frame (air unless vacuum_to_air is off)."""
    wavelength = np.asarray(spec.wavelength, dtype=np.float64)
    if cfg["vacuum_to_air"] and spec.medium == "vacuum":
        return vacuum_to_air(wavelength)
    return wavelength


def crop_to_grid(spec: Spectrum, grid: WavelengthGrid, cfg: Mapping[str, Any]) -> Spectrum:
    """The part of a (very long) model that :func:`degrade` can use, already in the grid's frame.

    A PHOENIX HiRes model has 1.5 million pixels; keeping only the grid segments plus an LSF
    margin (for the lowest resolution the jitter can draw) makes each augmented copy cheap.
    """
    c = synthesize_config(cfg, grid)
    wavelength = _to_grid_frame(spec, c)
    keep = np.zeros(wavelength.size, dtype=bool)
    low = 1.0 - float(c["resolution_jitter"])
    for name, seg_w, _ in grid_segments(grid):
        margin = _margin(seg_w[-1], _segment_resolution(c["resolution"], name) * low)
        keep |= (wavelength >= seg_w[0] - margin) & (wavelength <= seg_w[-1] + margin)
    medium = "air" if (c["vacuum_to_air"] and spec.medium == "vacuum") else spec.medium
    return replace(spec, wavelength=wavelength[keep], flux=np.asarray(spec.flux)[keep],
                   ivar=np.asarray(spec.ivar)[keep], mask=np.asarray(spec.mask)[keep],
                   medium=medium)


def degrade(spec: Spectrum, grid: WavelengthGrid, resolution: float | Mapping[str, float],
            cfg: Mapping[str, Any], rng: np.random.Generator | None = None) -> np.ndarray:
    """A high-resolution model → continuum-normalised flux on ``grid`` at resolving power R.

    ``resolution`` is one R or {segment: R}; with ``rng`` it is jittered per call
    (:func:`draw_resolution`). Grid pixels the model does not cover are NaN (augment masks them).
    Raises :class:`RejectSpectrum` for a model without usable flux, a segment it does not
    cover, or a failed continuum fit.
    """
    c = synthesize_config(cfg, grid)
    if rng is not None:
        resolution = draw_resolution(resolution, c, rng)
    wavelength = _to_grid_frame(spec, c)
    flux_model = np.asarray(spec.flux, dtype=np.float64)
    good = (np.isfinite(flux_model) & np.isfinite(wavelength)
            & ~np.asarray(spec.mask, dtype=bool))
    if not good.any():
        raise RejectSpectrum(no_finite_flux(flux_model, wavelength), key="no finite flux")
    out = np.full(grid.n_pixels, np.nan)
    for name, seg_w, columns in grid_segments(grid):
        r = _segment_resolution(resolution, name)
        margin = _margin(seg_w[-1], r)
        lo = int(np.searchsorted(wavelength, seg_w[0] - margin))
        hi = int(np.searchsorted(wavelength, seg_w[-1] + margin))
        w, f, g = wavelength[lo:hi], flux_model[lo:hi], good[lo:hi]
        if g.sum() < 2:
            raise RejectSpectrum(f"no coverage of grid segment {name}")
        if not g.all():
            # bridge bad model pixels so the convolution does not smear NaN; they carry no
            # weight in the resampling, so the grid pixels they fall in are masked
            f = np.interp(w, w[g], f[g])
        smoothed = convolve_resolution(w, f, r, resolution_in=float(c["source_resolution"]))
        flux, ivar, coverage = resample_flux(w, smoothed, seg_w, ivar_in=g.astype(np.float64))
        usable = (coverage >= MODEL_MIN_COVERAGE) & np.isfinite(flux)
        if not usable.any():
            raise RejectSpectrum(f"no coverage of grid segment {name}")
        # a noiseless model: uniform weights for the continuum fit
        flux_norm, _ = normalize_segment(seg_w, flux, usable.astype(np.float64), usable,
                                         c["continuum"], name)
        out[columns] = np.where(usable, flux_norm, np.nan)
    return out


# ---------------------------------------------------------------- augment

def _shift_segment(wavelength: np.ndarray, flux: np.ndarray, masked: np.ndarray,
                   rv_kms: float) -> tuple[np.ndarray, np.ndarray]:
    """flux(λ / D(v)), interpolated linearly in ln λ: the spectrum seen at velocity ``rv_kms``."""
    beta = rv_kms / C_KMS
    ln_doppler = 0.5 * (math.log1p(beta) - math.log1p(-beta))
    ln_w = np.log(wavelength)
    source = ln_w - ln_doppler
    shifted = np.interp(source, ln_w, np.where(masked, MASKED_FLUX, flux))
    # a pixel touching a masked pixel after the shift is masked too
    shifted_mask = np.interp(source, ln_w, masked.astype(np.float64)) > 0
    return shifted, shifted_mask


def _zero_run(grid: WavelengthGrid, max_length: int, rng: np.random.Generator) -> slice:
    """A run of up to ``max_length`` pixels inside one segment (segments are separate detectors)."""
    segments = grid_segments(grid)
    sizes = np.array([w.size for _, w, _ in segments], dtype=np.float64)
    _, seg_w, columns = segments[int(rng.choice(len(segments), p=sizes / sizes.sum()))]
    length = int(min(rng.integers(1, max_length + 1), seg_w.size))
    start = columns.start + int(rng.integers(0, seg_w.size - length + 1))
    return slice(start, start + length)


def augment(flux: np.ndarray, grid: WavelengthGrid, cfg: Mapping[str, Any],
            rng: np.random.Generator, *, resolution: float = math.nan
            ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One noisy, shifted, possibly damaged copy of a degraded model: (flux, ivar, info).

    - RV shift v ~ N(0, rv_jitter_kms), by interpolation in ln λ per segment;
    - S/N drawn log-uniform in [snr.min, snr.max]; σ = sqrt(flux)/S/N (photon noise, so line
      cores are less noisy than the continuum), ivar = 1/σ²;
    - with probability zero_runs.probability, a run of 1…max_length pixels set to the masked
      convention (flux 1.0, ivar 0), as the normalize stage leaves a zeroed detector run.

    NaN input pixels (not covered by the model) come back masked. info: snr, rv_shift,
    resolution (echoed from the keyword, for the table), n_zero_pixels.
    """
    c = synthesize_config(cfg, grid)
    flux = np.asarray(flux, dtype=np.float64)
    if flux.shape != (grid.n_pixels,):
        raise ValueError(f"flux has shape {flux.shape}, the grid has {grid.n_pixels} pixels")
    masked = ~np.isfinite(flux)
    clean = np.where(masked, MASKED_FLUX, flux)

    rv_jitter = float(c["rv_jitter_kms"])
    rv_shift = float(rng.normal(0.0, rv_jitter)) if rv_jitter > 0 else 0.0
    if rv_shift != 0.0:
        clean, masked = clean.copy(), masked.copy()
        for _, seg_w, columns in grid_segments(grid):
            clean[columns], masked[columns] = _shift_segment(seg_w, clean[columns],
                                                             masked[columns], rv_shift)

    snr_lo, snr_hi = float(c["snr"]["min"]), float(c["snr"]["max"])
    snr = float(math.exp(rng.uniform(math.log(snr_lo), math.log(snr_hi))))
    sigma = np.sqrt(np.maximum(clean, _NOISE_FLUX_FLOOR)) / snr
    noisy = clean + sigma * rng.standard_normal(clean.size)
    ivar = 1.0 / sigma ** 2

    n_zero = 0
    runs = c["zero_runs"]
    if rng.uniform() < float(runs["probability"]):
        run = _zero_run(grid, int(runs["max_length"]), rng)
        masked[run] = True
        n_zero = run.stop - run.start
    noisy[masked] = MASKED_FLUX
    ivar[masked] = 0.0
    info = {"snr": snr, "rv_shift": rv_shift, "resolution": float(resolution),
            "n_zero_pixels": int(n_zero)}
    return noisy, ivar, info


# ---------------------------------------------------------------- the grid driver

def model_split(stem: str, seed: int, valid_fraction: float) -> str:
    """'valid' for a fixed ``valid_fraction`` of models, decided by a hash of the model's name:
    the same model always lands in the same split, independent of file order and threads."""
    digest = hashlib.sha256(f"{int(seed)}:{stem}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    return "valid" if u < float(valid_fraction) else "train"


@dataclass(frozen=True)
class _GridState:
    read_spectrum: Callable[[str, np.ndarray], Spectrum]
    wavelength_vacuum: np.ndarray
    grid: WavelengthGrid
    cfg: dict[str, Any]


@dataclass
class _ModelResult:
    stem: str
    path: str
    rows: list[tuple[np.ndarray, np.ndarray, dict[str, Any]]] = field(default_factory=list)
    reason: str = ""
    key: str = ""


def _labels(spec: Spectrum) -> dict[str, float]:
    """teff, logg, fe_h, alpha from the model's meta; RejectSpectrum if one is missing."""
    labels = {}
    for key in LABEL_KEYS:
        try:
            value = float(spec.meta[key])
        except (KeyError, TypeError, ValueError):
            raise RejectSpectrum(f"missing label {key} in model header",
                                 key="missing label") from None
        if not math.isfinite(value):
            raise RejectSpectrum(f"missing label {key} in model header", key="missing label")
        labels[key] = value
    return labels


def _synthesize_model(state: _GridState, task: tuple[int, str, str]) -> _ModelResult:
    """All augmented copies of one model file; never raises for a bad file."""
    index, path, stem = task
    out = _ModelResult(stem, path)
    c = state.cfg
    try:
        spec = state.read_spectrum(path, state.wavelength_vacuum)
    except SpectrumFormatError as exc:
        out.reason, out.key = f"unreadable: {exc}", "unreadable"
        return out
    except Exception as exc:   # noqa: BLE001 - a grid run must survive any bad file
        out.reason, out.key = f"unreadable: {exception_text(exc)}", "unreadable"
        return out
    try:
        labels = _labels(spec)
        source = crop_to_grid(spec, state.grid, c)
        rng = np.random.default_rng([int(c["seed"]), index])
        split = model_split(stem, int(c["seed"]), float(c["valid_fraction"]))
        fixed = None   # without resolution jitter one degraded spectrum serves every copy
        for k in range(int(c["n_augment"])):
            resolution = draw_resolution(c["resolution"], c, rng)
            if fixed is None or float(c["resolution_jitter"]) > 0:
                fixed = degrade(source, state.grid, resolution, c)
            flux, ivar, info = augment(fixed, state.grid, c, rng,
                                       resolution=_mean_resolution(resolution))
            row = {"spectrum_id": f"{stem}-a{k}", "star_id": stem, **labels,
                   "snr": info["snr"], "rv_shift": info["rv_shift"],
                   "resolution": info["resolution"], "n_zero_pixels": info["n_zero_pixels"],
                   "split": split, "source": SOURCE}
            out.rows.append((flux.astype(np.float32), ivar.astype(np.float32), row))
    except RejectSpectrum as exc:
        out.rows, out.reason, out.key = [], exc.reason, exc.key
    except Exception as exc:   # noqa: BLE001
        out.rows, out.reason = [], f"error: {exception_text(exc)}"
        out.key = f"error: {type(exc).__name__}"
    return out


_TABLE_COLUMNS = ("spectrum_id", "star_id", "row", *LABEL_KEYS, "snr", "rv_shift", "resolution",
                  "n_zero_pixels", "split", "source")


def synthesize_grid(spectrum_paths: Sequence[str | os.PathLike], wave_path: str | os.PathLike,
                    read_wave: Callable[[str], np.ndarray],
                    read_spectrum: Callable[[str, np.ndarray], Spectrum],
                    grid: WavelengthGrid, cfg: Mapping[str, Any],
                    flux_path: str | os.PathLike, ivar_path: str | os.PathLike,
                    table_path: str | os.PathLike, rejects_path: str | os.PathLike, *,
                    threads: int = 1, log: Callable[[str], Any] = print,
                    metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Degrade and augment a grid of model files into flux/ivar matrices, a table and rejects.

    read_wave(wave_path) gives the models' common vacuum wavelengths (a failure here is fatal:
    no model can be read without it); read_spectrum(path, wavelength_vacuum) gives one model
    with labels in ``meta``. Both must be picklable when threads > 1. Rows are in file order,
    ``n_augment`` per accepted model. An unreadable or unusable file, or a second file with the
    same name stem, becomes a reject row. Returns counts: n_files, n_accepted (models),
    n_rows, n_rejected, per_reason, elapsed_s, spectra_per_s (rows per second).
    """
    c = synthesize_config(cfg, grid)
    n_augment = int(c["n_augment"])
    wavelength_vacuum = np.asarray(read_wave(str(wave_path)), dtype=np.float64)
    paths = [str(p) for p in spectrum_paths]
    n_pixels = grid.n_pixels
    say(log, f"{STAGE}: {len(paths)} model files x {n_augment} copies, grid {grid.hash()} "
              f"({n_pixels} pixels), R={c['resolution']}, threads={threads}")

    rejects: list[dict[str, Any]] = []
    per_reason: Counter[str] = Counter()
    tasks, seen = [], set()
    for index, path in enumerate(paths):
        stem = Path(path).stem
        if stem in seen:
            # spectrum_id is built from the stem: a second file of that name would collide
            rejects.append({"spectrum_id": stem, "path": path, "stage": STAGE,
                            "reason": "duplicate model file name"})
            per_reason["duplicate model file name"] += 1
            continue
        seen.add(stem)
        tasks.append((index, path, stem))

    state = _GridState(read_spectrum, wavelength_vacuum, grid, c)
    stream = MatrixRowStream([flux_path, ivar_path], capacity=len(tasks) * n_augment,
                             n_pixels=n_pixels)
    records: list[dict[str, Any]] = []
    n_accepted = 0
    progress = Progress(log, STAGE, len(tasks), "model files")
    try:
        for done, result in enumerate(ordered_map(_synthesize_model, state, tasks, threads), 1):
            if result.reason:
                rejects.append({"spectrum_id": result.stem, "path": result.path,
                                "stage": STAGE, "reason": result.reason})
                per_reason[result.key] += 1
            else:
                n_accepted += 1
                for flux, ivar, row in result.rows:
                    records.append({**row, "row": stream.append(flux, ivar)})
            progress.update(done, f"{len(records)} rows written", len(records), len(rejects))
        stream.commit()
    except BaseException:
        stream.abort()
        raise

    table = pd.DataFrame.from_records(records, columns=list(_TABLE_COLUMNS))
    table = table.astype({"spectrum_id": str, "star_id": str, "row": np.int64,
                          **{k: np.float64 for k in LABEL_KEYS}, "snr": np.float64,
                          "rv_shift": np.float64, "resolution": np.float64,
                          "n_zero_pixels": np.int64, "split": str, "source": str})
    meta = artifacts.provenance(config=c, stage=STAGE)
    meta.update(dict(metadata or {}))
    meta.update({"grid_hash": grid.hash(), "n_pixels": n_pixels,
                 "segments": [s.name for s in grid.segments], "n_rows": len(records),
                 "wave_path": str(wave_path)})
    artifacts.save_table(table_path, table, metadata=meta)
    artifacts.save_table(rejects_path, rejects_frame(rejects), metadata=meta)

    elapsed = progress.elapsed()
    counts = {"n_files": len(paths), "n_accepted": n_accepted, "n_rows": len(records),
              "n_rejected": len(rejects), "per_reason": dict(per_reason), "elapsed_s": elapsed,
              "spectra_per_s": len(records) / elapsed if elapsed > 0 else math.nan}
    say(log, f"{STAGE}: done in {elapsed:.1f} s: {n_accepted} models → {len(records)} rows, "
              f"{len(rejects)} rejected ({counts['spectra_per_s']:.1f} spectra/s)")
    log_reject_counts(log, STAGE, per_reason)
    return counts
