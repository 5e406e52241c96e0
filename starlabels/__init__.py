"""starlabels: a Snakemake survey pipeline from raw stellar spectra to CNN-ensemble label catalogs.

Stages (one module or sub-package each): ``simulate`` (embedded survey simulator), ``io``
(archive readers/writers), ``normalize``, ``clean`` (t-SNE), ``synthesize`` (PHOENIX degradation),
``models`` + ``train``, ``predict``, ``catalog``, ``validate`` + ``plots``.
Shared contracts live in ``artifacts`` (files), ``grid`` (wavelength grids) and ``labels``.
"""
__version__ = "0.1.0"
