"""The simulator's forward model: stellar labels → continuum-normalised spectrum.

A deliberately simple, physically motivated line-formation model (not a model atmosphere):

* **Line strength.** For each line of element X in ionisation stage s (I or II), the optical depth
  at the Doppler core is

      log τ₀ = Z + log gf + (A(X) − A☉(Fe)) + log f_s − θ_exc χ − log κ_c + log(λ/5500 Å) − log(v_D/v_D☉)

  with θ = 5040/Teff, χ the excitation potential (Boltzmann at an excitation temperature
  1.15 Teff: lines form over a range of depths, and a single-layer exp(−τ) model with θ_exc = θ makes
  high-excitation lines — Mg I 8717/8736, Al I 8773 — far weaker than observed; hydrogen keeps
  θ_exc = θ because its n = 3 level at 12.09 eV would otherwise make Paschen lines saturate in
  the Sun), f_s the fraction of X in stage s from
  the Saha equation, log(N_II/N_I) = 2.5 log T − θ χ_ion − log Pe + log(2U_II/U_I) − 0.1762, and
  κ_c ∝ Pe θ^2.5 10^(0.754 θ) the H⁻ continuous opacity. The electron pressure scales as
  log Pe = log Pe☉ + (log g − 4.44)/3 + 0.4 (Teff − 5777)/1000 + 0.2 [M/H]_e (hotter stars ionise
  hydrogen, metal-rich ones donate electrons). [M/H]_e is [Fe/H], or, with ``electron_donors``,
  log Σ_X w_X 10^[X/H] over the metals with w_X their share of the Sun's free electrons
  (abundance × ionised fraction; Mg, Si and Fe give ≈90 %), so [Mg/Fe] changes the continuous
  opacity of cool atmospheres as it does in real ones. This reproduces the textbook behaviour: neutral lines
  of mostly-ionised metals barely feel gravity, ionised lines weaken as g^(−1/3), low-excitation
  neutral lines strengthen steeply in cool stars. A(X) = A☉(X) + [Fe/H] + [X/Fe] with [Mg/Fe] and
  [Al/Fe] free and every other element following [Fe/H]. Z is fixed so that a solar Fe I line with
  χ = 2.5 eV and log gf = −2.8 has τ₀ = 1 (solar line depths at R ≈ 20 000 then come out close to
  the observed ones for the diagnostic lines).
* **Line shape.** Voigt profiles (scipy.special.voigt_profile) with a Gaussian core from thermal +
  micro-turbulent velocity v_D = sqrt(2kT/m + ξ²) (ξ from a Teff/log g relation, or the star's
  own value) and a Lorentzian pressure-damping
  half-width a = a₀ · broadening · 10^(0.6 (log g − 4.44)) (Teff/5777)^0.3 that grows with gravity
  (van der Waals damping ∝ P_gas^0.7, P_gas ∝ g^0.85),
  so the wings of the strong lines (Ca II triplet, Mg b, Paschen) carry log g.
* **Emergent flux** = 1 − D_max (1 − exp(−Σ τ)), computed on a rest-frame grid uniform in ln λ.
  This is exp(−Σ τ) for weak lines; D_max = 0.92 (Minnaert's maximum depth) stands for the
  non-zero source function where saturated cores form, so the Ca II triplet cores keep the
  residual flux seen in real stars instead of reaching zero.
* **Star and instrument** (:meth:`ForwardModel.observe`): rotation (Gray's profile, linear limb
  darkening ε = 0.6) and isotropic Gaussian macroturbulence on the rest-frame grid; Doppler shift
  by the radial velocity; telluric H2O absorption (optional, in the observer's frame); Gaussian
  LSF with FWHM = λ/R, R constant or varying along the setup; flux-conserving resampling onto the
  instrument's pixels.

Everything needed to reproduce a spectrum exactly (line list, labels, RV, R, grid) is explicit, so
the same model gives the Cramér–Rao bound by differentiation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.special import voigt_profile

from .. import data
from ..spectral import (C_KMS, FWHM_TO_SIGMA, broaden_velocity, convolve_resolution,
                        convolve_variable_resolution, doppler_shift, log_lambda_grid,
                        macroturbulence_kernel, resample_flux, rotation_kernel)

DEFAULT_LINELIST = data.path("linelist.csv")

#: label order used for label vectors throughout the simulator
LABEL_ORDER = ("teff", "logg", "fe_h", "mg_fe", "al_fe")

# Solar abundances A☉ = log ε (Grevesse et al. 2007), atomic masses (amu), first ionisation
# potentials (eV) and log(2 U_II / U_I) with partition functions near 5000–6000 K (approximate).
ELEMENTS: dict[str, dict[str, float]] = {
    "H": dict(solar=12.00, mass=1.008, chi_ion=13.60, log_u_ratio=-0.30),
    "Na": dict(solar=6.17, mass=22.99, chi_ion=5.14, log_u_ratio=0.00),
    "Mg": dict(solar=7.53, mass=24.31, chi_ion=7.65, log_u_ratio=0.60),
    "Al": dict(solar=6.37, mass=26.98, chi_ion=5.99, log_u_ratio=-0.46),
    "Si": dict(solar=7.51, mass=28.09, chi_ion=8.15, log_u_ratio=0.09),
    "S": dict(solar=7.14, mass=32.06, chi_ion=10.36, log_u_ratio=-0.05),
    "Ca": dict(solar=6.31, mass=40.08, chi_ion=6.11, log_u_ratio=0.56),
    "Sc": dict(solar=3.05, mass=44.96, chi_ion=6.56, log_u_ratio=0.65),
    "Ti": dict(solar=4.90, mass=47.87, chi_ion=6.83, log_u_ratio=0.57),
    "Cr": dict(solar=5.64, mass=52.00, chi_ion=6.77, log_u_ratio=0.15),
    "Mn": dict(solar=5.39, mass=54.94, chi_ion=7.43, log_u_ratio=0.37),
    "Fe": dict(solar=7.45, mass=55.85, chi_ion=7.90, log_u_ratio=0.51),
    "Ni": dict(solar=6.23, mass=58.69, chi_ion=7.64, log_u_ratio=-0.15),
    "Cu": dict(solar=4.21, mass=63.55, chi_ion=7.73, log_u_ratio=0.00),
    "Y": dict(solar=2.21, mass=88.91, chi_ion=6.22, log_u_ratio=0.43),
}
#: the label that sets [X/Fe] for an element; elements not listed follow [Fe/H]
ABUNDANCE_LABEL = {"Mg": "mg_fe", "Al": "al_fe"}

SUN = dict(teff=5777.0, logg=4.44, fe_h=0.0, mg_fe=0.0, al_fe=0.0)
LOG_PE_SUN = 1.28          # log electron pressure (dyn cm⁻²) near τ = 2/3 in the Sun
K_BOLTZMANN_AMU = 8.254e-3  # 2k/m_u in (km/s)² per K: v_th² = 2kT/m = 8.254e-3 · T / A
DAMPING_KMS = 0.15          # default Lorentzian half-width of a metal line in the Sun (km/s)
EXCITATION_TEMPERATURE_SCALE = 1.15   # T_exc = 1.15 Teff (see module docstring)
MAX_DEPTH = 0.92            # Minnaert maximum line depth of saturated cores
REFERENCE_LINE = dict(excitation_potential=2.5, log_gf=-2.8)  # solar Fe I line with τ₀ = 1
LIMB_DARKENING = 0.6        # linear limb-darkening coefficient of the rotation profile (optical)
TELLURIC_FWHM_KMS = 4.0     # intrinsic width of an H2O line (Doppler + pressure, lower troposphere)
DEFAULT_TELLURIC = data.path("telluric_h2o.csv")


# ------------------------------------------------------------------ line list

def load_linelist(path: str | Path | None = None) -> pd.DataFrame:
    """Read the line list CSV (comment lines start with '#') and add element / ion columns."""
    path = data.resolve(path) if path else DEFAULT_LINELIST
    lines = pd.read_csv(path, comment="#")
    required = {"wavelength_air", "species", "excitation_potential", "log_gf"}
    missing = required - set(lines.columns)
    if missing:
        raise ValueError(f"{path}: line list lacks columns {sorted(missing)}")
    if "broadening" not in lines:
        lines["broadening"] = 1.0
    species = lines["species"].str.split()
    lines["element"] = species.str[0]
    lines["ion"] = species.str[1].map({"I": 1, "II": 2})
    unknown = sorted(set(lines["element"]) - set(ELEMENTS))
    if unknown or lines["ion"].isna().any():
        raise ValueError(f"{path}: unknown species {unknown or 'ionisation stage'}")
    return lines.sort_values("wavelength_air").reset_index(drop=True)


def perturbed_linelist(lines: pd.DataFrame, rng: np.random.Generator, *, log_gf_sigma: float,
                       extra_fraction: float, window: tuple[float, float] | None = None
                       ) -> pd.DataFrame:
    """The 'real star' line list of the synthetic gap: log gf errors and lines the grid lacks.

    Observed spectra are made with this list, synthetic (PHOENIX-like) spectra with the clean
    one, so a model trained on the grid meets systematically different spectra, as in reality.
    Extra lines are weak Fe I-like lines at random wavelengths inside ``window``.
    """
    out = lines.copy()
    out["log_gf"] = out["log_gf"] + rng.normal(0.0, log_gf_sigma, len(out))
    n_extra = int(round(extra_fraction * len(lines)))
    if n_extra:
        lo, hi = window or (lines.wavelength_air.min(), lines.wavelength_air.max())
        extra = pd.DataFrame({
            "wavelength_air": rng.uniform(lo, hi, n_extra),
            "species": "Fe I",
            "excitation_potential": rng.uniform(2.0, 5.0, n_extra),
            "log_gf": rng.uniform(-3.0, -1.0, n_extra),
            "broadening": 1.0,
            "element": "Fe",
            "ion": 1,
        })
        out = pd.concat([out, extra], ignore_index=True).sort_values("wavelength_air")
    return out.reset_index(drop=True)


# ------------------------------------------------------------------ atmosphere scalings

def as_label_dict(labels: Mapping[str, float] | Sequence[float]) -> dict[str, float]:
    if isinstance(labels, Mapping):
        out = {k: float(labels.get(k, SUN[k])) for k in LABEL_ORDER}
    else:
        out = {k: float(v) for k, v in zip(LABEL_ORDER, labels)}
        for k in LABEL_ORDER[len(out):]:
            out[k] = SUN[k]
    return out


def log_electron_pressure(teff: float, logg: float, metallicity: float) -> float:
    """log Pe; ``metallicity`` is [Fe/H] or the electron donors' [M/H]_e (module docstring)."""
    return LOG_PE_SUN + (logg - 4.44) / 3.0 + 0.4 * (teff - 5777.0) / 1000.0 + 0.2 * metallicity


