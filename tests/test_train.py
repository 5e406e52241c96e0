"""Training one ensemble member on a toy survey whose single absorption line encodes two labels:
its depth follows Teff and its width follows log g."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from starlabels import artifacts
from starlabels.models import conv_l2_penalty
from starlabels.cnn.train import load_keep, predict_scaled, select_rows, train_member
from starlabels.members import load_member, resolve_device

LABELS = ["teff", "logg"]
GRID_HASH = "toygrid0123456789"
LINE_PIXEL = 200


def make_toy_survey(folder, n_spectra=300, n_pixels=400, seed=0):
    """flux.npy, table.parquet (grid_hash in metadata) and keep.npy for a toy survey.

    Rows 0–199 train, 200–259 valid, 260–299 target. Rows 0–4 are rejected by 'keep' and
    rows 5–7 lack log g, so 192 training spectra are usable.
    """
    rng = np.random.default_rng(seed)
    teff = rng.uniform(4000, 7000, n_spectra)
    logg = rng.uniform(1, 5, n_spectra)
    pixel = np.arange(n_pixels)
    depth = 0.2 + 0.6 * (teff - 4000) / 3000
    width = 2 + (logg - 1)
    flux = 1 - depth[:, None] * np.exp(-0.5 * ((pixel - LINE_PIXEL) / width[:, None]) ** 2)
    flux += rng.normal(0, 0.01, flux.shape)
    split = np.array(["train"] * 200 + ["valid"] * 60 + ["target"] * (n_spectra - 260))
    logg[5:8] = np.nan
    table = pd.DataFrame({"spectrum_id": [f"toy{i:04d}" for i in range(n_spectra)], "split": split,
                          "teff": teff, "logg": logg, "fe_h": np.nan, "mg_fe": np.nan,
                          "al_fe": np.nan, "snr": 100.0})
    keep = np.ones(n_spectra, dtype=bool)
    keep[:5] = False
    paths = {"flux": folder / "flux.npy", "table": folder / "table.parquet",
             "keep": folder / "keep.npy"}
    artifacts.save_matrix(paths["flux"], flux.astype(np.float32))
    artifacts.save_table(paths["table"], table, {"grid_hash": GRID_HASH})
    np.save(paths["keep"], keep)
    return paths


def config(**overrides):
    cfg = dict(seed=11, device="cpu", epochs=60, batch_size=16, learning_rate=3e-3, patience=60,
               conv_l2=0.0, architecture={}, method="cnn_regression", min_delta=0.0)
    cfg.update(overrides)
    return cfg


# the code under test sets torch threads; give the next test module its own back
pytestmark = pytest.mark.usefixtures("restore_torch_threads")


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return make_toy_survey(tmp_path_factory.mktemp("survey"))


@pytest.fixture(scope="module")
def trained(survey, tmp_path_factory):
    """One member trained to convergence on the toy survey, with its log lines."""
    out = tmp_path_factory.mktemp("member0")
    lines: list[str] = []
    threads = torch.get_num_threads()
    meta = train_member(survey["flux"], survey["table"], survey["keep"], LABELS, 0, config(),
                        out, log=lines.append, threads=1)
    torch.set_num_threads(threads)
    return {"dir": out, "meta": meta, "log": lines}


def _scaled_valid(survey, meta):
    """Validation flux (tensor) and min–max scaled labels as the trainer sees them."""
    table = artifacts.load_table(survey["table"])
    rows = np.flatnonzero(table["split"].to_numpy() == "valid")
    flux = torch.from_numpy(np.array(artifacts.load_matrix(survey["flux"])[rows]))
    labels = table[LABELS].to_numpy()[rows]
    low, high = np.array(meta["label_min"]), np.array(meta["label_max"])
    return flux, (labels - low) / (high - low)


def test_training_learns_the_labels(trained, survey):
    meta = trained["meta"]
    _, scaled = _scaled_valid(survey, meta)
    # predicting the mean would score the label variance; a network that reads the line must do
    # at least ten times better
    assert meta["valid_loss"] < 0.1 * scaled.var(axis=0).mean()
    assert meta["valid_rmse"]["teff"] < 300.0      # label spread is ~870 K
    assert meta["valid_rmse"]["logg"] < 0.5         # label spread is ~1.15 dex
    history = pd.read_csv(trained["dir"] / "history.csv")
    assert history["train_loss"].iloc[0] > 3 * history["train_loss"].iloc[-1]


def test_rows_respect_split_keep_and_finite_labels(trained):
    meta = trained["meta"]
    assert meta["n_train"] == 200 - 5 - 3
    assert meta["n_valid"] == 60


def test_log_has_one_line_per_epoch_with_throughput(trained):
    epoch_lines = [line for line in trained["log"] if " epoch " in line and "spectra/s" in line]
    assert len(epoch_lines) == trained["meta"]["epochs_run"]
    assert all(word in epoch_lines[0] for word in ("train", "spectra/s", "elapsed"))
    # the validation split is reported on once, at the end, never per epoch
    assert not any("valid" in line for line in epoch_lines)


def test_model_folder_contents(trained):
    folder, meta = trained["dir"], trained["meta"]
    assert {p.name for p in folder.iterdir()} == {"model.pt", "model.json", "history.csv"}
    on_disk = artifacts.load_json(folder / "model.json")
    for key in ("method", "architecture", "labels", "label_min", "label_max", "n_pixels",
                "grid_hash", "training_set_hash", "n_train", "n_valid", "seed", "member",
                "epochs_run", "best_epoch", "selection_loss", "valid_loss", "valid_rmse",
                "n_holdout", "device",
                "git_commit", "config_hash", "versions", "created_utc"):
        assert key in on_disk, key
    assert on_disk["grid_hash"] == GRID_HASH
    assert on_disk["labels"] == LABELS and on_disk["n_pixels"] == 400
    assert on_disk["seed"] == 11 and on_disk["member"] == 0 and on_disk["device"] == "cpu"
    assert on_disk["architecture"]["conv_channels"] == [8, 6, 4]
    checkpoint = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"state_dict", "meta"}
    assert checkpoint["meta"]["training_set_hash"] == meta["training_set_hash"]
    history = pd.read_csv(folder / "history.csv")
    assert list(history["epoch"]) == list(range(1, meta["epochs_run"] + 1))
    assert {"train_loss", "spectra_per_s"} <= set(history.columns)
    assert on_disk["architecture"]["variance_head"] is True      # the schema default
    assert np.isnan(on_disk["selection_loss"]) and on_disk["n_holdout"] == 0


def test_load_member_reproduces_the_reported_validation_loss(trained, survey):
    model, meta = load_member(trained["dir"])
    assert not model.training
    flux, scaled = _scaled_valid(survey, meta)
    predicted = predict_scaled(model, flux, batch_size=64).numpy()
    mse = float(((predicted - scaled) ** 2).mean())
    assert mse == pytest.approx(meta["valid_loss"], rel=1e-4)
    rmse_teff = np.sqrt(((predicted[:, 0] - scaled[:, 0]) ** 2).mean()) * \
        (meta["label_max"][0] - meta["label_min"][0])
    assert rmse_teff == pytest.approx(meta["valid_rmse"]["teff"], rel=1e-4)


def test_early_stopping_stops_and_restores_the_best_epoch(survey, tmp_path):
    # a huge min_delta makes every epoch after the first "no improvement"
    meta = train_member(survey["flux"], survey["table"], survey["keep"], LABELS, 0,
                        config(epochs=100, patience=3, min_delta=10.0, holdout_fraction=0.25),
                        tmp_path, log=lambda line: None, threads=1)
    assert meta["best_epoch"] == 1
    assert meta["epochs_run"] == 4
    assert meta["n_holdout"] == 48 and meta["n_train"] == 192 - 48
    history = pd.read_csv(tmp_path / "history.csv")
    assert len(history) == 4
    # the saved weights are epoch 1's, not the last epoch's
    assert meta["selection_loss"] == pytest.approx(history["holdout_loss"].iloc[0], rel=1e-5)


def _weights(folder):
    return torch.load(folder / "model.pt", map_location="cpu", weights_only=True)["state_dict"]


def test_same_seed_gives_bitwise_identical_weights(survey, tmp_path):
    cfg = config(epochs=3)
    metas = [train_member(survey["flux"], survey["table"], survey["keep"], LABELS, member, cfg,
                          tmp_path / name, log=lambda line: None, threads=1)
             for member, name in ((2, "a"), (2, "b"), (3, "c"))]
    a, b, c = (_weights(tmp_path / name) for name in "abc")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metas[0]["valid_loss"] == metas[1]["valid_loss"]
    assert metas[0]["training_set_hash"] == metas[2]["training_set_hash"]
    assert metas[2]["seed"] == 11 + 3
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])


def test_conv_l2_weight_shrinks_the_convolution_kernels(survey, tmp_path):
    norms = {}
    for weight in (0.0, 1.0):
        train_member(survey["flux"], survey["table"], survey["keep"], LABELS, 0,
                     config(epochs=4, conv_l2=weight), tmp_path / str(weight),
                     log=lambda line: None, threads=1)
        model, _ = load_member(tmp_path / str(weight))
        norms[weight] = float(conv_l2_penalty(model).detach())
    assert norms[1.0] < 0.5 * norms[0.0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_cuda_fails_loudly(survey, tmp_path):
    with pytest.raises(RuntimeError, match=r"asked for CUDA but torch\.cuda\.is_available\(\) is False"):
        train_member(survey["flux"], survey["table"], survey["keep"], LABELS, 0,
                     config(device="cuda"), tmp_path)
    assert not (tmp_path / "model.json").exists()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


def test_empty_validation_set_is_an_error():
    table = pd.DataFrame({"split": ["train", "train", "valid"], "teff": [5000.0, 6000.0, np.nan],
                          "logg": [4.0, 3.0, 2.0]})
    with pytest.raises(ValueError, match="no usable 'valid' spectra"):
        select_rows(table, np.ones(3, dtype=bool), LABELS)
    train, valid = select_rows(table.assign(teff=[5000.0, 6000.0, 5500.0]),
                               np.array([True, False, True]), LABELS)
    assert train.tolist() == [0] and valid.tolist() == [2]


def test_missing_config_key_is_named(survey, tmp_path):
    cfg = config()
    del cfg["patience"]
    with pytest.raises(ValueError, match="patience"):
        train_member(survey["flux"], survey["table"], survey["keep"], LABELS, 0, cfg, tmp_path)


def test_keep_flags_from_npy_parquet_or_array(tmp_path):
    flags = np.array([True, False, True])
    np.save(tmp_path / "keep.npy", flags)
    artifacts.save_table(tmp_path / "keep.parquet", pd.DataFrame({"keep": flags}))
    for source in (tmp_path / "keep.npy", tmp_path / "keep.parquet", flags, [1, 0, 1]):
        assert load_keep(source, 3).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="3 entries but the table has 4 rows"):
        load_keep(flags, 4)
    with pytest.raises(ValueError, match="boolean"):
        load_keep(np.array([0.2, 1.0, 0.0]), 3)
