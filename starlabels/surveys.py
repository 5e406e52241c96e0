"""The surveys the pipeline reads, one record each: everything that differs between them.

Code outside this registry asks a survey's record instead of comparing survey names. To add a
survey: write its file readers in ``starlabels/io/`` (and a reader factory in
:mod:`starlabels.io.readers`), its stars table in :mod:`starlabels.selection`, a simulator in
:mod:`starlabels.simulate.survey` and a manifest builder in :mod:`starlabels.acquire.manifests`,
add a record below, and add its name to ``survey`` (and its archive to ``source``) in
``starlabels/data/config.schema.yaml``.

Every function a record names is called with the same arguments for every survey:

- ``simulate(cfg, raw_dir, truth_path, *, threads, log, metadata)`` writes raw/observed/ and the
  truth table of a simulated survey;
- ``stars(*, catalog_path, calibration_path, labels, selection, solar)`` gives the stars table
  (labels, errors, split) that normalize joins to the spectra;
- ``reader(reader_cfg)`` gives the picklable path → spectra function normalize maps over files;
- ``manifest(*, archive_cfg, download_cfg, grid_cfg, labels, mirror, remote, catalog,
  download_dir, log, metadata)`` asks the real archive what to fetch;
- ``reference_stars(path)`` reads the literature table of its reference stars.
"""
from __future__ import annotations

from dataclasses import dataclass

from .registry import Hook, Registry


@dataclass(frozen=True)
class Survey:
    name: str
    #: the ``source`` that fetches it from the real archive (``simulate`` simulates any survey)
    archive: str
    simulate: Hook
    stars: Hook
    #: labels its catalogue has (None: every label the schema knows)
    labels: tuple[str, ...] | None
    reader: Hook
    #: catalogue column with the radial velocity normalize removes (None: the files' own)
    rv_column: str | None
    manifest: Hook
    #: ``download`` keys the manifest job uses (None: all of them, it fetches files itself)
    manifest_download: tuple[str, ...] | None
    #: ``archive`` block with the login (token endpoint, names of the environment variables
    #: with the user and password; see acquire.auth); None: public data
    credentials: str | None
    reference_stars: Hook
    #: the split whose stars validate judges, and what their reference labels are called
    evaluation_split: str
    reference_name: str
    #: giant / sub-giant / dwarf classes of its giant candidates (catalogue column, metrics)
    classes: bool
    #: input-catalogue columns the label catalogue carries where present (positions, ids)
    carry: tuple[str, ...] = ("ra", "dec")


SURVEYS: Registry[Survey] = Registry("survey", {
    "gaia_eso": Survey(
        name="gaia_eso", archive="eso_ges",
        simulate=Hook("starlabels.simulate.survey:simulate_gaia_eso"),
        stars=Hook("starlabels.selection:gaia_eso_stars"), labels=None,
        reader=Hook("starlabels.io.readers:giraffe_spectra"), rv_column="vrad",
        manifest=Hook("starlabels.acquire.manifests:gaia_eso_manifest"),
        manifest_download=("shards", "tap_timeout_s"), credentials="eso",
        reference_stars=Hook("starlabels.acquire.literature:load_benchmark_stars"),
        evaluation_split="test", reference_name="catalogue", classes=False),
    "sdss_marvels": Survey(
        name="sdss_marvels", archive="sdss_marvels",
        simulate=Hook("starlabels.simulate.survey:simulate_marvels"),
        stars=Hook("starlabels.selection:marvels_stars"), labels=("teff", "logg", "fe_h"),
        reader=Hook("starlabels.io.readers:marvels_plates"), rv_column=None,
        manifest=Hook("starlabels.acquire.manifests:marvels_manifest"),
        manifest_download=None, credentials=None,
        reference_stars=Hook("starlabels.acquire.literature:load_marvels_calibration_stars"),
        evaluation_split="calibration", reference_name="literature", classes=True,
        carry=("ra", "dec", "plate")),
})


def get(name: str) -> Survey:
    """The record of survey ``name`` (ValueError naming the known surveys otherwise)."""
    return SURVEYS.get(name)
