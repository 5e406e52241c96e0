"""Ensemble prediction by shards, member selection and network gradients on a toy survey whose
single absorption line (pixel 200) encodes Teff (depth) and log g (width)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from starlabels import artifacts
from starlabels.cnn.predict import iter_shard_predictions, predict_shard, write_shard_chunks
from starlabels.cnn.train import predict_scaled, train_member
from starlabels.members import load_member, select_members, shard_rows, write_shard
from starlabels.validate import input_gradients

LABELS = ["teff", "logg"]
GRID_HASH = "toygrid0123456789"
LINE_PIXEL = 200
N_SPECTRA, N_PIXELS = 300, 400


def make_toy_survey(folder, seed=0):
    """flux.npy + table.parquet (grid_hash in metadata); rows 0–199 train, 200–259 valid, rest target."""
    rng = np.random.default_rng(seed)
    teff = rng.uniform(4000, 7000, N_SPECTRA)
    logg = rng.uniform(1, 5, N_SPECTRA)
    pixel = np.arange(N_PIXELS)
    depth = 0.2 + 0.6 * (teff - 4000) / 3000
    width = 2 + (logg - 1)
    flux = 1 - depth[:, None] * np.exp(-0.5 * ((pixel - LINE_PIXEL) / width[:, None]) ** 2)
    flux += rng.normal(0, 0.01, flux.shape)
    split = ["train"] * 200 + ["valid"] * 60 + ["target"] * (N_SPECTRA - 260)
    table = pd.DataFrame({"spectrum_id": [f"toy{i:04d}" for i in range(N_SPECTRA)], "split": split,
                          "teff": teff, "logg": logg, "fe_h": np.nan, "mg_fe": np.nan,
                          "al_fe": np.nan, "snr": 100.0})
    paths = {"flux": folder / "flux.npy", "table": folder / "table.parquet",
             "keep": np.ones(N_SPECTRA, dtype=bool)}
    artifacts.save_matrix(paths["flux"], flux.astype(np.float32))
    artifacts.save_table(paths["table"], table, {"grid_hash": GRID_HASH})
    return paths


# the code under test sets torch threads; give the next test module its own back
pytestmark = pytest.mark.usefixtures("restore_torch_threads")


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return make_toy_survey(tmp_path_factory.mktemp("survey"))


@pytest.fixture(scope="module")
def members(survey, tmp_path_factory):
    """Two members: 0 trained to convergence, 1 a different seed trained briefly."""
    threads = torch.get_num_threads()
    dirs = []
    for member, epochs in ((0, 60), (1, 15)):
        cfg = dict(seed=5, device="cpu", epochs=epochs, batch_size=16, learning_rate=3e-3,
                   patience=60, conv_l2=0.0, architecture={}, method="cnn_regression",
                   min_delta=0.0)
        out = tmp_path_factory.mktemp(f"member{member}")
        train_member(survey["flux"], survey["table"], survey["keep"], LABELS, member, cfg, out,
                     log=lambda line: None, threads=1)
        dirs.append(out)
    torch.set_num_threads(threads)
    return dirs


def _quiet(line):
    pass


def test_shards_cover_every_row_once_and_match_a_single_shard(survey, members):
    whole = predict_shard(survey["flux"], survey["table"], members, 0, 1, batch_size=64,
                          device="cpu", log=_quiet)
    shards = [predict_shard(survey["flux"], survey["table"], members, s, 3, batch_size=37,
                            device="cpu", log=_quiet) for s in range(3)]
    joined = pd.concat(shards, ignore_index=True)
    assert joined["row"].tolist() == list(range(N_SPECTRA))
    assert joined["spectrum_id"].tolist() == [f"toy{i:04d}" for i in range(N_SPECTRA)]
    assert list(whole.columns) == ["spectrum_id", "row",
                                   "teff", "teff_err", "teff_err_raw", "teff_err_members",
                                   "logg", "logg_err", "logg_err_raw", "logg_err_members",
                                   "n_members"]
    pd.testing.assert_frame_equal(joined, whole, check_exact=False, rtol=1e-5)
    assert (whole["n_members"] == 2).all()


def test_one_member_has_zero_scatter_and_two_members_do_not(survey, members):
    single = predict_shard(survey["flux"], survey["table"], members[:1], 0, 1, device="cpu",
                           log=_quiet)
    other = predict_shard(survey["flux"], survey["table"], members[1:], 0, 1, device="cpu",
                          log=_quiet)
    pair = predict_shard(survey["flux"], survey["table"], members, 0, 1, device="cpu", log=_quiet)
    assert (single[["teff_err_members", "logg_err_members"]].to_numpy() == 0).all()
    assert (pair[["teff_err_members", "logg_err_members"]].to_numpy() > 0).all()
    # mean and ddof=0 scatter of two members: mean = midpoint, std = half the difference
    np.testing.assert_allclose(pair["teff"], (single["teff"] + other["teff"]) / 2, rtol=1e-6)
    np.testing.assert_allclose(pair["teff_err_members"],
                               (single["teff"] - other["teff"]).abs() / 2, rtol=1e-4, atol=1e-6)
    # a single member's total error is its own variance head; the pair's adds the spread
    assert (single["teff_err_raw"] > 0).all()
    np.testing.assert_allclose(
        pair["teff_err_raw"] ** 2,
        (single["teff_err_raw"] ** 2 + other["teff_err_raw"] ** 2) / 2
        + pair["teff_err_members"] ** 2, rtol=1e-4)
    # no calibration: the error is the raw one
    np.testing.assert_array_equal(pair["teff_err"], pair["teff_err_raw"])


def test_predictions_are_in_physical_units_and_accurate(survey, members):
    table = artifacts.load_table(survey["table"])
    out = predict_shard(survey["flux"], survey["table"], members[:1], 0, 1, device="cpu",
                        log=_quiet)
    target = (table["split"] == "target").to_numpy()
    # the converged member recovers unseen stars' Teff to a few hundred K (spread ~870 K)
    residual = out["teff"].to_numpy()[target] - table["teff"].to_numpy()[target]
    assert np.sqrt(np.mean(residual ** 2)) < 300
    # and agrees with the trainer's own prediction path after unscaling
    model, meta = load_member(members[0])
    flux = torch.from_numpy(np.array(artifacts.load_matrix(survey["flux"])[:10]))
    scaled = predict_scaled(model, flux, 10).numpy()
    teff = meta["label_min"][0] + scaled[:, 0] * (meta["label_max"][0] - meta["label_min"][0])
    np.testing.assert_allclose(out["teff"].to_numpy()[:10], teff, rtol=1e-6)


def test_prediction_streams_one_batch_at_a_time(survey, members, monkeypatch):
    """Flux arrives one batch at a time through a reused buffer (no memory-map slices, whose
    pages would pile up in the job's RSS)."""
    reads: list[int] = []
    real_read = artifacts.MatrixRowReader.read

    def read(self, start, stop):
        reads.append(stop - start)
        return real_read(self, start, stop)

    monkeypatch.setattr(artifacts.MatrixRowReader, "read", read)
    lines: list[str] = []
    out = predict_shard(survey["flux"], survey["table"], members, 1, 2, batch_size=32,
                        device="cpu", log=lines.append)
    assert len(out) == 150
    assert max(reads) <= 32 and sum(reads) == 150
    assert any("150/150" in line and "spectra/s" in line for line in lines)


def test_grid_hash_or_pixel_mismatch_is_refused(survey, members, tmp_path):
    table = artifacts.load_table(survey["table"])
    other = tmp_path / "other_grid.parquet"
    artifacts.save_table(other, table, {"grid_hash": "ffffeeeeddddcccc"})
    with pytest.raises(ValueError, match=rf"{members[0]}.*{GRID_HASH}.*ffffeeeeddddcccc"):
        predict_shard(survey["flux"], other, members, 0, 1, device="cpu", log=_quiet)
    wide = tmp_path / "wide.npy"
    artifacts.save_matrix(wide, np.ones((N_SPECTRA, N_PIXELS + 10), dtype=np.float32))
    with pytest.raises(ValueError, match="expects 400 pixels"):
        predict_shard(wide, survey["table"], members, 0, 1, device="cpu", log=_quiet)
    with pytest.raises(ValueError, match="shard 3 of 3"):
        predict_shard(survey["flux"], survey["table"], members, 3, 3, device="cpu", log=_quiet)


def _fake_member(folder, loss):
    folder.mkdir()
    artifacts.save_json(folder / "model.json", {"selection_loss": loss})
    return folder


def test_select_members_keeps_the_best_quantile(tmp_path):
    losses = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 1.0, 0.4, 0.8, 0.6]
    dirs = [_fake_member(tmp_path / f"m{i}", loss) for i, loss in enumerate(losses)]
    assert select_members(dirs, 1.0) == dirs
    # 80th percentile of 0.1..1.0 (linear interpolation) is 0.82: eight members pass
    kept = select_members(dirs, 0.8)
    assert [losses[dirs.index(d)] for d in kept] == [0.5, 0.1, 0.3, 0.7, 0.2, 0.4, 0.8, 0.6]
    assert select_members(dirs, 0.0) == [dirs[1]]  # never empty: the best member survives
    # a member without a holdout has no selection loss: kept when all are kept, never ranked
    nan_dir = _fake_member(tmp_path / "no_holdout", float("nan"))
    assert nan_dir in select_members(dirs + [nan_dir], 1.0)
    assert nan_dir not in select_members(dirs + [nan_dir], 0.9)
    with pytest.raises(ValueError, match="holdout"):
        select_members([nan_dir], 0.8)
    with pytest.raises(ValueError, match="keep_quantile"):
        select_members(dirs, 1.5)


