"""Real archives behind the acquire stage: what to fetch, and the raw/ layout built from it.

The simulated surveys write ``raw/observed/{manifest.parquet, catalog.fits,
calibration_stars.parquet, spectra/}`` (and ``raw/phoenix/{manifest.parquet, HiResFITS/}``) in
one job. For a real archive the same files come from three steps, so that a survey of 40 000
stars is a handful of Snakemake jobs, not one job per spectrum:

1. **manifest** (one job) — ask the archive what exists: the ESO ObsCore table for the Gaia-ESO
   GIRAFFE spectra and the DR5.1 parameter catalogue (both by *asynchronous* TAP, whose results
   no row cap truncates); the SDSS marvelsStar catalogue and one star1d file per plate; or the
   PHOENIX grid points the config asks for. The answer is a table of files (URL with the
   ``mirror`` applied, sanitised local name, expected size/checksum where the archive gives one,
   and a ``shard`` number), written before anything large is downloaded.
2. **download shards** (a few dozen jobs) — each fetches the rows of its shard with
   :func:`starlabels.download.fetch_files`. A file already complete on disk (matching the
   archive's size/checksum, or — ESO publishes neither — recorded in the shard journals kept
   beside the downloads) is not fetched again, so a rerun after an interruption fetches only
   what is missing. A file the archive does not have (HTTP 404) is recorded as missing.
3. **assemble** (one job) — hard-link the downloaded files into the layout the normalize or
   synthesize stage reads and write their manifest, catalogue and calibration table with the
   columns the simulated path writes.

File names are chosen here, never taken verbatim from the archive: every name goes through
:func:`starlabels.download.safe_relpath` so an odd CNAME or dp_id cannot leave the download folder.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import artifacts

Log = Callable[[str], None]

#: columns every remote-file table has (one row per file to fetch)
REMOTE_COLUMNS = ("url", "archive_url", "relpath", "size", "sha256", "md5", "shard", "kind")
#: fetch_files statuses that mean "the file is on disk, complete and verified"
FETCHED_STATUSES = frozenset({"fetched", "skipped"})
#: our status for a file the archive does not have (HTTP 404 / 410): recorded, not fatal where
#: the archive is known to have holes (the PHOENIX grid)
MISSING_STATUSES = frozenset({"missing"})
_NOT_THERE = re.compile(r"HTTP (?:404|410)\b|not found: ")

#: Gaia-ESO DR5.1 catalogue columns the pipeline reads, in the reader's order (io.gaia_eso)
GES_WANTED_COLUMNS = ("OBJECT", "RA", "DECLINATION", "TEFF", "E_TEFF", "LOGG", "E_LOGG", "FEH",
                      "E_FEH", "MG1", "E_MG1", "AL1", "E_AL1", "SNR", "VRAD", "E_VRAD", "SETUP",
                      "GES_TYPE", "TECH", "PECULI", "REMARK")
#: labels that cannot be computed without the named catalogue columns
GES_LABEL_COLUMNS = {"teff": ("TEFF",), "logg": ("LOGG",), "fe_h": ("FEH",),
                     "mg_fe": ("MG1", "FEH"), "al_fe": ("AL1", "FEH")}
_ADQL_IDENTIFIER = re.compile(r'^(?:[A-Za-z_]\w*|"[^"]+")(?:\.(?:[A-Za-z_]\w*|"[^"]+"))*$')
_PLAIN_COLUMN = re.compile(r"^[A-Za-z_]\w*$")


class ArchiveConfigError(ValueError):
    """The experiment's archive settings cannot describe a download (names the config key)."""


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


def shard_of(relpath: str, n_shards: int) -> int:
    """Shard number of a file: a hash of its local name, so a file keeps its shard whatever
    else the archive lists (a rerun's shards then hold the same files as before)."""
    if n_shards < 1:
        raise ArchiveConfigError(f"download.shards must be >= 1, got {n_shards}")
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % int(n_shards)


