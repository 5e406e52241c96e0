"""The manifest step: ask the archive what exists, before anything large is downloaded.

The simulated surveys write ``raw/observed/{manifest.parquet, catalog.fits,
calibration_stars.parquet, spectra/}`` (and ``raw/phoenix/{manifest.parquet, HiResFITS/}``) in
one job. For a real archive the same files come from three steps, so that a survey of 40 000
stars is a handful of Snakemake jobs, not one job per spectrum: this **manifest** job, a few
dozen **download shards** (:mod:`starlabels.acquire.shards`) and one **assemble** job
(:mod:`starlabels.acquire.assemble`).

A manifest is the ESO ObsCore table for the Gaia-ESO GIRAFFE spectra and the DR5.1 parameter
catalogue (both by *asynchronous* TAP, whose results no row cap truncates); the SDSS marvelsStar
catalogue and one star1d file per plate; or the PHOENIX grid points the config asks for. The
answer is a remote-file table (:mod:`starlabels.acquire.remote`).
"""
from __future__ import annotations

import math
import re
import shutil
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import artifacts
from ..batch import Log
from . import tap
from .auth import login_headers
from .fetch import RemoteFile, fetch_files, with_mirror
from .http import ArchiveUnreachable
from .remote import ArchiveConfigError, fetch_options, remote_table
from .shards import fetched_paths


#: Gaia-ESO DR5.1 catalogue columns the pipeline reads, in the reader's order (io.gaia_eso)
GES_WANTED_COLUMNS = ("OBJECT", "RA", "DECLINATION", "TEFF", "E_TEFF", "LOGG", "E_LOGG", "FEH",
                      "E_FEH", "MG1", "E_MG1", "AL1", "E_AL1", "SNR", "VRAD", "E_VRAD", "SETUP",
                      "GES_TYPE", "TECH", "PECULI", "REMARK")
#: labels that cannot be computed without the named catalogue columns
GES_LABEL_COLUMNS = {"teff": ("TEFF",), "logg": ("LOGG",), "fe_h": ("FEH",),
                     "mg_fe": ("MG1", "FEH"), "al_fe": ("AL1", "FEH")}
_ADQL_IDENTIFIER = re.compile(r'^(?:[A-Za-z_]\w*|"[^"]+")(?:\.(?:[A-Za-z_]\w*|"[^"]+"))*$')
_PLAIN_COLUMN = re.compile(r"^[A-Za-z_]\w*$")


# ------------------------------------------------------------------ small shared helpers

def adql_string(text: str) -> str:
    """An ADQL string literal: single quotes doubled, so config values cannot end the literal."""
    return "'" + str(text).replace("'", "''") + "'"


def adql_table(name: str, key: str) -> str:
    """A table name from config, checked to be a (possibly schema-qualified, possibly quoted)
    identifier: the name is pasted into ADQL, so anything else is refused."""
    if not isinstance(name, str) or not _ADQL_IDENTIFIER.match(name.strip()):
        raise ArchiveConfigError(f"config key '{key}': {name!r} is not an ADQL table name "
                                 f"(e.g. ivoa.ObsCore or safcat.\"GES_DR5_1_V1\")")
    return name.strip()


def _column_map(frame: pd.DataFrame) -> dict[str, str]:
    """Upper-case name -> name as the service spelled it (TAP services differ in case)."""
    return {str(c).strip().upper(): c for c in frame.columns}


def _text(values: Iterable) -> list[str]:
    """Strings from a TAP column (bytes decoded, masked/None as '')."""
    out = []
    for v in values:
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            out.append("")
        elif isinstance(v, (bytes, np.bytes_)):
            out.append(v.decode("utf-8", errors="replace").strip())
        else:
            out.append(str(v).strip())
    return out


def setup_ranges(segments: Sequence[Mapping[str, Any]]) -> list[tuple[str, float, float]]:
    """(setup name, first Å, last Å) per grid segment: for Gaia-ESO a segment is filled by the
    GIRAFFE setup of the same name (schema: segments[].name)."""
    return [(str(s["name"]), float(s["start"]), float(s["end"])) for s in segments]


# ------------------------------------------------------------------ Gaia-ESO (ESO archive)

