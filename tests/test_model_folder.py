"""A model folder describes itself and is checked when loaded: checksums of its files, and
model.json saying exactly what model.pt says."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from starlabels import artifacts
from starlabels.grid import WavelengthGrid
from starlabels.members import (META_FILE, MODEL_FILE, describe_member, load_member,
                                training_description, verify_member, write_model_folder)
from starlabels.models import build_model
from starlabels.normalize import grid_from_description, input_description, normalize_config

LABELS = ["teff", "logg"]


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    model = build_model("cnn_regression", 400, len(LABELS), {"conv_channels": [2, 2, 2]})
    meta = {"method": "cnn_regression", "architecture": model.architecture, "labels": LABELS,
            "label_min": [4000.0, 1.0], "label_max": [7000.0, 5.0], "n_pixels": 400,
            "grid_hash": "g", "training_set_hash": "t", "best_valid_loss": float("nan")}
    write_model_folder(tmp_path / "m", model, meta, pd.DataFrame({"epoch": [1]}))
    return tmp_path / "m"


def test_a_written_folder_lists_checksums_and_loads(folder):
    on_disk = json.loads((folder / META_FILE).read_text())
    assert set(on_disk["files"]) == {"model.pt", "history.csv"}
    model, meta = load_member(folder)
    assert meta["label_max"] == [7000.0, 5.0] and "files" not in meta


def test_an_edited_label_range_in_model_json_is_refused(folder):
    on_disk = json.loads((folder / META_FILE).read_text())
    on_disk["label_max"][0] = 8000.0              # a hand edit: labels would be rescaled
    (folder / META_FILE).write_text(json.dumps(on_disk))
    with pytest.raises(ValueError, match=r"disagree on \['label_max'\]"):
        load_member(folder)


def test_a_replaced_weights_file_is_refused(folder, tmp_path):
    torch.manual_seed(1)
    other = build_model("cnn_regression", 400, len(LABELS), {"conv_channels": [2, 2, 2]})
    saved = torch.load(folder / MODEL_FILE, weights_only=True)
    torch.save({**saved, "state_dict": other.state_dict()}, folder / MODEL_FILE)
    with pytest.raises(ValueError, match="model.pt has sha256 .* the file was changed"):
        verify_member(folder)


def test_a_folder_without_checksums_is_refused(folder):
    on_disk = json.loads((folder / META_FILE).read_text())
    del on_disk["files"]
    (folder / META_FILE).write_text(json.dumps(on_disk))
    with pytest.raises(ValueError, match="lists no checksums"):
        load_member(folder)


def test_describe_member_adds_the_input_description_to_both_files(folder, tmp_path):
    grid = WavelengthGrid.from_config([{"name": "A", "start": 5000.0, "end": 5012.6,
                                       "step": 0.2}])
    spectra = input_description(grid, normalize_config({}), rv_column="vrad", survey="gaia_eso")
    table = tmp_path / "train.parquet"
    artifacts.save_table(table, pd.DataFrame({"x": [1]}), {"spectra": spectra})
    meta = describe_member(folder, training_description(table, LABELS))
    _, checkpoint = verify_member(folder)          # checksums renewed, both files agree
    assert checkpoint["meta"]["spectra"] == meta["spectra"] == json.loads(json.dumps(spectra))
    assert meta["label_units"] == {"teff": "K", "logg": None}
    described = grid_from_description(meta["spectra"])
    assert np.array_equal(described.wavelength_air, grid.wavelength_air)
    assert meta["spectra"]["rv"]["catalogue_column"] == "vrad"
    assert meta["spectra"]["normalize"]["continuum"] == normalize_config({})["continuum"]
    broken = dict(spectra, grid=dict(spectra["grid"], hash="0" * 16))
    with pytest.raises(ValueError, match="hash"):
        grid_from_description(broken)
    artifacts.save_table(table, pd.DataFrame({"x": [1]}), {})
    with pytest.raises(ValueError, match="no description of the input spectra"):
        training_description(table, LABELS)
