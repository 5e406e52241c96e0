"""Library data ship inside the package: found from any working directory, one copy each."""
from __future__ import annotations

import subprocess
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