def eso_obscore_adql(eso: Mapping[str, Any], setups: Sequence[tuple[str, float, float]]) -> str:
    """ADQL for the GAIAESO GIRAFFE 1-D spectra overlapping the experiment's setups.

    ObsCore gives em_min/em_max in metres; the query keeps any spectrum overlapping a setup's
    range, and :func:`classify_setup` decides which setup it is.
    """
    table = adql_table(eso["obscore_table"], "archive.eso.obscore_table")
    ranges = " OR ".join(f"(em_min < {hi * 1e-10:.6e} AND em_max > {lo * 1e-10:.6e})"
                         for _, lo, hi in setups)
    return (f"SELECT dp_id, target_name, s_ra, s_dec, em_min, em_max, snr, access_estsize "
            f"FROM {table} "
            f"WHERE obs_collection = {adql_string(eso['collection'])} "
            f"AND instrument_name = {adql_string(eso['instrument'])} "
            f"AND dataproduct_type = 'spectrum' AND ({ranges})")


def classify_setup(em_min_m: np.ndarray, em_max_m: np.ndarray,
                   setups: Sequence[tuple[str, float, float]], min_overlap: float) -> np.ndarray:
    """GIRAFFE setup of each spectrum from its wavelength range: the setup whose range it
    covers most, if it covers at least ``min_overlap`` of it; '' otherwise (another setup).

    ObsCore has no setup column, but HR10 (≈534–562 nm) and HR21 (≈848–900 nm) do not overlap,
    so the wavelength range identifies the setup.
    """
    lo = np.asarray(em_min_m, dtype=float) * 1e10
    hi = np.asarray(em_max_m, dtype=float) * 1e10
    best = np.full(lo.shape, "", dtype=object)
    best_fraction = np.zeros(lo.shape)
    for name, start, end in setups:
        fraction = np.clip(np.minimum(hi, end) - np.maximum(lo, start), 0, None) / (end - start)
        fraction = np.where(np.isfinite(fraction), fraction, 0.0)
        better = (fraction >= min_overlap) & (fraction > best_fraction)
        best[better] = name
        best_fraction[better] = fraction[better]
    return best


def eso_spectra_rows(obscore: pd.DataFrame, eso: Mapping[str, Any],
                     setups: Sequence[tuple[str, float, float]],
                     catalog_stars: set[str] | None, log: Log = print) -> pd.DataFrame:
    """ObsCore rows → one row per file to fetch (star_id = CNAME = target_name, setup, dp_id).

    Spectra of other setups are dropped; with ``keep: newest`` (the default) only the newest
    dp_id per (star, setup) is kept — Phase-3 releases re-issue spectra, and coadding the same
    exposure twice would double its weight; ``keep: all`` keeps every file (normalize coadds
    them). Stars missing from the parameter catalogue are dropped when ``catalog_stars`` is given
    (they could never be labelled or trained on); the log says how many.
    """
    from ..io.gaia_eso import ges_spectrum_filename

    cols = _column_map(obscore)
    for need in ("DP_ID", "TARGET_NAME", "EM_MIN", "EM_MAX"):
        if need not in cols:
            raise ValueError(f"ObsCore answer lacks column {need.lower()} (columns: "
                             f"{sorted(obscore.columns)})")
    frame = pd.DataFrame({
        "dp_id": _text(obscore[cols["DP_ID"]]),
        "star_id": _text(obscore[cols["TARGET_NAME"]]),
        "setup": classify_setup(obscore[cols["EM_MIN"]], obscore[cols["EM_MAX"]], setups,
                                float(eso["setup_overlap"])),
        "obscore_snr": pd.to_numeric(obscore[cols["SNR"]], errors="coerce")
        if "SNR" in cols else np.nan,
    })
    n_all = len(frame)
    frame = frame[(frame["setup"] != "") & (frame["star_id"] != "") & (frame["dp_id"] != "")]
    log(f"archive: ObsCore lists {n_all} spectra; {len(frame)} in setups "
        f"{[s for s, _, _ in setups]}")
    if catalog_stars is not None:
        known = frame["star_id"].isin(catalog_stars)
        if (~known).any():
            log(f"archive: {int((~known).sum())} spectra of {frame.loc[~known, 'star_id'].nunique()}"
                f" stars not in the parameter catalogue are not fetched")
        frame = frame[known]
    order = {name: i for i, (name, _, _) in enumerate(setups)}
    frame = frame.assign(_setup_order=frame["setup"].map(order))
    frame = frame.sort_values(["star_id", "_setup_order", "dp_id"], kind="stable")
    if eso["keep"] == "newest":
        # dp_id is 'ADP.<ISO time of ingestion>': the lexically largest is the newest
        before = len(frame)
        frame = frame.groupby(["star_id", "setup"], sort=False).tail(1)
        if before > len(frame):
            log(f"archive: kept the newest of repeated spectra ({before - len(frame)} older "
                f"re-issues not fetched; archive.eso.keep: all fetches them)")
        frame = frame.sort_values(["star_id", "_setup_order"], kind="stable")
        names = [ges_spectrum_filename(s, k) for s, k in zip(frame["star_id"], frame["setup"])]
    else:
        names = [ges_spectrum_filename(s, f"{k}_{d}") for s, k, d in
                 zip(frame["star_id"], frame["setup"], frame["dp_id"])]
    base = str(eso["file_url"]).rstrip("/") + "/"
    return pd.DataFrame({
        "archive_url": [base + d for d in frame["dp_id"]],
        "relpath": names, "kind": "spectrum",
        "star_id": frame["star_id"].to_numpy(), "setup": frame["setup"].to_numpy(),
        "unit": frame["star_id"].to_numpy(), "dp_id": frame["dp_id"].to_numpy(),
        "obscore_snr": frame["obscore_snr"].to_numpy(dtype=float),
    })


