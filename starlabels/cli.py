"""The ``starlabels`` command (also ``python -m starlabels``): use a trained ensemble without the
workflow.

    starlabels predict ENSEMBLE SPECTRA... -o catalog.fits   labels for your own spectrum files
    starlabels info ENSEMBLE                                   what an ensemble is and expects
    starlabels check-config FILE                               validate a workflow configuration

``predict`` exits with status 1 only when no star could be labelled; files or stars it could not
use are listed, with the reason, in ``<output stem>_rejects.csv``. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

SPECTRUM_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _spectrum_files(items: Sequence[str]) -> list[str]:
    """Files as given; a folder stands for the FITS files below it (sorted)."""
    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out += sorted(str(p) for p in path.rglob("*") if p.is_file()
                          and p.name.lower().endswith(SPECTRUM_SUFFIXES))
        else:
            out.append(item)
    return out


def _predict(args: argparse.Namespace) -> int:
    from . import surveys
    from .ensemble import Ensemble, read_star_table

    if args.survey and args.survey not in surveys.SURVEYS:
        _stderr(f"starlabels predict: unknown survey {args.survey!r}; known: "
                f"{surveys.SURVEYS.names()}")
        return 2
    ensemble = Ensemble.load(args.ensemble)
    files = _spectrum_files(args.spectra)
    missing = [f for f in files if not Path(f).exists()]
    present = [f for f in files if Path(f).exists()]
    rv_table = read_star_table(args.rv_table, args.id_column) if args.rv_table else None
    log = (lambda message: None) if args.quiet else _stderr
    result = ensemble.predict_files(present, survey=args.survey, rv_table=rv_table,
                                    rv_column=args.rv_column, device=args.device,
                                    batch_size=args.batch_size, threads=args.threads, log=log)
    if missing:
        import pandas as pd

        from .batch import rejects_frame
        result.rejects = pd.concat([rejects_frame([
            {"spectrum_id": Path(f).name, "path": f, "stage": "read", "reason": "no such file"}
            for f in missing]), result.rejects], ignore_index=True)
    written = result.write(args.output)
    for kind, path in written.items():
        _stderr(f"wrote {kind}: {path}")
    _stderr(f"{len(result.catalog)} stars labelled, {len(result.rejects)} files or stars "
            f"rejected (reasons in {written['rejects']})")
    return 0 if len(result.catalog) else 1


def _info(args: argparse.Namespace) -> int:
    from .ensemble import Ensemble

    info = Ensemble.load(args.ensemble).info()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    grid = info["grid"]
    units = ", ".join(f"{k} [{v or 'dex'}]" for k, v in info["labels"].items())
    print(f"ensemble     {info['folder']}")
    print(f"method       {info['method']} ({len(info['members'])} members, keep_quantile "
          f"{info['keep_quantile']}), calibration: {info['calibration']}")
    print(f"survey       {info['survey']}")
    print(f"labels       {units}")
    print(f"grid         {grid['n_pixels']} pixels, {grid['medium']} wavelengths, hash "
          f"{grid['hash']}")
    for s in grid["segments"]:
        print(f"             {s['name']}: {s['start']}-{s['end']} A, step {s['step']} A")
    cont = info["normalize"]["continuum"]
    print(f"normalize    continuum {cont}; min_coverage {info['normalize']['min_coverage']}, "
          f"max_masked_fraction {info['normalize']['max_masked_fraction']}")
    rv = info["rv"]
    print(f"rv           {'catalogue column ' + repr(rv['catalogue_column']) if rv['catalogue_column'] else 'file headers'}"
          f"{'' if rv['rest_frame'] else ' (rest frame off: no shift)'}; {rv['convention']}")
    print(f"flags        {info['flags']}")
    scale = info["reference_scale"]
    print("ref. scale   " + ("none (the experiment fits no reference-star scale)" if scale is None
                             else "; ".join(f"{k}: {v}" for k, v in scale.items())))
    for m in info["members"]:
        loss = m["best_valid_loss"]
        # members trained without a held-out part (no early stopping) have no validation loss
        print(f"member       {m['folder']}: training set {m['training_set_hash']}, best "
              f"validation loss {'none' if loss is None else format(loss, '.4g')}")
    print(f"checksums    {info['checksums']}")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    import yaml

    from .config import ConfigError, validate_config

    try:
        raw = yaml.safe_load(Path(args.file).read_text()) or {}
        config = validate_config(raw)
    except (OSError, yaml.YAMLError) as exc:
        _stderr(f"{args.file}: cannot read: {exc}")
        return 1
    except ConfigError as exc:
        _stderr(f"{args.file}: {exc}")
        return 1
    print(f"{args.file}: valid; experiments {sorted(config.get('experiments', {}))}, run "
          f"{config.get('run', [])}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="starlabels", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="labels for your own spectrum files",
                       description="Apply a trained ensemble to spectrum files: the pipeline's "
                                   "readers, normalisation (the ensemble's settings), networks, "
                                   "catalogue columns and flags.")
    p.add_argument("ensemble", help="ensemble folder (the workflow's results/<experiment>/models)")
    p.add_argument("spectra", nargs="+", help="spectrum files (or folders of FITS files)")
    p.add_argument("-o", "--output", required=True,
                   help="catalogue FITS path; the Parquet copy and <stem>_rejects.csv go beside")
    p.add_argument("--survey", help="file format (a survey name); default: chosen per file by "
                                    "its content, the ensemble's own survey tried first")
    p.add_argument("--rv-table", help="table of radial velocities (FITS, CSV, Parquet, VOTable); "
                                      "stars it lacks use their files' header RV")
    p.add_argument("--id-column", default="star_id", help="star id column of --rv-table "
                                                          "(default: star_id)")
    p.add_argument("--rv-column", help="RV column of --rv-table in km/s (default: the column "
                                       "the ensemble's training catalogue used, else 'rv')")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=None,
                   help="spectra per network batch (default: 64 on CPU, 2048 on CUDA)")
    p.add_argument("--threads", type=int, default=1, help="processes reading and normalising")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=_predict)

    p = sub.add_parser("info", help="what an ensemble is and expects")
    p.add_argument("ensemble")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_info)

    p = sub.add_parser("check-config", help="validate a workflow configuration file")
    p.add_argument("file")
    p.set_defaults(run=_check_config)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError) as exc:
        _stderr(f"starlabels {args.command}: {exc}")
        return 1
