"""What every method's ensemble members share: devices, seeds, checkpoints, model folders, member
selection and the inputs of one prediction shard.

A member is one trained network in a model folder: ``model.pt`` (``{"state_dict", "meta", ...}``,
loaded with ``weights_only=True``), ``model.json`` (the same metadata, written last so its presence
means the folder is complete, plus the sha256 of the folder's other files under ``files``) and
``history.csv``. The train jobs add what applying the member to new spectra needs
(:func:`describe_member`: wavelength grid, normalisation settings, RV convention, label units);
loading checks the checksums and that ``model.json`` says what ``model.pt`` says, so a folder
edited or assembled from two runs is refused. Methods (the regression CNN in
:mod:`starlabels.cnn`, deep-REMAP in :mod:`starlabels.remap`) train and apply members; this
module holds what they do alike.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from . import artifacts
from .batch import say
from .models import build_model

ModelDir = str | os.PathLike

MODEL_FILE = "model.pt"
META_FILE = "model.json"
HISTORY_FILE = "history.csv"
CHECKPOINT_NAME = "checkpoint.pt"
RESIDENT_CHOICES = ("auto", "always", "never")
#: resident='auto' keeps the spectra on the GPU when they take at most this share of the free
#: device memory; the rest stays free for weights, optimiser state, activations (evaluation
#: batches of >= 1024 spectra) and the caching allocator's slack
RESIDENT_MEMORY_FRACTION = 0.5


# ---------------------------------------------------------------- devices and seeds

def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when present, else CPU. Asking for CUDA without one is an error, never CPU."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {name!r}: this job asked for CUDA but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); refusing to "
                f"fall back to CPU — use device 'auto' or 'cpu', or run on a GPU node")
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda'")


def training_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for the training forward pass on CUDA (fp32 everywhere else).

    The loss is computed outside this context, in fp32, from the upcast prediction.
    """
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch from one integer; return the generator used for shuffling.

    ``torch.manual_seed`` fixes the weight initialisation and dropout masks (CPU and CUDA); the
    returned CPU generator drives the per-epoch shuffle so it does not depend on how many random
    numbers dropout consumed. Python's and numpy's global generators are seeded only so that any
    library code drawing from them is reproducible too; training itself draws nothing from them.
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


def start_member(train_cfg: Mapping[str, Any], member: int, threads: int | None
                 ) -> tuple[torch.device, int, torch.Generator]:
    """Threads, device and seeds of member ``member``: (device, seed = train seed + member,
    the generator that drives the member's shuffles)."""
    if threads is not None:
        torch.set_num_threads(int(threads))
    device = resolve_device(train_cfg["device"])
    seed = int(train_cfg["seed"]) + int(member)
    return device, seed, seed_everything(seed)


# ---------------------------------------------------------------- training data

def training_inputs(flux_path: str | os.PathLike, table_path: str | os.PathLike
                    ) -> tuple[pd.DataFrame, str, np.ndarray]:
    """(table, its grid hash, the memory-mapped flux matrix) of a training set, checked to
    belong together."""
    table = artifacts.load_table(table_path)
    grid_hash = artifacts.table_metadata(table_path).get("grid_hash")
    if not grid_hash:
        raise ValueError(f"{table_path}: table metadata has no 'grid_hash'; cannot tie the model "
                         f"to a wavelength grid")
    flux = artifacts.load_matrix(flux_path)
    if flux.ndim != 2 or flux.shape[0] != len(table):
        raise ValueError(f"{flux_path}: flux matrix shape {flux.shape} does not match the table's "
                         f"{len(table)} rows")
    return table, grid_hash, flux


