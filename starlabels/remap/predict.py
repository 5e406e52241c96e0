"""Apply a deep-REMAP ensemble: averaged calibrated distributions and similar-star lookup.

Each member's logits are divided by that head's temperature and turned into probabilities; the
ensemble distribution is the average of the members' (a mixture, so member disagreement widens
it). Per label the shard keeps the point estimate (probability-weighted mean), the standard
deviation, the 16th/84th percentiles, the spread of the members' means, and the full probability
vector. The first member's embedding of each target is compared with its stored embeddings of the
labelled observed stars: the k nearest (cosine geometry: L2-normalised embeddings) are listed with
their distances.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import artifacts
from ..batch import say
from ..members import load_member, open_shard_inputs, write_shard
from .bins import bins_from_meta, summarize
from .ensemble import EnsembleTransform, load_ensemble_transform
from .member import load_reference


def predict_remap_shard(flux_path: str | os.PathLike, table_path: str | os.PathLike,
                        model_dirs: Sequence[str | os.PathLike], shard: int, n_shards: int, *,
                        batch_size: int = 64, device: str = "auto", knn: int = 5,
                        log: Callable[[str], Any] = print, threads: int | None = None,
                        ensemble: EnsembleTransform | None = None) -> pd.DataFrame:
    """Ensemble distributions for shard ``shard`` of ``n_shards`` (contiguous matrix rows).

    ``ensemble``: the ensemble's calibration (its temperatures for all members, then its
    dilation of the average); None = each member's own temperatures."""
    device, table, table_grid, flux = open_shard_inputs(flux_path, table_path, shard, n_shards,
                                                        batch_size, device, threads)
    members = [load_member(d, device) for d in model_dirs]
    first = members[0][1]
    for d, (_, meta) in zip(model_dirs, members):
        if meta.get("method") != "deep_remap":
            raise ValueError(f"{d}: method {meta.get('method')!r}, expected deep_remap")
        for key in ("labels", "bins", "n_pixels", "grid_hash"):
            if meta[key] != first[key]:
                raise ValueError(f"ensemble members disagree on {key}: {d} vs {model_dirs[0]}")
        if meta["grid_hash"] != table_grid:
            raise ValueError(f"model {d} was trained on grid {meta['grid_hash']} but "
                             f"{table_path} is on grid {table_grid}")
    bins = bins_from_meta(first)
    labels = list(first["labels"])
    temperatures = [torch.tensor(m["temperatures"] if ensemble is None
                                 else list(ensemble.temperatures),
                                 dtype=torch.float32, device=device) for _, m in members]
    reference = load_reference(model_dirs[0])
    ref_emb = F.normalize(reference["embedding"].to(device).float(), dim=1)
    ref_ids = np.asarray(reference["star_id"], dtype=object)
    k = min(int(knn), ref_emb.shape[0])

    rows = np.array_split(np.arange(len(table)), n_shards)[shard]
    n = rows.size
    prob = [np.empty((n, b.n_bins), dtype=np.float32) for b in bins]
    member_means = np.empty((len(members), n, len(bins)))
    knn_dist = np.empty((n, k), dtype=np.float32)
    knn_idx = np.empty((n, k), dtype=np.int64)
    embedding = np.empty((n, ref_emb.shape[1]), dtype=np.float32)
    centres = [torch.as_tensor(b.centres, dtype=torch.float64, device=device) for b in bins]
    n_batches = math.ceil(n / batch_size) if n else 0
    say(log, f"deep_remap shard {shard}/{n_shards}: {n} spectra, {len(members)} member(s), "
             f"device {device}, {k} nearest labelled stars each")
    t0 = time.perf_counter()
    with torch.inference_mode(), artifacts.MatrixRowReader(flux_path, batch_size) as reader:
        for b_i, start in enumerate(range(0, n, batch_size)):
            stop = min(start + batch_size, n)
            x = torch.from_numpy(reader.read(rows[start], rows[stop - 1] + 1)).to(device)
            sums = [torch.zeros((stop - start, b.n_bins), dtype=torch.float64, device=device)
                    for b in bins]
            for m, ((model, _), temps) in enumerate(zip(members, temperatures)):
                logits, emb = model(x)
                for j, lg in enumerate(logits):
                    p = torch.softmax(lg.float() / temps[j], dim=1).double()
                    sums[j] += p
                    member_means[m, start:stop, j] = (p @ centres[j]).cpu().numpy()
                if m == 0:
                    e = F.normalize(emb.float(), dim=1)
                    embedding[start:stop] = e.cpu().numpy()
                    d, i = torch.cdist(e, ref_emb).topk(k, dim=1, largest=False)
                    knn_dist[start:stop], knn_idx[start:stop] = d.cpu().numpy(), i.cpu().numpy()
            mean = [(s / len(members)).cpu().numpy() for s in sums]
            if ensemble is not None:
                mean = ensemble.apply(mean, bins)
            for j in range(len(bins)):
                prob[j][start:stop] = mean[j]
            if (b_i + 1) % max(1, n_batches // 10) == 0 or b_i + 1 == n_batches:
                elapsed = time.perf_counter() - t0
                say(log, f"deep_remap shard {shard}: {stop}/{n} spectra, "
                         f"{stop / max(elapsed, 1e-9):.0f} spectra/s")

    out: dict[str, Any] = {"spectrum_id": table["spectrum_id"].to_numpy()[rows].astype(str),
                           "row": rows.astype(np.int64)}
    for j, (name, b) in enumerate(zip(labels, bins)):
        s = summarize(prob[j], b)
        out[name] = s["mean"]
        out[f"{name}_err"] = s["std"]
        out[f"{name}_err_members"] = member_means[:, :, j].std(axis=0)
        out[f"{name}_q16"] = s["q16"]
        out[f"{name}_q84"] = s["q84"]
        out[f"{name}_prob"] = list(prob[j])
    out["n_members"] = np.full(n, len(members), dtype=np.int64)
    out["knn_star_id"] = [list(ref_ids[i]) for i in knn_idx]
    out["knn_distance"] = list(knn_dist)
    out["embedding"] = list(embedding)
    df = pd.DataFrame(out)
    df.attrs.update({"grid_hash": table_grid, "labels": labels, "shard": int(shard),
                     "n_shards": int(n_shards), "members": [str(d) for d in model_dirs],
                     "bins": first["bins"]})
    return df



def predict_job(*, flux: str | os.PathLike, ivar: str | os.PathLike | None,
                table: str | os.PathLike, members: Sequence[str | os.PathLike], shard: int,
                n_shards: int, batch_size: int, device: str, out: str | os.PathLike,
                metadata: Mapping[str, Any], log: Callable[[str], Any], threads: int | None,
                ensemble_calibration: str | None, knn: int) -> int:
    """One shard of the workflow's predict rule; returns the rows written. With an ensemble
    calibration file its transform replaces the members' own temperatures. The ResNet reads the
    flux only (``ivar`` is not used)."""
    ensemble = load_ensemble_transform(ensemble_calibration, members)
    df = predict_remap_shard(flux, table, members, shard, n_shards, batch_size=batch_size,
                             device=device, knn=knn, log=log, threads=threads,
                             ensemble=ensemble)
    write_shard(df, out, metadata)
    return len(df)

def point_estimate(model: torch.nn.Module, meta: Mapping[str, Any], device: torch.device
                   ) -> tuple[Callable[..., torch.Tensor], torch.Tensor]:
    """((flux, ivar=None) → (batch, n_labels) probability-weighted means of the calibrated heads, already in
    label units, so the span is one)."""
    centres = [torch.as_tensor(b["low"] + b["width"] * (np.arange(b["n_bins"]) + 0.5),
                               dtype=torch.float32, device=device) for b in meta["bins"]]
    temperatures = [float(t) for t in meta["temperatures"]]

    def expected(x: torch.Tensor, ivar: torch.Tensor | None = None) -> torch.Tensor:
        logits, _ = model(x)
        return torch.stack([torch.softmax(lg / t, dim=1) @ c
                            for lg, t, c in zip(logits, temperatures, centres)], dim=1)
    return expected, torch.ones(len(meta["labels"]), dtype=torch.float64, device=device)
