"""Surveys and methods are registries: what differs between them is in their records, and code
outside the registries asks a record instead of comparing names."""
from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest

from starlabels import config, methods, surveys
from starlabels.registry import Hook

REPO = Path(__file__).resolve().parent.parent
REGISTRIES = {REPO / "starlabels" / "surveys.py", REPO / "starlabels" / "methods.py"}
NAMES = {*surveys.SURVEYS, *methods.METHODS, *(surveys.get(s).archive for s in surveys.SURVEYS)}
#: a method's own package may check that a model folder is one of its own
OWN_NAME = {"starlabels/remap/": "deep_remap", "starlabels/cnn/": "cnn_regression"}
PYTHON = sorted(p for p in [*(REPO / "starlabels").rglob("*.py"),
                            *(REPO / "workflow_scripts").glob("*.py")] if p not in REGISTRIES)
RULES = sorted([REPO / "Snakefile", *(REPO / "rules").glob("*.smk")])


def _branches(tree: ast.AST, own: str | None = None) -> list[str]:
    """Comparisons with a survey, archive or method name (other than ``own``), and tables keyed
    by those names."""
    names = NAMES - {own}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for operand in operands:
                values = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) \
                    else [operand]
                if any(isinstance(v, ast.Constant) and v.value in names for v in values):
                    out.append(f"{node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.Dict):
            keyed = [k.value for k in node.keys if isinstance(k, ast.Constant) and k.value in NAMES]
            if len(keyed) >= 2:
                out.append(f"{node.lineno}: a table keyed by {keyed}")
    return out


@pytest.mark.parametrize("path", PYTHON, ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_code_branches_on_a_survey_or_method_name(path):
    rel = path.relative_to(REPO).as_posix()
    own = next((name for folder, name in OWN_NAME.items() if rel.startswith(folder)), None)
    assert not _branches(ast.parse(path.read_text()), own)


@pytest.mark.parametrize("path", RULES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_rule_branches_on_a_survey_or_method_name(path):
    names = "|".join(sorted(NAMES))
    pattern = re.compile(rf"""(==|!=|\bin)\s*[\(\[{{]?\s*["']({names})["']""")
    found = [line for line in path.read_text().splitlines() if pattern.search(line)]
    assert not found


def test_the_scan_sees_a_branch():
    assert _branches(ast.parse('if survey == "gaia_eso":\n    pass\n'))
    assert _branches(ast.parse('x = method in ("deep_remap", "other")\n'))
    assert _branches(ast.parse('run = {"gaia_eso": a, "sdss_marvels": b}[survey]\n'))


@pytest.mark.parametrize("registry", [surveys.SURVEYS, methods.METHODS])
def test_every_hook_names_a_function_that_exists(registry):
    for name in registry:
        record = registry.get(name)
        assert record.name == name
        for field in fields(record):
            value = getattr(record, field.name)
            if isinstance(value, Hook):
                assert callable(value.resolve()), (name, field.name, value)


def test_registries_and_schema_name_the_same_surveys_methods_and_variants():
    experiment = config.load_schema()["$defs"]["experiment"]["properties"]
    assert set(experiment["survey"]["enum"]) == set(surveys.SURVEYS)
    assert set(experiment["method"]["enum"]) == set(methods.METHODS)
    assert {surveys.get(s).archive for s in surveys.SURVEYS} <= set(experiment["source"]["enum"])
    ablation = set(experiment["remap"]["properties"]["ablation"]["items"]["enum"])
    assert ablation == {v for m in methods.METHODS for v in methods.get(m).variants}


def test_method_records_agree_with_their_packages():
    from starlabels.remap.train import VARIANTS

    remap = methods.get("deep_remap")
    assert set(remap.variants) == set(VARIANTS) - {"full"}
    for name in methods.METHODS:
        section = methods.get(name).architecture
        assert config.section(section), section
    assert set(remap.predict_settings) <= set(config.section(remap.section))


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown survey 'apogee'.*gaia_eso.*sdss_marvels"):
        surveys.get("apogee")
    with pytest.raises(ValueError, match=r"unknown method 'resnet'.*cnn_regression"):
        methods.get("resnet")
