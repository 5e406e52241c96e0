"""Ensemble-level calibration of deep-REMAP members.

Members calibrated one by one and then averaged form a mixture wider than each, so with
``calibration.level: ensemble`` the averaged distribution itself is calibrated, per head, on the
same held-out ``valid`` split the members were calibrated on (:func:`calibrate_ensemble`), and
predict uses that instead of the members' own temperatures (:class:`EnsembleTransform`,
:func:`load_ensemble_transform`). ``ensemble_transform`` says how:

* ``dilation`` (default): the members' distributions at T = 1 are averaged and the average is
  stretched or sharpened about its mean by one factor per head (:func:`.calibration.dilate`):
  the width is calibrated and the point estimate stays the T = 1 average's mean;
* ``temperature``: one temperature per head shared by all members, which moves the mean too.

A head whose coverage count cannot be met by any value (the catalogue's errors exceed the
network's own) gets the NLL temperature, with either transform.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .. import artifacts
from ..batch import say
from ..members import check_calibration_members, load_member, member_names, plain
from .bins import LabelBins, bins_from_meta
from .calibration import (average_softmax, bin_likelihoods, convolved_pit, dilate,
                          fit_dilation_coverage, fit_dilation_nll, fit_ensemble_temperature,
                          fit_temperature_coverage)
from .member import usable_rows
from .train import predict_logits

ENSEMBLE_CALIBRATION = "ensemble_calibration.json"


@dataclass(frozen=True)
class EnsembleTransform:
    """How the members' logits become the catalogue's distribution, per head: softmax at
    ``temperatures``, averaged over the members, then :func:`.calibration.dilate` by
    ``factors`` (None: no dilation)."""
    temperatures: tuple[float, ...]
    factors: tuple[float, ...] | None = None

    def apply(self, averaged: Sequence[np.ndarray], bins: Sequence[LabelBins]
              ) -> list[np.ndarray]:
        """The heads' averaged distributions (at ``temperatures``) with the dilation applied."""
        if self.factors is None:
            return [np.asarray(p) for p in averaged]
        return [dilate(p, b, f) for p, b, f in zip(averaged, bins, self.factors)]


def calibrate_ensemble(flux_path: str | os.PathLike, table_path: str | os.PathLike,
                       model_dirs: Sequence[str | os.PathLike], cfg: Mapping[str, Any],
                       out_path: str | os.PathLike, log: Callable[[str], Any] = print
                       ) -> dict[str, Any]:
    """Per head, the calibration of the members' averaged distribution (``cfg`` = the remap
    calibration section; ``ensemble_transform`` says which, see the module docstring), fitted on
    the same held-out `valid` split the members were calibrated on. Written as JSON; predict
    uses it instead of the members' own temperatures."""
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
    transform = cfg["ensemble_transform"]
    dilation = transform == "dilation"
    result: dict[str, Any] = {"labels": labels, "n": int(rows.size), "transform": transform,
                              "temperatures": [], "factors": [] if dilation else None,
                              "members": member_names(model_dirs, Path(out_path).parent),
                              "heads": {}}
    for j, b in enumerate(bins):
        like = bin_likelihoods(values[:, j], b, None if errors is None else errors[:, j])
        floor = 1.0 / (b.high - b.low)
        head = [lg[j] for lg in logits]
        base = average_softmax(head, 1.0)
        err = None if errors is None else errors[:, j]
        objective = cfg["ensemble_objective"]
        t, factor = 1.0, 1.0
        if not cfg["temperature_scaling"]:
            objective = "none"
        elif objective == "nll":
            if dilation:
                factor = fit_dilation_nll(base, like, b, eps, floor)
            else:
                t = fit_ensemble_temperature(head, like, outlier_fraction=eps,
                                             outlier_density=floor)
        else:
            found = (fit_dilation_coverage(base, b, values[:, j], err)
                     if dilation else fit_temperature_coverage(head, b, values[:, j], err))
            if found is None:
                # where the count cannot pin the width down (see fit_temperature_coverage) the
                # NLL decides, over temperatures whatever the transform: it is as flat there
                # for a dilation, whose optimum ran to 0.06 of the T = 1 width for demo_marvels
                # log g in one run (a near point mass); a temperature keeps the members'
                # disagreement in the width
                objective = "nll temperature (coverage out of reach)"
                t = fit_ensemble_temperature(head, like, outlier_fraction=eps,
                                             outlier_density=floor)
            elif dilation:
                factor = found
            else:
                t = found
        entry: dict[str, Any] = {"temperature": t, "objective": objective,
                                 "member_temperatures": [m["temperatures"][j] for _, m in members]}
        if dilation:
            entry["factor"] = factor
        for tag, mix in (("before", base), ("after", dilate(average_softmax(head, t), b, factor))):
            held = np.clip((mix * like).sum(axis=1), 1e-300, None)
            entry[f"nll_{tag}"] = float(-np.mean(np.log((1.0 - eps) * held + eps * floor)))
            entry[f"coverage68_{tag}"] = float(np.mean(
                np.abs(convolved_pit(mix, b, values[:, j], err) - 0.5) <= 0.34))
        result["temperatures"].append(t)
        if dilation:
            result["factors"].append(factor)
        result["heads"][b.name] = entry
        how = f"T = {t:.3f}" + (f", dilation {factor:.3f} of the average" if dilation else "")
        say(log, f"ensemble calibration {b.name} ({objective}): {how} (members' own T "
                 + ", ".join(f"{m['temperatures'][j]:.3f}" for _, m in members)
                 + f"); on {rows.size} held-out stars, NLL of the averaged distribution "
                   f"{entry['nll_before']:.3f} → {entry['nll_after']:.3f}, 68% coverage of the "
                   f"catalogue labels (noise-convolved) {entry['coverage68_before']:.2f} → "
                   f"{entry['coverage68_after']:.2f}")
    result.update(plain(artifacts.provenance(cfg)))
    artifacts.save_json(out_path, result)
    return result


def load_ensemble_transform(path: str | os.PathLike | None,
                            members: Sequence[str | os.PathLike]) -> EnsembleTransform | None:
    """The ensemble's calibration, checked to belong to exactly these members (None = none:
    the members' own temperatures)."""
    if not path:
        return None
    calibration = artifacts.load_json(path)
    check_calibration_members(path, calibration["members"], members)
    factors = calibration.get("factors")
    return EnsembleTransform(tuple(float(t) for t in calibration["temperatures"]),
                             None if factors is None else tuple(float(f) for f in factors))


def calibrate_job(*, flux: str | os.PathLike, ivar: str | os.PathLike | None,
                  table: str | os.PathLike, members: Sequence[str | os.PathLike],
                  cfg: Mapping[str, Any], out: str | os.PathLike,
                  log: Callable[[str], Any]) -> dict[str, Any]:
    """The workflow's calibrate_ensemble job for deep-REMAP (``cfg``: ``remap.calibration``;
    the ResNet reads the flux only, ``ivar`` is not used)."""
    return calibrate_ensemble(flux, table, members, cfg, out, log=log)
