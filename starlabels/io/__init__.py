"""Readers and writers per archive format. Every reader returns :class:`Spectrum` objects."""
from .spectrum import Spectrum, SpectrumFormatError

__all__ = ["Spectrum", "SpectrumFormatError"]
