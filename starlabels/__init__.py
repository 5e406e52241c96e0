"""starlabels: a Snakemake survey pipeline from raw stellar spectra to CNN-ensemble label catalogs.

Stages (one module or sub-package each): ``acquire`` (real archives) or ``simulate`` (embedded
survey simulator), ``io`` (archive readers/writers), ``normalize``, ``clean`` (t-SNE),
``synthesize`` (PHOENIX degradation), ``trainset``, the methods ``cnn`` and ``remap`` (with
``models`` and ``members``), ``catalog``, ``validate`` + ``plots``. ``stages`` wires one function
per workflow rule; ``surveys`` and ``methods`` are the registries of what differs between
surveys and between methods. Shared contracts live in ``artifacts`` (files), ``config`` (the
schema), ``grid`` (wavelength grids) and ``labels``.
"""
__version__ = "0.1.0"
