"""A trained ensemble as one thing: load it from its folder, apply it to your own spectra.

An ensemble folder is what the workflow writes as ``results/<experiment>/models/``: one folder per
member (:mod:`starlabels.members`), the ensemble's calibration file where the method has one, and
``ensemble.json`` (:func:`write_manifest`), which lists the members with the checksums of their
metadata, the prediction and flag settings of the experiment, and the description of the input
spectra (wavelength grid, normalisation settings, RV convention). Copying the folder copies the
ensemble; loading it checks every checksum.

Applying it (:class:`Ensemble`) runs the pipeline's own code, nothing copied: the survey readers,
:func:`starlabels.normalize.normalize_survey` / :func:`~starlabels.normalize.normalize_star` with
the stored settings, the method's predict function through :mod:`starlabels.methods`, and the
catalogue columns and flags of :mod:`starlabels.catalog`::

    from starlabels.ensemble import Ensemble

    ensemble = Ensemble.load("results/demo_ges/models")
    result = ensemble.predict_files(["spec_HR10.fits", "spec_HR21.fits"])
    result.catalog          # one row per star: labels, uncertainties, label_flags
    result.rejects          # every file or star that could not be used, and why
    result.write("catalog.fits")   # + catalog.parquet and catalog_rejects.csv
"""
from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import artifacts, methods, surveys
from .batch import Log, RejectSpectrum, exception_text, ordered_map, rejects_frame
from .io.spectrum import Spectrum

MANIFEST = "ensemble.json"
#: the layout version of ensemble.json
MANIFEST_FORMAT = 1
#: what the RV a star was shifted by came from (the ``rv_source`` column)
RV_SOURCES = ("table", "header", "none")


# ---------------------------------------------------------------- the folder

def _inside(folder: Path, path: str | os.PathLike, what: str) -> str:
    """``path`` relative to ``folder``, refusing anything outside it."""
    rel = os.path.relpath(Path(path).resolve(), folder.resolve())
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        raise ValueError(f"{what} {path} is not inside the ensemble folder {folder}")
    return rel