def test_input_gradients_peak_at_the_informative_line(survey, members):
    flux = np.asarray(artifacts.load_matrix(survey["flux"])[260:])
    gradients = input_gradients(members[:1], flux, device="cpu", batch_size=16, signed=False)
    assert gradients.shape == (len(LABELS), N_PIXELS)
    assert (gradients >= 0).all()
    pixel = np.arange(N_PIXELS)
    near_line = np.abs(pixel - LINE_PIXEL) <= 15
    elsewhere = np.abs(pixel - LINE_PIXEL) > 40
    for j, label in enumerate(LABELS):
        assert abs(int(gradients[j].argmax()) - LINE_PIXEL) <= 15, label
        assert gradients[j, near_line].mean() > 3 * gradients[j, elsewhere].mean(), label


def test_input_gradients_are_in_physical_units(survey, members):
    """Teff spans ~3000 K and log g ~4 dex: physical gradients scale by those spans."""
    flux = np.asarray(artifacts.load_matrix(survey["flux"])[260:270])
    physical = input_gradients(members[:1], flux, device="cpu", signed=False)
    signed = input_gradients(members[:1], flux, device="cpu")
    model, meta = load_member(members[0])
    x = torch.from_numpy(flux.copy()).requires_grad_(True)
    model.split(model(x))[0][:, 1].sum().backward()
    scaled_logg = x.grad.abs().mean(dim=0).numpy()
    span = meta["label_max"][1] - meta["label_min"][1]
    np.testing.assert_allclose(physical[1], scaled_logg * span, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(signed[1], x.grad.mean(dim=0).numpy() * span, rtol=1e-5,
                               atol=1e-9)
    # the line deepens with Teff (depth 0.2 + 0.6 (Teff − 4000)/3000): a deeper line, lower
    # flux, higher Teff — the signed gradient at the line centre is negative
    assert signed[0, LINE_PIXEL] < 0


def test_write_shard_round_trip(survey, members, tmp_path):
    df = predict_shard(survey["flux"], survey["table"], members, 0, 4, device="cpu", log=_quiet)
    path = tmp_path / "shard0.parquet"
    write_shard(df, path, {"stage": "predict"})
    back = artifacts.load_table(path)
    pd.testing.assert_frame_equal(back, df, check_like=False)
    meta = artifacts.table_metadata(path)
    assert meta["stage"] == "predict" and meta["grid_hash"] == GRID_HASH
    assert meta["members"] == [str(d) for d in members]


@pytest.mark.parametrize("n_rows, n_shards", [(300, 1), (300, 4), (10, 3), (2, 5), (0, 2)])
def test_shard_rows_match_array_split(n_rows, n_shards):
    expected = np.array_split(np.arange(n_rows), n_shards)
    for shard in range(n_shards):
        assert list(shard_rows(n_rows, shard, n_shards)) == expected[shard].tolist()


def test_chunks_are_whole_batches_and_give_the_same_numbers(survey, members):
    whole = predict_shard(survey["flux"], survey["table"], members, 0, 1, batch_size=16,
                          device="cpu", log=_quiet)
    chunks = list(iter_shard_predictions(survey["flux"], survey["table"], members, 0, 1,
                                         batch_size=16, device="cpu", log=_quiet,
                                         chunk_rows=50))
    # 50 rows round down to 3 batches of 16: chunks of 48, the last one the remainder
    assert [len(c) for c in chunks] == [48] * 6 + [N_SPECTRA - 288]
    joined = pd.concat(chunks, ignore_index=True)
    pd.testing.assert_frame_equal(joined, whole)   # bit for bit: the same batches
    assert all(c.attrs["grid_hash"] == GRID_HASH for c in chunks)


def test_streamed_shard_file_equals_the_frame_and_holds_one_row_group_per_chunk(survey, members,
                                                                                tmp_path):
    import pyarrow.parquet as pq

    whole = predict_shard(survey["flux"], survey["table"], members, 1, 2, batch_size=16,
                          device="cpu", log=_quiet)
    path = tmp_path / "shard1.parquet"
    n = write_shard_chunks(iter_shard_predictions(survey["flux"], survey["table"], members, 1, 2,
                                                  batch_size=16, device="cpu", log=_quiet,
                                                  chunk_rows=64),
                           path, {"stage": "predict"})
    assert n == len(whole) == N_SPECTRA // 2
    pd.testing.assert_frame_equal(artifacts.load_table(path), whole)
    assert pq.ParquetFile(path).num_row_groups == 3            # 64 + 64 + 22 rows
    meta = artifacts.table_metadata(path)
    assert meta["stage"] == "predict" and meta["grid_hash"] == GRID_HASH and meta["shard"] == 1


def test_failure_mid_stream_leaves_no_shard_file(survey, members, tmp_path):
    def failing():
        chunks = iter_shard_predictions(survey["flux"], survey["table"], members, 0, 1,
                                        batch_size=16, device="cpu", log=_quiet, chunk_rows=32)
        yield next(chunks)
        raise RuntimeError("node lost")

    path = tmp_path / "shard.parquet"
    with pytest.raises(RuntimeError, match="node lost"):
        write_shard_chunks(failing(), path)
    assert list(tmp_path.iterdir()) == []                     # neither the shard nor a temp file


def test_empty_shard_still_writes_a_table(survey, members, tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    flux = artifacts.load_matrix(survey["flux"])[:2]
    artifacts.save_matrix(tiny / "flux.npy", np.asarray(flux))
    artifacts.save_table(tiny / "table.parquet",
                         artifacts.load_table(survey["table"]).iloc[:2],
                         {"grid_hash": GRID_HASH})
    path = tmp_path / "shard4.parquet"
    n = write_shard_chunks(iter_shard_predictions(tiny / "flux.npy", tiny / "table.parquet",
                                                  members, 4, 5, device="cpu", log=_quiet), path)
    back = artifacts.load_table(path)
    assert n == 0 and len(back) == 0 and {"spectrum_id", "teff", "teff_err"} <= set(back.columns)


def test_a_calibration_with_a_label_scale_maps_the_means_and_scales_the_errors(survey, members):
    plain_out = predict_shard(survey["flux"], survey["table"], members, 0, 1, device="cpu",
                              log=_quiet)
    calibration = {"snr_edges": [], "scale": {"teff": [1.5], "logg": [1.0]},
                   "dilution": {"teff": {"slope": 0.8, "predicted_mean": 5500.0,
                                            "catalogue_mean": 5400.0, "n": 50}}}
    out = predict_shard(survey["flux"], survey["table"], members, 0, 1, device="cpu",
                        log=_quiet, calibration=calibration)
    np.testing.assert_allclose(out["teff"], 5400.0 + (plain_out["teff"] - 5500.0) / 0.8)
    np.testing.assert_array_equal(out["logg"], plain_out["logg"])
    # the network's own errors stay as predicted; the calibrated one is factor × raw
    np.testing.assert_array_equal(out["teff_err_raw"], plain_out["teff_err_raw"])
    np.testing.assert_allclose(out["teff_err"], 1.5 * plain_out["teff_err_raw"])
