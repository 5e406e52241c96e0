"""The labelling methods, one record each: everything that differs between them.

Code outside this registry asks a method's record instead of comparing method names. To add a
method: write its network in ``starlabels/models/`` and its package (train, predict) beside
:mod:`starlabels.cnn` and :mod:`starlabels.remap`, add a record below, and add its name to
``method`` (and its settings section, if it has one) in ``starlabels/data/config.schema.yaml``.

Every function a record names is called with the same arguments for every method:

- ``network(n_pixels=, n_labels=, **architecture)`` builds the network;
- ``train(*, flux, ivar, table, labels, member, cfg, model_dir, method_cfg, variant, log,
  threads)``
  trains one member (``cfg``: the ``train`` section and ``method``; ``method_cfg``: the method's
  own section) and returns the metadata of its model folder;
- ``predict(*, flux, ivar, table, members, shard, n_shards, batch_size, device, out, metadata,
  log, threads, ensemble_calibration, **options)`` writes one prediction shard and returns its rows
  (``options``: :meth:`Method.predict_options`);
- ``point_estimate(model, meta, device)`` gives (a function (flux, ivar) → labels, the span to
  label units) for the network-gradient figure;
- ``calibrate(*, flux, ivar, table, members, cfg, out, log)`` fits the ensemble's calibration on
  the training set's ``valid`` rows and writes it to ``out``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .registry import Hook, Registry


def _cnn_calibration_on(experiment: Mapping[str, Any]) -> bool:
    return bool(experiment["calibration"]["enabled"])


def _remap_ensemble_level(experiment: Mapping[str, Any]) -> bool:
    return experiment["remap"]["calibration"]["level"] == "ensemble"


@dataclass(frozen=True)
class Method:
    name: str
    network: Hook
    #: config section of the network's architecture
    architecture: str
    train: Hook
    #: the method's own config section, given to its train jobs (None: ``train`` says it all)
    section: str | None
    #: ablation variants it trains as extra single members besides the full recipe
    variants: tuple[str, ...]
    predict: Hook
    #: keys of its own section that prediction uses (so editing others does not rerun it)
    predict_settings: tuple[str, ...]
    point_estimate: Hook
    #: whether a calibrate_ensemble job fits the whole ensemble's uncertainties on the valid
    #: split (deep_remap: one temperature per head; the CNN: a scale per label and S/N bin),
    #: which predict then applies
    calibrates_ensemble: Callable[[Mapping[str, Any]], bool]
    #: ``calibrate(*, flux, ivar, table, members, cfg, out, log)`` fits it, with ``cfg`` the
    #: section at the dotted path ``calibration_section``
    calibrate: Hook
    calibration_section: str
    #: outputs of its report rule that ``rule all`` builds, and the file validate merges
    #: into metrics.json (paths below results/<experiment>/)
    report_outputs: tuple[str, ...]
    report: str | None

    def settings(self, experiment: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The method's own section of ``experiment`` (None when it has none)."""
        return experiment[self.section] if self.section else None

    def calibration_settings(self, experiment: Mapping[str, Any]) -> Mapping[str, Any]:
        """The section of ``experiment`` its ensemble calibration reads."""
        section: Any = experiment
        for key in self.calibration_section.split("."):
            section = section[key]
        return section

    def predict_options(self, experiment: Mapping[str, Any]) -> dict[str, Any]:
        """The settings of its own section that prediction takes, by name."""
        own = self.settings(experiment) or {}
        return {key: own[key] for key in self.predict_settings}


METHODS: Registry[Method] = Registry("method", {
    "cnn_regression": Method(
        name="cnn_regression", network=Hook("starlabels.models.gaia_eso_cnn:GaiaEsoCNN"),
        architecture="train.architecture", train=Hook("starlabels.cnn.train:train_job"),
        section=None, variants=(),
        predict=Hook("starlabels.cnn.predict:predict_job"), predict_settings=(),
        point_estimate=Hook("starlabels.cnn.predict:point_estimate"),
        calibrates_ensemble=_cnn_calibration_on,
        calibrate=Hook("starlabels.cnn.calibration:calibrate_job"),
        calibration_section="calibration", report_outputs=(), report=None),
    "deep_remap": Method(
        name="deep_remap", network=Hook("starlabels.models.remap_resnet:RemapResNet"),
        architecture="remap.architecture", train=Hook("starlabels.remap.member:train_job"),
        section="remap", variants=("no_pretrain", "pretrain_only", "no_triplet", "no_swa"),
        predict=Hook("starlabels.remap.predict:predict_job"), predict_settings=("knn",),
        point_estimate=Hook("starlabels.remap.predict:point_estimate"),
        calibrates_ensemble=_remap_ensemble_level,
        calibrate=Hook("starlabels.remap.ensemble:calibrate_job"),
        calibration_section="remap.calibration",
        report_outputs=("plots/reliability.png", "plots/embedding_map.png"),
        report="remap_report.json"),
})


def get(name: str) -> Method:
    """The record of method ``name`` (ValueError naming the known methods otherwise)."""
    return METHODS.get(name)