def log_continuum_opacity(teff: float, log_pe: float) -> float:
    """log of the H⁻ bound-free opacity per hydrogen atom, up to a constant: Pe θ^2.5 10^(0.754θ)."""
    theta = 5040.0 / teff
    return log_pe + 2.5 * np.log10(theta) + 0.754 * theta


def microturbulence_kms(teff: float, logg: float) -> float:
    """ξ in km/s: ≈1 km/s in dwarfs, ≈1.5–2 km/s in giants (Gaia-ESO-like calibration shape)."""
    return float(np.clip(1.0 + 0.25 * (4.44 - logg) + 0.1 * (teff - 5777.0) / 1000.0, 0.5, 2.5))


def _log_stage_fraction(teff: float, log_pe: float, chi_ion: np.ndarray, log_u_ratio: np.ndarray,
                        ion: np.ndarray) -> np.ndarray:
    theta = 5040.0 / teff
    log_ratio = 2.5 * np.log10(teff) - theta * chi_ion - log_pe + log_u_ratio - 0.1762  # N_II/N_I
    # log f_I = −log(1 + R), log f_II = log R − log(1 + R); third stage neglected (cool stars)
    log1p_r = np.logaddexp(0.0, log_ratio * np.log(10.0)) / np.log(10.0)
    return np.where(ion == 1, -log1p_r, log_ratio - log1p_r)


