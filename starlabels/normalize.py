"""Normalize stage: raw archive spectra → one continuum-normalised flux matrix, a table, rejects.

Per star (:func:`normalize_star`):

1. each spectrum is brought into the grid's medium (vacuum → air) and shifted to the rest frame
   (catalogue RV if given, else the file's RV, else 0);
2. it is resampled (flux-conserving) onto every grid segment it overlaps; input pixels that are
   flagged, non-finite, have ivar ≤ 0 or flux ≤ 0 (zeroed detector runs) carry no weight, and
   grid pixels less than ``min_coverage`` covered by good input are masked;
3. each (spectrum, segment) piece is continuum-normalised by a sigma-clipped Chebyshev fit
   (:func:`starlabels.spectral.normalize_segment`, shared with the synthesize stage);
4. pieces covering the same segment (repeat observations, the two MARVELS beams) are coadded by
   inverse-variance weighting.

Normalising each piece *before* coadding differs from "coadd, then normalise" on purpose: two
beams or two epochs have different throughput and blaze, and a pixel masked in one of them would
otherwise make the coadded continuum jump between the two levels, which no low-order polynomial
can follow. After normalisation every piece has continuum 1, so the weighted mean is clean.

Masked pixels get flux 1.0 (continuum: no line signal for the network) and ivar 0.

Repeat visits: a unit may carry a visit number (the manifest's ``visit`` column). Each visit of
a star becomes a row of its own (``spectrum_id`` = the star_id for the first visit,
``<star_id>_v<k>`` for visit k, ``star_id`` shared), so the independent exposures of a star can
be compared; without visit numbers, every spectrum of a star in a unit is coadded as before.

The survey driver (:func:`normalize_survey`) runs the stars in parallel, streams the rows into
memory-mapped float32 ``.npy`` files, and accounts for every input star or file in either the
table or the rejects table (the batch engine of :mod:`starlabels.batch`).

Settings are the experiment's ``normalize`` section; keys it leaves out take the defaults of the
configuration schema (:func:`starlabels.config.section`).
"""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import artifacts, config
from .batch import (MatrixRowStream, Progress, RejectSpectrum, exception_text, log_reject_counts,
                    no_finite_flux, ordered_map, rejects_frame, say)
from .grid import WavelengthGrid
from .io.spectrum import Spectrum, SpectrumFormatError
from .spectral import (MASKED_FLUX, air_to_vacuum, check_continuum_config, doppler_shift,
                       grid_segments, normalize_segment, resample_flux, vacuum_to_air)

__all__ = ["normalize_config", "normalize_star", "normalize_survey", "visit_spectrum_id",
           "input_description", "grid_from_description"]

STAGE = "normalize"
# Table columns this stage computes; a catalogue column of the same name is kept as catalog_<name>.
_OWN_COLUMNS = ("spectrum_id", "star_id", "row", "snr", "masked_fraction", "rv_used",
                "n_spectra", "files", "setups", "dropped")


# ---------------------------------------------------------------- configuration

def visit_spectrum_id(star_id: str, visit: int) -> str:
    """The row id of a star's ``visit``-th exposure: the star_id itself for the first."""
    return str(star_id) if int(visit) == 1 else f"{star_id}_v{int(visit)}"