def ges_catalog_columns(available: Iterable[str], labels: Sequence[str], table: str
                        ) -> list[str]:
    """Catalogue columns to ask for, as the service spells them; refuse when a label's columns
    are absent (e.g. MG1/AL1, UNVERIFIED on TAP for DR5.1) naming what the table does have."""
    lookup = {str(c).strip().upper(): str(c).strip() for c in available}
    missing_required = [c for c in ("OBJECT", "TEFF", "LOGG", "FEH") if c not in lookup]
    missing_labels = {label: [c for c in GES_LABEL_COLUMNS[label] if c not in lookup]
                      for label in labels if label in GES_LABEL_COLUMNS}
    missing_labels = {k: v for k, v in missing_labels.items() if v}
    if missing_required or missing_labels:
        raise ValueError(f"catalogue {table}: lacks column(s) {missing_required} and, for the "
                         f"labels {sorted(missing_labels)}, {missing_labels}; its columns are "
                         f"{sorted(lookup)[:60]} (set `labels:` to what the catalogue has, or "
                         f"point archive.eso.catalog_table at a catalogue with these columns)")
    return [lookup[c] for c in GES_WANTED_COLUMNS if c in lookup]


def ges_catalog_adql(table: str, columns: Sequence[str], where: str | None) -> str:
    """ADQL selecting ``columns`` (quoted with the service's own spelling) from ``table``."""
    table = adql_table(table, "archive.eso.catalog_table")
    for c in columns:
        if not _PLAIN_COLUMN.match(c):
            raise ValueError(f"catalogue column name {c!r} is not a plain identifier")
    select = ", ".join(f'"{c}"' for c in columns)
    return f"SELECT {select} FROM {table}" + (f" WHERE {where}" if where else "")


def ges_catalog_table(rows: pd.DataFrame, setups: Sequence[str], log: Log = print
                      ) -> pd.DataFrame:
    """TAP catalogue rows → one row per CNAME with the DR5.1 column names the FITS writer takes.

    DR5.1 can hold several rows per CNAME (one per setup combination). The row whose SETUP
    names every setup the experiment uses is preferred, then the highest SNR, so the labels
    come from the analysis of the spectra being normalised.
    """
    from ..io.gaia_eso import GES_CATALOG_COLUMNS

    cols = _column_map(rows)
    out = pd.DataFrame(index=rows.index)
    for name, (fmt, _) in GES_CATALOG_COLUMNS.items():
        if name not in cols:
            continue
        values = rows[cols[name]]
        out[name] = _text(values) if fmt == "A" else pd.to_numeric(values, errors="coerce")
    out = out[out["OBJECT"] != ""]
    wanted = [s.upper() for s in setups]
    setup_text = out["SETUP"].str.upper() if "SETUP" in out else pd.Series("", index=out.index)
    covers = setup_text.map(lambda s: all(w in re.split(r"[|,; ]+", s) for w in wanted))
    snr = out["SNR"] if "SNR" in out else pd.Series(np.nan, index=out.index)
    ranked = out.assign(_covers=covers.astype(int), _snr=snr.fillna(-np.inf))
    ranked = ranked.sort_values(["OBJECT", "_covers", "_snr"], ascending=[True, False, False],
                                kind="stable")
    best = ranked.drop_duplicates("OBJECT").drop(columns=["_covers", "_snr"])
    if len(best) < len(out):
        log(f"archive: catalogue has {len(out)} rows for {len(best)} CNAMEs; kept one per star "
            f"(rows covering {'+'.join(setups)} first, then highest SNR)")
    return best.reset_index(drop=True)


