"""Configuration: JSON-schema validation with defaults filled in and errors that name the key.

The schema (``starlabels/data/config.schema.yaml``, shipped with the package) gives every key a description and a default; it is the
only place defaults live. Validation fills defaults into nested blocks (each experiment block
included) and stops at the first problems with messages such as::

    config key 'experiments.demo_ges.train.device': 'gpu' is not one of ['auto', 'cpu', 'cuda']

Library functions take one experiment section (``normalize``, ``synthetic.synthesize``, ...);
:func:`section` completes a partial one from the schema, so a notebook and the workflow run with
the same settings.

Presets: a block whose ``realism`` is ``ideal`` (the simulator's) takes, for every knob it does not
set, the knob's ``x-ideal`` value from the schema instead of its default; both validation and
:func:`section` apply it, before the defaults fill the rest.
"""
from __future__ import annotations

import copy
import functools
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema
import yaml
from jsonschema import Draft202012Validator, validators

from . import data, surveys

SCHEMA_PATH = data.path("config.schema.yaml")


class ConfigError(ValueError):
    """The configuration does not satisfy the schema; the message lists each offending key."""


#: an experiment's name is a folder under ``results`` and a wildcard value: letters, digits,
#: '_' and '-', starting with a letter or digit (no '.', '/', '..')
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that names a key twice.

    PyYAML (the project's YAML library, and Snakemake's) keeps the last of two equal keys
    without a word, so a config with ``members: 4`` ... ``members: 40`` runs with 40; it has no
    option to refuse them, and its loader's ``construct_mapping`` is the documented place to
    add the check. Keys a ``<<`` merge brings in may be overridden, as YAML intends.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    earlier = first_seen.get(key)
                except TypeError:   # an unhashable key: the base class reports it
                    break
                if earlier is not None:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found the key {key!r} twice (first on line {earlier.line + 1}); "
                        f"YAML would silently keep only the last", key_node.start_mark)
                first_seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> Any:
    """A YAML (or JSON) file, refusing duplicate keys; ConfigError names the file and line."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def check_config_files(paths: Iterable[str | Path]) -> None:
    """Read each config file as it is written and refuse duplicate keys (ConfigError).

    Snakemake loads ``configfile:`` and ``--configfile`` files itself, keeping the last of
    two equal keys; the workflow checks the raw files with this before validating."""
    for path in paths:
        load_yaml(path)


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
    return load_yaml(path)


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


#: schema annotation holding a knob's value under ``realism: ideal``
IDEAL = "x-ideal"


def _has_ideal(node: Mapping[str, Any]) -> bool:
    node = _resolved(node)
    return IDEAL in node or any(_has_ideal(sub) for sub in node.get("properties", {}).values())


def _fill_ideal(node: Mapping[str, Any], value: dict) -> None:
    """Give every knob under ``node`` that ``value`` leaves out its ``x-ideal`` value."""
    for name, sub in _resolved(node).get("properties", {}).items():
        sub = _resolved(sub)
        if IDEAL in sub:
            if name not in value:
                value[name] = copy.deepcopy(sub[IDEAL])
        elif _has_ideal(sub) and isinstance(value.get(name, {}), dict):
            value[name] = value.get(name, {})
            _fill_ideal(sub, value[name])


def _apply_presets(node: Mapping[str, Any], value: Any) -> None:
    """Apply ``realism: ideal`` wherever a block under ``node`` asks for it (in place)."""
    if not isinstance(value, dict):
        return
    node = _resolved(node)
    props = node.get("properties", {})
    if "realism" in props and value.get("realism") == "ideal":
        _fill_ideal(node, value)
    for name, sub in props.items():
        if name in value:
            _apply_presets(sub, value[name])
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for name, item in value.items():
            if name not in props:
                _apply_presets(extra, item)


def ideal_values(path: str) -> dict[str, Any]:
    """The knobs of a section (e.g. 'simulate') at their ``x-ideal`` values, nested as in the
    config: what ``realism: ideal`` fills in."""
    node: Mapping[str, Any] = _schema()["$defs"]["experiment"]
    for part in path.split("."):
        node = _resolved(node)["properties"][part]
    out: dict[str, Any] = {}
    _fill_ideal(node, out)
    return out


def section(path: str, cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One experiment section (``path`` as in the config: 'clean', 'synthetic.synthesize',
    'normalize.continuum') as a new dict: ``cfg``'s keys, the schema's defaults for the rest.

    Values are not validated here; the workflow validates the whole configuration first."""
    node: Mapping[str, Any] = _schema()["$defs"]["experiment"]
    for part in path.split("."):
        node = _resolved(node)["properties"][part]
    value = copy.deepcopy(dict(cfg or {}))
    _apply_presets(node, value)
    return _fill_defaults(node, value)


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
    _apply_presets(schema, config)
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
    messages += _not_numbers(config)
    for name in config.get("experiments", {}):
        if not EXPERIMENT_NAME.fullmatch(str(name)):
            messages.append(f"config key 'experiments.{name}': the experiment name is not a "
                            f"safe folder name (it becomes results/<name>/): use letters, "
                            f"digits, '_' and '-', starting with a letter or digit")
    for name, exp in config.get("experiments", {}).items():
        if not isinstance(exp, dict):
            continue
        if "experiment" in schema.get("$defs", {}):
            messages += _order_problems(schema["$defs"]["experiment"], exp,
                                        f"experiments.{name}", schema)
        segment_names = [s.get("name") for s in exp.get("grid", {}).get("segments", [])
                         if isinstance(s, dict)]
        repeated = sorted({n for n in segment_names if segment_names.count(n) > 1})
        if repeated:
            messages.append(f"config key 'experiments.{name}.grid.segments': segment name(s) "
                            f"{repeated} used twice; each segment needs its own name")
        selection = exp.get("selection", {})
        held_out = [selection.get(k) for k in ("valid_fraction", "test_fraction")]
        if all(isinstance(v, (int, float)) for v in held_out) and sum(held_out) >= 1:
            messages.append(f"config key 'experiments.{name}.selection': valid_fraction + "
                            f"test_fraction = {sum(held_out):g} leaves no training stars "
                            f"(must be < 1)")
        synthetic_valid = exp.get("synthetic", {}).get("synthesize", {}).get("valid_fraction")
        if isinstance(synthetic_valid, (int, float)) and synthetic_valid >= 1:
            messages.append(f"config key 'experiments.{name}.synthetic.synthesize."
                            f"valid_fraction': {synthetic_valid:g} leaves no training models "
                            f"(must be < 1)")
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