def remote_table(rows: pd.DataFrame, n_shards: int, mirror: str | None) -> pd.DataFrame:
    """Complete a table of files to fetch: mirror applied to ``archive_url``, sanitised relpath,
    size/checksum columns (None where the archive gives none) and the shard number.

    Duplicate local names would make two archive files overwrite each other: refused.
    """
    from .download import safe_relpath, with_mirror

    out = rows.copy()
    out["relpath"] = [safe_relpath(p) for p in out["relpath"]]
    duplicated = out["relpath"][out["relpath"].duplicated()].unique()
    if len(duplicated):
        raise ValueError(f"{len(duplicated)} archive files map onto the same local name, e.g. "
                         f"{list(duplicated[:3])}")
    out["url"] = [with_mirror(u, mirror) for u in out["archive_url"]]
    for column in ("size", "sha256", "md5"):
        if column not in out:
            out[column] = None
    if "kind" not in out:
        out["kind"] = "file"
    out["shard"] = np.array([shard_of(p, n_shards) for p in out["relpath"]], dtype=np.int64)
    first = [c for c in REMOTE_COLUMNS]
    return out[first + [c for c in out.columns if c not in first]].reset_index(drop=True)


def remote_files(table: pd.DataFrame) -> list:
    """The rows of a remote table as :class:`starlabels.download.RemoteFile` objects."""
    from .download import RemoteFile

    def _opt(value, cast):
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            return None
        return cast(value)

    return [RemoteFile(url=str(r.url), relpath=str(r.relpath), size=_opt(r.size, int),
                       sha256=_opt(r.sha256, str), md5=_opt(r.md5, str))
            for r in table.itertuples(index=False)]


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
    from .io.gaia_eso import ges_spectrum_filename

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
    from .io.gaia_eso import GES_CATALOG_COLUMNS

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
    from .download import ArchiveUnreachable

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
    catalogue FITS (the layout io.gaia_eso reads) and the table of spectra to fetch."""
    from . import tap as _tap
    from .download import ArchiveUnreachable

    try:
        return _build_eso_manifest(eso=eso, segments=segments, labels=labels, mirror=mirror,
                                   n_shards=n_shards, tap_timeout_s=tap_timeout_s,
                                   remote_out=remote_out, catalog_out=catalog_out, log=log,
                                   metadata=metadata, tap_query=tap_query or _tap.tap_async_query,
                                   tap_columns=tap_columns or _tap.tap_columns)
    except ArchiveUnreachable as error:
        raise _tap_hint(error) from None


def _build_eso_manifest(*, eso, segments, labels, mirror, n_shards, tap_timeout_s, remote_out,
                        catalog_out, log, metadata, tap_query, tap_columns) -> dict:
    from .io.gaia_eso import write_ges_catalog

    setups = setup_ranges(segments)
    table = eso["catalog_table"]
    described = tap_columns(eso["tap_cat"], table, log=log,
                            what=f"listing the columns of the Gaia-ESO catalogue {table}")
    if described.empty:
        raise ValueError(f"catalogue {table} is not listed in TAP_SCHEMA.columns of "
                         f"{eso['tap_cat']}: check archive.eso.catalog_table")
    names = described[_column_map(described).get("COLUMN_NAME", described.columns[0])]
    columns = ges_catalog_columns(_text(names), labels, table)
    log(f"archive: catalogue {table} at {eso['tap_cat']}: asking for {columns}")
    rows = tap_query(eso["tap_cat"], ges_catalog_adql(table, columns, eso["catalog_where"]),
                     timeout_s=tap_timeout_s, log=log,
                     what=f"querying the Gaia-ESO parameter catalogue {table}")
    catalog = ges_catalog_table(rows, [s for s, _, _ in setups], log=log)
    if catalog.empty:
        raise ValueError(f"catalogue {table} at {eso['tap_cat']} returned no stars")
    write_ges_catalog(catalog_out, catalog)
    log(f"archive: wrote {len(catalog)} catalogue stars to {catalog_out}")

    obscore = tap_query(eso["tap_obs"], eso_obscore_adql(eso, setups), timeout_s=tap_timeout_s,
                        log=log, what="listing the Gaia-ESO GIRAFFE spectra (ObsCore)")
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
    from .io.marvels import marvels_plate_filename

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
    from .download import RemoteFile, fetch_files, with_mirror
    from .io.marvels import read_marvels_star_catalog

    if not sdss.get("star_catalog"):
        raise ArchiveConfigError(
            "config key 'archive.sdss.star_catalog' is not set: give the path of the DR12 "
            "marvelsStar catalogue FITS below archive.sdss.base_url (UNVERIFIED in this "
            "project's references)")
    url = f"{str(sdss['base_url']).rstrip('/')}/{str(sdss['star_catalog']).lstrip('/')}"
    result = fetch_files([RemoteFile(url=with_mirror(url, mirror), relpath="marvelsStar.fits")],
                         download_dir, what="the MARVELS star catalogue", log=log,
                         **fetch_options(download))
    path = _fetched_paths(result, "the MARVELS star catalogue", allow_missing=False)[0]
    stars = read_marvels_star_catalog(path)
    with artifacts.atomic_path(catalog_out) as tmp:
        shutil.copyfile(path, tmp)
    rows = marvels_plate_rows(stars["plate"], sdss)
    remote = remote_table(rows, n_shards, mirror)
    artifacts.save_table(remote_out, remote, dict(metadata or {}, archive="sdss_marvels"))
    log(f"archive: marvelsStar lists {len(stars)} stars ({dict(stars['rpm_class'].value_counts())}"
        f" by reduced proper motion) on {len(remote)} plates; {n_shards} shards")
    return {"n_files": len(remote), "n_stars": len(stars)}


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
    from .io.phoenix import WAVE_FILENAME, phoenix_relpath

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

def fetch_options(download: Mapping[str, Any]) -> dict[str, Any]:
    """fetch_files keyword arguments from the experiment's ``download`` config section."""
    return {"concurrency": int(download["concurrency"]),
            "rate_limit_per_host": float(download["rate_limit_per_host"]),
            "retries": int(download["retries"]), "backoff_s": float(download["backoff_s"]),
            "max_backoff_s": float(download["max_backoff_s"]),
            "timeout_s": float(download["timeout_s"])}