def _donor_weights() -> dict[str, float]:
    """Each metal's share of the free electrons in the solar photosphere: abundance × ionised
    fraction at the Sun's Teff and Pe, normalised over the metals."""
    lpe = log_electron_pressure(SUN["teff"], SUN["logg"], 0.0)
    metals = [e for e in ELEMENTS if e != "H"]
    share = {}
    for e in metals:
        p = ELEMENTS[e]
        log_f2 = _log_stage_fraction(SUN["teff"], lpe, np.array([p["chi_ion"]]),
                                     np.array([p["log_u_ratio"]]), np.array([2]))[0]
        share[e] = 10.0 ** (p["solar"] + log_f2)
    total = sum(share.values())
    return {e: v / total for e, v in share.items()}


def donor_metallicity(labels: Mapping[str, float] | Sequence[float]) -> float:
    """[M/H]_e = log Σ_X w_X 10^[X/H]: the electron donors' abundance relative to the Sun, with
    Mg and Al from their own labels and the other metals following [Fe/H]."""
    lab = as_label_dict(labels)
    total = 0.0
    for element, weight in _DONOR_WEIGHTS.items():
        label = ABUNDANCE_LABEL.get(element)
        total += weight * 10.0 ** (lab["fe_h"] + (lab[label] if label else 0.0))
    return float(np.log10(total))