def _not_numbers(value: Any, path: str = "") -> list[str]:
    """A message for every NaN in the config: it passes every bound of the schema (each
    comparison with NaN is false) and would surface only deep inside a job."""
    if isinstance(value, float) and math.isnan(value):
        return [f"config key '{path}': NaN is not a value a setting can have"]
    if isinstance(value, Mapping):
        return [m for k, v in value.items() for m in _not_numbers(v, f"{path}.{k}".lstrip("."))]
    if isinstance(value, list):
        return [m for i, v in enumerate(value) for m in _not_numbers(v, f"{path}[{i}]")]
    return []


def _ordered(kind: str, value: Any) -> str | None:
    """What is wrong with a [lo, hi] range, a [first, last, step] axis or a segment/setup."""
    numbers = lambda *xs: all(isinstance(x, (int, float)) for x in xs)  # noqa: E731
    if kind == "range2" and isinstance(value, list) and len(value) == 2 and numbers(*value):
        return None if value[0] <= value[1] else f"[{value[0]}, {value[1]}] runs backwards"
    if kind == "gridaxis" and isinstance(value, list) and len(value) == 3 and numbers(*value):
        if value[2] <= 0:
            return f"step {value[2]} must be > 0"
        return None if value[0] <= value[1] else f"first {value[0]} > last {value[1]}"
    if kind in ("segment", "setup") and isinstance(value, dict) and \
            numbers(value.get("start"), value.get("end")):
        return None if value["start"] < value["end"] else \
            f"start {value['start']} is not below end {value['end']}"
    return None


def _order_problems(node: Mapping[str, Any], value: Any, path: str,
                    schema: Mapping[str, Any]) -> list[str]:
    """Ranges, axes and wavelength segments the schema's types allow but whose ends are in the
    wrong order (a grid segment with start > end used to pass and fail only after acquire)."""
    def resolve(sub: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
        ref = sub.get("$ref")
        if ref is None:
            return None, dict(sub)
        kind = ref.split("/")[-1]
        target = schema
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        return kind, {**resolve(target)[1], **{k: v for k, v in sub.items() if k != "$ref"}}

    kind, node = resolve(node)
    problem = _ordered(kind, value) if kind else None
    found = [f"config key '{path}': {problem}"] if problem else []
    if isinstance(value, dict):
        for key, sub in node.get("properties", {}).items():
            if key in value:
                found += _order_problems(sub, value[key], f"{path}.{key}", schema)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            found += _order_problems(node["items"], item, f"{path}[{i}]", schema)
    return found


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
    return validate_config(load_yaml(path) or {})