def normalize_config(cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The normalize section with the schema's defaults filled in, checked for values that cannot
    work."""
    c = config.section("normalize", cfg)
    check_continuum_config(c["continuum"])
    if c["medium"] not in ("air", "vacuum"):
        raise ValueError(f"normalize.medium must be 'air' or 'vacuum', got {c['medium']!r}")
    if not 0.0 <= float(c["min_coverage"]) <= 1.0:
        raise ValueError("normalize.min_coverage must be in [0, 1]")
    if not 0.0 <= float(c["max_masked_fraction"]) <= 1.0:
        raise ValueError("normalize.max_masked_fraction must be in [0, 1]")
    if not float(c["max_pixel_snr"]) > 0:
        raise ValueError("normalize.max_pixel_snr must be > 0")
    return c


# ---------------------------------------------------------------- what a network's input is

#: how normalize moves a spectrum to the rest frame (:func:`_rest_frame_rv`, ``doppler_shift``)
RV_CONVENTION = ("rest wavelength = observed wavelength / D(v), D the relativistic Doppler "
                 "factor, v > 0 receding, in km/s; v = the catalogue's radial velocity when it "
                 "has one, else the file's (0 without either)")


def input_description(grid: WavelengthGrid, cfg: Mapping[str, Any], *,
                      rv_column: str | None, survey: str | None) -> dict[str, Any]:
    """Everything that turns raw spectra into a row of this stage's flux matrix: the wavelength
    grid itself, the normalisation settings (``cfg``: the completed ``normalize`` section), the
    RV convention and which catalogue column gave the RVs. Model folders carry it, so an
    ensemble can be applied to new files with the same processing."""
    return {
        "survey": survey,
        "grid": {"medium": cfg["medium"], "unit": "Angstrom", "n_pixels": grid.n_pixels,
                 "hash": grid.hash(),
                 "segments": [{"name": s.name, "start": s.start, "end": s.end, "step": s.step}
                              for s in grid.segments]},
        "normalize": dict(cfg),
        "rv": {"catalogue_column": rv_column, "rest_frame": bool(cfg["rest_frame"]),
               "convention": RV_CONVENTION},
    }


def grid_from_description(description: Mapping[str, Any]) -> WavelengthGrid:
    """The wavelength grid of an :func:`input_description`, checked against its hash."""
    grid = WavelengthGrid.from_config(description["grid"]["segments"])
    if grid.hash() != description["grid"]["hash"]:
        raise ValueError(f"wavelength grid segments give hash {grid.hash()}, the description "
                         f"says {description['grid']['hash']}")
    return grid


# ---------------------------------------------------------------- grid helpers

def _segment_range(wavelength: np.ndarray) -> tuple[float, float]:
    """Outer pixel edges of a linear segment."""
    half = 0.5 * (wavelength[1] - wavelength[0]) if wavelength.size > 1 else 0.5
    return float(wavelength[0] - half), float(wavelength[-1] + half)


def _crop(wavelength: np.ndarray, lo: float, hi: float, pad: int = 2) -> slice:
    """Input pixels covering [lo, hi], with ``pad`` spare pixels each side (resampling is local)."""
    start = max(int(np.searchsorted(wavelength, lo)) - pad, 0)
    stop = min(int(np.searchsorted(wavelength, hi)) + pad, wavelength.size)
    return slice(start, stop)


# ---------------------------------------------------------------- one star

@dataclass
class _Prepared:
    """One spectrum in the grid's frame: bad pixels carry flux 0 and ivar 0 (no weight)."""
    spectrum: Spectrum
    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    rv_used: float


def _rest_frame_rv(spectrum: Spectrum, rv_kms: float | None, rest_frame: bool) -> float:
    """Catalogue RV if finite, else the file's RV if finite, else 0 (no shift if rest_frame off)."""
    if not rest_frame:
        return 0.0
    for candidate in (rv_kms, spectrum.rv_kms):
        if candidate is not None and math.isfinite(float(candidate)):
            return float(candidate)
    return 0.0


def _why_no_valid_pixels(flagged, flux, ivar, implausible) -> str:
    """The reasons pixels were unusable, largest first, for a spectrum none of whose pixels is."""
    counts = {"flagged bad by the archive": int(flagged.sum()),
              "flux not finite": int((~np.isfinite(flux)).sum()),
              "error not positive or not finite": int((~np.isfinite(ivar) | (ivar <= 0)).sum()),
              "flux ≤ 0": int((np.isfinite(flux) & (flux <= 0)).sum()),
              "error implying an impossible S/N (normalize.max_pixel_snr)":
                  int(implausible.sum())}
    parts = [f"{n} {what}" for what, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n]
    return f"no valid pixels of {flux.size}: {'; '.join(parts)}"


def _prepare(spectrum: Spectrum, cfg: Mapping[str, Any], rv_kms: float | None) -> _Prepared:
    """Validate one spectrum, move it to the grid's medium and the rest frame.

    Pixels carry no weight when the archive flags them, their flux or inverse variance is not
    finite or not positive, or their error implies an S/N per pixel above
    ``normalize.max_pixel_snr``: an error column near zero (ERR = 1e-30) would otherwise give
    the pixel all the weight of any coadd and overflow the float32 ivar matrix.
    """
    wavelength = np.asarray(spectrum.wavelength, dtype=np.float64)
    flux = np.asarray(spectrum.flux, dtype=np.float64)
    ivar = np.asarray(spectrum.ivar, dtype=np.float64)
    flagged = np.asarray(spectrum.mask, dtype=bool)
    defined = np.isfinite(wavelength) & np.isfinite(flux)
    if not defined.any():
        raise RejectSpectrum(no_finite_flux(flux, wavelength), key="no finite flux")
    if not (flux[defined] > 0).any():
        raise RejectSpectrum("zero flux")
    with np.errstate(invalid="ignore", over="ignore"):
        implausible = np.isfinite(ivar) & (ivar > 0) & (
            np.abs(flux) * np.sqrt(ivar) > float(cfg["max_pixel_snr"]))
    bad = (flagged | ~defined | ~np.isfinite(ivar) | (ivar <= 0) | (flux <= 0) | implausible)
    if bad.all():
        raise RejectSpectrum(_why_no_valid_pixels(flagged, flux, ivar, implausible),
                             key="no valid pixels")
    # a pixel without a wavelength cannot be placed anywhere: drop it (dead-beam rows are all-NaN)
    keep = np.isfinite(wavelength)
    wavelength, flux, ivar, bad = wavelength[keep], flux[keep], ivar[keep], bad[keep]
    if wavelength.size < 2 or np.any(np.diff(wavelength) <= 0):
        raise RejectSpectrum("wavelength not strictly increasing")
    if spectrum.medium == "vacuum" and cfg["medium"] == "air":
        wavelength = vacuum_to_air(wavelength)
    elif spectrum.medium == "air" and cfg["medium"] == "vacuum":
        wavelength = air_to_vacuum(wavelength)
    rv = _rest_frame_rv(spectrum, rv_kms, bool(cfg["rest_frame"]))
    if rv != 0.0:
        # observed λ = rest λ · D(v): dividing by D is a shift by -v
        wavelength = doppler_shift(wavelength, -rv)
    return _Prepared(spectrum, wavelength, np.where(bad, 0.0, flux), np.where(bad, 0.0, ivar), rv)


def _piece(prepared: _Prepared, segment_wavelength: np.ndarray, min_coverage: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Resample one spectrum onto one segment: (flux, ivar, usable), or None if it misses it."""
    lo, hi = _segment_range(segment_wavelength)
    if prepared.wavelength[-1] < lo or prepared.wavelength[0] > hi:
        return None
    cut = _crop(prepared.wavelength, lo, hi)
    flux, ivar, coverage = resample_flux(prepared.wavelength[cut], prepared.flux[cut],
                                         segment_wavelength, ivar_in=prepared.ivar[cut])
    usable = (coverage >= min_coverage) & np.isfinite(flux) & (flux > 0) & (ivar > 0)
    if not usable.any():
        return None
    return flux, ivar, usable


def _with_dropped(reason: str, dropped: Sequence[str]) -> str:
    """A star's reject reason followed by what was wrong with the spectra it lost on the way,
    which is often the real cause (a segment without coverage because its file was all NaN)."""
    return f"{reason} (dropped: {'; '.join(dropped)})" if dropped else reason


def normalize_star(spectra: Sequence[Spectrum], grid: WavelengthGrid,
                   cfg: Mapping[str, Any] | None = None, rv_kms: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """All spectra of one star → (flux, ivar, info) on ``grid``, continuum-normalised, coadded.

    ``rv_kms`` is the catalogue radial velocity (used for every spectrum when finite); otherwise
    each spectrum's own ``rv_kms`` (if finite) or 0. A spectrum that is unusable on its own
    (all-NaN, zero flux, no overlap with the grid, failed continuum) is dropped and listed in
    ``info['dropped']`` as long as others remain; when nothing is left, or a grid segment has no
    coverage, or too much of the grid is masked, :class:`RejectSpectrum` is raised.

    info: snr (median flux·sqrt(ivar) over unmasked pixels), masked_fraction, rv_used (median
    over the spectra used), n_spectra (spectra used), setups (list), dropped (list of
    'spectrum_id: reason').
    """
    c = normalize_config(cfg)
    if not spectra:
        raise RejectSpectrum("no spectra")
    prepared: list[_Prepared] = []
    problems: dict[int, str] = {}
    for i, spectrum in enumerate(spectra):
        try:
            prepared.append(_prepare(spectrum, c, rv_kms))
        except RejectSpectrum as exc:
            problems[i] = exc.reason
    if not prepared:
        reasons = list(dict.fromkeys(problems.values()))
        raise RejectSpectrum("; ".join(reasons), key=reasons[0] if len(reasons) == 1 else None)

    n_pixels = grid.n_pixels
    flux = np.full(n_pixels, MASKED_FLUX)
    ivar = np.zeros(n_pixels)
    used = [False] * len(prepared)
    failed_fit: set[int] = set()
    dropped = [f"{spectra[i].spectrum_id}: {reason}" for i, reason in problems.items()]
    min_coverage = float(c["min_coverage"])
    for name, wavelength, columns in grid_segments(grid):
        weighted_flux = np.zeros(wavelength.size)
        weight = np.zeros(wavelength.size)
        fit_failed = False
        for k, piece in enumerate(prepared):
            resampled = _piece(piece, wavelength, min_coverage)
            if resampled is None:
                continue
            try:
                f_norm, iv_norm = normalize_segment(wavelength, *resampled, c["continuum"], name)
            except RejectSpectrum as exc:
                fit_failed = True
                failed_fit.add(k)
                dropped.append(f"{piece.spectrum.spectrum_id}: {exc.reason}")
                continue
            weighted_flux += f_norm * iv_norm     # masked pixels have iv_norm = 0: no weight
            weight += iv_norm
            used[k] = True
        if not weight.any():
            if fit_failed:
                raise RejectSpectrum(_with_dropped(f"continuum fit failed in segment {name}",
                                                   dropped), key="continuum fit failed")
            raise RejectSpectrum(_with_dropped(f"no coverage of grid segment {name}", dropped),
                                 key=f"no coverage of grid segment {name}")
        has_data = weight > 0
        flux[columns] = np.where(has_data, weighted_flux / np.where(has_data, weight, 1.0),
                                 MASKED_FLUX)
        ivar[columns] = weight

    masked = ivar <= 0
    masked_fraction = float(masked.mean())
    limit = float(c["max_masked_fraction"])
    if masked_fraction > limit:
        raise RejectSpectrum(_with_dropped(f"masked fraction {masked_fraction:.2f} > {limit:.2f}",
                                           dropped), key=f"masked fraction > {limit:.2f}")
    per_pixel = flux[~masked] * np.sqrt(ivar[~masked])
    snr = float(np.median(per_pixel[np.isfinite(per_pixel)]))

    for k, piece in enumerate(prepared):
        if not used[k] and k not in failed_fit:
            dropped.append(f"{piece.spectrum.spectrum_id}: not used (no usable overlap with "
                           f"the grid)")
    used_pieces = [p for p, u in zip(prepared, used) if u]
    info = {
        "snr": snr,
        "masked_fraction": masked_fraction,
        "rv_used": float(np.median([p.rv_used for p in used_pieces])),
        "n_spectra": len(used_pieces),
        "setups": list(dict.fromkeys(p.spectrum.setup for p in used_pieces)),
        "dropped": dropped,
    }
    return flux, ivar, info


# ---------------------------------------------------------------- the survey driver

@dataclass
class _Accepted:
    star_id: str
    spectrum_id: str
    flux: np.ndarray
    ivar: np.ndarray
    info: dict[str, Any]
    files: list[str]


@dataclass
class _Rejected:
    spectrum_id: str
    path: str
    reason: str
    key: str
    is_star: bool = True     # False: a whole file (its stars are unknown)
    star_id: str | None = None


@dataclass
class _UnitResult:
    results: list[_Accepted | _Rejected] = field(default_factory=list)
    n_spectra: int = 0
    n_files: int = 0


@dataclass(frozen=True)
class _SurveyState:
    read_fn: Callable[[str], Any]
    grid: WavelengthGrid
    cfg: dict[str, Any]
    known_stars: frozenset[str]
    rv_by_star: dict[str, float]
    file_stars: dict[str, str] = field(default_factory=dict)


def _read_unit(paths: Sequence[str], read_fn: Callable[[str], Any], out: _UnitResult,
               file_stars: Mapping[str, str]) -> dict[str, list[tuple[Spectrum, str]]]:
    """Read every file of a unit; spectra grouped by star in order of first appearance.

    A file that cannot be read becomes one reject row: which stars it held is unknowable. A
    file the manifest lists for one star (``file_stars``) whose header names another is
    rejected too, under the manifest's star: trusting the header would give that other star's
    row this spectrum and leave the file's own star nowhere.
    """
    by_star: dict[str, list[tuple[Spectrum, str]]] = {}
    for path in paths:
        path = str(path)
        out.n_files += 1
        file_name = Path(path).name
        try:
            spectra = read_fn(path)
            if isinstance(spectra, Spectrum):
                spectra = [spectra]
            spectra = list(spectra)
            if not all(isinstance(s, Spectrum) for s in spectra):
                raise TypeError("reader returned something other than Spectrum objects")
        except SpectrumFormatError as exc:
            out.results.append(_Rejected(file_name, path, f"unreadable: {exc}", "unreadable",
                                         is_star=False))
            continue
        except Exception as exc:   # noqa: BLE001 - a survey run must survive any bad file
            out.results.append(_Rejected(file_name, path, f"unreadable: {exception_text(exc)}",
                                         "unreadable", is_star=False))
            continue
        if not spectra:
            out.results.append(_Rejected(file_name, path, "no spectra in file",
                                         "no spectra in file", is_star=False))
            continue
        listed_for = file_stars.get(path)
        named = sorted({str(s.star_id) for s in spectra} - {listed_for})
        if listed_for is not None and named:
            out.results.append(_Rejected(
                listed_for, path, f"the file's header names star(s) {named}, but the manifest "
                                  f"lists it for star {listed_for}", "header names another star",
                is_star=False))
            continue
        out.n_spectra += len(spectra)
        for spectrum in spectra:
            by_star.setdefault(str(spectrum.star_id), []).append((spectrum, path))
    return by_star


def _normalize_unit(state: _SurveyState, unit: tuple[Sequence[str], int]) -> _UnitResult:
    """Read one unit (paths, visit) and normalise each of its stars; never raises for bad
    input."""
    paths, visit = unit
    out = _UnitResult()
    for star_id, pairs in _read_unit(paths, state.read_fn, out, state.file_stars).items():
        files = list(dict.fromkeys(path for _, path in pairs))
        spectrum_id = visit_spectrum_id(star_id, visit)
        if star_id not in state.known_stars:
            out.results.append(_Rejected(spectrum_id, ";".join(files), "not in catalogue",
                                         "not in catalogue", star_id=star_id))
            continue
        try:
            flux, ivar, info = normalize_star([s for s, _ in pairs], state.grid, state.cfg,
                                              rv_kms=state.rv_by_star.get(star_id))
        except RejectSpectrum as exc:
            out.results.append(_Rejected(spectrum_id, ";".join(files), exc.reason, exc.key,
                                         star_id=star_id))
            continue
        except Exception as exc:   # noqa: BLE001 - one broken star must not stop the survey
            text = exception_text(exc)
            out.results.append(_Rejected(spectrum_id, ";".join(files), f"error: {text}",
                                         f"error: {type(exc).__name__}", star_id=star_id))
            continue
        flux32, ivar32 = flux.astype(np.float32), ivar.astype(np.float32)
        if not (np.isfinite(flux32).all() and np.isfinite(ivar32).all()):
            out.results.append(_Rejected(spectrum_id, ";".join(files),
                                         "flux or ivar not finite in float32 after "
                                         "normalisation", "not finite after normalisation",
                                         star_id=star_id))
            continue
        out.results.append(_Accepted(star_id, spectrum_id, flux32, ivar32, info, files))
    return out


def _catalogue(stars: pd.DataFrame) -> pd.DataFrame:
    """The star catalogue indexed by star_id (str), unique, without a star_id column."""
    cat = stars.set_index("star_id") if "star_id" in stars.columns else stars.copy()
    cat.index = cat.index.map(str)
    cat.index.name = "star_id"
    duplicated = cat.index[cat.index.duplicated()].unique()
    if len(duplicated):
        raise ValueError(f"stars: {len(duplicated)} duplicate star_id(s), e.g. "
                         f"{list(duplicated[:5])}; one catalogue row per star is required")
    return cat


def _catalogue_rv(cat: pd.DataFrame, rv_column: str | None) -> dict[str, float]:
    if not rv_column or rv_column not in cat.columns:
        return {}
    rv = pd.to_numeric(cat[rv_column], errors="coerce")
    return {sid: float(v) for sid, v in zip(cat.index, rv) if np.isfinite(v)}


def _star_table(records: list[dict[str, Any]], cat: pd.DataFrame) -> pd.DataFrame:
    """Accepted-star records followed by their catalogue columns (renamed where they collide)."""
    base = pd.DataFrame.from_records(records, columns=list(_OWN_COLUMNS))
    base = base.astype({"spectrum_id": str, "star_id": str, "row": np.int64, "snr": np.float64,
                        "masked_fraction": np.float64, "rv_used": np.float64,
                        "n_spectra": np.int64, "files": str, "setups": str, "dropped": str})
    extra = cat.loc[list(base["star_id"])].reset_index(drop=True)
    extra.columns = [f"catalog_{c}" if c in _OWN_COLUMNS else str(c) for c in extra.columns]
    return pd.concat([base, extra], axis=1)


def _listed_once(units: Sequence[Sequence[str]], file_problems: Mapping[str, str]
                 ) -> tuple[list[list[str]], list[_Rejected]]:
    """The units with every file once and without the files that are not there to read, and a
    reject for each file left out (in manifest order)."""
    seen: dict[str, int] = {}
    problems = {os.path.normpath(os.path.abspath(str(k))): str(v)
                for k, v in file_problems.items()}
    kept: list[list[str]] = []
    early: list[_Rejected] = []
    for number, unit in enumerate(units):
        paths = []
        for path in (str(p) for p in unit):
            key = os.path.normpath(os.path.abspath(path))
            name = Path(path).name
            if key in seen:
                early.append(_Rejected(name, path, f"listed twice in the manifest (also in unit "
                                                   f"{seen[key]}): read once, never coadded "
                                                   f"with itself", "listed twice in the manifest",
                                       is_star=False))
                continue
            seen[key] = number
            if key in problems:
                early.append(_Rejected(name, path, f"not downloaded: {problems[key]}",
                                       "not downloaded", is_star=False))
                continue
            paths.append(path)
        kept.append(paths)
    return kept, early


def normalize_survey(units: Sequence[Sequence[str]], read_fn: Callable[[str], Any],
                     grid: WavelengthGrid, stars: pd.DataFrame, cfg: Mapping[str, Any] | None,
                     flux_path: str | os.PathLike, ivar_path: str | os.PathLike,
                     table_path: str | os.PathLike, rejects_path: str | os.PathLike, *,
                     rv_column: str | None = "vrad", threads: int = 1,
                     log: Callable[[str], Any] = print,
                     metadata: Mapping[str, Any] | None = None,
                     visits: Sequence[int] | None = None,
                     file_stars: Mapping[str, str] | None = None,
                     file_problems: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Normalise a survey: groups of files → flux/ivar matrices, star table and rejects table.

    units    : groups of file paths read together (a star's files; one MARVELS plate file)
    read_fn  : path → list of Spectrum (a single Spectrum is accepted too); must be picklable
               (a module-level function or functools.partial) when threads > 1
    stars    : the catalogue, indexed by star_id or with a star_id column; every column is
               copied into the table; ``rv_column`` (if present) gives the rest-frame RV
    file_stars    : path → the star the manifest lists the file for (surveys with one star per
                    file); a file whose header names another star is rejected
    file_problems : path → why the file is not there to read (a download the archive could not
                    serve); such a file becomes a reject with that reason, unread

    A file listed twice (in one unit or two) is read once; the second listing is a reject
    ("listed twice"), so a spectrum is never coadded with itself.

    visits   : the visit number of each unit (None: all 1); a star's visits become separate rows
               (:func:`visit_spectrum_id`)

    Rows are in unit order, then in order of the stars' first spectrum in the unit, whatever
    ``threads``. Every star read and every unreadable file ends up either in the table or in the
    rejects table. A star met again in a later unit of the same visit is rejected as a duplicate
    (group a star's files into one unit to coadd them). Returns counts: n_units, n_files, n_spectra, n_stars
    (star occurrences), n_accepted, n_rejected, per_reason (by reason key),
    n_catalogue_unobserved (catalogue stars no unit held), elapsed_s, spectra_per_s.
    """
    c = normalize_config(cfg)
    cat = _catalogue(stars)
    visits = [1] * len(units) if visits is None else [int(v) for v in visits]
    if len(visits) != len(units):
        raise ValueError(f"{len(visits)} visit numbers for {len(units)} units")
    kept, early = _listed_once(units, file_problems or {})
    units = list(zip(kept, visits))
    state = _SurveyState(read_fn, grid, c, frozenset(cat.index), _catalogue_rv(cat, rv_column),
                         {str(k): str(v) for k, v in (file_stars or {}).items()})
    n_pixels = grid.n_pixels
    say(log, f"{STAGE}: {len(units)} units, {len(cat)} catalogue stars, grid {grid.hash()} "
              f"({n_pixels} pixels in {len(grid.segments)} segments), threads={threads}")

    # one row per catalogue star and visit at most: anything else is rejected before it is
    # written
    stream = MatrixRowStream([flux_path, ivar_path], capacity=len(cat) * len(set(visits) or {1}),
                             n_pixels=n_pixels)
    records: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    per_reason: Counter[str] = Counter()
    for result in early:
        rejects.append({"spectrum_id": result.spectrum_id, "path": result.path, "stage": STAGE,
                        "reason": result.reason})
        per_reason[result.key] += 1
    accepted_from: dict[str, str] = {}
    stars_seen: set[str] = set()
    n_spectra = n_stars = 0
    n_files = len(early)
    progress = Progress(log, STAGE, len(units), "units")
    try:
        for done, unit in enumerate(ordered_map(_normalize_unit, state, units, threads), 1):
            n_spectra += unit.n_spectra
            n_files += unit.n_files
            for result in unit.results:
                if isinstance(result, _Accepted):
                    n_stars += 1
                    files = ";".join(result.files)
                    if result.spectrum_id in accepted_from:
                        result = _Rejected(result.spectrum_id, files,
                                           f"duplicate: star already normalised from "
                                           f"{accepted_from[result.spectrum_id]}",
                                           "duplicate star", star_id=result.star_id)
                    else:
                        accepted_from[result.spectrum_id] = files
                        stars_seen.add(result.star_id)
                        row = stream.append(result.flux, result.ivar)
                        info = result.info
                        records.append({
                            "spectrum_id": result.spectrum_id, "star_id": result.star_id,
                            "row": row,
                            "snr": info["snr"], "masked_fraction": info["masked_fraction"],
                            "rv_used": info["rv_used"], "n_spectra": info["n_spectra"],
                            "files": files, "setups": ";".join(info["setups"]),
                            "dropped": "; ".join(info["dropped"])})
                        continue
                elif result.is_star:
                    n_stars += 1
                    stars_seen.add(result.star_id)
                rejects.append({"spectrum_id": result.spectrum_id, "path": result.path,
                                "stage": STAGE, "reason": result.reason})
                per_reason[result.key] += 1
            progress.update(done, f"{n_stars} stars done ({len(records)} accepted)",
                            n_spectra, len(rejects))
        stream.commit()
    except BaseException:
        stream.abort()
        raise

    meta = artifacts.provenance(config=c, stage=STAGE)
    meta.update(dict(metadata or {}))
    meta.update({"grid_hash": grid.hash(), "n_pixels": n_pixels,
                 "segments": [s.name for s in grid.segments], "n_rows": len(records),
                 "spectra": input_description(grid, c, rv_column=rv_column,
                                              survey=meta.get("survey"))})
    artifacts.save_table(table_path, _star_table(records, cat), metadata=meta)
    artifacts.save_table(rejects_path, rejects_frame(rejects), metadata=meta)

    elapsed = progress.elapsed()
    n_unobserved = sum(1 for star_id in cat.index if star_id not in stars_seen)
    counts = {
        "n_units": len(units), "n_files": n_files, "n_spectra": n_spectra, "n_stars": n_stars,
        "n_accepted": len(records), "n_rejected": len(rejects), "per_reason": dict(per_reason),
        "n_catalogue_unobserved": n_unobserved,
        "elapsed_s": elapsed, "spectra_per_s": n_spectra / elapsed if elapsed > 0 else math.nan,
    }
    say(log, f"{STAGE}: done in {elapsed:.1f} s: {len(records)} stars accepted, "
              f"{len(rejects)} rejected, {n_spectra} spectra read "
              f"({counts['spectra_per_s']:.1f} spectra/s); {n_unobserved} catalogue stars "
              f"had no spectra in the units")
    log_reject_counts(log, STAGE, per_reason)
    return counts
