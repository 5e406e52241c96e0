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


# ---------------------------------------------------------------- values the schema's types let through

def _experiment(**sections) -> dict:
    return {"experiments": {"e": sections}, "run": ["e"]}


@pytest.mark.parametrize("bad, words", [
    (_experiment(grid={"segments": [{"name": "HR10", "start": 5616.0, "end": 5342.0,
                                     "step": 0.1}]}),
     ["experiments.e.grid.segments[0]", "start 5616.0 is not below end 5342.0"]),
    (_experiment(simulate={"setups": [{"name": "HR10", "resolution": 19800, "start": 5624.0,
                                       "end": 5334.0, "step": 0.05}]}),
     ["experiments.e.simulate.setups[0]", "start 5624.0"]),
    (_experiment(grid={"segments": [{"name": "A", "start": 1.0, "end": 2.0, "step": 0.1},
                                    {"name": "A", "start": 3.0, "end": 4.0, "step": 0.1}]}),
     ["experiments.e.grid.segments", "['A'] used twice"]),
    (_experiment(selection={"valid_fraction": 0.5, "test_fraction": 0.5}),
     ["experiments.e.selection", "leaves no training stars"]),
    (_experiment(selection={"valid_fraction": float("nan")}),
     ["experiments.e.selection.valid_fraction", "NaN"]),
    (_experiment(normalize={"continuum": {"upper_sigma": float("nan")}}),
     ["experiments.e.normalize.continuum.upper_sigma", "NaN"]),
    (_experiment(selection={"teff_range": [7000.0, 4000.0]}),
     ["experiments.e.selection.teff_range", "runs backwards"]),
    (_experiment(synthetic={"phoenix": {"grid": {"teff": [7000, 4000, 100]}}}),
     ["experiments.e.synthetic.phoenix.grid.teff", "first 7000 > last 4000"]),
    (_experiment(synthetic={"synthesize": {"valid_fraction": 1.0}}),
     ["synthetic.synthesize.valid_fraction", "leaves no training models"]),
    ({"experiments": {"../../x": {}}, "run": ["../../x"]},
     ["experiments.../../x", "not a safe folder name"]),
    ({"experiments": {"a.b": {}}, "run": []}, ["experiments.a.b", "not a safe folder name"]),
    (_experiment(train={"members": 100_000}), ["experiments.e.train.members", "100000"]),
    (_experiment(predict={"shards": 100_000}), ["experiments.e.predict.shards", "100000"]),
    (_experiment(download={"shards": 100_000}), ["experiments.e.download.shards", "100000"]),
])
def test_cross_field_and_non_finite_values_are_refused(bad, words):
    with pytest.raises(ConfigError) as err:
        validate_config(bad)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_upper_bounds_say_why():
    schema = load_schema()["$defs"]["experiment"]["properties"]
    for section, key in (("train", "members"), ("predict", "shards"), ("download", "shards")):
        spec = schema[section]["properties"][key]
        assert "maximum" in spec and "job" in spec["description"], (section, key)


def test_duplicate_yaml_keys_are_refused_naming_key_and_lines(tmp_path):
    from starlabels.config import check_config_files, load_yaml

    path = tmp_path / "dup.yaml"
    path.write_text("run: [e]\nexperiments:\n  e:\n    train:\n      members: 4\n"
                    "      epochs: 3\n      members: 40\n")
    for load in (load_config, load_yaml, lambda p: check_config_files([p])):
        with pytest.raises(ConfigError) as err:
            load(path)
        text = str(err.value)
        assert str(path) in text and "'members' twice (first on line 5)" in text
        assert "line 7" in text
    merged = tmp_path / "merge.yaml"     # a << merge may be overridden: that is YAML's intent
    merged.write_text("base: &b {members: 4, epochs: 3}\nother:\n  <<: *b\n  members: 8\n")
    assert load_yaml(merged)["other"] == {"members": 8, "epochs": 3}
