"""Simulated surveys written in the real archives' file formats, with known true labels.

Three generators, each driven by one experiment's ``simulate`` config block:

* :func:`simulate_gaia_eso` — GIRAFFE HR10 + HR21 Phase-3 1-D spectra (one file per star and
  setup) and a DR5.1-like parameter catalogue whose labels carry realistic errors;
* :func:`simulate_marvels` — MARVELS-like per-plate files (60 stars, 2 beams each), a star
  catalogue with labels for FGK dwarfs, a literature table for calibration stars and unlabelled
  giant candidates;
* :func:`simulate_phoenix_grid` — a PHOENIX-ACES-like HiRes grid (flux files + WAVE file, vacuum Å,
  trimmed wavelength range) made with the clean line list.

Every generator also writes a truth table (true labels, defect type) that only the validate stage
reads, and a manifest of the files it wrote. Stars are simulated independently from
``numpy.random.default_rng([seed, star_index])`` so output does not depend on worker count.

Defects injected into ``defect_fraction`` of observed stars (type recorded in the truth table):
cosmic-ray spikes, a zeroed detector run, bad continuum (additive scattered light, which
normalisation cannot remove), double-lined binary, emission cores in the strong lines, and
spectrum/label mismatch (the catalogue carries another star's labels). Separately, a
``broken_file_fraction`` of Gaia-ESO stars get archive-level failures (a truncated file, all-NaN
or zero flux, a missing setup) that the normalize stage must reject with a reason.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from ..artifacts import save_table
from ..spectral import C_KMS, air_to_vacuum, resample_flux, log_lambda_grid
from .catalogue import observe_catalog_labels
from .instrument import (Conditions, DetectorEffects, correlate_noise, detector_effects,
                         draw_conditions, load_sky_lines, wavelength_distortion)
from .physics import (ELEMENTS, Broadening, Instrument, ForwardModel, LABEL_ORDER,
                      blackbody_flux_per_cm, intrinsic_flux, load_linelist, load_telluric_lines,
                      perturbed_linelist)
from .stars import draw_star_nuisances

DEFECT_TYPES = ("cosmic_rays", "zeroed_run", "bad_continuum", "double_lined_binary",
                "emission_cores", "label_mismatch")
#: archive-level failures (a star's files, not its spectrum): normalize must reject these with a
#: reason and carry on
BROKEN_FILE_TYPES = ("truncated_file", "all_nan_flux", "zero_flux", "missing_setup")

Log = Callable[[str], None]


# ------------------------------------------------------------------ stellar populations

#: the simulated labels stay inside the synthetic grids' ranges
TEFF_LIMITS, LOGG_LIMITS, FE_H_LIMITS = (4000.0, 7000.0), (1.0, 5.0), (-1.5, 0.5)


def _main_sequence_logg(teff: np.ndarray) -> np.ndarray:
    return 4.65 - 0.5 * ((teff - 4600.0) / 2200.0) ** 1.5


def draw_labels(n: int, rng: np.random.Generator, population: str,
                stars_cfg: Mapping[str, Any] | None = None,
                extra_rng: np.random.Generator | None = None) -> pd.DataFrame:
    """True labels of a Milky-Way-disc-like sample.

    Class fractions [dwarf, subgiant, giant] come from ``stars_cfg['class_fractions']``
    (``ges_field``: 55/10/35 %, giants 40 % red clump; ``dwarfs``: FGK main sequence only;
    ``giant_candidates``: the deep-REMAP giant-candidate sample); with
    ``class_fraction_concentration`` κ > 0 each seed draws its own fractions from Dir(κ × mean).
    [Fe/H] ~ N(−0.15, 0.3); [Mg/Fe] follows a thin disc (slightly decreasing with [Fe/H]) or,
    with a probability rising at low metallicity, a thick disc (α-enhanced knee); [Al/Fe] from
    the ``al_fe`` relation. A fraction ``al_rich_mg_poor.fraction`` of the stars (in populations
    with giants) are metal-poor red giants with raised [Al/Fe] and lowered [Mg/Fe], like
    second-generation globular-cluster stars; column ``chemical_population`` says which.

    ``rng`` draws today's sample in a fixed order; ``extra_rng`` (the populations' own stream)
    draws the class fractions and the Al-rich stars, so those knobs move nothing else.
    """
    from .. import config

    stars_cfg = config.section("simulate.stars", stars_cfg)
    extra_rng = rng.spawn(1)[0] if extra_rng is None else extra_rng
    fractions = stars_cfg["class_fractions"]
    if population not in fractions:
        raise ValueError(f"population {population!r}: choose one of {sorted(fractions)}")
    mean = np.asarray(fractions[population], dtype=float)
    p = fractions[population]
    concentration = float(stars_cfg["class_fraction_concentration"])
    if concentration > 0:
        p = np.zeros(3)
        p[mean > 0] = extra_rng.dirichlet(concentration * mean[mean > 0] / mean.sum())
    kind = rng.choice(3, size=n, p=p)
    teff = np.empty(n)
    logg = np.empty(n)
    dw, sg, gi = kind == 0, kind == 1, kind == 2
    teff[dw] = rng.uniform(4600.0, 6800.0, dw.sum())
    logg[dw] = _main_sequence_logg(teff[dw]) - rng.exponential(0.08, dw.sum())
    teff[sg] = rng.uniform(5000.0, 6300.0, sg.sum())
    logg[sg] = rng.uniform(3.5, 4.1, sg.sum())
    clump = gi & (rng.random(n) < 0.4)
    rgb = gi & ~clump
    teff[rgb] = rng.uniform(4000.0, 5300.0, rgb.sum())
    logg[rgb] = 1.2 + 2.2 * (teff[rgb] - 4000.0) / 1300.0 + rng.normal(0, 0.15, rgb.sum())
    teff[clump] = rng.normal(4750.0, 120.0, clump.sum())
    logg[clump] = rng.normal(2.45, 0.1, clump.sum())
    fe_h = rng.normal(-0.15, 0.3, n)
    thick = rng.random(n) < thick_disc_share(fe_h)
    mg_fe = disc_mg_fe(fe_h, thick) + rng.normal(0.0, 0.04, n)
    al = stars_cfg["al_fe"]
    al_fe = al["mg_fe_slope"] * mg_fe + al["offset"] + al["fe_h_slope"] * fe_h \
        + rng.normal(0.0, al["scatter"], n)
    labels = pd.DataFrame({
        "teff": np.clip(teff, *TEFF_LIMITS), "logg": np.clip(logg, *LOGG_LIMITS),
        "fe_h": np.clip(fe_h, *FE_H_LIMITS), "mg_fe": np.clip(mg_fe, -0.3, 0.5),
        "al_fe": np.clip(al_fe, -0.4, 0.6),
    })
    labels["population"] = np.array(["dwarf", "subgiant", "giant"])[kind]
    labels["chemical_population"] = "disc"
    rich = stars_cfg["al_rich_mg_poor"]
    if rich["fraction"] > 0 and mean[2] > 0:
        _make_al_rich(labels, extra_rng, rich, al)
    return labels


def thick_disc_share(fe_h: np.ndarray) -> np.ndarray:
    """Share of thick-disc stars at this [Fe/H] in the simulated Milky-Way disc."""
    return np.clip(0.15 + 0.6 * (-np.asarray(fe_h, dtype=float) - 0.1) / 0.8, 0.05, 0.7)


def disc_mg_fe(fe_h: np.ndarray, thick: np.ndarray) -> np.ndarray:
    """Mean [Mg/Fe] of the thick (``thick`` true) or thin disc at this [Fe/H]."""
    return np.where(thick, 0.30 - 0.2 * np.maximum(fe_h + 0.6, 0.0), -0.15 * fe_h)


def _make_al_rich(labels: pd.DataFrame, rng: np.random.Generator, rich: Mapping[str, Any],
                  al: Mapping[str, float]) -> None:
    """Turn a random ``rich['fraction']`` of the stars into Al-rich/Mg-poor metal-poor red giants
    (in place): α-rich halo/thick-disc chemistry at their [Fe/H], then Mg burnt into Al."""
    n = len(labels)
    hit = np.flatnonzero(rng.random(n) < rich["fraction"])
    k = hit.size
    teff = rng.uniform(4000.0, 5100.0, k)
    logg = 1.2 + 2.2 * (teff - 4000.0) / 1300.0 + rng.normal(0, 0.15, k)
    fe_h = rng.uniform(*rich["fe_h"], k)
    mg_fe = disc_mg_fe(fe_h, np.ones(k, dtype=bool)) + rng.normal(0.0, 0.04, k)
    al_fe = al["mg_fe_slope"] * mg_fe + al["offset"] + al["fe_h_slope"] * fe_h \
        + rng.normal(0.0, al["scatter"], k)
    mg_fe = mg_fe - rng.uniform(*rich["mg_fe_drop"], k)
    al_fe = al_fe + rng.uniform(*rich["al_fe_raise"], k)
    labels.loc[hit, "teff"] = np.clip(teff, *TEFF_LIMITS)
    labels.loc[hit, "logg"] = np.clip(logg, *LOGG_LIMITS)
    labels.loc[hit, "fe_h"] = fe_h
    labels.loc[hit, "mg_fe"] = np.clip(mg_fe, -0.3, 0.5)
    labels.loc[hit, "al_fe"] = np.clip(al_fe, -0.4, 1.0)
    labels.loc[hit, "population"] = "giant"
    labels.loc[hit, "chemical_population"] = "al_rich_mg_poor"


def cname(ra_deg: float, dec_deg: float) -> str:
    """Gaia-ESO CNAME 'HHMMSSss±DDMMSSs' from coordinates (truncated, as the survey does).

    Works in integer hundredths of a time-second and tenths of an arcsecond so that values
    such as −32.05° do not come out as 32°02'59.9" through floating-point error.
    """
    ra_cs = int(round(ra_deg / 15.0 * 360000.0, 6)) % (24 * 360000)
    hh, rem = divmod(ra_cs, 360000)
    mm, cs = divmod(rem, 6000)
    dec_ds = int(round(abs(dec_deg) * 36000.0, 6))
    dd, rem = divmod(dec_ds, 36000)
    dm, ds = divmod(rem, 600)
    sign = "+" if dec_deg >= 0 else "-"
    return f"{hh:02d}{mm:02d}{cs:04d}{sign}{dd:02d}{dm:02d}{ds:03d}"


def draw_snr(n: int, rng: np.random.Generator, cfg: Mapping[str, float]) -> np.ndarray:
    """S/N per pixel: log-normal around ``median`` with ``log_sigma``, clipped to [min, max]."""
    snr = np.exp(rng.normal(np.log(cfg["median"]), cfg["log_sigma"], n))
    return np.clip(snr, cfg["min"], cfg["max"])


# ------------------------------------------------------------------ defects and instrument

def choose_defects(n: int, rng: np.random.Generator, fraction: float,
                   types: list[str]) -> np.ndarray:
    unknown = set(types) - set(DEFECT_TYPES)
    if unknown:
        raise ValueError(f"simulate.defect_types: unknown {sorted(unknown)}; allowed {DEFECT_TYPES}")
    defect = np.full(n, "", dtype=object)
    if fraction > 0 and types:
        hit = rng.random(n) < fraction
        defect[hit] = rng.choice(types, size=hit.sum())
    return defect


def _emission_lines(lines: pd.DataFrame) -> np.ndarray:
    strong = lines[(lines["species"].isin(["Ca II", "H I"])) | (lines["broadening"] >= 5)]
    return strong["wavelength_air"].to_numpy()


def apply_spectral_defect(kind: str, wavelength: np.ndarray, flux: np.ndarray,
                          rng: np.random.Generator, *, rv_kms: float,
                          emission_wavelengths: np.ndarray,
                          companion: np.ndarray | None = None) -> np.ndarray:
    """Defects that change the normalised spectrum itself (before continuum and noise)."""
    f = flux.copy()
    if kind == "double_lined_binary" and companion is not None:
        light_ratio = rng.uniform(0.5, 1.0)
        f = (f + light_ratio * companion) / (1.0 + light_ratio)
    elif kind == "emission_cores":
        amp = rng.uniform(0.5, 1.0)
        for w0 in emission_wavelengths * (1.0 + rv_kms / C_KMS):
            f += amp * np.exp(-0.5 * ((wavelength - w0) / 0.35) ** 2)
    elif kind == "bad_continuum":
        # scattered light adds a constant: lines get shallower by 1/(1+s), continuum fit can't tell
        f = (f + rng.uniform(0.25, 0.5)) 
    return f


def raw_counts(wavelength: np.ndarray, flux: np.ndarray, snr: float, rng: np.random.Generator,
               defect: str = "", effects: DetectorEffects | None = None,
               extra_rng: np.random.Generator | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised flux → detector-like counts with a blaze continuum, noise and defects.

    Returns (counts, sigma, qual). S/N is per pixel at the mean continuum level, read noise and
    sky photons included: the continuum holds n electrons with n²/(n + r²) = S/N², so read noise
    (r) and sky photons weigh most where counts are low (line cores, blaze edges, faint stars).
    ``effects`` (:class:`~starlabels.simulate.instrument.DetectorEffects`) adds flat-field and
    blaze residuals (multiplying the counts), sky emission left by the subtraction, read noise
    and pixel-correlated noise (``extra_rng`` pads the correlated noise's ends); sigma stays the
    per-pixel σ, as reduction pipelines report it.
    """
    effects = effects or DetectorEffects()
    x = np.linspace(-1.0, 1.0, wavelength.size)
    blaze = 1.0 + rng.uniform(-0.25, 0.25) * x + rng.uniform(-0.35, 0.05) * x ** 2
    level = 10 ** rng.uniform(2.7, 4.3)
    if effects.throughput is not None:
        blaze = blaze * effects.throughput
    expected = level * blaze * flux
    mean_cont = level * blaze.mean()
    read2 = effects.read_noise_electrons ** 2
    extra = effects.extra_variance
    # electrons at the mean continuum (n = S/N² for pure photon noise) and their S/N-per-√n
    n_cont = snr ** 2 if read2 == 0 else 0.5 * (snr ** 2 + np.sqrt(snr ** 4 + 4 * snr ** 2 * read2))
    photon_snr = snr if read2 == 0 else np.sqrt(n_cont)
    sigma = (mean_cont / photon_snr) * np.sqrt(np.clip(blaze * flux / blaze.mean(), 0.01, None)
                                               + extra / n_cont)
    noise = rng.normal(0.0, 1.0, wavelength.size)
    if effects.correlation_pixels > 0:
        noise = correlate_noise(noise, effects.correlation_pixels, extra_rng)
    counts = expected + noise * sigma
    if effects.sky_residual_electrons is not None:
        counts = counts + effects.sky_residual_electrons * (mean_cont / n_cont)
    qual = np.zeros(wavelength.size, dtype=np.int32)
    # a few genuinely flagged hot pixels: QUAL set, value garbage — normalize must mask them
    hot = rng.random(wavelength.size) < 5e-4
    counts[hot] = level * rng.uniform(2.0, 10.0, hot.sum())
    qual[hot] = 1
    if defect == "cosmic_rays":
        for _ in range(rng.integers(5, 15)):
            i = rng.integers(0, wavelength.size - 2)
            counts[i:i + rng.integers(1, 3)] += level * blaze[i] * rng.uniform(1.0, 4.0)
    elif defect == "zeroed_run":
        length = int(rng.integers(wavelength.size // 50, wavelength.size // 12))
        start = int(rng.integers(0, wavelength.size - length))
        counts[start:start + length] = 0.0     # unflagged: QUAL stays 0
    return counts, sigma, qual


def truncate_file(path: Path) -> None:
    """Cut a written file to half its bytes: an interrupted transfer the archive never fixed."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def choose_broken(n: int, rng: np.random.Generator, fraction: float) -> np.ndarray:
    broken = np.full(n, "", dtype=object)
    hit = rng.random(n) < fraction
    broken[hit] = rng.choice(BROKEN_FILE_TYPES, size=hit.sum())
    return broken


# ------------------------------------------------------------------ parallel helper

def _run_parallel(func: Callable, tasks: list, threads: int, log: Log, what: str) -> list:
    start = time.perf_counter()
    results = []
    step = max(1, len(tasks) // 10)
    if threads > 1 and len(tasks) > 1:
        with mp.get_context("fork").Pool(threads) as pool:
            iterator = pool.imap(func, tasks, chunksize=max(1, len(tasks) // (threads * 20)))
            for i, res in enumerate(iterator, 1):
                results.append(res)
                if i % step == 0 or i == len(tasks):
                    _progress(log, what, i, len(tasks), start)
    else:
        for i, task in enumerate(tasks, 1):
            results.append(func(task))
            if i % step == 0 or i == len(tasks):
                _progress(log, what, i, len(tasks), start)
    return results


def _progress(log: Log, what: str, done: int, total: int, start: float) -> None:
    dt = time.perf_counter() - start
    log(f"simulate {what}: {done}/{total} ({100 * done / total:.0f}%), "
        f"{done / max(dt, 1e-9):.1f}/s, {dt:.1f} s")


# ------------------------------------------------------------------ shared observing set-up

def draw_observing_conditions(truth: pd.DataFrame, rng: np.random.Generator,
                              cfg: Mapping[str, Any]) -> None:
    """Add per-star S/N, radial velocity and injected defect type to ``truth`` (in place)."""
    n = len(truth)
    truth["snr"] = draw_snr(n, rng, cfg["snr"])
    truth["rv_kms"] = np.clip(rng.normal(cfg["rv_kms"]["mean"], cfg["rv_kms"]["sigma"], n),
                              -cfg["rv_kms"]["max_abs"], cfg["rv_kms"]["max_abs"])
    truth["defect"] = choose_defects(n, rng, cfg["defect_fraction"], list(cfg["defect_types"]))


def observed_linelist(cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(clean line list, the observed stars' line list): the latter carries the synthetic gap's
    log gf errors and extra lines, drawn from the survey seed so every stage rebuilds it alike."""
    lines = load_linelist(cfg.get("linelist"))
    gap = cfg["synthetic_gap"]
    obs_lines = perturbed_linelist(lines, np.random.default_rng([int(cfg["seed"]),
                                                                  STREAM_LINE_LIST]),
                                   log_gf_sigma=gap["log_gf_sigma"],
                                   extra_fraction=gap["extra_line_fraction"])
    return lines, obs_lines


def prepare_workers(cfg: Mapping[str, Any], seed: int, spectra_dir: Path) -> list[Instrument]:
    """Set the state forked simulation workers read: instrument model (with the electron-donor
    physics and telluric table the config asks for), the observed stars' line list (clean list +
    the synthetic gap's log gf errors and extra lines) and the sky lines."""
    lines, obs_lines = observed_linelist(cfg)
    instruments = _setup_instruments(cfg["setups"])
    model = ForwardModel(instruments, lines, sampling_kms=cfg["sampling_kms"],
                         electron_donors=bool(cfg["stars"]["electron_donors"]),
                         telluric=load_telluric_lines())
    _WORKER_STATE.clear()
    _WORKER_STATE.update(seed=seed, model=model, lines=obs_lines, spectra_dir=spectra_dir,
                         emission=_emission_lines(lines), cfg=cfg, sky_lines=load_sky_lines())
    return instruments


# ------------------------------------------------------------------ one exposure

# Forked simulation workers read the instrument model and line list from here (set by
# prepare_workers just before the pool starts) instead of pickling them for every star.
_WORKER_STATE: dict[str, Any] = {}

# Independent random streams, numpy SeedSequence entropy [seed, STREAM] (surveys) or
# [seed, star, visit, STREAM] (exposures): the draws of one knob never move another's.
STREAM_LINE_LIST = 10**9
STREAM_BROKEN = 2 * 10**9
STREAM_POPULATIONS = 3 * 10**9
STREAM_NUISANCES = 4 * 10**9
STREAM_CATALOGUE = 5 * 10**9
STREAM_PLATES = 6 * 10**9
STREAM_BENCHMARKS = 8 * 10**9
STREAM_EXPOSURE = 7


def _setup_instruments(setups: list[Mapping[str, Any]]) -> list[Instrument]:
    return [Instrument(s["name"], float(s["resolution"]),
                       np.arange(float(s["start"]), float(s["end"]) + 1e-9, float(s["step"])))
            for s in setups]


def _star_rngs(seed: int, index: int, visit: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(the star's stream as before repeat visits existed, for its first visit; the exposure's
    own stream for the realism knobs)."""
    base = [seed, index] if visit == 1 else [seed, index, visit]
    return np.random.default_rng(base), np.random.default_rng([seed, index, visit, STREAM_EXPOSURE])


def _broadening(row: Mapping[str, Any]) -> Broadening:
    return Broadening(vmic_kms=float(row["vmic_kms"]), vsini_kms=float(row["vsini_kms"]),
                      vmac_kms=float(row["vmac_kms"]))


def _observe_star(row: Mapping[str, Any], conditions: Conditions) -> list[np.ndarray]:
    """The star's normalised spectrum per setup in this exposure (defect-free)."""
    st = _WORKER_STATE
    model: ForwardModel = st["model"]
    labels = {k: row[k] for k in LABEL_ORDER}
    rv = row["rv_kms"] + conditions.residual_rv_kms
    per_setup = model.flux_per_setup(labels, rv, lines=st["lines"], star=_broadening(row),
                                     exposure=conditions.exposure)
    return per_setup


def _companion(row: Mapping[str, Any], rng: np.random.Generator, conditions: Conditions,
               raise_logg: bool) -> list[np.ndarray]:
    """A double-lined binary's companion through the same exposure: cooler (and, for Gaia-ESO,
    higher gravity), offset by an orbital RV; drawn from the star's ``rng`` in the order the
    simulator always drew it."""
    st = _WORKER_STATE
    model: ForwardModel = st["model"]
    labels = {k: row[k] for k in LABEL_ORDER}
    comp = dict(labels, teff=max(4000.0, labels["teff"] - rng.uniform(0, 800)))
    if raise_logg:
        comp["logg"] = min(4.8, labels["logg"] + rng.uniform(0, 0.5))
    drv = rng.choice([-1, 1]) * rng.uniform(40.0, 100.0)
    return model.flux_per_setup(comp, row["rv_kms"] + conditions.residual_rv_kms + drv,
                                lines=st["lines"], exposure=conditions.exposure)


def _detector(k: int, wavelength: np.ndarray, conditions: Conditions,
              rng: np.random.Generator) -> DetectorEffects:
    st = _WORKER_STATE
    resolution = st["model"].resolution_profile(k, wavelength, conditions.exposure)
    return detector_effects(wavelength, resolution, conditions, st["cfg"], rng, st["sky_lines"])


# ------------------------------------------------------------------ Gaia-ESO

def _ges_star(task: tuple) -> dict:
    from ..io.gaia_eso import ges_spectrum_filename, write_ges_spectrum

    index, row, visit = task
    st = _WORKER_STATE
    rng, xrng = _star_rngs(st["seed"], index, visit)
    conditions = draw_conditions(xrng, st["cfg"])
    model: ForwardModel = st["model"]
    per_setup = _observe_star(row, conditions)
    companion = None
    if row["defect"] == "double_lined_binary":
        companion = _companion(row, rng, conditions, raise_logg=True)
    files = []
    zero_setup = rng.integers(len(per_setup))
    broken = row["broken"] if visit == 1 else ""    # an archive failure hits one file set
    folder = st["spectra_dir"] if visit == 1 else st["spectra_dir"] / f"visit{visit}"
    for k, (inst, flux) in enumerate(zip(model.instruments, per_setup)):
        if broken == "missing_setup" and k == len(per_setup) - 1:
            continue                      # the archive holds no spectrum in this setup
        f = apply_spectral_defect(row["defect"], inst.wavelength, flux, rng,
                                  rv_kms=row["rv_kms"] + conditions.residual_rv_kms,
                                  emission_wavelengths=st["emission"],
                                  companion=None if companion is None else companion[k])
        defect = row["defect"] if (row["defect"] != "zeroed_run" or k == zero_setup) else ""
        effects = _detector(k, inst.wavelength, conditions, xrng)
        counts, sigma, qual = raw_counts(inst.wavelength, f, row["snr"], rng, defect, effects,
                                         xrng)
        if broken == "all_nan_flux":
            counts[:] = np.nan
        elif broken == "zero_flux":
            counts[:] = 0.0
        path = folder / ges_spectrum_filename(row["star_id"], inst.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_ges_spectrum(path, inst.wavelength, counts, sigma, cname=row["star_id"],
                           setup=inst.name, snr=float(row["snr"]), resolution=inst.resolution,
                           vrad_kms=float(row["rv_kms"]), qual=qual)
        if broken == "truncated_file" and k == 0:
            truncate_file(path)
        files.append({"path": str(path), "star_id": row["star_id"], "setup": inst.name,
                      "visit": visit})
    return {"files": files}


def ges_catalog_frame(truth: pd.DataFrame, cat: pd.DataFrame, vrad: np.ndarray,
                      setups: str, solar: Mapping[str, float], ges_type: str,
                      rv_error_kms: float) -> pd.DataFrame:
    """DR5.1-like catalogue rows of simulated stars: ``cat`` holds their catalogue labels and
    errors, ``truth`` their star_id, coordinates and S/N; ``vrad`` the catalogue RVs, off the
    truth by N(0, ``rv_error_kms``)."""
    return pd.DataFrame({
        "OBJECT": truth["star_id"].to_numpy(), "RA": truth["ra"].to_numpy(),
        "DECLINATION": truth["dec"].to_numpy(),
        "TEFF": cat["teff"].to_numpy(), "E_TEFF": cat["e_teff"].to_numpy(),
        "LOGG": cat["logg"].to_numpy(), "E_LOGG": cat["e_logg"].to_numpy(),
        "FEH": cat["fe_h"].to_numpy(), "E_FEH": cat["e_fe_h"].to_numpy(),
        # catalogue abundances are absolute: A(X) = A☉(X) + [X/Fe] + [Fe/H]
        "MG1": (solar["mg"] + cat["mg_fe"] + cat["fe_h"]).to_numpy(),
        "E_MG1": cat["e_mg_fe"].to_numpy(),
        "AL1": (solar["al"] + cat["al_fe"] + cat["fe_h"]).to_numpy(),
        "E_AL1": cat["e_al_fe"].to_numpy(),
        "SNR": truth["snr"].to_numpy(), "VRAD": np.asarray(vrad, dtype=float),
        "E_VRAD": np.full(len(truth), float(rv_error_kms)), "SETUP": setups, "GES_TYPE": ges_type,
    })


def _visit_tasks(truth: pd.DataFrame) -> list[tuple[int, dict, int]]:
    """(star index, row, visit) for every exposure, each star's visits together."""
    return [(i, row, visit) for i, row in enumerate(truth.to_dict("records"))
            for visit in range(1, int(row["n_visits"]) + 1)]


def _unit(star_or_plate: str, visit: int) -> str:
    """Files read together by normalize: one star's setups (Gaia-ESO) or one plate, per visit."""
    return star_or_plate if visit == 1 else f"{star_or_plate}/visit{visit}"


def draw_ges_stars(cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, np.random.Generator]:
    """The stars of a simulated Gaia-ESO survey before any spectrum is made: true labels,
    CNAMEs and coordinates, S/N, RV, defects, broken files and nuisances; and the survey's random
    generator, positioned where the catalogue draws continue."""
    seed = int(cfg["seed"])
    rng = np.random.default_rng(seed)
    n = int(cfg["n_stars"])
    truth = draw_labels(n, rng, cfg["population"], cfg["stars"],
                        np.random.default_rng([seed, STREAM_POPULATIONS]))
    ra, dec = rng.uniform(0, 360, n), rng.uniform(-70, 20, n)
    ids = [cname(a, d) for a, d in zip(ra, dec)]
    # CNAMEs are coordinates; make them unique deterministically if two stars coincide
    seen: dict[str, int] = {}
    for i, s in enumerate(ids):
        seen[s] = seen.get(s, 0) + 1
        if seen[s] > 1:
            ids[i] = f"{s}{seen[s]}"
    truth.insert(0, "star_id", ids)
    truth["ra"], truth["dec"] = ra, dec
    draw_observing_conditions(truth, rng, cfg)
    truth["broken"] = choose_broken(n, np.random.default_rng([seed, STREAM_BROKEN]),
                                    cfg["broken_file_fraction"])
    draw_star_nuisances(truth, np.random.default_rng([seed, STREAM_NUISANCES]), cfg)
    return truth, rng


def simulate_gaia_eso(cfg: Mapping[str, Any], raw_dir: str | Path, truth_path: str | Path, *,
                      threads: int = 1, log: Log = print, metadata: Mapping | None = None) -> dict:
    """Write a simulated Gaia-ESO GIRAFFE survey: spectra, parameter catalogue, manifest, truth.

    Stars observed more than once (``observing.repeat_fraction``) get one HR10 + HR21 pair per
    visit (visits after the first in ``spectra/visit<k>/``); the manifest's ``visit`` column
    tells normalize to keep each visit a spectrum of its own.
    """
    from ..io.gaia_eso import write_ges_catalog

    raw_dir = Path(raw_dir)
    spectra_dir = raw_dir / "spectra"
    spectra_dir.mkdir(parents=True, exist_ok=True)
    seed = int(cfg["seed"])
    n = int(cfg["n_stars"])
    truth, rng = draw_ges_stars(cfg)
    instruments = prepare_workers(cfg, seed, spectra_dir)
    setups = "|".join(i.name for i in instruments)
    log(f"simulate gaia_eso: {(truth.broken != '').sum()} stars with broken archive files "
        f"({dict(truth.loc[truth.broken != '', 'broken'].value_counts())})")
    # the catalogue draws from the survey's own generator and streams, the spectra from each
    # star's: drawing it first changes neither, and adds its truth columns (catalogue_outlier)
    # before the benchmark stars join the truth table
    cat = observe_catalog_labels(truth, rng, cfg["label_errors"], cfg["catalogue"],
                                 np.random.default_rng([seed, STREAM_CATALOGUE]))
    mismatch = np.flatnonzero(truth["defect"].to_numpy() == "label_mismatch")
    if mismatch.size:
        donors = rng.integers(0, n, mismatch.size)
        for label in LABEL_ORDER:
            cat.loc[cat.index[mismatch], label] = cat[label].to_numpy()[donors]
    rv_error = cfg["observing"]["catalogue_rv_error_kms"]
    catalog = ges_catalog_frame(truth, cat, truth["rv_kms"] + rng.normal(0, rv_error, n), setups,
                                cfg["solar_abundances"], "GE_MW", rv_error)
    # the benchmark stars draw from random streams of their own: the field stars do not change
    from .benchmarks import benchmark_stars

    bench = benchmark_stars(cfg, seed, setups, log=log)
    observed = pd.concat([truth, bench.truth], ignore_index=True) if len(bench.truth) else truth
    tasks = _visit_tasks(observed)
    log(f"simulate gaia_eso: {n} stars ({len(tasks)} exposures: {int((truth.n_visits > 1).sum())} "
        f"stars observed more than once), setups {[i.name for i in instruments]}, "
        f"{(truth.defect != '').sum()} with defects, "
        f"{int((truth.chemical_population != 'disc').sum())} Al-rich/Mg-poor, threads={threads}")
    results = _run_parallel(_ges_star, tasks, threads, log, "gaia_eso exposures")
    manifest = pd.DataFrame([f for r in results for f in r["files"]])
    manifest["unit"] = [_unit(s, v) for s, v in zip(manifest["star_id"], manifest["visit"])]
    write_ges_catalog(raw_dir / "catalog.fits", pd.concat([catalog, bench.catalog],
                                                          ignore_index=True))
    meta = dict(metadata or {}, survey="gaia_eso", n_stars=len(observed))
    # the benchmark stars' literature labels, as a real run takes them from the resource table
    save_table(raw_dir / "calibration_stars.parquet", bench.calibration, meta)
    save_table(raw_dir / "manifest.parquet", manifest, meta)
    save_table(truth_path, observed, meta)
    log(f"simulate gaia_eso: wrote {len(manifest)} spectrum files, catalogue and truth table")
    return {"n_stars": len(observed), "n_files": len(manifest)}


# ------------------------------------------------------------------ MARVELS

def _marvels_plate(task: tuple) -> dict:
    from ..io.marvels import marvels_plate_filename, write_marvels_plate

    plate, visit, rows = task
    st = _WORKER_STATE
    model: ForwardModel = st["model"]
    inst = model.instruments[0]
    # one wavelength solution per plate, shared by its stars
    plate_rng = np.random.default_rng([st["seed"], int(plate.removeprefix("PLATE")),
                                       STREAM_PLATES])
    wavelength = wavelength_distortion(inst.wavelength, st["cfg"], plate_rng)
    beams = []
    for row in rows:
        rng, xrng = _star_rngs(st["seed"], int(row["index"]), visit)
        conditions = draw_conditions(xrng, st["cfg"])
        flux = _observe_star(row, conditions)[0]
        companion = None
        if row["defect"] == "double_lined_binary":
            companion = _companion(row, rng, conditions, raise_logg=False)[0]
        flux = apply_spectral_defect(row["defect"], inst.wavelength, flux, rng,
                                     rv_kms=row["rv_kms"] + conditions.residual_rv_kms,
                                     emission_wavelengths=st["emission"], companion=companion)
        for beam in (1, 2):
            # the two interferometer beams share the star but not the noise (S/N split in two)
            effects = _detector(0, inst.wavelength, conditions, xrng)
            counts, sigma, qual = raw_counts(inst.wavelength, flux, row["snr"] / np.sqrt(2), rng,
                                             row["defect"] if beam == 1 else "", effects, xrng)
            beams.append(dict(starname=row["star_id"], beam=beam, wavelength=wavelength,
                              flux=counts, ivar=1.0 / sigma ** 2, mask=qual.astype(np.int16),
                              snr=float(row["snr"] / np.sqrt(2)), vrad_kms=float(row["rv_kms"])))
    path = st["spectra_dir"] / marvels_plate_filename(plate)
    write_marvels_plate(path, plate, beams, inst.resolution)
    return {"path": str(path), "plate": plate, "visit": visit,
            "stars": [row["star_id"] for row in rows]}


def _plates(truth: pd.DataFrame, per_plate: int) -> tuple[list[str], list[tuple[str, int, list]]]:
    """First-visit plate of every star, and (plate, visit, rows) for every plate observed: later
    visits fill plates of their own, numbered after the first-visit plates."""
    n = len(truth)
    first = [f"PLATE{1000 + i // per_plate}" for i in range(n)]
    records = truth.assign(plate=first).to_dict("records")
    tasks = []
    for name in dict.fromkeys(first):
        tasks.append((name, 1, [r for r in records if r["plate"] == name]))
    number = 1000 + (n + per_plate - 1) // per_plate
    for visit in range(2, int(truth["n_visits"].max()) + 1 if n else 2):
        again = [r for r in records if r["n_visits"] >= visit]
        for start in range(0, len(again), per_plate):
            tasks.append((f"PLATE{number}", visit, again[start:start + per_plate]))
            number += 1
    return first, tasks


def simulate_marvels(cfg: Mapping[str, Any], raw_dir: str | Path, truth_path: str | Path, *,
                     threads: int = 1, log: Log = print, metadata: Mapping | None = None) -> dict:
    """Write a simulated MARVELS survey: plates of 60 stars × 2 beams, star catalogue, calibration
    stars' literature table, manifest and truth.

    Samples: ``n_dwarfs`` labelled FGK dwarfs (for fine-tuning), ``n_calibration`` calibration
    stars with literature labels, ``n_giant_candidates`` unlabelled giant candidates (class
    fractions from ``stars.class_fractions.giant_candidates``, drawn per seed). Stars observed
    more than once appear on later plates (manifest column ``visit``); each plate has its own
    wavelength-solution error.
    """
    from ..io.marvels import write_marvels_star_catalog

    raw_dir = Path(raw_dir)
    spectra_dir = raw_dir / "spectra"
    spectra_dir.mkdir(parents=True, exist_ok=True)
    seed = int(cfg["seed"])
    rng = np.random.default_rng(seed)
    populations = np.random.default_rng([seed, STREAM_POPULATIONS])
    parts = [("dwarf_sample", draw_labels(cfg["n_dwarfs"], rng, "dwarfs", cfg["stars"],
                                          populations)),
             ("calibration", draw_labels(cfg["n_calibration"], rng, "dwarfs", cfg["stars"],
                                         populations)),
             ("giant_candidate", draw_labels(cfg["n_giant_candidates"], rng, "giant_candidates",
                                             cfg["stars"], populations))]
    truth = pd.concat([p.assign(sample=name) for name, p in parts], ignore_index=True)
    n = len(truth)
    truth.insert(0, "star_id", [f"TYC {4000 + i // 997}-{i % 997 + 1:05d}-1" for i in range(n)])
    order = rng.permutation(n)            # mix samples across plates like a real survey
    truth = truth.iloc[order].reset_index(drop=True)
    truth["plate"] = [f"PLATE{1000 + i // cfg['stars_per_plate']}" for i in range(n)]
    draw_observing_conditions(truth, rng, cfg)
    truth["index"] = np.arange(n)
    draw_star_nuisances(truth, np.random.default_rng([seed, STREAM_NUISANCES]), cfg)
    prepare_workers(cfg, seed, spectra_dir)
    _, tasks = _plates(truth, int(cfg["stars_per_plate"]))
    log(f"simulate marvels: {n} stars on {len(tasks)} plates "
        f"({int((truth.n_visits > 1).sum())} stars observed more than once), threads={threads}")
    results = _run_parallel(_marvels_plate, tasks, threads, log, "marvels plates")
    manifest = pd.DataFrame([{"path": r["path"], "unit": _unit(r["plate"], r["visit"]),
                              "plate": r["plate"], "setup": "MARVELS", "visit": r["visit"]}
                             for r in results])

    cat = observe_catalog_labels(truth, rng, cfg["label_errors"], cfg["catalogue"],
                                 np.random.default_rng([seed, STREAM_CATALOGUE]))
    labelled = truth["sample"].eq("dwarf_sample").to_numpy()
    mismatch = np.flatnonzero(labelled & (truth["defect"].to_numpy() == "label_mismatch"))
    donors = rng.choice(np.flatnonzero(labelled), mismatch.size) if mismatch.size else []
    for label in ("teff", "logg", "fe_h"):
        if mismatch.size:
            cat.loc[cat.index[mismatch], label] = cat[label].to_numpy()[donors]
    star_cat = pd.DataFrame({
        "STARNAME": truth["star_id"], "PLATE": truth["plate"],
        "TEFF": np.where(labelled, cat["teff"], np.nan),
        "TEFF_E": np.where(labelled, cat["e_teff"], np.nan),
        "LOG_G": np.where(labelled, cat["logg"], np.nan),
        "LOG_G_E": np.where(labelled, cat["e_logg"], np.nan),
        "FEH": np.where(labelled, cat["fe_h"], np.nan),
        "FEH_E": np.where(labelled, cat["e_fe_h"], np.nan),
        "RPM_LOG_G": np.where(truth["sample"].eq("giant_candidate"), "giant", "dwarf"),
    })
    write_marvels_star_catalog(raw_dir / "catalog.fits", star_cat)
    # literature labels of the calibration stars (cf. Ghezzi et al. 2014): smaller errors
    calib = truth["sample"].eq("calibration").to_numpy()
    lit_err = cfg["literature_errors"]
    literature = pd.DataFrame({"star_id": truth.loc[calib, "star_id"].to_numpy()})
    for label in ("teff", "logg", "fe_h"):
        literature[label] = truth.loc[calib, label].to_numpy() + rng.normal(0, lit_err[label],
                                                                            calib.sum())
        literature[f"e_{label}"] = lit_err[label]
    literature["reference"] = "simulated (starlabels demo; stands in for Ghezzi et al. 2014)"
    save_table(raw_dir / "calibration_stars.parquet", literature, dict(metadata or {}))
    meta = dict(metadata or {}, survey="sdss_marvels", n_stars=n)
    save_table(raw_dir / "manifest.parquet", manifest, meta)
    save_table(truth_path, truth.drop(columns=["index"]), meta)
    log(f"simulate marvels: wrote {len(manifest)} plate files, catalogue, {calib.sum()} "
        f"calibration stars and truth table")
    return {"n_stars": n, "n_files": len(manifest)}


# ------------------------------------------------------------------ PHOENIX-like grid

def _phoenix_model(task: tuple) -> dict:
    from ..io.phoenix import phoenix_relpath, write_phoenix_spectrum

    teff, logg, fe_h = task
    st = _WORKER_STATE
    labels = dict(teff=teff, logg=logg, fe_h=fe_h, mg_fe=0.0, al_fe=0.0)
    norm = intrinsic_flux(labels, st["lines_vacuum"], st["fine_grid"])
    flux, _, _ = resample_flux(st["fine_grid"], norm, st["wavelength_vacuum"])
    flux = flux * blackbody_flux_per_cm(st["wavelength_vacuum"], teff)
    rel = phoenix_relpath(teff, logg, fe_h, 0.0)
    path = st["grid_dir"] / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    write_phoenix_spectrum(path, flux.astype(np.float32), teff=teff, logg=logg, fe_h=fe_h, alpha=0.0)
    return {"path": str(path), "relpath": rel, "teff": teff, "logg": logg, "fe_h": fe_h,
            "alpha": 0.0}


def simulate_phoenix_grid(cfg: Mapping[str, Any], raw_dir: str | Path, *, threads: int = 1,
                          log: Log = print, metadata: Mapping | None = None) -> dict:
    """Write a PHOENIX-ACES-like HiRes grid: WAVE file (vacuum Å) + one flux file per model.

    The grid uses the clean line list (no synthetic-gap perturbations), a blackbody continuum in
    erg/s/cm²/cm, and a trimmed wavelength range sampled at ``sampling_resolution``. A random
    ``missing_fraction`` of grid points is left out, as real grids have holes.
    """
    from ..io.phoenix import WAVE_FILENAME, write_phoenix_wave

    raw_dir = Path(raw_dir)
    grid_dir = raw_dir / "HiResFITS"
    grid_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(cfg["seed"]))
    g = cfg["grid"]
    points = [(float(t), float(lg), float(z))
              for t in np.arange(g["teff"][0], g["teff"][1] + 1e-6, g["teff"][2])
              for lg in np.arange(g["logg"][0], g["logg"][1] + 1e-6, g["logg"][2])
              for z in np.arange(g["fe_h"][0], g["fe_h"][1] + 1e-6, g["fe_h"][2])]
    present = rng.random(len(points)) >= cfg["missing_fraction"]
    points = [p for p, keep in zip(points, present) if keep]
    lo, hi = (float(v) for v in cfg["wavelength_vacuum"])
    wave = log_lambda_grid(lo, hi, float(cfg["sampling_resolution"]))
    lines = load_linelist(cfg.get("linelist"))
    lines_vac = lines.assign(wavelength_air=air_to_vacuum(lines["wavelength_air"].to_numpy()))
    _WORKER_STATE.clear()
    _WORKER_STATE.update(lines_vacuum=lines_vac, wavelength_vacuum=wave, grid_dir=grid_dir,
                      fine_grid=log_lambda_grid(lo, hi, C_KMS / cfg["sampling_kms"]))
    write_phoenix_wave(grid_dir / WAVE_FILENAME, wave)
    log(f"simulate phoenix: {len(points)} grid models ({(~present).sum()} missing), "
        f"{wave.size} pixels each, threads={threads}")
    results = _run_parallel(_phoenix_model, points, threads, log, "phoenix models")
    manifest = pd.DataFrame(results)
    manifest["kind"] = "spectrum"
    manifest = pd.concat([pd.DataFrame([{"path": str(grid_dir / WAVE_FILENAME),
                                         "relpath": WAVE_FILENAME, "kind": "wave"}]), manifest],
                         ignore_index=True)
    save_table(raw_dir / "manifest.parquet", manifest, dict(metadata or {}, survey="phoenix"))
    return {"n_models": len(points)}


__all__ = ["simulate_gaia_eso", "simulate_marvels", "simulate_phoenix_grid", "draw_labels",
           "observe_catalog_labels", "DEFECT_TYPES", "ELEMENTS"]
