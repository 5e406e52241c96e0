"""The GPU-path options of training, checked on CPU: `resident` (spectra on the device or in host
memory with per-batch copies) and `compile` (torch.compile, CUDA only). Neither may change the
weights on CPU, the saved state_dict keys, or which checkpoints resume."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from starlabels import artifacts
from starlabels.models import build_model
from starlabels.cnn.train import checkpoint_identity, train_member
from starlabels.members import (CHECKPOINT_NAME, keep_resident, load_member, to_device_rows,
                                write_model_folder)

LABELS = ["teff", "logg"]


# the code under test sets torch threads; give the next test module its own back
pytestmark = pytest.mark.usefixtures("restore_torch_threads")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(5)
    n, n_pixels = 160, 200
    x = np.arange(n_pixels)
    teff, logg = rng.uniform(4500, 6500, n), rng.uniform(1.5, 4.5, n)
    depth = 0.2 + 0.5 * (6500 - teff) / 2000
    width = 2 + logg
    flux = 1 - depth[:, None] * np.exp(-0.5 * ((x - 100) / width[:, None]) ** 2)
    flux += rng.normal(0, 0.01, flux.shape)
    table = pd.DataFrame({"spectrum_id": [f"s{i}" for i in range(n)],
                          "split": ["train"] * 120 + ["valid"] * 40, "teff": teff, "logg": logg})
    artifacts.save_matrix(folder / "flux.npy", flux.astype(np.float32))
    artifacts.save_table(folder / "table.parquet", table, {"grid_hash": "toy"})
    return folder / "flux.npy", folder / "table.parquet", n


def _cfg(**overrides):
    cfg = dict(seed=7, device="cpu", epochs=4, batch_size=16, learning_rate=3e-3, patience=100,
               conv_l2=0.001, architecture={}, method="cnn_regression", min_delta=0.0,
               lr_schedule="cosine")
    cfg.update(overrides)
    return cfg


def _train(toy, out, **overrides):
    flux, table, n = toy
    lines: list[str] = []
    meta = train_member(flux, table, np.ones(n, bool), LABELS, 0, _cfg(**overrides), out,
                        log=lines.append, threads=1)
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    return meta, state, lines, pd.read_csv(out / "history.csv")


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory):
    return _train(toy, tmp_path_factory.mktemp("ref"))


def _same(a, b):
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_host_resident_batches_give_identical_weights_on_cpu(toy, reference, tmp_path):
    meta, state, lines, history = _train(toy, tmp_path, resident="never")
    _same(reference[1], state)
    assert meta["valid_loss"] == reference[0]["valid_loss"]
    assert history["train_loss"].tolist() == reference[3]["train_loss"].tolist()
    assert any("kept in host memory" in line and "resident: never" in line for line in lines)
    assert any("resident on the device" in line for line in reference[2])


def test_resident_always_is_the_default_path_on_cpu(toy, reference, tmp_path):
    _, state, lines, _ = _train(toy, tmp_path, resident="always")
    _same(reference[1], state)
    assert any("resident on the device" in line for line in lines)


def test_compile_is_skipped_on_cpu_and_changes_nothing(toy, reference, tmp_path):
    meta, state, lines, _ = _train(toy, tmp_path, compile=True)
    _same(reference[1], state)
    assert not any(key.startswith("_orig_mod.") for key in state)
    assert any("compile: true is skipped on cpu" in line for line in lines)
    assert meta["config"]["compile"] is True
    model, _ = load_member(tmp_path)          # loads into a plain module: same key names
    assert model.state_dict().keys() == state.keys()


def test_bad_option_values_are_named(toy, tmp_path):
    with pytest.raises(ValueError, match="resident 'gpu'"):
        _train(toy, tmp_path, resident="gpu")
    with pytest.raises(ValueError, match="compile must be true or false"):
        _train(toy, tmp_path, compile="yes")


def test_keep_resident_decision():
    cuda = torch.device("cuda")   # only a device description: nothing is allocated
    gib = 2**30
    assert keep_resident("auto", cuda, 10 * gib, free_bytes=40 * gib)
    assert not keep_resident("auto", cuda, 30 * gib, free_bytes=40 * gib)   # > half of free
    assert keep_resident("always", cuda, 30 * gib, free_bytes=40 * gib)
    assert not keep_resident("never", cuda, 1, free_bytes=40 * gib)
    cpu = torch.device("cpu")
    assert keep_resident("auto", cpu, 10**15) and keep_resident("always", cpu, 1)
    assert not keep_resident("never", cpu, 1)
    with pytest.raises(ValueError, match="choose one of"):
        keep_resident("sometimes", cpu, 1)


def test_host_batch_gather_matches_indexing():
    flux = torch.arange(60, dtype=torch.float32).reshape(12, 5)
    rows = torch.tensor([7, 0, 11, 3])
    out = to_device_rows(flux, rows, torch.device("cpu"))
    assert torch.equal(out, flux[rows])
    assert out.is_pinned() == torch.cuda.is_available()


def test_compiled_wrapper_is_saved_with_plain_keys(tmp_path):
    model = build_model("cnn_regression", 200, 2, {})
    wrapper = torch.compile(model)                       # wrapping compiles nothing yet
    assert any(k.startswith("_orig_mod.") for k in wrapper.state_dict())
    write_model_folder(tmp_path, wrapper, {"training_set_hash": "x"}, pd.DataFrame())
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    assert list(saved) == list(model.state_dict())


def test_placement_options_do_not_invalidate_checkpoints():
    base = _cfg(checkpoint_every=2)
    identity = checkpoint_identity("h", base, 0)
    assert checkpoint_identity("h", dict(base, resident="never", compile=False), 0) == identity
    assert checkpoint_identity("h", dict(base, compile=True), 0) != identity
    assert checkpoint_identity("h", dict(base, learning_rate=1.0), 0) != identity


def test_resume_with_other_resident_setting_matches_uninterrupted(toy, tmp_path):
    """A member checkpointed with resident: auto, then resumed with resident: never (a job
    requeued onto a smaller GPU), ends bit for bit like an uninterrupted run."""
    flux, table, n = toy
    keep = np.ones(n, bool)
    ref = tmp_path / "ref"
    train_member(flux, table, keep, LABELS, 0, _cfg(epochs=6, checkpoint_every=2), ref,
                 log=lambda m: None, threads=1)
    out = tmp_path / "resumed"
    _interrupted_run(flux, table, keep, out)      # dies in epoch 5, checkpoint of epoch 4 kept
    lines: list[str] = []
    train_member(flux, table, keep, LABELS, 0,
                 _cfg(epochs=6, checkpoint_every=2, resident="never"), out, log=lines.append,
                 threads=1)
    assert any("resumed from" in line for line in lines)
    _same(torch.load(ref / "model.pt", weights_only=True)["state_dict"],
          torch.load(out / "model.pt", weights_only=True)["state_dict"])


class _Stop(Exception):
    pass


class _StopAfter:
    """A log function that raises once the checkpoint after epoch ``epoch`` has been written."""

    def __init__(self, folder, epoch):
        self.folder, self.epoch = folder, epoch

    def __call__(self, line):
        ckpt = self.folder / CHECKPOINT_NAME
        if f"epoch {self.epoch + 1}/" in line and ckpt.exists():
            raise _Stop


def _interrupted_run(flux, table, keep, out):
    with pytest.raises(_Stop):
        train_member(flux, table, keep, LABELS, 0, _cfg(epochs=6, checkpoint_every=2), out,
                     log=_StopAfter(out, 4), threads=1)
    assert (out / CHECKPOINT_NAME).exists() and not (out / "model.json").exists()
