"""The trainset stage: the rows the networks learn from, as flux and ivar matrices and a table.

Observed rows: split train/valid, kept by the clean stage. Synthetic rows (the synthesize
stage's degraded PHOENIX spectra): all of them, with their own train/valid split. Rows are
streamed, so the survey matrix is never loaded whole. The inverse variances travel with the
flux (the networks that read the noise, and noise augmentation, need them), and so do the
catalogue's label errors (the uncertainty heads and calibrations deconvolve them).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from . import artifacts
from .batch import Log

#: rows copied per step from a source matrix into the training matrix
CHUNK_ROWS = 2048


def build_trainset(*, sources: Sequence[str], labels: Sequence[str], observed_flux: str,
                   observed_ivar: str, observed_table: str, clean_table: str, flux: str,
                   ivar: str, table: str, synthetic_flux: str | None = None,
                   synthetic_ivar: str | None = None, synthetic_table: str | None = None,
                   log: Log = print, config_hash: str = "none") -> pd.DataFrame:
    """Assemble the rows of ``sources`` (observed, synthetic) into the matrices ``flux`` and
    ``ivar`` and the table ``table``; returns the table."""
    parts: list[tuple[dict[str, np.ndarray], pd.DataFrame]] = []
    if "observed" in sources:
        obs = artifacts.load_table(observed_table)
        keep = artifacts.load_table(clean_table, columns=["spectrum_id", "keep"])
        if not obs["spectrum_id"].equals(keep["spectrum_id"]):
            raise ValueError(f"{clean_table} rows do not match {observed_table}")
        use = obs["split"].isin(["train", "valid"]).to_numpy() & keep["keep"].to_numpy()
        rows = np.flatnonzero(use)
        parts.append(({"flux": artifacts.load_matrix(observed_flux),
                       "ivar": artifacts.load_matrix(observed_ivar)},
                      obs.iloc[rows].assign(source="observed", source_row=rows)))
        log(f"trainset: {len(rows)} observed spectra (train+valid, kept by clean)")
    if "synthetic" in sources:
        syn = artifacts.load_table(synthetic_table)
        rows = np.arange(len(syn))
        parts.append(({"flux": artifacts.load_matrix(synthetic_flux),
                       "ivar": artifacts.load_matrix(synthetic_ivar)},
                      syn.assign(source="synthetic", source_row=rows)))
        log(f"trainset: {len(rows)} synthetic spectra")
    shapes = {m.shape for matrices, _ in parts for m in matrices.values()}
    n_pixels = {shape[1] for shape in shapes}
    if len(n_pixels) != 1:
        raise ValueError(f"trainset: sources have different pixel counts {sorted(n_pixels)}")
    for matrices, tab in parts:
        if matrices["flux"].shape != matrices["ivar"].shape:
            raise ValueError(f"trainset: {tab['source'].iloc[0] if len(tab) else 'a'} source's "
                             f"flux {matrices['flux'].shape} and ivar {matrices['ivar'].shape} "
                             f"matrices differ in shape")
    n_total = sum(len(t) for _, t in parts)
    width = n_pixels.pop()
    for kind, path in (("flux", flux), ("ivar", ivar)):
        out = artifacts.open_matrix_writer(path, n_total, width)
        start = 0
        for matrices, tab in parts:
            src = tab["source_row"].to_numpy()
            for i in range(0, len(src), CHUNK_ROWS):
                chunk = src[i:i + CHUNK_ROWS]
                out[start + i:start + i + len(chunk)] = matrices[kind][chunk]
            start += len(src)
        artifacts.commit_matrix_writer(out, path)
    # catalogue label errors travel along: uncertainty heads and calibrations deconvolve them
    keep_cols = ["spectrum_id", "star_id", "split", "source", "source_row", "snr", *labels,
                 *[f"e_{label}" for label in labels]]
    merged = pd.concat([t.reindex(columns=keep_cols) for _, t in parts], ignore_index=True)
    obs_meta = artifacts.table_metadata(observed_table) if "observed" in sources else \
        artifacts.table_metadata(synthetic_table)
    # what the observed spectra went through travels to the models (they are applied to
    # observed spectra, whatever they were pre-trained on)
    spectra = artifacts.table_metadata(observed_table).get("spectra")
    meta = artifacts.provenance(None, config_hash=config_hash, stage="trainset",
                                grid_hash=obs_meta.get("grid_hash"),
                                n_pixels=obs_meta.get("n_pixels"), spectra=spectra)
    artifacts.save_table(table, merged, meta)
    log(f"trainset: {n_total} spectra; per split {merged['split'].value_counts().to_dict()}")
    return merged