def _solar_reference() -> tuple[float, float]:
    lpe = log_electron_pressure(SUN["teff"], SUN["logg"], 0.0)
    return log_continuum_opacity(SUN["teff"], lpe), lpe


def line_parameters(labels: Mapping[str, float] | Sequence[float], lines: pd.DataFrame, *,
                    vmic_kms: float | None = None, electron_donors: bool = False
                    ) -> dict[str, np.ndarray]:
    """Per-line log τ₀, Doppler velocity v_D (km/s) and Lorentz half-width a (km/s).

    ``vmic_kms``: the star's microturbulence (None: :func:`microturbulence_kms`);
    ``electron_donors``: electron pressure from the donor metals' own abundances.
    """
    lab = as_label_dict(labels)
    teff, logg, fe_h = lab["teff"], lab["logg"], lab["fe_h"]
    el = lines["element"].to_numpy()
    theta_exc = 5040.0 / np.where(el == "H", teff, EXCITATION_TEMPERATURE_SCALE * teff)
    props = {k: np.array([ELEMENTS[e][k] for e in el]) for k in ("solar", "mass", "chi_ion",
                                                                   "log_u_ratio")}
    x_fe = np.zeros(len(lines))
    for element, label in ABUNDANCE_LABEL.items():
        x_fe[el == element] = lab[label]
    log_eps = props["solar"] + np.where(el == "H", 0.0, fe_h + x_fe)

    log_pe = log_electron_pressure(teff, logg, donor_metallicity(lab) if electron_donors else fe_h)
    log_kappa = log_continuum_opacity(teff, log_pe)
    ion = lines["ion"].to_numpy()
    log_f = _log_stage_fraction(teff, log_pe, props["chi_ion"], props["log_u_ratio"], ion)

    xi = microturbulence_kms(teff, logg) if vmic_kms is None else float(vmic_kms)
    v_doppler = np.sqrt(K_BOLTZMANN_AMU * teff / props["mass"] + xi ** 2)
    v_doppler_sun = np.sqrt(K_BOLTZMANN_AMU * SUN["teff"] / props["mass"]
                            + microturbulence_kms(SUN["teff"], SUN["logg"]) ** 2)
    wl = lines["wavelength_air"].to_numpy()
    log_tau0 = (_ZERO_POINT + lines["log_gf"].to_numpy() + (log_eps - ELEMENTS["Fe"]["solar"])
                + log_f - theta_exc * lines["excitation_potential"].to_numpy() - log_kappa
                + np.log10(wl / 5500.0) - np.log10(v_doppler / v_doppler_sun))
    damping = (DAMPING_KMS * lines["broadening"].to_numpy() * 10 ** (0.6 * (logg - 4.44))
               * (teff / 5777.0) ** 0.3)
    return {"log_tau0": log_tau0, "v_doppler": v_doppler, "damping": damping}


def _zero_point() -> float:
    """Z such that the solar Fe I REFERENCE_LINE at 5500 Å has τ₀ = 1."""
    log_kappa_sun, log_pe_sun = _solar_reference()
    fe = ELEMENTS["Fe"]
    log_f = _log_stage_fraction(SUN["teff"], log_pe_sun, np.array([fe["chi_ion"]]),
                                np.array([fe["log_u_ratio"]]), np.array([1]))[0]
    theta_exc = 5040.0 / (EXCITATION_TEMPERATURE_SCALE * SUN["teff"])
    return (-REFERENCE_LINE["log_gf"] - log_f + theta_exc * REFERENCE_LINE["excitation_potential"]
            + log_kappa_sun)