def _tap_hint(error: Exception) -> Exception:
    """An unreachable TAP service, with the way forward for queries: ``mirror`` serves files,
    so the TAP endpoints themselves must be pointed at a service that answers."""
    return ArchiveUnreachable(f"{error}\n  - TAP queries do not go through `mirror:`; point "
                              f"archive.eso.tap_obs / archive.eso.tap_cat at a reachable TAP "
                              f"service holding the same tables", host=getattr(error, "host", None))


def build_eso_manifest(*, eso: Mapping[str, Any], segments: Sequence[Mapping[str, Any]],
                       labels: Sequence[str], mirror: str | None, n_shards: int,
                       tap_timeout_s: float, remote_out: str, catalog_out: str,
                       log: Log = print, metadata: Mapping | None = None,
                       tap_query: Callable | None = None,
                       tap_columns: Callable | None = None) -> dict:
    """Query ESO (async TAP) for the Gaia-ESO catalogue and GIRAFFE spectra; write the
    catalogue FITS (the layout starlabels.io.gaia_eso reads) and the table of spectra to fetch.
    With the ``eso`` block's login variables set, the queries carry ESO's login token (so
    proprietary spectra are listed too)."""
    try:
        return _build_eso_manifest(eso=eso, segments=segments, labels=labels, mirror=mirror,
                                   n_shards=n_shards, tap_timeout_s=tap_timeout_s,
                                   remote_out=remote_out, catalog_out=catalog_out, log=log,
                                   metadata=metadata, tap_query=tap_query or tap.tap_async_query,
                                   tap_columns=tap_columns or tap.tap_columns)
    except ArchiveUnreachable as error:
        raise _tap_hint(error) from None


def _build_eso_manifest(*, eso, segments, labels, mirror, n_shards, tap_timeout_s, remote_out,
                        catalog_out, log, metadata, tap_query, tap_columns) -> dict:
    from ..io.gaia_eso import write_ges_catalog

    setups = setup_ranges(segments)
    table = eso["catalog_table"]
    headers = login_headers(eso, log=log)
    described = tap_columns(eso["tap_cat"], table, log=log, headers=headers,
                            what=f"listing the columns of the Gaia-ESO catalogue {table}")
    if described.empty:
        raise ValueError(f"catalogue {table} is not listed in TAP_SCHEMA.columns of "
                         f"{eso['tap_cat']}: check archive.eso.catalog_table")
    names = described[_column_map(described).get("COLUMN_NAME", described.columns[0])]
    columns = ges_catalog_columns(_text(names), labels, table)
    log(f"archive: catalogue {table} at {eso['tap_cat']}: asking for {columns}")
    rows = tap_query(eso["tap_cat"], ges_catalog_adql(table, columns, eso["catalog_where"]),
                     timeout_s=tap_timeout_s, log=log, headers=headers,
                     what=f"querying the Gaia-ESO parameter catalogue {table}")
    catalog = ges_catalog_table(rows, [s for s, _, _ in setups], log=log)
    if catalog.empty:
        raise ValueError(f"catalogue {table} at {eso['tap_cat']} returned no stars")
    write_ges_catalog(catalog_out, catalog)
    log(f"archive: wrote {len(catalog)} catalogue stars to {catalog_out}")

    obscore = tap_query(eso["tap_obs"], eso_obscore_adql(eso, setups), timeout_s=tap_timeout_s,
                        log=log, headers=headers,
                        what="listing the Gaia-ESO GIRAFFE spectra (ObsCore)")
    known = set(catalog["OBJECT"]) if eso["require_catalog"] else None
    spectra = eso_spectra_rows(obscore, eso, setups, known, log=log)
    remote = remote_table(spectra, n_shards, mirror)
    artifacts.save_table(remote_out, remote, dict(metadata or {}, archive="eso_ges"))
    counts = remote.groupby("setup").size().to_dict()
    log(f"archive: {len(remote)} spectra of {remote['star_id'].nunique()} stars to fetch "
        f"({counts}) in {n_shards} shards")
    return {"n_files": len(remote), "n_stars": int(remote["star_id"].nunique()),
            "n_catalog": len(catalog)}