def training_set_hash(flux_train: np.ndarray, labels_train: np.ndarray,
                      label_names: Sequence[str]) -> str:
    """sha256 (16 hex) identifying the exact training spectra, their labels and label order."""
    parts = [artifacts.array_hash(flux_train), artifacts.array_hash(labels_train),
             ",".join(label_names)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def keep_resident(resident: str, device: torch.device, n_bytes: int,
                  free_bytes: int | None = None) -> bool:
    """Whether the training + validation spectra (``n_bytes``) live on ``device`` all run long.

    'always' / 'never' force the choice; 'auto' keeps them on a CUDA device when they take at
    most :data:`RESIDENT_MEMORY_FRACTION` of its free memory (``free_bytes``, by default from
    ``torch.cuda.mem_get_info``). On CPU 'auto' and 'always' mean resident (there is nothing to
    move); 'never' runs the host-batch path there too, which gives identical results.
    """
    if resident not in RESIDENT_CHOICES:
        raise ValueError(f"resident {resident!r}: choose one of {list(RESIDENT_CHOICES)}")
    if resident != "auto":
        return resident == "always"
    if device.type != "cuda":
        return True
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
    return n_bytes <= RESIDENT_MEMORY_FRACTION * free_bytes


def to_device_rows(flux: torch.Tensor, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``flux[rows]`` (host tensor, host row indices) as a tensor on ``device``.

    The rows are gathered into a staging buffer that is pinned whenever CUDA is available (torch's
    caching host allocator does not hand a pinned block out again before the copy reading it has
    finished), then copied with ``non_blocking=True``: on CUDA the copy overlaps the previous
    step's kernels. Pinning the whole host set would not help: a shuffled gather from pinned
    memory lands in ordinary memory. On a CPU device the final ``.to`` is a no-op.
    """
    pin = torch.cuda.is_available()
    staging = torch.empty((rows.numel(), *flux.shape[1:]), dtype=flux.dtype, pin_memory=pin)
    torch.index_select(flux, 0, rows, out=staging)
    return staging.to(device, non_blocking=pin)


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Everything needed to continue bit-for-bit: weights, optimiser, schedule, best state,
    history and every random-number generator the loop draws from. Written atomically."""
    with artifacts.atomic_path(path) as tmp:
        torch.save(dict(state), tmp)


def load_checkpoint(path: Path, identity: str, log: Callable[[str], Any]) -> dict | None:
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("identity") != identity:
        say(log, f"{path}: checkpoint from another training set or configuration; starting "
                 f"afresh")
        return None
    return state


# ---------------------------------------------------------------- model folders

def plain(value: Any) -> Any:
    """Plain python values (dict/list/str/float/int/bool/None) that ``weights_only`` loads."""
    def default(obj: Any) -> Any:
        if isinstance(obj, (np.generic, np.ndarray)):
            return obj.tolist()
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        raise TypeError(f"cannot store {type(obj).__name__} in model metadata")
    return json.loads(json.dumps(value, default=default))


#: model.json's key holding the sha256 of the folder's other files
FILES_KEY = "files"


def file_sha256(path: str | os.PathLike) -> str:
    """Full sha256 (hex) of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_sidecar(out_dir: Path, meta: Mapping[str, Any]) -> None:
    """model.json = ``meta`` + the checksums of model.pt and history.csv (written last)."""
    files = {name: file_sha256(out_dir / name) for name in (MODEL_FILE, HISTORY_FILE)}
    artifacts.save_json(out_dir / META_FILE, {**plain(meta), FILES_KEY: files})


def write_model_folder(out_dir: str | os.PathLike, model: nn.Module, meta: Mapping[str, Any],
                       history: pd.DataFrame, extra: Mapping[str, Any] | None = None) -> None:
    """Write model.pt, history.csv, then model.json (last: its presence marks a complete folder;
    it holds their checksums).

    ``extra`` entries (e.g. deep-REMAP's reference embeddings) are stored in model.pt beside the
    weights and metadata."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "_orig_mod", model)   # a torch.compile wrapper: save the module itself
    state = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    with artifacts.atomic_path(out_dir / MODEL_FILE) as tmp:
        torch.save({"state_dict": state, "meta": plain(meta), **dict(extra or {})}, tmp)
    with artifacts.atomic_path(out_dir / HISTORY_FILE) as tmp:
        history.to_csv(tmp, index=False)
    _write_sidecar(out_dir, meta)


def describe_member(model_dir: str | os.PathLike, description: Mapping[str, Any]) -> dict:
    """Add ``description`` (what applying the member needs: its input spectra, label units) to
    both model.pt's and model.json's metadata; the checksums are renewed. Returns the metadata."""
    model_dir = Path(model_dir)
    checkpoint = torch.load(model_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    meta = {**checkpoint["meta"], **plain(dict(description))}
    checkpoint["meta"] = meta
    with artifacts.atomic_path(model_dir / MODEL_FILE) as tmp:
        torch.save(checkpoint, tmp)
    _write_sidecar(model_dir, meta)
    return meta


def training_description(table_path: str | os.PathLike, labels: Sequence[str]) -> dict[str, Any]:
    """What a member trained on ``table_path`` must carry to be applied to new spectra: the
    description of its input spectra the normalize stage wrote (grid, normalisation, RV
    convention; passed on by trainset) and the units of its labels."""
    from .labels import LABELS

    spectra = artifacts.table_metadata(table_path).get("spectra")
    if not spectra:
        raise ValueError(f"{table_path}: no description of the input spectra in its metadata "
                         f"(written by an older normalize/trainset stage); rerun them")
    return {"spectra": spectra, "label_units": {name: LABELS[name].unit for name in labels}}


def _canonical_json(value: Any) -> str:
    # a string compare: NaN (a loss that never became finite) equals itself here
    return json.dumps(value, sort_keys=True, allow_nan=True)


def verify_member(model_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check a model folder and return (model.json's metadata, model.pt's contents).

    The files must match the checksums model.json lists, and model.json must say exactly what
    the metadata inside model.pt says (an edited label range, a model.json copied from another
    run); otherwise a ValueError names the folder and what differs."""
    model_dir = Path(model_dir)
    meta = artifacts.load_json(model_dir / META_FILE)
    files = meta.pop(FILES_KEY, None)
    if not files:
        raise ValueError(f"{model_dir}: {META_FILE} lists no checksums of its files (written by "
                         f"an older starlabels); retrain the member")
    for name, expected in files.items():
        if Path(name).name != name:
            raise ValueError(f"{model_dir}: {META_FILE} names a file outside its folder: {name!r}")
        if not (model_dir / name).is_file():
            raise ValueError(f"{model_dir}: {name} is missing")
        got = file_sha256(model_dir / name)
        if got != expected:
            raise ValueError(f"{model_dir}: {name} has sha256 {got[:16]}…, {META_FILE} says "
                             f"{expected[:16]}…: the file was changed or replaced")
    checkpoint = torch.load(model_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    saved = checkpoint.get("meta", {})
    if _canonical_json(saved) != _canonical_json(meta):
        differ = sorted(k for k in set(saved) | set(meta)
                        if _canonical_json(saved.get(k)) != _canonical_json(meta.get(k)))
        raise ValueError(f"{model_dir}: {META_FILE} and {MODEL_FILE} disagree on {differ}; the "
                         f"folder was edited or assembled from different runs")
    return meta, checkpoint


def load_member(model_dir: str | os.PathLike, device: str | torch.device = "cpu"
                ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained member from its folder (checked by :func:`verify_member`), in eval mode
    on ``device``; return (model, meta)."""
    meta, checkpoint = verify_member(model_dir)
    model = build_model(meta["method"], meta["n_pixels"], len(meta["labels"]), meta["architecture"])
    model.load_state_dict(checkpoint["state_dict"])
    device = device if isinstance(device, torch.device) else resolve_device(device)
    return model.to(device).eval(), meta


def load_ensemble(model_dirs: Sequence[ModelDir], device: torch.device
                  ) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Load every member and check they predict the same labels from the same pixels."""
    if len(model_dirs) == 0:
        raise ValueError("no model folders given")
    members = [load_member(d, device) for d in model_dirs]
    first_dir, (_, first) = model_dirs[0], members[0]
    for d, (_, meta) in zip(model_dirs, members):
        for key in ("labels", "n_pixels", "grid_hash"):
            if meta[key] != first[key]:
                raise ValueError(f"ensemble members disagree on {key}: {d} has {meta[key]!r}, "
                                 f"{first_dir} has {first[key]!r}")
    return members


def label_scaling(meta: Mapping[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(label_min, label_max − label_min) as float64 tensors: scaled → physical = min + span·y."""
    low = torch.tensor(meta["label_min"], dtype=torch.float64, device=device)
    span = torch.tensor(meta["label_max"], dtype=torch.float64, device=device) - low
    return low, span


# ---------------------------------------------------------------- member selection

def selection_loss(meta: Mapping[str, Any]) -> float:
    """The loss a member is ranked by: the regression CNN's best holdout loss
    (``selection_loss``, NaN when it held nothing out), deep-REMAP's best validation loss."""
    return float(meta["selection_loss"] if "selection_loss" in meta else meta["best_valid_loss"])


def select_members(model_dirs: Sequence[ModelDir], keep_quantile: float = 1.0) -> list[ModelDir]:
    """Members whose selection loss (:func:`selection_loss`) ≤ the ``keep_quantile`` quantile of
    all members' losses.

    1.0 keeps every member, 0.8 is the group's 80th-percentile cut, 0.0 keeps the best one(s).
    Below 1, members whose loss is not finite are dropped, and at least one must have a finite
    loss. Input order is preserved.
    """
    if not 0.0 <= float(keep_quantile) <= 1.0:
        raise ValueError(f"keep_quantile must be in [0, 1], got {keep_quantile}")
    if len(model_dirs) == 0:
        raise ValueError("no model folders given")
    if float(keep_quantile) >= 1.0:
        return list(model_dirs)
    losses = np.array([selection_loss(artifacts.load_json(Path(d) / META_FILE))
                       for d in model_dirs])
    finite = np.isfinite(losses)
    if not finite.any():
        raise ValueError(f"keep_quantile {keep_quantile} ranks members by their holdout loss, "
                         f"but none has one (train.holdout_fraction 0?): "
                         f"{list(map(str, model_dirs))}")
    threshold = np.quantile(losses[finite], float(keep_quantile))
    # The quantile of the losses themselves is always ≥ the smallest, so one member always passes.
    return [d for d, loss, ok in zip(model_dirs, losses, finite) if ok and loss <= threshold]


# ---------------------------------------------------------------- one prediction shard's inputs

def open_shard_inputs(flux_path: str | os.PathLike, table_path: str | os.PathLike, shard: int,
                      n_shards: int, batch_size: int, device: str, threads: int | None
                      ) -> tuple[torch.device, pa.Table, str | None, np.ndarray]:
    """Checked arguments and opened inputs of one prediction shard, for every method:
    (device, the table's spectrum ids as an Arrow table — compact, sliced without copying —,
    its grid hash, the memory-mapped flux matrix)."""
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} of {n_shards}: need 0 <= shard < n_shards")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if threads is not None:
        torch.set_num_threads(int(threads))
    table = pq.read_table(table_path, columns=["spectrum_id"])
    flux = artifacts.load_matrix(flux_path)
    if flux.ndim != 2 or flux.shape[0] != len(table):
        raise ValueError(f"{flux_path}: flux matrix shape {flux.shape} does not match the table's "
                         f"{len(table)} rows")
    return (resolve_device(device), table, artifacts.table_metadata(table_path).get("grid_hash"),
            flux)


def shard_rows(n_rows: int, shard: int, n_shards: int) -> range:
    """Matrix rows of shard ``shard``: contiguous, sizes differing by at most one (as
    ``np.array_split``)."""
    size, extra = divmod(n_rows, n_shards)
    start = shard * size + min(shard, extra)
    return range(start, start + size + (1 if shard < extra else 0))


def write_shard(df: pd.DataFrame, path: str | os.PathLike,
                meta: Mapping[str, Any] | None = None) -> None:
    """Write a shard table as Parquet; metadata = the frame's attrs (grid, members) + ``meta``."""
    artifacts.save_table(path, df, {**df.attrs, **dict(meta or {})})


# ---------------------------------------------------------------- ensemble calibration files

def member_names(model_dirs: Sequence[str | os.PathLike], folder: str | os.PathLike
                 ) -> list[str]:
    """The members as paths relative to ``folder`` (an ensemble calibration file's), so the
    ensemble folder can be copied elsewhere as one piece."""
    return [os.path.relpath(Path(d).resolve(), Path(folder).resolve()) for d in model_dirs]


def check_calibration_members(path: str | os.PathLike, recorded: Sequence[str],
                              members: Sequence[str | os.PathLike]) -> None:
    """Refuse an ensemble calibration file (at ``path``, listing ``recorded`` members relative
    to its folder) applied to other members than it was fitted for."""
    fitted = sorted(str((Path(path).parent / m).resolve()) for m in recorded)
    if fitted != sorted(str(Path(m).resolve()) for m in members):
        raise ValueError(f"{path} was fitted for members {list(recorded)}, but predict uses "
                         f"{list(map(str, members))}; rerun calibrate_ensemble")