_ZERO_POINT = _zero_point()
_DONOR_WEIGHTS = _donor_weights()


# ------------------------------------------------------------------ spectra

def intrinsic_flux(labels: Mapping[str, float] | Sequence[float], lines: pd.DataFrame,
                   wavelength: np.ndarray, *, min_tau: float = 1e-4,
                   max_window_kms: float = 3000.0, max_depth: float = MAX_DEPTH,
                   vmic_kms: float | None = None, electron_donors: bool = False) -> np.ndarray:
    """Rest-frame normalised flux 1 − D_max(1 − exp(−Σ τ)) on ``wavelength`` (air Å, uniform in ln λ).

    Each line is evaluated only where its optical depth can exceed ``min_tau``: within 5 v_D of
    the core, or out to where the damping wing falls to min_tau (capped at max_window_kms).
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    par = line_parameters(labels, lines, vmic_kms=vmic_kms, electron_donors=electron_donors)
    tau = np.zeros_like(wavelength)
    lnw = np.log(wavelength)
    dlnw = lnw[1] - lnw[0]
    wl = lines["wavelength_air"].to_numpy()
    keep = (wl > wavelength[0] * (1 - max_window_kms / C_KMS)) & \
           (wl < wavelength[-1] * (1 + max_window_kms / C_KMS))
    for i in np.flatnonzero(keep):
        tau0 = 10.0 ** par["log_tau0"][i]
        if tau0 < min_tau:
            continue
        vd, a = par["v_doppler"][i], par["damping"][i]
        # Lorentz wing τ(v) ≈ τ₀ a v_D / (√π v²) (core-normalised Voigt) reaches min_tau at:
        v_wing = np.sqrt(tau0 * a * vd / (np.sqrt(np.pi) * min_tau))
        half = min(max(5.0 * vd, v_wing), max_window_kms)
        centre = np.log(wl[i])
        lo = max(0, int(np.floor((centre - half / C_KMS - lnw[0]) / dlnw)))
        hi = min(wavelength.size, int(np.ceil((centre + half / C_KMS - lnw[0]) / dlnw)) + 1)
        if hi <= lo:
            continue
        v = (lnw[lo:hi] - centre) * C_KMS
        sigma = vd / np.sqrt(2.0)
        profile = voigt_profile(v, sigma, a) * (sigma * np.sqrt(2.0 * np.pi))
        tau[lo:hi] += tau0 * profile
    return 1.0 - max_depth * (1.0 - np.exp(-tau))


@dataclass
class Instrument:
    """One spectrograph setup: name, resolving power and its pixel grid (air Å)."""
    name: str
    resolution: float
    wavelength: np.ndarray


@dataclass(frozen=True)
class Broadening:
    """The star's own velocity fields beyond thermal motion (km/s).

    ``vmic_kms`` None takes the Teff/log g relation (:func:`microturbulence_kms`)."""
    vmic_kms: float | None = None
    vsini_kms: float = 0.0
    vmac_kms: float = 0.0


@dataclass(frozen=True)
class Exposure:
    """What one observation does to the light besides the Doppler shift.

    ``resolution_scale`` multiplies every setup's R (this fibre's focus); ``resolution_taper`` is
    the fractional loss of R from a setup's centre to its ends, R(x) = R₀ s (1 − t x²) with x the
    position along the detector in [−1, 1]; ``telluric_strength`` scales the H2O optical depths of
    the model's telluric table (airmass × water vapour relative to the table's)."""
    resolution_scale: float = 1.0
    resolution_taper: float = 0.0
    telluric_strength: float = 0.0


def load_telluric_lines(path: str | Path | None = None) -> pd.DataFrame:
    """Telluric line table (wavelength_air in Å, species, tau = central optical depth at the
    reference airmass and water vapour)."""
    return data.read_line_table(Path(path) if path else DEFAULT_TELLURIC,
                                {"wavelength_air", "tau"}, "telluric")


def telluric_depth(wavelength: np.ndarray, telluric: pd.DataFrame) -> np.ndarray:
    """Σ τ_k g_k(λ) at native resolution, g_k a Gaussian of FWHM TELLURIC_FWHM_KMS; only lines
    within the wavelength range contribute."""
    wavelength = np.asarray(wavelength, dtype=np.float64)
    tau = np.zeros_like(wavelength)
    sigma_v = TELLURIC_FWHM_KMS * FWHM_TO_SIGMA
    inside = telluric["wavelength_air"].between(wavelength[0], wavelength[-1])
    for w0, t0 in zip(telluric.loc[inside, "wavelength_air"], telluric.loc[inside, "tau"]):
        sigma = w0 * sigma_v / C_KMS
        lo, hi = np.searchsorted(wavelength, [w0 - 6 * sigma, w0 + 6 * sigma])
        tau[lo:hi] += t0 * np.exp(-0.5 * ((wavelength[lo:hi] - w0) / sigma) ** 2)
    return tau


def telluric_transmission(wavelength: np.ndarray, telluric: pd.DataFrame,
                          strength: float) -> np.ndarray:
    """exp(−strength Σ τ_k g_k(λ)) (:func:`telluric_depth`)."""
    return np.exp(-strength * telluric_depth(wavelength, telluric))


def detector_position(wavelength: np.ndarray, instrument: Instrument) -> np.ndarray:
    """Position along the setup's detector, −1 at its first pixel and +1 at its last."""
    lo, hi = instrument.wavelength[0], instrument.wavelength[-1]
    return np.clip(2.0 * (np.asarray(wavelength) - lo) / (hi - lo) - 1.0, -1.0, 1.0)


