from pathlib import Path

import pytest
import yaml

from starlabels.config import ConfigError, load_config, load_schema, validate_config

REPO = Path(__file__).resolve().parent.parent


def _walk(schema, defs, path="", seen=None):
    """Yield (path, subschema) of every property in the schema, following $ref."""
    if "$ref" in schema:
        schema = {**defs[schema["$ref"].split("/")[-1]], **{k: v for k, v in schema.items() if k != "$ref"}}
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}.{name}".lstrip("."), sub, defs
        yield from _walk(sub, defs, f"{path}.{name}")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _walk(extra, defs, f"{path}.<name>")
    items = schema.get("items")
    if isinstance(items, dict):
        yield from _walk(items, defs, f"{path}[]")


def test_every_key_has_description_and_default():
    schema = load_schema()
    defs = schema["$defs"]
    missing = []
    for path, sub, _ in _walk(schema, defs):
        resolved = {**defs.get(sub.get("$ref", "/x").split("/")[-1], {}), **sub}
        if "description" not in resolved:
            missing.append(f"{path}: description")
        in_required_list = path.endswith(("segments[].name", "segments[].start", "segments[].end",
                                          "segments[].step")) or "setups[]" in path
        if "default" not in resolved and not in_required_list:
            missing.append(f"{path}: default")
    assert not missing, missing


def test_defaults_fill_nested_experiment_blocks():
    cfg = validate_config({"experiments": {"e": {}}, "run": ["e"]})
    e = cfg["experiments"]["e"]
    assert e["train"]["architecture"]["conv_channels"] == [8, 6, 4]
    assert e["normalize"]["continuum"]["order"] == 3
    assert e["simulate"]["snr"]["median"] == 70.0


def test_default_config_file_is_valid():
    cfg = load_config(REPO / "config.yaml")
    assert set(cfg["run"]) <= set(cfg["experiments"])


@pytest.mark.parametrize("bad, words", [
    ({"experiments": {"e": {"train": {"device": "gpu"}}}, "run": ["e"]},
     ["experiments.e.train.device", "'gpu'", "auto"]),
    ({"experiments": {"e": {"trian": {}}}, "run": ["e"]}, ["experiments.e.trian", "allowed keys"]),
    ({"run": ["missing"]}, ["'run'", "missing"]),
    ({"experiments": {"e": {"train": {"members": 0}}}, "run": ["e"]}, ["experiments.e.train.members"]),
    ({"experiments": {"m": {"survey": "sdss_marvels"}}, "run": ["m"]}, ["experiments.m.labels", "mg_fe"]),
    ({"experiments": {"e": {"trainset": {"sources": ["synthetic"]}}}, "run": ["e"]},
     ["experiments.e.trainset.sources", "synthetic.enabled"]),
])
def test_errors_name_the_key(bad, words):
    with pytest.raises(ConfigError) as err:
        validate_config(bad)
    for word in words:
        assert word in str(err.value)


def test_validation_does_not_mutate_input():
    raw = {"experiments": {"e": {}}, "run": ["e"]}
    validate_config(raw)
    assert raw == {"experiments": {"e": {}}, "run": ["e"]}


def test_tiny_test_config_is_valid(tiny_config_path):
    base = yaml.safe_load(open(REPO / "config.yaml"))
    tiny = yaml.safe_load(open(tiny_config_path))
    base["experiments"].update(tiny["experiments"])
    base["run"] = tiny["run"]
    validate_config(base)


def test_canonical_sorts_keys_recursively_so_params_compare_equal():
    from starlabels.config import canonical

    a = {"b": 1, "a": {"y": [{"q": 1, "p": 2}], "x": 2}}
    b = {"a": {"x": 2, "y": [{"p": 2, "q": 1}]}, "b": 1}
    assert repr(canonical(a)) == repr(canonical(b))
    assert list(canonical(a)) == ["a", "b"]
