"""The stellar labels the pipeline knows, in the astronomer's words, with units for catalogs."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Label:
    name: str          # column name used everywhere: tables, catalogs, configs
    #: FITS / VOUnit unit astropy parses without a warning; None for logarithmic quantities,
    #: which neither standard can express (see :mod:`starlabels.columns`)
    unit: str | None
    latex: str         # axis label for plots
    description: str
    ucd: str           # IVOA UCD1+ of the quantity
    #: how catalogue descriptions name it (with the scale where there is no unit)
    words: str


LABELS: dict[str, Label] = {
    "teff": Label("teff", "K", r"$T_\mathrm{eff}$ [K]", "effective temperature",
                  "phys.temperature.effective", "Teff"),
    "logg": Label("logg", None, r"$\log g$ [dex]", "surface gravity",
                  "phys.gravity", "log g (dex, g in cm s-2)"),
    "fe_h": Label("fe_h", None, "[Fe/H] [dex]", "iron abundance relative to the Sun",
                  "phys.abund.Fe", "[Fe/H] (dex)"),
    "mg_fe": Label("mg_fe", None, "[Mg/Fe] [dex]", "magnesium-to-iron ratio relative to the Sun",
                   "phys.abund", "[Mg/Fe] (dex)"),
    "al_fe": Label("al_fe", None, "[Al/Fe] [dex]", "aluminium-to-iron ratio relative to the Sun",
                   "phys.abund", "[Al/Fe] (dex)"),
}


#: the element whose lines carry each abundance label
LABEL_ELEMENTS: dict[str, list[str]] = {"fe_h": ["Fe"], "mg_fe": ["Mg"], "al_fe": ["Al"]}
#: abundance ratios [X/Fe] at fixed [Fe/H]: a spectrum changes with them only near the element's
#: own lines ([Fe/H] moves every metal line and the continuum opacity)
ELEMENT_RATIOS: tuple[str, ...] = ("mg_fe", "al_fe")


def check_labels(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in LABELS]
    if unknown:
        raise ValueError(f"unknown label(s) {unknown}; known labels are {sorted(LABELS)}")
    return list(names)