def write_manifest(*, model_dirs: Sequence[str | os.PathLike], out: str | os.PathLike,
                   method: str, survey: str, labels: Sequence[str], keep_quantile: float,
                   options: Mapping[str, Any], catalog_cfg: Mapping[str, Any],
                   classes: Mapping[str, float] | None = None,
                   ensemble_calibration: str | os.PathLike | None = None,
                   reference_scale: str | os.PathLike | None = None,
                   metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``ensemble.json`` beside the member folders: what to apply and how.

    Members and the calibration file must lie inside the folder of ``out``; their checksums go
    into the manifest, and every member is checked (:func:`starlabels.members.verify_member`)
    and must describe the same input spectra. ``reference_scale`` (the experiment's
    ``catalog/reference_scale.json``, :mod:`starlabels.reference_scale`) is copied into the
    manifest, so the ensemble's labels land on the catalogue's scale wherever it is applied."""
    from .labels import LABELS
    from .members import META_FILE, file_sha256, verify_member

    folder = Path(out).parent
    entries, spectra = [], None
    for d in model_dirs:
        meta, _ = verify_member(d)
        if "spectra" not in meta:
            raise ValueError(f"{d}: the member does not describe its input spectra; retrain it "
                             f"with this version of the workflow")
        if spectra is None:
            spectra = meta["spectra"]
        elif meta["spectra"] != spectra:
            raise ValueError(f"{d}: its input spectra differ from {model_dirs[0]}'s")
        entries.append({"folder": _inside(folder, d, "member"),
                        "model_json_sha256": file_sha256(Path(d) / META_FILE)})
    calibration = None
    if ensemble_calibration:
        calibration = {"file": _inside(folder, ensemble_calibration, "calibration file"),
                       "sha256": file_sha256(ensemble_calibration)}
    manifest = {
        "format": MANIFEST_FORMAT, "method": method, "survey": survey, "labels": list(labels),
        "label_units": {name: LABELS[name].unit for name in labels},
        "members": entries, "calibration": calibration,
        "predict": {"keep_quantile": float(keep_quantile), "options": dict(options)},
        "catalog": dict(catalog_cfg), "classes": dict(classes) if classes else None,
        "carry": list(surveys.get(survey).carry), "spectra": spectra,
        "reference_scale": (None if reference_scale is None else
                            dict(artifacts.load_json(reference_scale),
                                 source_sha256=file_sha256(reference_scale))),
        "provenance": dict(metadata or {}),
    }
    artifacts.save_json(out, manifest)
    return manifest


# ---------------------------------------------------------------- results

@dataclass
class Prediction:
    """What applying an ensemble gives: the catalogue (one row per star, the pipeline's columns
    and flags) and the rejects (every file or star that could not be used, and why)."""
    catalog: pd.DataFrame
    rejects: pd.DataFrame
    labels: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)
    bins: dict[str, list[float]] | None = None

    def write(self, fits_path: str | os.PathLike) -> dict[str, Path]:
        """The catalogue as FITS and Parquet (same stem) and the rejects as CSV
        (``<stem>_rejects.csv``); returns the paths written."""
        from .catalog import write_catalog

        fits_path = Path(fits_path)
        paths = {"fits": fits_path, "parquet": fits_path.with_suffix(".parquet"),
                 "rejects": fits_path.with_name(fits_path.stem + "_rejects.csv")}
        if len(self.catalog):
            write_catalog(self.catalog, paths["fits"], paths["parquet"], labels=self.labels,
                          provenance=self.provenance, bins=self.bins)
        else:
            del paths["fits"], paths["parquet"]
        with artifacts.atomic_path(paths["rejects"]) as tmp:
            self.rejects.to_csv(tmp, index=False)
        return paths


# ---------------------------------------------------------------- reading files

def _read_with(readers: Mapping[str, Callable[[str], Any]], path: str) -> Any:
    """The reader chosen for ``path`` in the scan (picklable through functools.partial)."""
    return readers[path](path)


def _spectra_of(result: Any) -> list[Spectrum]:
    spectra = [result] if isinstance(result, Spectrum) else list(result)
    if not all(isinstance(s, Spectrum) for s in spectra):
        raise TypeError("reader returned something other than Spectrum objects")
    return spectra


def _scan_one(candidates: Sequence[tuple[str, Callable[[str], Any]]], path: str
              ) -> tuple[str, str | None, list[str], str]:
    """(path, the survey whose reader reads it or None, its star ids, why none could)."""
    problems = []
    for name, reader in candidates:
        try:
            spectra = _spectra_of(reader(path))
        except Exception as exc:   # noqa: BLE001 - any unreadable file becomes a reject row
            problems.append(f"{name}: {exception_text(exc)}")
            continue
        return path, name, list(dict.fromkeys(str(s.star_id) for s in spectra)), ""
    return path, None, [], "; ".join(problems)


def _units(files_stars: Sequence[tuple[str, list[str]]]) -> list[list[str]]:
    """Files grouped so that all spectra of a star are read together (normalize coadds them):
    files sharing a star end up in one unit."""
    parent = list(range(len(files_stars)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_file: dict[str, int] = {}
    for i, (_, stars) in enumerate(files_stars):
        for star in stars:
            j = first_file.setdefault(star, i)
            parent[root(i)] = root(j)
    groups: dict[int, list[str]] = {}
    for i, (path, _) in enumerate(files_stars):
        groups.setdefault(root(i), []).append(path)
    return list(groups.values())


#: other spellings of the position columns in survey catalogues (Gaia-ESO: DECLINATION)
POSITION_NAMES = {"raj2000": "ra", "ra_icrs": "ra", "declination": "dec", "dej2000": "dec",
                  "dec_icrs": "dec"}


def read_star_table(path: str | os.PathLike, id_column: str = "star_id") -> pd.DataFrame:
    """A table of stars (FITS, VOTable, CSV, ECSV, Parquet: whatever astropy reads) with
    columns named in lower case, positions as ra / dec, and ``id_column`` renamed to star_id."""
    import warnings

    import astropy.units as u
    from astropy.table import Table

    with warnings.catch_warnings():
        # only ids, RVs and positions are read: other columns' unit strings (a survey
        # catalogue's 'dex') do not matter here
        warnings.simplefilter("ignore", u.UnitsWarning)
        table = Table.read(path)
    table = table[[n for n in table.colnames if table[n].ndim == 1]].to_pandas()
    table.columns = [str(c).lower() for c in table.columns]
    table = table.rename(columns={k: v for k, v in POSITION_NAMES.items()
                                  if k in table and v not in table})
    key = id_column.lower()
    if key not in table:
        raise ValueError(f"{path}: no column {id_column!r} with star ids (columns: "
                         f"{list(table.columns)})")
    table = table.rename(columns={key: "star_id"})
    table["star_id"] = table["star_id"].map(
        lambda v: v.decode() if isinstance(v, bytes) else str(v)).str.strip()
    return table.drop_duplicates("star_id")


def _spectrum_arrays(values: Any) -> list[np.ndarray]:
    """One spectrum (1-D) or several (2-D array, or a sequence of 1-D arrays of any lengths)
    as a list of float arrays."""
    if isinstance(values, (list, tuple)) and values and np.ndim(values[0]) == 1:
        return [np.asarray(v, dtype=np.float64) for v in values]
    array = np.asarray(values, dtype=np.float64)
    if array.ndim not in (1, 2):
        raise ValueError(f"spectra must be 1-D or 2-D arrays, got shape {array.shape}")
    return [array] if array.ndim == 1 else list(array)


# ---------------------------------------------------------------- the ensemble

class Ensemble:
    """A trained ensemble loaded from its folder (see the module docstring)."""

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder = folder
        self.manifest = manifest
        self.method = methods.get(manifest["method"])
        self.labels: list[str] = list(manifest["labels"])
        self.members = [folder / entry["folder"] for entry in manifest["members"]]
        calibration = manifest.get("calibration")
        self.calibration = folder / calibration["file"] if calibration else None
        self.spectra: dict[str, Any] = manifest["spectra"]
        # the catalogue's reference-star scale (None: the experiment fits none)
        self.reference_scale: dict[str, Any] | None = manifest.get("reference_scale")
        self.metas: list[dict[str, Any]] = []

    # ------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Ensemble":
        """Load the ensemble folder ``path`` (the one holding ``ensemble.json``), verifying the
        checksums of every file it names and each member's metadata against its weights."""
        from .members import META_FILE, file_sha256, verify_member
        from .normalize import grid_from_description

        folder = Path(path)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{folder}: no {MANIFEST}; an ensemble folder is the "
                                    f"workflow's results/<experiment>/models/")
        manifest = artifacts.load_json(manifest_path)
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{manifest_path}: format {manifest.get('format')!r}, this "
                             f"starlabels reads format {MANIFEST_FORMAT}")
        ensemble = cls(folder, manifest)
        for entry, member in zip(manifest["members"], ensemble.members):
            _inside(folder, member, "member")
            got = file_sha256(member / META_FILE)
            if got != entry["model_json_sha256"]:
                raise ValueError(f"{member / META_FILE}: sha256 {got[:16]}… but {MANIFEST} "
                                 f"says {entry['model_json_sha256'][:16]}…: the member changed")
            meta, _ = verify_member(member)
            if meta.get("spectra") != ensemble.spectra:
                raise ValueError(f"{member}: its input spectra differ from {MANIFEST}'s")
            ensemble.metas.append(meta)
        if ensemble.calibration is not None:
            _inside(folder, ensemble.calibration, "calibration file")
            got = file_sha256(ensemble.calibration)
            if got != manifest["calibration"]["sha256"]:
                raise ValueError(f"{ensemble.calibration}: sha256 {got[:16]}… but {MANIFEST} "
                                 f"says {manifest['calibration']['sha256'][:16]}…")
        ensemble.grid = grid_from_description(ensemble.spectra)
        return ensemble

    def info(self) -> dict[str, Any]:
        """What the ensemble is, for people: method, survey, labels and units, members,
        calibration, wavelength grid, normalisation and RV convention, training sets."""
        grid = self.spectra["grid"]
        return {
            "folder": str(self.folder), "method": self.method.name,
            "survey": self.manifest["survey"],
            "labels": {name: self.manifest["label_units"][name] for name in self.labels},
            "members": [{"folder": m.name, "training_set_hash": meta["training_set_hash"],
                         "best_valid_loss": meta.get("best_valid_loss"),
                         "valid_rmse": meta.get("valid_rmse")}
                        for m, meta in zip(self.members, self.metas)],
            "keep_quantile": self.manifest["predict"]["keep_quantile"],
            "calibration": (self.calibration.name if self.calibration else
                            "per member" if "temperatures" in self.metas[0] else "none"),
            "grid": {"medium": grid["medium"], "n_pixels": grid["n_pixels"],
                     "hash": grid["hash"], "segments": grid["segments"]},
            "normalize": self.spectra["normalize"], "rv": self.spectra["rv"],
            "flags": self.manifest["catalog"],
            "reference_scale": (None if self.reference_scale is None else {
                label: ("applied" if fit.get("applied") else f"not applied: {fit.get('reason')}")
                for label, fit in self.reference_scale["labels"].items()}),
            "checksums": "verified",
        }

    # ------------------------------------------------------------ applying

    def _readers(self, survey: str | None) -> list[tuple[str, Callable[[str], Any]]]:
        """The readers to try on a file, in order: the one asked for, else the ensemble's own
        survey's first, then every other survey's."""
        reader_cfg = self.spectra["normalize"].get("reader")
        names = [survey] if survey else [self.manifest["survey"], *(
            s for s in surveys.SURVEYS if s != self.manifest["survey"])]
        return [(name, surveys.get(name).reader(reader_cfg)) for name in names]

    def predict_files(self, paths: Sequence[str | os.PathLike], *, survey: str | None = None,
                      rv_table: pd.DataFrame | None = None, rv_column: str | None = None,
                      device: str = "auto", batch_size: int | None = None, threads: int = 1,
                      log: Log = print) -> Prediction:
        """Labels for the stars in the spectrum files ``paths``.

        The reader is the one of ``survey`` or, without it, the first survey whose reader reads
        the file. A star's files are coadded as the workflow does. Each spectrum is moved to the
        rest frame with the RV in ``rv_table`` (star_id + ``rv_column``, default the column the
        ensemble's training catalogue used) when it has one, else with the file's own; the
        ``rv_source`` column says which. Columns of ``rv_table`` that the survey's catalogue
        carries (ra, dec, ...) are copied into the catalogue."""
        from .normalize import normalize_survey

        paths = [str(p) for p in paths]
        candidates = self._readers(survey)
        scanned = list(ordered_map(_scan_one, candidates, paths, threads))
        rejects = [{"spectrum_id": Path(p).name, "path": p, "stage": "read",
                    "reason": f"unreadable: {why}"} for p, name, _, why in scanned if not name]
        readable = [(p, stars) for p, name, stars, _ in scanned if name]
        chosen = {p: dict(candidates)[name] for p, name, _, _ in scanned if name}
        star_ids = list(dict.fromkeys(s for _, stars in readable for s in stars))
        stars = pd.DataFrame({"star_id": pd.Series(star_ids, dtype=str)})
        rv_name = None
        if rv_table is not None:
            rv_name = rv_column or self.spectra["rv"]["catalogue_column"] or "rv"
            if rv_name not in rv_table:
                raise ValueError(f"RV table has no column {rv_name!r} (columns: "
                                 f"{list(rv_table.columns)}); name it with rv_column")
            keep = ["star_id", rv_name, *(c for c in self.manifest["carry"] if c in rv_table)]
            stars = stars.merge(rv_table[keep], on="star_id", how="left")
        elif self.spectra["rv"]["catalogue_column"] and self.spectra["rv"]["rest_frame"]:
            log(f"warning: the ensemble was trained on spectra shifted by the catalogue's RVs "
                f"({self.spectra['rv']['catalogue_column']}); without an RV table each file's "
                f"header RV is used, which can bias the labels (rv_source = header)")
        log(f"read: {len(readable)} of {len(paths)} files readable, {len(star_ids)} stars")
        with tempfile.TemporaryDirectory(prefix="starlabels-") as tmp:
            tmp = Path(tmp)
            if readable:
                read_fn = functools.partial(_read_with, chosen)
                normalize_survey(_units(readable), read_fn, self.grid, stars,
                                 self.spectra["normalize"], tmp / "flux.npy", tmp / "ivar.npy",
                                 tmp / "stars.parquet", tmp / "rejects.parquet",
                                 rv_column=rv_name, threads=threads, log=log,
                                 metadata={"survey": survey or self.manifest["survey"]})
                table = artifacts.load_table(tmp / "stars.parquet")
                rejects += artifacts.load_table(tmp / "rejects.parquet").to_dict("records")
            else:
                table = pd.DataFrame()
            if rv_name and len(table):
                known = table[rv_name].notna().to_numpy()
                table["rv_source"] = np.where(known, "table", "header")
            elif len(table):
                table["rv_source"] = "header"
            if len(table) and not self.spectra["rv"]["rest_frame"]:
                table["rv_source"] = "none"
            return self._catalogue(tmp, table, rejects, device, batch_size, log)

    def predict(self, wavelength: Any, flux: Any, ivar: Any, *, rv_kms: Any = None,
                medium: str | None = None, star_id: Sequence[str] | None = None,
                device: str = "auto", batch_size: int | None = None,
                log: Log = print) -> Prediction:
        """Labels for spectra given as arrays: each of ``wavelength`` (Å), ``flux`` and ``ivar``
        is one spectrum (1-D) or a sequence of them (a 2-D array or a list of 1-D arrays of any
        lengths; a 1-D ``wavelength`` with 2-D ``flux`` is shared). Each is resampled onto the
        ensemble's grid and normalised by the pipeline's own code with the ensemble's settings.
        ``rv_kms`` (one value or one per spectrum) is removed first (None = already at rest);
        ``medium`` is the wavelengths' (default: the grid's)."""
        from .normalize import normalize_star

        flux_list, ivar_list = _spectrum_arrays(flux), _spectrum_arrays(ivar)
        n = len(flux_list)
        wave_list = _spectrum_arrays(wavelength)
        if len(wave_list) == 1 and n > 1:
            wave_list = wave_list * n
        if not len(wave_list) == len(ivar_list) == n:
            raise ValueError(f"{len(wave_list)} wavelength, {n} flux and {len(ivar_list)} ivar "
                             f"arrays: give one of each per spectrum")
        rvs = np.broadcast_to(np.asarray(np.nan if rv_kms is None else rv_kms, dtype=float), n)
        ids = list(star_id) if star_id is not None else [f"spectrum_{i}" for i in range(n)]
        medium = medium or self.spectra["grid"]["medium"]
        rows, ivar_rows, records, rejects = [], [], [], []
        for i, (sid, w, f, v) in enumerate(zip(ids, wave_list, flux_list, ivar_list)):
            try:
                spectrum = Spectrum(spectrum_id=str(sid), star_id=str(sid), setup="array",
                                    wavelength=w, flux=f, ivar=v, mask=np.zeros(w.shape, bool),
                                    medium=medium, rv_kms=0.0)
                norm_flux, norm_ivar, info = normalize_star([spectrum], self.grid,
                                                    self.spectra["normalize"],
                                                    rv_kms=None if np.isnan(rvs[i]) else rvs[i])
            except (RejectSpectrum, ValueError) as exc:
                reason = exc.reason if isinstance(exc, RejectSpectrum) else str(exc)
                rejects.append({"spectrum_id": str(sid), "path": "", "stage": "normalize",
                                "reason": reason})
                continue
            rows.append(norm_flux.astype(np.float32))
            ivar_rows.append(norm_ivar.astype(np.float32))
            records.append({"spectrum_id": str(sid), "star_id": str(sid),
                            "snr": info["snr"], "rv_used": info["rv_used"],
                            "rv_source": "none" if np.isnan(rvs[i]) else "table"})
        with tempfile.TemporaryDirectory(prefix="starlabels-") as tmp:
            tmp = Path(tmp)
            table = pd.DataFrame.from_records(records)
            if rows:
                artifacts.save_matrix(tmp / "flux.npy", np.stack(rows))
                artifacts.save_matrix(tmp / "ivar.npy", np.stack(ivar_rows))
                artifacts.save_table(tmp / "stars.parquet", table,
                                     {"grid_hash": self.grid.hash(),
                                      "n_pixels": self.grid.n_pixels})
            return self._catalogue(tmp, table, rejects, device, batch_size, log)

    def _catalogue(self, tmp: Path, table: pd.DataFrame, rejects: list[dict[str, Any]],
                   device: str, batch_size: int | None, log: Log) -> Prediction:
        """Predict the rows of ``tmp/flux.npy`` and ``tmp/ivar.npy`` (described by ``table``)
        with the method's own
        predict function, as one shard, and build the catalogue's columns and flags."""
        from . import stages
        from .catalog import FLAG_COLUMN, bin_edges, finish_catalog, prediction_columns

        prov = artifacts.provenance(None, stage="starlabels predict", method=self.method.name,
                                    experiment=self.manifest["provenance"].get("experiment",
                                                                               "unknown"),
                                    ensemble=str(self.folder), n_members=len(self.members))
        columns = ["spectrum_id", "star_id", *self.manifest["carry"], "snr", "rv_used",
                   "rv_source", "files"]
        rejects_table = rejects_frame(rejects)
        if not len(table):
            return Prediction(pd.DataFrame(columns=columns), rejects_table, self.labels, prov,
                              bin_edges(self.metas))
        shard = tmp / "shard.parquet"
        stages.predict(flux=str(tmp / "flux.npy"), table=str(tmp / "stars.parquet"),
                       model_dirs=[str(m) for m in self.members], shard=0, n_shards=1,
                       cfg={"batch_size": batch_size, "device": device,
                            "keep_quantile": self.manifest["predict"]["keep_quantile"]},
                       out=str(shard), threads=None, log=log,
                       options=self.manifest["predict"]["options"],
                       ensemble_calibration=str(self.calibration) if self.calibration else None,
                       ivar=str(tmp / "ivar.npy"))
        pred = artifacts.load_table(shard)
        out = pd.DataFrame({c: table[c].to_numpy() for c in columns if c in table})
        # as the workflow's catalogue: onto the reference stars' scale, then the classes
        for name, values in prediction_columns(pred, self.labels, self.manifest["classes"],
                                               self.reference_scale).items():
            out[name] = values
        # training ranges of all members, as the workflow's catalogue stage takes them
        catalog = finish_catalog(out, pred, self.labels, self.metas, self.manifest["catalog"])
        log(f"predict: {len(catalog)} stars, {int((catalog[FLAG_COLUMN] != 0).sum())} flagged, "
            f"{len(rejects_table)} rejected")
        return Prediction(catalog, rejects_table, self.labels, prov, bin_edges(self.metas))