def archive_credentials(user_env: str | None, password_env: str | None):
    """(user, password) from the named environment variables, or None (anonymous).

    Only variable *names* are ever in config or logs; the values stay in the environment.
    """
    from .download import credentials_from_env

    if not user_env or not password_env:
        return None
    return credentials_from_env(user_env, password_env)


def _fetched_paths(result: pd.DataFrame, what: str, allow_missing: bool) -> list[str]:
    """Paths of the fetched files; raise naming the failures (and missing ones unless allowed)."""
    status = result["status"].astype(str).str.lower()
    bad = ~status.isin(FETCHED_STATUSES) & ~(allow_missing & status.isin(MISSING_STATUSES))
    if bad.any():
        from .download import DownloadError

        sample = result.loc[bad, ["url", "status", "error"]].head(5).to_dict("records")
        raise DownloadError(f"{int(bad.sum())} of {len(result)} {what} could not be fetched, "
                            f"e.g. {sample}; rerun to fetch only the missing files")
    return result.loc[status.isin(FETCHED_STATUSES), "path"].astype(str).tolist()


def journal_path(journal_dir: str | os.PathLike, shard: int) -> Path:
    """Where a shard's download journal lives (outside Snakemake's outputs, so it survives a
    failed job and the rerun knows which files are complete)."""
    return Path(journal_dir) / f"shard_{int(shard)}.parquet"


def seed_journal(journal_dir: str | os.PathLike, shard: int, relpaths: Iterable[str]) -> int:
    """Copy into this shard's journal what the other journals know about its files.

    Archives like ESO give no size or checksum, so a complete file is recognised only through a
    journal entry (bytes + sha256). Files move between shards when ``download.shards`` changes;
    gathering every journal's entries for this shard's files keeps them from being fetched twice.
    Returns the number of entries added.
    """
    from .download import read_manifest

    wanted = set(relpaths)
    own = journal_path(journal_dir, shard)
    mine = read_manifest(own)
    known = set(mine["relpath"]) if len(mine) else set()
    found = []
    for other in sorted(Path(journal_dir).glob("shard_*.parquet")):
        if other == own:
            continue
        rows = read_manifest(other)
        rows = rows[rows["relpath"].isin(wanted - known) & rows["status"].isin(FETCHED_STATUSES)]
        if len(rows):
            found.append(rows)
            known |= set(rows["relpath"])
    if not found:
        return 0
    merged = pd.concat([mine, *found], ignore_index=True) if len(mine) else \
        pd.concat(found, ignore_index=True)
    artifacts.save_table(own, merged.reset_index(drop=True), {"stage": "download"})
    return sum(len(f) for f in found)


def _missing_not_fatal(error: Exception, what: str, log: Log) -> pd.DataFrame:
    """The fetch result of a run whose only failures are files the archive does not have,
    with those rows marked 'missing'; re-raise ``error`` if anything else failed."""
    frame = getattr(error, "manifest", None)
    if frame is None:
        raise error
    frame = frame.copy()
    failed = frame["status"] == "failed"
    absent = failed & frame["error"].fillna("").str.contains(_NOT_THERE)
    if (failed & ~absent).any():
        raise error
    frame.loc[absent, "status"] = "missing"
    log(f"download: {int(absent.sum())} {what} are not in the archive (HTTP 404); recorded as "
        f"missing")
    return frame


