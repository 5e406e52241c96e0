"""The configuration schema is the only source of defaults.

A library module with its own default for a config key gives a notebook user other settings than
the workflow. Library functions take the experiment's section (the workflow validates it; a
notebook completes a partial one with ``starlabels.config.section``), so no module below may:

- fall back on a value of its own for a config key: ``x.get(KEY, value)``, ``x.pop(KEY, value)``,
  ``x.setdefault(KEY, value)``, or ``<config value> or value``;
- keep a table of values keyed by a config section's keys (a ``*_DEFAULTS`` dict, the acceptance
  targets of an experiment);
- give a default to a parameter named as a config key where a config section enters the
  library: the stage functions (``starlabels.stages``) and every function that takes a section
  (a parameter ``cfg`` or ``*_cfg``).

Names that coincide with a config key without being that setting are listed in ``NOT_SETTINGS``
with the reason.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from starlabels import config

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(REPO / "starlabels").rglob("*.py"), *(REPO / "workflow_scripts").glob("*.py")])
#: where raw, not yet validated, user input is read: it has nothing to fall back on
RAW_CONFIG = {REPO / "starlabels" / "config.py"}

#: (file, function or constant, name) → why the name is not the config setting of that name
NOT_SETTINGS = {
    ("*", "*", "threads"): "thread counts are the job's resources (the rule's `threads:`), not "
                           "a setting; 1 runs in-process",
    ("starlabels/synthesize.py", "augment", "resolution"):
        "the resolving power drawn for this copy, echoed into the table",
    ("starlabels/catalog.py", "*", "method"): "a provenance record's field, not the config key",
    ("starlabels/simulate/physics.py", "DEFAULT_STEPS", "*"):
        "finite-difference steps of the Cramér–Rao bound, per label",
}


def _config_keys() -> dict[str, set[str]]:
    """Every key name under an experiment block, with the keys of each section (by path)."""
    sections: dict[str, set[str]] = {}

    def walk(node, path):
        node = config._resolved(node)
        props = node.get("properties", {})
        if props:
            sections[path] = set(props)
        for name, sub in props.items():
            walk(sub, f"{path}.{name}".lstrip("."))

    walk(config.load_schema()["$defs"]["experiment"], "")
    return sections


SECTIONS = _config_keys()
KEYS = set().union(*SECTIONS.values())


def _allowed(path: Path, where: str, name: str) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(f in ("*", rel) and w in ("*", where) and n in ("*", name)
               for f, w, n in NOT_SETTINGS)


def _literal(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
    except ValueError:
        return False
    return True


def _names_a_key(node: ast.AST) -> str | None:
    """The config key an expression reads: ``x.KEY``, ``x["KEY"]`` or ``x.get("KEY")``."""
    if isinstance(node, ast.Attribute) and node.attr in KEYS:
        return node.attr
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
            and node.slice.value in KEYS:
        return node.slice.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr == "get" and node.args and isinstance(node.args[0], ast.Constant) \
            and node.args[0].value in KEYS:
        return node.args[0].value
    return None


def _violations(path: Path, text: str | None = None) -> list[str]:
    tree = ast.parse(path.read_text() if text is None else text)
    rel = path.relative_to(REPO).as_posix()
    out = []
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    enclosing = {}
    for fn in functions:
        for node in ast.walk(fn):
            enclosing.setdefault(id(node), fn.name)

    for node in ast.walk(tree):
        where = enclosing.get(id(node), "<module>")
        # fallbacks: x.get(KEY, value), x.pop(KEY, value), x.setdefault(KEY, value)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("get", "pop", "setdefault") and len(node.args) == 2 \
                and isinstance(node.args[0], ast.Constant) and node.args[0].value in KEYS \
                and not (isinstance(node.args[1], ast.Constant) and node.args[1].value is None) \
                and path not in RAW_CONFIG and not _allowed(path, where, node.args[0].value):
            out.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
        # fallbacks: <config value> or value
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and len(node.values) == 2:
            key = _names_a_key(node.values[0])
            if key and _literal(node.values[1]) and path not in RAW_CONFIG \
                    and not _allowed(path, where, key):
                out.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
    # tables of values keyed by one section's keys
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            name = getattr(target, "id", "?")
            valued = {k.value for k, v in zip(node.value.keys, node.value.values)
                      if isinstance(k, ast.Constant) and (isinstance(v, ast.Constant)
                                                          or isinstance(v, ast.Dict) and _literal(v))}
            section = max(SECTIONS, key=lambda s: len(valued & SECTIONS[s]))
            if len(valued & SECTIONS[section]) >= 2 and not _allowed(path, name, "*"):
                out.append(f"{rel}:{node.lineno} {name}: values for the keys "
                           f"{sorted(valued & SECTIONS[section])} of a section such as {section}")
    # parameter defaults where a section enters the library
    for fn in functions:
        args = fn.args
        positional = args.posonlyargs + args.args
        pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
        pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
        names = [a.arg for a in positional + args.kwonlyargs]
        takes_section = any(n == "cfg" or n.endswith("_cfg") for n in names)
        if not (takes_section or rel == "starlabels/stages.py"):
            continue
        for arg, default in pairs:
            if arg.arg in KEYS and not (isinstance(default, ast.Constant) and default.value is None) \
                    and not _allowed(path, fn.name, arg.arg):
                out.append(f"{rel}:{fn.lineno} {fn.name}({arg.arg}={ast.unparse(default)})")
    return out


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_module_carries_its_own_default_for_a_config_key(path):
    assert not _violations(path)


def test_the_scan_finds_what_it_looks_for():
    """The rules above catch the forms the defaults used to take."""
    found = _violations(REPO / "starlabels" / "example.py", '''
NORMALIZE_DEFAULTS = {"continuum": CONTINUUM, "rest_frame": True, "min_coverage": 0.99}
TARGETS = {"teff": 100.0, "logg": 0.15}

def stage(cfg, knn=5):
    jitter = cfg.get("resolution_jitter", 0.0)
    return cfg["knn"] or 5
''')
    assert any("NORMALIZE_DEFAULTS" in v for v in found)
    assert any("TARGETS" in v for v in found)
    assert any("knn=5" in v for v in found)
    assert any("resolution_jitter" in v for v in found)
    assert any("or 5" in v for v in found)


@pytest.fixture(scope="module")
def validated_experiment():
    return config.validate_config({"experiments": {"e": {}}, "run": []})["experiments"]["e"]


@pytest.mark.parametrize("path", sorted(p for p in SECTIONS if p))
def test_a_section_completed_from_the_schema_is_what_validation_fills(path, validated_experiment):
    node = validated_experiment
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            pytest.skip(f"{path}: no default reaches it")
        node = node[part]
    if isinstance(node, dict):
        assert config.section(path) == node
