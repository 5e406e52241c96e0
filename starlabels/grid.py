"""Wavelength grids: the experiment's pixel grid, built from linear segments (air Å)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class Segment:
    name: str      # e.g. "HR10", "HR21", "MARVELS"
    start: float   # first pixel centre, air Å
    end: float     # last pixel centre (inclusive, rounded to the step), air Å
    step: float    # pixel width, Å

    @property
    def wavelength_air(self) -> np.ndarray:
        n = int(np.floor((self.end - self.start) / self.step + 1e-9)) + 1
        return self.start + self.step * np.arange(n, dtype=np.float64)


@dataclass(frozen=True)
class WavelengthGrid:
    """Concatenated linear segments; ``segment_slices`` says which columns belong to which."""
    segments: tuple[Segment, ...]

    @classmethod
    def from_config(cls, segments: Sequence[Mapping[str, Any]]) -> "WavelengthGrid":
        segs = tuple(Segment(str(s["name"]), float(s["start"]), float(s["end"]), float(s["step"]))
                     for s in segments)
        if not segs:
            raise ValueError("grid.segments: at least one segment is required")
        for s in segs:
            if not (s.end > s.start and s.step > 0):
                raise ValueError(f"grid segment {s.name}: need end > start and step > 0")
        return cls(segs)

    @property
    def wavelength_air(self) -> np.ndarray:
        return np.concatenate([s.wavelength_air for s in self.segments])

    @property
    def segment_slices(self) -> dict[str, slice]:
        out, i = {}, 0
        for s in self.segments:
            n = s.wavelength_air.size
            out[s.name] = slice(i, i + n)
            i += n
        return out

    @property
    def n_pixels(self) -> int:
        return int(sum(s.wavelength_air.size for s in self.segments))

    def hash(self) -> str:
        return grid_hash(self.wavelength_air)


def grid_hash(wavelength: np.ndarray) -> str:
    """sha256 (16 hex) of a wavelength array rounded to 1e-6 Å, so grids compare exactly."""
    rounded = np.round(np.asarray(wavelength, dtype=np.float64), 6)
    return hashlib.sha256(rounded.tobytes()).hexdigest()[:16]


def pixel_edges(wavelength: np.ndarray) -> np.ndarray:
    """Pixel edges halfway between centres (extrapolated at the ends); len = len(wavelength)+1."""
    w = np.asarray(wavelength, dtype=np.float64)
    mid = 0.5 * (w[1:] + w[:-1])
    return np.concatenate([[w[0] - (mid[0] - w[0])], mid, [w[-1] + (w[-1] - mid[-1])]])
