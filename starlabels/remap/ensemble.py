"""Ensemble-level temperature scaling of deep-REMAP members.

Members calibrated one by one and then averaged form a mixture wider than each, so with
``calibration.level: ensemble`` one temperature per head is fitted on the averaged distribution
(:func:`calibrate_ensemble`, on the same held-out ``valid`` split the members were calibrated on)
and used by predict instead of the members' own (:func:`ensemble_temperatures`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .. import artifacts
from ..batch import say
from ..members import check_calibration_members, load_member, member_names, plain
from .bins import bins_from_meta
from .calibration import (bin_likelihoods, convolved_pit, fit_ensemble_temperature,
                          fit_temperature_coverage, mixture_nll)
from .member import usable_rows
from .train import predict_logits

ENSEMBLE_CALIBRATION = "ensemble_calibration.json"


def calibrate_ensemble(flux_path: str | os.PathLike, table_path: str | os.PathLike,
                       model_dirs: Sequence[str | os.PathLike], cfg: Mapping[str, Any],
                       out_path: str | os.PathLike, log: Callable[[str], Any] = print
                       ) -> dict[str, Any]:
    """One temperature per head for the averaged distribution of all members, on the same
    held-out `valid` split the members were calibrated on (``cfg`` = the remap calibration
    section). Written as JSON; predict uses these instead of the members' own temperatures."""
    members = [load_member(d, "cpu") for d in model_dirs]
    meta = members[0][1]
    labels, bins = list(meta["labels"]), bins_from_meta(meta)
    table = artifacts.load_table(table_path)
    rows = usable_rows(table, "observed", "valid", labels)
    flux = np.ascontiguousarray(artifacts.load_matrix(flux_path)[rows], dtype=np.float32)
    values = table[labels].to_numpy(dtype=np.float64)[rows]
    error_cols = [f"e_{name}" for name in labels]
    errors = (table.loc[rows, error_cols].to_numpy(dtype=np.float64)
              if cfg["use_label_errors"] and all(c in table for c in error_cols) else None)
    logits = [predict_logits(model, torch.from_numpy(flux))[0] for model, _ in members]
    eps = float(cfg["outlier_fraction"])
    result: dict[str, Any] = {"labels": labels, "n": int(rows.size), "temperatures": [],
                              "members": member_names(model_dirs, Path(out_path).parent),
                              "heads": {}}
    for j, b in enumerate(bins):
        like = bin_likelihoods(values[:, j], b, None if errors is None else errors[:, j])
        floor = 1.0 / (b.high - b.low)
        head = [lg[j] for lg in logits]
        err = None if errors is None else errors[:, j]
        objective = cfg["ensemble_objective"]
        if not cfg["temperature_scaling"]:
            t = 1.0
        else:
            t = (fit_temperature_coverage(head, b, values[:, j], err)
                 if objective == "coverage" else None)
            if t is None:
                # the NLL where the count cannot pin T down (see fit_temperature_coverage)
                if objective == "coverage":
                    objective = "nll (coverage out of reach)"
                t = fit_ensemble_temperature(head, like, outlier_fraction=eps,
                                             outlier_density=floor)
        stacked = torch.stack([torch.as_tensor(h, dtype=torch.float64) for h in head])
        log_like = torch.as_tensor(like).clamp_min(1e-300).log()
        entry = {"temperature": t, "objective": objective,
                 "member_temperatures": [m["temperatures"][j] for _, m in members]}
        for tag, temp in (("before", 1.0), ("after", t)):
            entry[f"nll_{tag}"] = float(mixture_nll(stacked, log_like, temp, eps, floor))
            mix = torch.stack([torch.softmax(h / temp, dim=1) for h in stacked]).mean(0).numpy()
            entry[f"coverage68_{tag}"] = float(np.mean(
                np.abs(convolved_pit(mix, b, values[:, j], err) - 0.5) <= 0.34))
        result["temperatures"].append(t)
        result["heads"][b.name] = entry
        say(log, f"ensemble calibration {b.name} ({objective}): T = {t:.3f} "
                 f"(members " + ", ".join(f"{m['temperatures'][j]:.3f}" for _, m in members)
                 + f"); on {rows.size} held-out stars, NLL of the averaged distribution "
                   f"{entry['nll_before']:.3f} → {entry['nll_after']:.3f}, 68% coverage of the "
                   f"catalogue labels (noise-convolved) {entry['coverage68_before']:.2f} → "
                   f"{entry['coverage68_after']:.2f}")
    result.update(plain(artifacts.provenance(cfg)))
    artifacts.save_json(out_path, result)
    return result


def ensemble_temperatures(path: str | os.PathLike | None, members: Sequence[str | os.PathLike]
                          ) -> list[float] | None:
    """The ensemble's temperatures, checked to belong to exactly these members (None = none)."""
    if not path:
        return None
    calibration = artifacts.load_json(path)
    check_calibration_members(path, calibration["members"], members)
    return list(calibration["temperatures"])


def calibrate_job(*, flux: str | os.PathLike, ivar: str | os.PathLike | None,
                  table: str | os.PathLike, members: Sequence[str | os.PathLike],
                  cfg: Mapping[str, Any], out: str | os.PathLike,
                  log: Callable[[str], Any]) -> dict[str, Any]:
    """The workflow's calibrate_ensemble job for deep-REMAP (``cfg``: ``remap.calibration``;
    the ResNet reads the flux only, ``ivar`` is not used)."""
    return calibrate_ensemble(flux, table, members, cfg, out, log=log)