def download_shard(*, remote: str, shard: int, dest_dir: str, out: str,
                   download: Mapping[str, Any], journal_dir: str | None = None,
                   credentials_env: Sequence[str | None] = (None, None),
                   allow_missing: bool = False, what: str = "files", log: Log = print,
                   metadata: Mapping | None = None) -> pd.DataFrame:
    """Fetch the files of one shard into ``dest_dir``; write what was fetched to ``out``.

    Files already complete in ``dest_dir`` (verified against the archive's size/checksum or
    the journal in ``journal_dir``) are not fetched again. ``allow_missing`` records an
    archive's 404 as status 'missing' instead of failing (PHOENIX grid holes); any other
    failure fails the job after the retries, so the next run tries again.
    """
    from .download import ArchiveUnreachable, DownloadError, fetch_files

    table = artifacts.load_table(remote)
    rows = table[table["shard"] == int(shard)]
    journal = None
    if journal_dir is not None:
        added = seed_journal(journal_dir, shard, rows["relpath"])
        journal = journal_path(journal_dir, shard)
        if added:
            log(f"download: shard {shard}: {added} files known complete from other shards' "
                f"journals")
    log(f"download: shard {shard}: {len(rows)} {what}")
    names = tuple(credentials_env)
    try:
        result = fetch_files(remote_files(rows), dest_dir, what=what, log=log,
                             manifest_path=journal,
                             credentials=archive_credentials(*names),
                             credentials_env=names if all(names) else None,
                             **fetch_options(download))
    except ArchiveUnreachable:
        raise
    except DownloadError as error:
        if not allow_missing:
            raise
        result = _missing_not_fatal(error, what, log)
    _fetched_paths(result, what, allow_missing)
    artifacts.save_table(out, result.reset_index(drop=True),
                         dict(metadata or {}, shard=int(shard)))
    return result


# ------------------------------------------------------------------ assemble raw/

def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Hard-link ``src`` to ``dst`` (same bytes, no copy); copy where links are impossible.

    The download folder keeps its files when an assembled raw/ folder is deleted for a rerun,
    so a rerun never downloads again what is already here.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def fetched_files(remote: pd.DataFrame, shard_tables: Sequence[str]) -> pd.DataFrame:
    """The remote table joined with the shards' fetch results (status, path, bytes, sha256)."""
    parts = [artifacts.load_table(p) for p in shard_tables]
    fetched = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["relpath", "path", "status", "bytes", "sha256"])
    fetched = fetched.drop_duplicates("relpath", keep="last")
    merged = remote.drop(columns=["sha256"]).merge(
        fetched[["relpath", "path", "status", "bytes", "sha256"]], on="relpath", how="left")
    merged["status"] = merged["status"].fillna("not fetched").astype(str).str.lower()
    lost = ~merged["status"].isin(FETCHED_STATUSES | MISSING_STATUSES)
    if lost.any():
        from .download import DownloadError

        raise DownloadError(f"{int(lost.sum())} files of the manifest were not fetched by any "
                            f"shard (e.g. {merged.loc[lost, 'relpath'].head(3).tolist()}); rerun "
                            f"the download_shard jobs")
    return merged


def assemble_observed(*, survey: str, remote: str, shard_tables: Sequence[str], catalog: str,
                      raw_dir: str, calibration: Mapping[str, Any], log: Log = print,
                      metadata: Mapping | None = None) -> dict:
    """Downloaded files → ``raw_dir/{manifest.parquet, catalog.fits, calibration_stars.parquet,
    spectra/}`` with the columns the simulated survey writes (path, unit, star_id/plate, setup).

    A spectrum the archive no longer has (404) stays in the manifest with its would-be path, so
    the normalize stage records it in its rejects table ("cannot open file") instead of the star
    vanishing without trace.
    """
    from .literature import calibration_table

    raw = Path(raw_dir)
    spectra_dir = raw / "spectra"
    spectra_dir.mkdir(parents=True, exist_ok=True)
    files = fetched_files(artifacts.load_table(remote), shard_tables)
    present = files["status"].isin(FETCHED_STATUSES)
    for src, rel in zip(files.loc[present, "path"], files.loc[present, "relpath"]):
        link_or_copy(src, spectra_dir / rel)
    keep = [c for c in ("star_id", "setup", "plate", "dp_id", "url", "sha256", "bytes")
            if c in files]
    manifest = pd.DataFrame({"path": [str(spectra_dir / r) for r in files["relpath"]],
                             "unit": files["unit"].astype(str)})
    for c in keep:
        manifest[c] = files[c].reset_index(drop=True)
    manifest["download_status"] = np.where(present, "ok", "missing")
    meta = dict(metadata or {}, survey=survey)
    with artifacts.atomic_path(raw / "catalog.fits") as tmp:
        shutil.copyfile(catalog, tmp)
    literature = calibration_table(survey, calibration, log=log)
    artifacts.save_table(raw / "calibration_stars.parquet", literature, meta)
    artifacts.save_table(raw / "manifest.parquet", manifest, meta)
    n_missing = int((~present).sum())
    log(f"assemble: {int(present.sum())} files in {spectra_dir}"
        + (f"; {n_missing} the archive did not have (normalize lists them as rejects)"
           if n_missing else "") + f"; {len(literature)} calibration stars")
    return {"n_files": int(present.sum()), "n_missing": n_missing,
            "n_calibration": len(literature)}


