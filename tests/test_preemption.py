"""A member killed mid-training (kill -9) and rerun resumes from its checkpoint and ends with the
same weights, bit for bit on CPU, as an uninterrupted run with the same seed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from starlabels import artifacts
from procs import kill_9_at_checkpoint
from starlabels.cnn.train import train_member
from starlabels.members import CHECKPOINT_NAME, load_member

SCRIPT = """
import sys, numpy as np
from starlabels.cnn.train import train_member
cfg = dict(seed=3, device="cpu", epochs=int(sys.argv[4]), batch_size=16, learning_rate=3e-3,
           patience=100, conv_l2=0.0, architecture={{}}, method="cnn_regression", min_delta=0.0,
           lr_schedule="cosine", checkpoint_every=2)
train_member(sys.argv[1], sys.argv[2], np.ones(int(sys.argv[5]), bool), ["teff", "logg"], 0, cfg,
             sys.argv[3], log=lambda m: print(m, flush=True), threads=1)
"""


def _toy(folder: Path, n: int = 240, n_pixels: int = 300) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, n_pixels)
    teff, logg = rng.uniform(4500, 6500, n), rng.uniform(1.5, 4.5, n)
    depth = 0.2 + 0.5 * (6500 - teff) / 2000
    width = 0.02 + 0.02 * logg / 4.5
    flux = 1 - depth[:, None] * np.exp(-0.5 * (x[None] / width[:, None]) ** 2)
    flux += rng.normal(0, 0.01, flux.shape)
    table = pd.DataFrame({"spectrum_id": [f"s{i}" for i in range(n)],
                          "split": ["train"] * (3 * n // 4) + ["valid"] * (n - 3 * n // 4),
                          "teff": teff, "logg": logg, "snr": 100.0})
    artifacts.save_matrix(folder / "flux.npy", flux.astype(np.float32))
    artifacts.save_table(folder / "table.parquet", table, {"grid_hash": "toy"})
    return folder / "flux.npy", folder / "table.parquet"


def _run(flux, table, out, epochs, n):
    return [sys.executable, "-c", SCRIPT.format(), str(flux), str(table), str(out), str(epochs),
            str(n)]


def test_kill_9_then_rerun_resumes_and_matches_uninterrupted(tmp_path):
    flux, table = _toy(tmp_path)
    epochs, n = 40, 240
    # uninterrupted reference
    ref = tmp_path / "ref"
    subprocess.run(_run(flux, table, ref, epochs, n), check=True, capture_output=True, timeout=600)
    assert not (ref / CHECKPOINT_NAME).exists()          # removed once the model is written

    # the same member, killed with SIGKILL once a checkpoint after epoch >= 6 exists
    out = tmp_path / "killed"
    proc = subprocess.Popen(_run(flux, table, out, epochs, n), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    kill_9_at_checkpoint(proc, out / CHECKPOINT_NAME, lambda state: state["epoch"] >= 6,
                         poll=0.05)
    assert not (out / "model.json").exists()             # it really died mid-training

    rerun = subprocess.run(_run(flux, table, out, epochs, n), capture_output=True, text=True,
                           timeout=600, check=True)
    assert "resumed from" in rerun.stdout
    assert not (out / CHECKPOINT_NAME).exists()

    model_a, _ = load_member(ref)
    model_b, _ = load_member(out)
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), name


def test_checkpoint_from_other_settings_is_not_resumed(tmp_path):
    flux, table = _toy(tmp_path, n=120)
    out = tmp_path / "m"
    logs: list[str] = []
    cfg = dict(seed=1, device="cpu", epochs=4, batch_size=16, learning_rate=3e-3, patience=100,
               conv_l2=0.0, architecture={}, method="cnn_regression", min_delta=0.0,
               checkpoint_every=2)
    keep = np.ones(120, bool)
    # a stale checkpoint written by a different learning rate must be ignored
    out.mkdir()
    torch.save({"identity": "something else", "epoch": 3}, out / CHECKPOINT_NAME)
    train_member(flux, table, keep, ["teff", "logg"], 0, cfg, out, log=logs.append, threads=1)
    assert any("starting afresh" in line for line in logs)
    assert not any("resumed from" in line for line in logs)