# ------------------------------------------------------------------ SDSS MARVELS

def marvels_plate_rows(plates: Iterable[str], sdss: Mapping[str, Any]) -> pd.DataFrame:
    """One star1d file per plate under the SAS layout (``plate_path`` template, UNVERIFIED rerun
    from config); local name ``star1d_{plate}.fits`` as the reader expects."""
    from ..io.marvels import marvels_plate_filename

    rerun = sdss.get("rerun")
    if not rerun:
        raise ArchiveConfigError(
            "config key 'archive.sdss.rerun' is not set: the MARVELS DR12 reduction rerun "
            "(the {rerun} in spectro/redux/{rerun}/results/{plate}/star1d_{plate}.fits) is "
            "UNVERIFIED; look it up on https://data.sdss.org/sas/dr12/marvels/spectro/redux/")
    base = str(sdss["base_url"]).rstrip("/")
    plates = sorted({str(p).strip() for p in plates if str(p).strip()})
    rows = []
    for plate in plates:
        path = str(sdss["plate_path"]).format(rerun=rerun, plate=plate)
        rows.append({"archive_url": f"{base}/{path.lstrip('/')}",
                     "relpath": marvels_plate_filename(plate), "kind": "spectrum",
                     "unit": plate, "plate": plate, "setup": "MARVELS"})
    return pd.DataFrame(rows, columns=["archive_url", "relpath", "kind", "unit", "plate", "setup"])


def build_marvels_manifest(*, sdss: Mapping[str, Any], mirror: str | None, n_shards: int,
                           download: Mapping[str, Any], download_dir: str, remote_out: str,
                           catalog_out: str, log: Log = print,
                           metadata: Mapping | None = None) -> dict:
    """Fetch the marvelsStar catalogue (one file), read its plates, list their star1d files."""
    from ..io.marvels import read_marvels_star_catalog

    if not sdss.get("star_catalog"):
        raise ArchiveConfigError(
            "config key 'archive.sdss.star_catalog' is not set: give the path of the DR12 "
            "marvelsStar catalogue FITS below archive.sdss.base_url (UNVERIFIED in this "
            "project's references)")
    url = f"{str(sdss['base_url']).rstrip('/')}/{str(sdss['star_catalog']).lstrip('/')}"
    result = fetch_files([RemoteFile(url=with_mirror(url, mirror), relpath="marvelsStar.fits")],
                         download_dir, what="the MARVELS star catalogue", log=log,
                         **fetch_options(download))
    path = fetched_paths(result, "the MARVELS star catalogue", allow_missing=False)[0]
    stars = read_marvels_star_catalog(path)
    with artifacts.atomic_path(catalog_out) as tmp:
        shutil.copyfile(path, tmp)
    rows = marvels_plate_rows(stars["plate"], sdss)
    remote = remote_table(rows, n_shards, mirror)
    artifacts.save_table(remote_out, remote, dict(metadata or {}, archive="sdss_marvels"))
    log(f"archive: marvelsStar lists {len(stars)} stars ({dict(stars['rpm_class'].value_counts())}"
        f" by reduced proper motion) on {len(remote)} plates; {n_shards} shards")
    return {"n_files": len(remote), "n_stars": len(stars)}


# ------------------------------------------------------------------ per survey, as its record calls it

def gaia_eso_manifest(*, archive_cfg: Mapping[str, Any], download_cfg: Mapping[str, Any],
                      grid_cfg: Mapping[str, Any], labels: Sequence[str], mirror: str | None,
                      remote: str, catalog: str, download_dir: str, log: Log = print,
                      metadata: Mapping | None = None) -> dict:
    """The Gaia-ESO manifest from the experiment's sections (ESO by async TAP)."""
    return build_eso_manifest(eso=archive_cfg["eso"], segments=grid_cfg["segments"],
                              labels=labels, mirror=mirror, n_shards=int(download_cfg["shards"]),
                              tap_timeout_s=float(download_cfg["tap_timeout_s"]),
                              remote_out=remote, catalog_out=catalog, log=log, metadata=metadata)


