"""A deep-REMAP member interrupted anywhere (mid pre-training, between phases, inside the SWA
epochs of fine-tuning, or by kill -9) and rerun resumes from its checkpoint and ends with the same
weights, temperatures and history, bit for bit on CPU, as an uninterrupted member."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from procs import kill_9_at_checkpoint
from starlabels import artifacts
from starlabels.config import validate_config
from starlabels.members import CHECKPOINT_NAME, MODEL_FILE
from starlabels.remap.member import train_remap_member

LABELS = ["teff", "logg", "fe_h"]


def _settings(**train_overrides):
    config = validate_config({"run": ["x"], "experiments": {"x": {
        "survey": "sdss_marvels", "method": "deep_remap", "labels": LABELS,
        "remap": {"architecture": {"stem_channels": 4, "stage_channels": [4, 8],
                                   "blocks_per_stage": [1, 1], "embedding_dim": 8},
                  "bins": {"teff": [4000, 7000, 100], "logg": [1.0, 5.0, 0.2],
                           "fe_h": [-1.5, 0.5, 0.1]},
                  "pretrain": {"epochs": 4}, "finetune": {"epochs": 6, "replay_fraction": 0.5},
                  "swa": {"fraction": 0.5}}}}})
    exp = config["experiments"]["x"]
    train = dict(exp["train"], device="cpu", batch_size=32, checkpoint_every=2)
    train.update(train_overrides)
    return train, exp["remap"]


def _toy_trainset(folder: Path, n_pixels: int = 120) -> tuple[Path, Path]:
    rng = np.random.default_rng(7)
    parts = [("synthetic", "train", 96), ("synthetic", "valid", 16),
             ("observed", "train", 48), ("observed", "valid", 24)]
    rows = [(src, split) for src, split, n in parts for _ in range(n)]
    n = len(rows)
    teff, logg = rng.uniform(4200, 6800, n), rng.uniform(1.5, 4.8, n)
    fe_h = rng.uniform(-1.2, 0.3, n)
    x = np.linspace(-1, 1, n_pixels)
    flux = (1 - (0.3 + 0.4 * (6800 - teff) / 2600)[:, None]
            * np.exp(-0.5 * (x[None] / (0.03 + 0.02 * logg / 4.8)[:, None]) ** 2)
            - (0.1 + 0.05 * fe_h)[:, None] * np.exp(-0.5 * ((x[None] - 0.5) / 0.05) ** 2))
    flux += rng.normal(0, 0.01, flux.shape)
    table = pd.DataFrame({"star_id": [f"star{i}" for i in range(n)],
                          "spectrum_id": [f"spec{i}" for i in range(n)],
                          "source": [r[0] for r in rows], "split": [r[1] for r in rows],
                          "teff": teff, "logg": logg, "fe_h": fe_h,
                          "e_teff": 80.0, "e_logg": 0.1, "e_fe_h": 0.05})
    artifacts.save_matrix(folder / "flux.npy", flux.astype(np.float32))
    artifacts.save_table(folder / "spectra.parquet", table, {"grid_hash": "toy"})
    return folder / "flux.npy", folder / "spectra.parquet"


class Interrupted(Exception):
    pass


def _stop_at(line_start: str, logs: list[str]):
    def log(message: str) -> None:
        logs.append(message)
        if message.startswith(line_start):
            raise Interrupted(message)
    return log


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_member(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    ma, mb = (json.loads((f / "model.json").read_text()) for f in (a, b))
    assert ma["temperatures"] == mb["temperatures"]
    assert ma["training_set_hash"] == mb["training_set_hash"]
    ha, hb = (pd.read_csv(f / "history.csv") for f in (a, b))
    pd.testing.assert_frame_equal(ha.drop(columns=["spectra_per_s", "elapsed_s"]),
                                  hb.drop(columns=["spectra_per_s", "elapsed_s"]))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The toy trainset and one uninterrupted member trained on it."""
    folder = tmp_path_factory.mktemp("remap_ckpt")
    flux, table = _toy_trainset(folder)
    train, remap = _settings()
    logs: list[str] = []
    train_remap_member(flux, table, LABELS, 0, train, remap, folder / "ref", log=logs.append,
                       threads=1)
    assert not (folder / "ref" / CHECKPOINT_NAME).exists()   # removed once the folder is written
    assert not any("resumed" in line for line in logs)
    return flux, table, folder / "ref"


