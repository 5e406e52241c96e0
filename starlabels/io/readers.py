"""Which reader for which file: the picklable path → spectra functions the normalize and
synthesize stages map over files, with the experiment's reader settings bound in.

A survey's record (:mod:`starlabels.surveys`) names its reader here; each reader of a format
lives in that format's module (``gaia_eso``, ``marvels``, ``phoenix``).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import numpy as np

from .. import config
from .gaia_eso import read_ges_spectrum
from .marvels import read_marvels_plate
from .phoenix import read_phoenix_spectrum, read_phoenix_wave
from .spectrum import Spectrum

SpectrumReader = Callable[[str], "Spectrum | list[Spectrum]"]


def giraffe_spectra(reader: Mapping[str, Any] | None = None) -> SpectrumReader:
    """Gaia-ESO Phase-3 GIRAFFE 1-D spectrum files, one per star and setup, with the
    ``normalize.reader`` choices (wavelength medium air / vacuum / from the WAVE column's TUCD,
    and which flux column) bound in."""
    c = config.section("normalize.reader", reader)
    return functools.partial(read_ges_spectrum, medium=c["medium"], flux_column=c["flux_column"])


def marvels_plates(reader: Mapping[str, Any] | None = None) -> SpectrumReader:
    """MARVELS star1d plate files, both beams of every star on the plate (nothing to choose)."""
    return read_marvels_plate


def phoenix_models() -> tuple[Callable[[str], np.ndarray], Callable[[str, np.ndarray], Spectrum]]:
    """(the WAVE file reader, the reader of one HiRes model given its wavelengths)."""
    return read_phoenix_wave, read_phoenix_spectrum
