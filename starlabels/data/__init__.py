"""Library data shipped inside the package: the configuration schema, the line list, the sky
and telluric line tables of the simulator, and the literature tables of reference stars.

They live here, not beside the workflow, so an installed package (a wheel, a Snakemake module
used from a URL) finds them wherever it runs.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

#: the files this folder ships (the wheel's package data)
FILES = ("config.schema.yaml", "linelist.csv", "benchmark_stars.csv",
         "marvels_calibration_stars.csv", "sky_lines.csv", "telluric_h2o.csv")


def path(name: str) -> Path:
    """The file ``name`` shipped with the package (FileNotFoundError naming the known ones)."""
    if name not in FILES:
        raise FileNotFoundError(f"starlabels ships no data file {name!r}; it has {list(FILES)}")
    # setuptools installs package data as plain files, so the traversable is a real path
    return Path(str(resources.files(__name__) / name))


def resolve(name: str | Path) -> Path:
    """A table named in a configuration: the path as given when it exists (or is absolute or
    names a folder), else the packaged file of that name, so ``benchmark_stars.csv`` works from
    any working directory and from an installed package."""
    given = Path(name)
    if given.exists() or given.is_absolute() or given.name != str(name) or given.name not in FILES:
        return given
    return path(given.name)


def read_line_table(path: str | Path, columns: set[str], what: str):
    """A line table (CSV, ``#`` comments) with at least ``columns``, sorted by wavelength_air;
    ValueError naming ``what`` and the missing columns otherwise."""
    import pandas as pd

    table = pd.read_csv(path, comment="#")
    missing = set(columns) - set(table.columns)
    if missing:
        raise ValueError(f"{path}: {what} table lacks columns {sorted(missing)}")
    return table.sort_values("wavelength_air").reset_index(drop=True)