@pytest.mark.parametrize("stop_line, expect", [
    ("pretrain epoch 3/4", "pretrain epoch 2"),           # mid pre-training
    ("fine-tune: frozen", "pretrain epoch 4, phase complete"),  # between the phases
    ("finetune epoch 5/6", "finetune epoch 4"),           # inside fine-tuning's SWA epochs
])
def test_interrupted_member_resumes_bitwise(reference, tmp_path, stop_line, expect):
    flux, table, ref = reference
    train, remap = _settings()
    out = tmp_path / "member"
    logs: list[str] = []
    with pytest.raises(Interrupted):
        train_remap_member(flux, table, LABELS, 0, train, remap, out,
                           log=_stop_at(stop_line, logs), threads=1)
    assert (out / CHECKPOINT_NAME).exists() and not (out / "model.json").exists()
    logs.clear()
    train_remap_member(flux, table, LABELS, 0, train, remap, out, log=logs.append, threads=1)
    assert any("resumed from" in line and expect in line for line in logs), logs[:5]
    assert not (out / CHECKPOINT_NAME).exists()
    _assert_same_member(ref, out)


def test_checkpoint_of_other_settings_or_member_is_ignored(reference, tmp_path):
    flux, table, ref = reference
    train, remap = _settings()
    out = tmp_path / "member"
    with pytest.raises(Interrupted):
        train_remap_member(flux, table, LABELS, 0, train, remap, out,
                           log=_stop_at("finetune epoch 3/6", []), threads=1)
    logs: list[str] = []
    # another learning rate: the checkpoint describes another training run
    other = dict(remap, finetune=dict(remap["finetune"], learning_rate=5e-4))
    train_remap_member(flux, table, LABELS, 0, train, other, out, log=logs.append, threads=1)
    assert any("starting afresh" in line for line in logs)
    assert not any("resumed from" in line for line in logs)


def test_host_memory_batches_match_resident(reference, tmp_path):
    """resident: never (batches gathered in host memory, replay included) is the same arithmetic
    as resident: always."""
    flux, table, ref = reference
    train, remap = _settings(resident="never")
    logs: list[str] = []
    train_remap_member(flux, table, LABELS, 0, train, remap, tmp_path / "host", log=logs.append,
                       threads=1)
    assert any("kept in host memory" in line for line in logs)
    _assert_same_member(ref, tmp_path / "host")


# each fine-tuning epoch's log line waits 0.3 s, so the kill lands between two checkpoints
# however fast this machine trains the toy member
SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from test_remap_preemption import LABELS, _settings
from starlabels.remap.member import train_remap_member
train, remap = _settings()
train_remap_member(sys.argv[1], sys.argv[2], LABELS, 0, train, remap, sys.argv[3],
                   log=lambda m: (print(m, flush=True),
                                  m.startswith("finetune epoch") and time.sleep(0.3)),
                   threads=1)
"""


def test_kill_9_mid_finetune_then_rerun_resumes(reference, tmp_path):
    flux, table, ref = reference
    out = tmp_path / "killed"
    command = [sys.executable, "-c", SCRIPT.format(tests=str(Path(__file__).parent)),
               str(flux), str(table), str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kill_9_at_checkpoint(proc, out / CHECKPOINT_NAME,
                         lambda state: state["phase"] == "finetune" and not state["done"])
    assert not (out / "model.json").exists()             # it really died mid-training
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    assert "resumed from" in rerun.stdout and "pretrain: complete in the checkpoint" in rerun.stdout
    _assert_same_member(ref, out)
