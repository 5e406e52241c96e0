"""Configuration: JSON-schema validation with defaults filled in and errors that name the key.

The schema (``starlabels/data/config.schema.yaml``, shipped with the package) gives every key a description and a default; it is the
only place defaults live. Validation fills defaults into nested blocks (each experiment block
included) and stops at the first problems with messages such as::

    config key 'experiments.demo_ges.train.device': 'gpu' is not one of ['auto', 'cpu', 'cuda']

Library functions take one experiment section (``normalize``, ``synthetic.synthesize``, ...);
:func:`section` completes a partial one from the schema, so a notebook and the workflow run with
the same settings.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml
from jsonschema import Draft202012Validator, validators

from . import data, surveys

SCHEMA_PATH = data.path("config.schema.yaml")


class ConfigError(ValueError):
    """The configuration does not satisfy the schema; the message lists each offending key."""


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _with_defaults(Draft202012Validator)


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return load_schema()


def _resolved(node: Mapping[str, Any]) -> dict[str, Any]:
    """A subschema with its local ``$ref`` merged in (the node's own keys, e.g. a default, win)."""
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref is None:
        return node
    target: Any = _schema()
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**_resolved(target), **node}


def _fill_defaults(node: Mapping[str, Any], value: Any) -> Any:
    """Fill the schema's defaults into ``value`` in place, as :func:`validate_config` does."""
    if not isinstance(value, dict):
        return value
    for name, sub in _resolved(node).get("properties", {}).items():
        sub = _resolved(sub)
        if name not in value and "default" in sub:
            value[name] = copy.deepcopy(sub["default"])
        if name in value:
            _fill_defaults(sub, value[name])
    return value


def section(path: str, cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One experiment section (``path`` as in the config: 'clean', 'synthetic.synthesize',
    'normalize.continuum') as a new dict: ``cfg``'s keys, the schema's defaults for the rest.

    Values are not validated here; the workflow validates the whole configuration first."""
    node: Mapping[str, Any] = _schema()["$defs"]["experiment"]
    for part in path.split("."):
        node = _resolved(node)["properties"][part]
    return _fill_defaults(node, copy.deepcopy(dict(cfg or {})))


def _describe(error: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        where = key if key != "<top level>" else "top level"
        if allowed:
            return (f"config key(s) {', '.join(repr(f'{key}.{e}' if key != '<top level>' else e) for e in extra)} "
                    f"unknown at {where}; allowed keys: {allowed}")
    if error.validator == "enum":
        return f"config key '{key}': {error.instance!r} is not allowed; allowed values: {error.validator_value}"
    return f"config key '{key}': {error.message}"


def validate_config(config: Mapping[str, Any], schema: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Return a deep copy of ``config`` with defaults filled in; raise ConfigError if invalid.

    Cross-field rules the schema cannot say (experiments named in ``run`` must exist, label
    lists must fit the survey) are checked here too.
    """
    schema = schema or load_schema()
    config = copy.deepcopy(dict(config))
    validator = _DefaultFillingValidator(schema)
    # first pass fills defaults (nested blocks appear as {} and are filled as they are visited);
    # validating twice reports errors against the completed config
    list(validator.iter_errors(config))
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    messages = [_describe(e) for e in errors]
    for name in config.get("run", []):
        if name not in config.get("experiments", {}):
            messages.append(f"config key 'run': experiment {name!r} is not defined under "
                            f"'experiments' (defined: {sorted(config.get('experiments', {}))})")
    for name, exp in config.get("experiments", {}).items():
        if not isinstance(exp, dict):
            continue
        known = surveys.get(exp["survey"]).labels if exp.get("survey") in surveys.SURVEYS else None
        extra = sorted(set(exp.get("labels", [])) - set(known)) if known is not None else []
        if extra:
            messages.append(f"config key 'experiments.{name}.labels': the {exp['survey']} "
                            f"catalogue has no values for {extra}; allowed: {list(known)}")
        if "synthetic" in exp.get("trainset", {}).get("sources", []) and \
                not exp.get("synthetic", {}).get("enabled", False):
            messages.append(f"config key 'experiments.{name}.trainset.sources': 'synthetic' needs "
                            f"experiments.{name}.synthetic.enabled: true")
    if messages:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(messages))
    return config


def canonical(value: Any) -> Any:
    """The same config with every mapping's keys sorted, recursively.

    Snakemake compares a rule's params with the previous run's by their serialisation, which
    depends on key order: without this, the same settings written in another order (or filled
    by defaults in another order) would rerun the whole workflow.
    """
    if isinstance(value, Mapping):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def load_config(path: str | Path) -> dict[str, Any]:
    return validate_config(yaml.safe_load(Path(path).read_text()) or {})
