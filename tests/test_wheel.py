"""The package installs and works outside the checkout: build the wheel from the package files
alone, install it into a fresh virtual environment in a temporary folder (reusing this
environment's torch, numpy, ... through --system-site-packages, so nothing is downloaded), and
run the installed `starlabels` command there on a copy of the tiny run's ensemble."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from starlabels.artifacts import load_table
from starlabels.catalog import read_catalog

pytestmark = pytest.mark.slow

#: what the wheel is built from: the package and its metadata, nothing of the workflow
PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE", "starlabels")


def run(*cmd: str | Path, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    # without PYTHONPATH: the installed package must work on its own, not the checkout's
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(repo, tmp_path_factory):
    """(the venv's `starlabels` executable, its python, a work folder outside the checkout)."""
    work = tmp_path_factory.mktemp("outside")
    source = work / "source"
    source.mkdir()
    for name in PACKAGE_FILES:
        if (repo / name).is_dir():
            shutil.copytree(repo / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(repo / name, source / name)
    wheels = work / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--no-index", "-w", wheels, source, cwd=work)
    wheel = next(wheels.glob("starlabels-*.whl"))
    env = work / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env)
    python = env / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        wheel, cwd=work)
    return env / "bin" / "starlabels", python, work


def test_the_installed_package_is_the_wheel_with_its_data(installed):
    exe, python, work = installed
    where = run(python, "-c", "import starlabels, starlabels.config as c, starlabels.data as d; "
                "print(starlabels.__file__); print(c.SCHEMA_PATH); print(d.path('linelist.csv'))",
                cwd=work).stdout.split()
    venv_dir = exe.parent.parent
    assert all(Path(p).resolve().is_relative_to(venv_dir.resolve()) for p in where), where
    assert all(Path(p).exists() for p in where[1:])
    help_text = run(exe, "--help", cwd=work).stdout
    assert "predict" in help_text and "check-config" in help_text


def test_installed_command_predicts_as_the_pipeline(installed, tiny_run, tiny_config_path):
    exe, _, work = installed
    results = tiny_run["results"]
    models = work / "my_ensemble"
    shutil.copytree(results / "tiny_ges" / "models", models)        # the ensemble, moved
    cat = load_table(results / "tiny_ges" / "catalog" / "starlabels_tiny_ges.parquet")
    # first visits (a repeat visit's files lie in spectra/visit<k>/)
    first = (cat["split"] == "test") & (cat["spectrum_id"] == cat["star_id"])
    stars = cat.loc[first, "spectrum_id"].head(3).tolist()
    spectra = work / "spectra"
    spectra.mkdir()
    for star in stars:
        for path in (results / "tiny_ges" / "raw" / "observed" / "spectra").glob(f"{star}_*"):
            shutil.copy2(path, spectra / path.name)
    shutil.copy2(results / "tiny_ges" / "raw" / "observed" / "catalog.fits", work / "rv.fits")
    run(exe, "predict", models, spectra, "-o", "out/labels.fits", "--rv-table", "rv.fits",
        "--id-column", "OBJECT", cwd=work)
    ours = read_catalog(work / "out" / "labels.fits").set_index("spectrum_id")
    assert sorted(ours.index) == sorted(stars)
    expected = cat.set_index("spectrum_id").loc[ours.index]
    for name in ("teff", "logg", "fe_h", "mg_fe", "al_fe", "teff_err", "logg_err", "snr"):
        np.testing.assert_allclose(ours[name], expected[name], rtol=1e-4, atol=1e-4)
    config = work / "tiny.yaml"
    shutil.copy2(tiny_config_path, config)
    assert "valid" in run(exe, "check-config", config, cwd=work).stdout