def assemble_synthetic(*, remote: str, shard_tables: Sequence[str], raw_dir: str,
                       log: Log = print, metadata: Mapping | None = None) -> dict:
    """Downloaded PHOENIX files → ``raw_dir/{manifest.parquet, HiResFITS/}`` as the synthesize
    stage reads them (path, relpath, kind 'wave'/'spectrum', teff, logg, fe_h, alpha).

    Grid points the archive does not have are kept with kind 'missing' (recorded, not fatal);
    the WAVE file is required.
    """
    raw = Path(raw_dir)
    grid_dir = raw / "HiResFITS"
    grid_dir.mkdir(parents=True, exist_ok=True)
    files = fetched_files(artifacts.load_table(remote), shard_tables)
    present = files["status"].isin(FETCHED_STATUSES)
    wave = files["kind"] == "wave"
    if not (present & wave).any():
        raise FileNotFoundError(f"the PHOENIX WAVE file ({files.loc[wave, 'url'].tolist()}) "
                                f"was not fetched: without it no model has wavelengths")
    for src, rel in zip(files.loc[present, "path"], files.loc[present, "relpath"]):
        link_or_copy(src, grid_dir / rel)
    manifest = files[["relpath", "kind", "teff", "logg", "fe_h", "alpha", "url"]].copy()
    manifest.insert(0, "path", [str(grid_dir / r) for r in files["relpath"]])
    manifest.loc[~present.to_numpy(), "kind"] = "missing"
    artifacts.save_table(raw / "manifest.parquet", manifest.reset_index(drop=True),
                         dict(metadata or {}, survey="phoenix"))
    n_missing = int((~present).sum())
    log(f"assemble: {int(present.sum()) - 1} PHOENIX models + WAVE file in {grid_dir}; "
        f"{n_missing} grid points the archive does not have (kind 'missing')")
    return {"n_models": int(present.sum()) - 1, "n_missing": n_missing}


# ------------------------------------------------------------------ readers from config

def spectrum_reader(survey: str, reader: Mapping[str, Any] | None = None):
    """The picklable path → spectra function the normalize stage maps over files, with the
    experiment's reader choices (``normalize.reader``: wavelength medium air / vacuum / from the
    WAVE column's TUCD, and which flux column) bound in."""
    import functools

    from .io.gaia_eso import read_ges_spectrum
    from .io.marvels import read_marvels_plate

    reader = dict(reader or {})
    if survey == "gaia_eso":
        return functools.partial(read_ges_spectrum, medium=reader.get("medium", "air"),
                                 flux_column=reader.get("flux_column", "auto"))
    if survey == "sdss_marvels":
        return read_marvels_plate
    raise ValueError(f"survey {survey!r}: expected gaia_eso or sdss_marvels")


__all__ = [
    "ArchiveConfigError", "adql_string", "adql_table", "shard_of", "remote_table", "remote_files",
    "eso_obscore_adql", "classify_setup", "eso_spectra_rows", "ges_catalog_columns",
    "ges_catalog_adql", "ges_catalog_table", "build_eso_manifest", "marvels_plate_rows",
    "build_marvels_manifest", "phoenix_grid_points", "phoenix_rows", "build_phoenix_manifest",
    "fetch_options", "archive_credentials", "journal_path", "seed_journal", "download_shard",
    "link_or_copy", "fetched_files",
    "assemble_observed", "assemble_synthetic", "spectrum_reader",
]