class ForwardModel:
    """Labels (+ the star's broadening, RV and the exposure) → normalised flux on an instrument's
    pixels, for one or more setups.

    ``sampling_kms`` is the velocity step of the intrinsic (pre-LSF) grid; 1 km/s resolves the
    thermal cores of metal lines (v_D ≈ 1.5–2.5 km/s) well enough for line areas.
    ``electron_donors``: electron pressure from the donor metals' own abundances (module
    docstring); ``telluric``: a telluric line table (:func:`load_telluric_lines`) for exposures
    with ``telluric_strength`` > 0.
    """

    def __init__(self, instruments: Sequence[Instrument], lines: pd.DataFrame, *,
                 sampling_kms: float = 1.0, max_rv_kms: float = 300.0,
                 electron_donors: bool = False, telluric: pd.DataFrame | None = None):
        self.instruments = list(instruments)
        self.lines = lines
        self.sampling_kms = sampling_kms
        self.electron_donors = electron_donors
        self.telluric = telluric
        self._telluric_cache: dict[int, np.ndarray] = {}
        self._rest_grids = []
        for inst in self.instruments:
            margin = (max_rv_kms + 10.0 * C_KMS / inst.resolution) / C_KMS
            lo, hi = inst.wavelength[0] * (1 - margin), inst.wavelength[-1] * (1 + margin)
            self._rest_grids.append(log_lambda_grid(lo, hi, C_KMS / sampling_kms))

    @property
    def wavelength(self) -> np.ndarray:
        return np.concatenate([inst.wavelength for inst in self.instruments])

    def flux(self, labels: Mapping[str, float] | Sequence[float], rv_kms: float = 0.0,
             lines: pd.DataFrame | None = None, *, star: Broadening | None = None,
             exposure: Exposure | None = None) -> np.ndarray:
        """Normalised flux on the concatenated instrument pixels (observed frame for rv ≠ 0)."""
        return np.concatenate(self.flux_per_setup(labels, rv_kms, lines, star=star,
                                                  exposure=exposure))

    def flux_per_setup(self, labels, rv_kms: float = 0.0, lines: pd.DataFrame | None = None, *,
                       star: Broadening | None = None, exposure: Exposure | None = None
                       ) -> list[np.ndarray]:
        star = star or Broadening()
        return self.observe(self.intrinsic_per_setup(labels, lines, star.vmic_kms), rv_kms,
                            star=star, exposure=exposure)

    def intrinsic_per_setup(self, labels, lines: pd.DataFrame | None = None,
                            vmic_kms: float | None = None) -> list[np.ndarray]:
        """The star's rest-frame normalised flux on each setup's intrinsic grid."""
        lines = self.lines if lines is None else lines
        return [intrinsic_flux(labels, lines, rest, vmic_kms=vmic_kms,
                               electron_donors=self.electron_donors) for rest in self._rest_grids]

    def _telluric_depth(self, k: int, rv_kms: float, observed: np.ndarray) -> np.ndarray:
        """Telluric optical depth on setup k's observed grid: the table's lines are laid on the
        setup's (wider) rest grid once, then read off at the observed wavelengths."""
        if k not in self._telluric_cache:
            self._telluric_cache[k] = telluric_depth(self._rest_grids[k], self.telluric)
        if not rv_kms:
            return self._telluric_cache[k]
        return np.interp(observed, self._rest_grids[k], self._telluric_cache[k])

    def resolution_profile(self, k: int, wavelength: np.ndarray, exposure: Exposure
                           ) -> float | np.ndarray:
        """R of setup ``k`` at ``wavelength``: one number when it does not vary along the setup."""
        base = self.instruments[k].resolution * exposure.resolution_scale
        if exposure.resolution_taper == 0:
            return base
        x = detector_position(wavelength, self.instruments[k])
        return base * (1.0 - exposure.resolution_taper * x ** 2)

    def observe(self, intrinsic: Sequence[np.ndarray], rv_kms: float = 0.0, *,
                star: Broadening | None = None, exposure: Exposure | None = None
                ) -> list[np.ndarray]:
        """Intrinsic spectra (:meth:`intrinsic_per_setup`) → normalised flux on the pixels."""
        star = star or Broadening()
        exposure = exposure or Exposure()
        kernel = np.convolve(rotation_kernel(star.vsini_kms, self.sampling_kms, LIMB_DARKENING),
                             macroturbulence_kernel(star.vmac_kms, self.sampling_kms))
        out = []
        for k, (inst, rest, f) in enumerate(zip(self.instruments, self._rest_grids, intrinsic)):
            f = broaden_velocity(f, kernel)
            observed = doppler_shift(rest, rv_kms) if rv_kms else rest
            resolution = self.resolution_profile(k, observed, exposure)
            if self.telluric is not None and exposure.telluric_strength > 0:
                # the atmosphere absorbs in the observer's frame, before the spectrograph's LSF
                f = f * np.exp(-exposure.telluric_strength * self._telluric_depth(k, rv_kms,
                                                                                   observed))
            if np.ndim(resolution) == 0:
                f = convolve_resolution(rest, f, resolution)
            else:
                f = convolve_variable_resolution(rest, f, resolution)
            fo, _, _ = resample_flux(observed, f, inst.wavelength)
            out.append(fo)
        return out

    def jacobian(self, labels: Mapping[str, float] | Sequence[float],
                 steps: Mapping[str, float] | None = None,
                 label_names: Sequence[str] = LABEL_ORDER,
                 lines: pd.DataFrame | None = None, *, star: Broadening | None = None,
                 exposure: Exposure | None = None) -> np.ndarray:
        """∂flux/∂label by central differences; shape (n_pixels, n_labels)."""
        steps = dict(DEFAULT_STEPS, **(steps or {}))
        base = as_label_dict(labels)
        cols = []
        for name in label_names:
            up, down = dict(base), dict(base)
            up[name] += steps[name]
            down[name] -= steps[name]
            cols.append((self.flux(up, lines=lines, star=star, exposure=exposure)
                         - self.flux(down, lines=lines, star=star, exposure=exposure))
                        / (2.0 * steps[name]))
        return np.stack(cols, axis=1)


#: central-difference steps (the CRLB step study in tests checks these are in the flat regime)
DEFAULT_STEPS = {"teff": 20.0, "logg": 0.05, "fe_h": 0.02, "mg_fe": 0.02, "al_fe": 0.02}


def blackbody_flux_per_cm(wavelength_angstrom: np.ndarray, teff: float) -> np.ndarray:
    """Surface flux πB_λ(T) in erg s⁻¹ cm⁻² cm⁻¹ (PHOENIX's unit), λ in Å."""
    lam_cm = np.asarray(wavelength_angstrom, dtype=np.float64) * 1e-8
    h, c, k = 6.62607015e-27, 2.99792458e10, 1.380649e-16
    return np.pi * 2.0 * h * c ** 2 / lam_cm ** 5 / np.expm1(h * c / (lam_cm * k * teff))