def marvels_manifest(*, archive_cfg: Mapping[str, Any], download_cfg: Mapping[str, Any],
                     grid_cfg: Mapping[str, Any], labels: Sequence[str], mirror: str | None,
                     remote: str, catalog: str, download_dir: str, log: Log = print,
                     metadata: Mapping | None = None) -> dict:
    """The MARVELS manifest from the experiment's sections (the marvelsStar catalogue is a
    file, fetched with the download settings; the grid and labels do not change it)."""
    return build_marvels_manifest(sdss=archive_cfg["sdss"], mirror=mirror,
                                  n_shards=int(download_cfg["shards"]), download=download_cfg,
                                  download_dir=download_dir, remote_out=remote,
                                  catalog_out=catalog, log=log, metadata=metadata)


# ------------------------------------------------------------------ PHOENIX grid

def _axis(spec: Sequence[float], key: str) -> np.ndarray:
    first, last, step = (float(v) for v in spec)
    if step <= 0 or last < first:
        raise ArchiveConfigError(f"config key '{key}': [first, last, step] = {list(spec)} "
                                 f"needs step > 0 and last >= first")
    return np.round(np.arange(first, last + step * 1e-6, step), 6)


def phoenix_grid_points(grid: Mapping[str, Sequence[float]]) -> list[tuple[float, ...]]:
    """(teff, logg, fe_h, alpha) of every requested grid point the PHOENIX grid can have.

    The grid holds α ≠ 0 models only for −3 ≤ [Fe/H] ≤ 0 (data-sources.md): those combinations
    are not asked for. Other holes in the grid are discovered by download (HTTP 404).
    """
    points = []
    for teff in _axis(grid["teff"], "synthetic.phoenix.grid.teff"):
        for logg in _axis(grid["logg"], "synthetic.phoenix.grid.logg"):
            for fe_h in _axis(grid["fe_h"], "synthetic.phoenix.grid.fe_h"):
                for alpha in _axis(grid["alpha"], "synthetic.phoenix.grid.alpha"):
                    if alpha != 0 and not -3.0 <= fe_h <= 0.0:
                        continue
                    points.append((float(teff), float(logg), float(fe_h), float(alpha)))
    return points


def phoenix_rows(phoenix: Mapping[str, Any]) -> pd.DataFrame:
    """The WAVE file + one HiRes file per grid point, URLs under ``base_url`` (HiResFITS/)."""
    from ..io.phoenix import WAVE_FILENAME, phoenix_relpath

    base = str(phoenix["base_url"]).rstrip("/")
    rows = [{"archive_url": f"{base}/{WAVE_FILENAME}", "relpath": WAVE_FILENAME, "kind": "wave",
             "teff": np.nan, "logg": np.nan, "fe_h": np.nan, "alpha": np.nan}]
    for teff, logg, fe_h, alpha in phoenix_grid_points(phoenix["grid"]):
        rel = f"PHOENIX-ACES-AGSS-COND-2011/{phoenix_relpath(teff, logg, fe_h, alpha)}"
        rows.append({"archive_url": f"{base}/{rel}", "relpath": rel, "kind": "spectrum",
                     "teff": teff, "logg": logg, "fe_h": fe_h, "alpha": alpha})
    return pd.DataFrame(rows)


def build_phoenix_manifest(*, phoenix: Mapping[str, Any], mirror: str | None, n_shards: int,
                           remote_out: str, log: Log = print,
                           metadata: Mapping | None = None) -> dict:
    """The PHOENIX files the config's grid ranges name (no network: the layout is fixed)."""
    remote = remote_table(phoenix_rows(phoenix), n_shards, mirror)
    artifacts.save_table(remote_out, remote, dict(metadata or {}, archive="phoenix"))
    log(f"archive: PHOENIX grid: {int((remote['kind'] == 'spectrum').sum())} models + WAVE file "
        f"to fetch in {n_shards} shards")
    return {"n_files": len(remote)}


# ------------------------------------------------------------------ download shards


# ------------------------------------------------------------------ assemble raw/


# ------------------------------------------------------------------ readers from config


__all__ = [
    "adql_string", "adql_table", "setup_ranges", "eso_obscore_adql", "classify_setup",
    "eso_spectra_rows", "ges_catalog_columns", "ges_catalog_adql", "ges_catalog_table",
    "build_eso_manifest", "marvels_plate_rows", "build_marvels_manifest", "phoenix_grid_points",
    "phoenix_rows", "build_phoenix_manifest", "gaia_eso_manifest", "marvels_manifest",
]
