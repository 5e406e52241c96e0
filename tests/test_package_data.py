"""Library data ship inside the package: found from any working directory, one copy each."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from starlabels import config, data
from starlabels.acquire import literature
from starlabels.simulate import physics

REPO = Path(__file__).resolve().parent.parent


def test_every_data_file_is_inside_the_package_and_found_by_the_library():
    package = Path(data.__file__).parent
    for name in data.FILES:
        assert data.path(name) == package / name and (package / name).is_file()
    assert config.SCHEMA_PATH.parent == package
    assert physics.DEFAULT_LINELIST.parent == package
    assert literature.BENCHMARK_STARS.parent == package


def test_one_copy_of_each_file():
    shipped = {p.name for p in (REPO / "starlabels" / "data").iterdir() if p.suffix != ".py"
               and p.is_file()}
    assert shipped == set(data.FILES)
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    copies = [p for p in tracked if Path(p).name in shipped and not p.startswith("starlabels/")]
    assert copies == []


def test_a_packaged_table_resolves_by_name_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert data.resolve("benchmark_stars.csv") == data.path("benchmark_stars.csv")
    assert not literature.load_benchmark_stars("benchmark_stars.csv").empty
    assert len(physics.load_linelist("linelist.csv")) == len(physics.load_linelist())
    # a file of the working directory wins over the packaged one; a path with folders is taken
    # as given (a typo must not silently read the packaged table)
    (tmp_path / "benchmark_stars.csv").write_text("x\n")
    assert data.resolve("benchmark_stars.csv") == Path("benchmark_stars.csv")
    assert data.resolve("tables/linelist.csv") == Path("tables/linelist.csv")
    with pytest.raises(FileNotFoundError, match="ships no data file"):
        data.path("nothing.csv")


def test_workflow_scripts_import_the_workflows_own_package(tmp_path):
    """Jobs run the workflow's starlabels/, not whatever is installed (another checkout's
    editable install, a wheel): Snakemake puts workflow_scripts/ on a script's path, and every
    script imports _workflow_package first."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = (f"import sys; sys.path.append({str(REPO / 'workflow_scripts')!r}); "
            "import _workflow_package, starlabels; print(starlabels.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert Path(out) == REPO / "starlabels" / "__init__.py"
    for script in sorted((REPO / "workflow_scripts").glob("[a-z]*.py")):
        first = script.read_text().splitlines()[0]
        assert first.startswith("import _workflow_package"), script.name


def test_the_conda_environment_names_the_dependencies_and_no_path():
    import tomllib

    import yaml

    env = yaml.safe_load((REPO / "envs" / "starlabels.yaml").read_text())
    entries = [d for d in env["dependencies"] if isinstance(d, str)]
    assert all(isinstance(d, str) for d in env["dependencies"]), "no pip section: nothing to build"
    assert not any("/" in d or d.startswith("-e") for d in entries)
    conda_names = {d.split("=")[0] for d in entries}
    # PyPI name -> conda-forge name where they differ
    renamed = {"torch": "pytorch", "matplotlib": "matplotlib-base", "opentsne": "opentsne",
               "snakemake": "snakemake-minimal"}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=!~ ]", requirement, maxsplit=1)[0].lower()
        assert renamed.get(name, name) in conda_names, name
    assert all("=" in d for d in entries), "every package pinned"
