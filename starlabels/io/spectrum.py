"""The in-memory contract between archive readers and the normalize / synthesize stages."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class SpectrumFormatError(ValueError):
    """A file that cannot be read as the declared format. The message names the file and problem.

    The normalize stage catches it and records the file in its rejects table.
    """

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class ConventionWarning(UserWarning):
    """A reader used a product's published convention for something the file does not state
    (a unit keyword, say). The message names the file, what was missing and what was assumed,
    so the job's log records every such file."""


@dataclass
class Spectrum:
    """One observed (or synthetic) 1-D spectrum as read from an archive file.

    wavelength : Å, increasing, in the medium given by ``medium`` ("air" or "vacuum"), seen
                 from the solar-system barycentre: the star's own radial velocity is the only
                 shift left in it (readers remove an observatory's motion, see SPECSYS)
    flux       : any linear unit (normalise later); NaN where undefined
    ivar       : inverse variance of ``flux`` (0 = no information)
    mask       : True where the archive flags the pixel bad
    """
    spectrum_id: str
    star_id: str
    setup: str
    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray
    medium: str = "air"
    snr: float = float("nan")
    rv_kms: float = 0.0          # radial velocity to remove (rest frame = observed / (1+v/c))
    resolution: float = float("nan")
    path: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = np.asarray(self.wavelength).shape
        for name in ("flux", "ivar", "mask"):
            if np.asarray(getattr(self, name)).shape != n:
                raise SpectrumFormatError(self.path or self.spectrum_id,
                                          f"{name} has shape {np.asarray(getattr(self, name)).shape}, "
                                          f"wavelength has {n}")
        if self.medium not in ("air", "vacuum"):
            raise SpectrumFormatError(self.path or self.spectrum_id,
                                      f"medium must be 'air' or 'vacuum', got {self.medium!r}")
