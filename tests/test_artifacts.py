import json

import numpy as np
import pandas as pd
import pytest

from starlabels import artifacts


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with artifacts.atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_matrix_round_trip_is_float32_and_memory_mapped(tmp_path):
    m = np.random.default_rng(0).random((7, 5))
    artifacts.save_matrix(tmp_path / "f.npy", m)
    back = artifacts.load_matrix(tmp_path / "f.npy")
    assert isinstance(back, np.memmap) and back.dtype == np.float32
    np.testing.assert_allclose(back, m.astype(np.float32))
    with pytest.raises(ValueError):
        artifacts.save_matrix(tmp_path / "g.npy", np.zeros(3))


def test_streamed_matrix_writer_commits_only_at_the_end(tmp_path):
    path = tmp_path / "s.npy"
    w = artifacts.open_matrix_writer(path, 4, 3)
    w[:] = np.arange(12).reshape(4, 3)
    assert not path.exists()
    artifacts.commit_matrix_writer(w, path)
    np.testing.assert_array_equal(artifacts.load_matrix(path), np.arange(12).reshape(4, 3))


def test_table_carries_provenance(tmp_path):
    df = pd.DataFrame({"spectrum_id": ["a", "b"], "teff": [5000.0, 6000.0]})
    meta = artifacts.provenance({"x": 1}, stage="test")
    artifacts.save_table(tmp_path / "t.parquet", df, meta)
    pd.testing.assert_frame_equal(artifacts.load_table(tmp_path / "t.parquet"), df)
    got = artifacts.table_metadata(tmp_path / "t.parquet")
    assert got["stage"] == "test" and got["config_hash"] == artifacts.config_hash({"x": 1})
    assert {"numpy", "torch", "python"} <= set(got["versions"])


def test_config_hash_ignores_key_order_but_not_values():
    assert artifacts.config_hash({"a": 1, "b": [1, 2]}) == artifacts.config_hash({"b": [1, 2], "a": 1})
    assert artifacts.config_hash({"a": 1}) != artifacts.config_hash({"a": 2})


def test_array_hash_streams_memmaps(tmp_path):
    m = np.random.default_rng(1).random((10000, 3)).astype(np.float32)
    artifacts.save_matrix(tmp_path / "m.npy", m)
    assert artifacts.array_hash(artifacts.load_matrix(tmp_path / "m.npy"), chunk_rows=7) == \
        artifacts.array_hash(m)
    m[5, 1] += 1
    assert artifacts.array_hash(m) != artifacts.array_hash(artifacts.load_matrix(tmp_path / "m.npy"))


def test_save_json_is_plain_json(tmp_path):
    artifacts.save_json(tmp_path / "x.json", {"a": np.float32(1.5), "b": np.arange(2)})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1.5, "b": [0, 1]}


def test_matrix_row_reader_reads_blocks_exactly(tmp_path):
    from starlabels.artifacts import MatrixRowReader, save_matrix

    matrix = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    path = tmp_path / "flux.npy"
    save_matrix(path, matrix)
    with MatrixRowReader(path, max_rows=3) as reader:
        assert reader.shape == (5, 7)
        assert np.array_equal(reader.read(1, 4), matrix[1:4])
        assert np.array_equal(reader.read(4, 5), matrix[4:5])
        with pytest.raises(ValueError, match="outside"):
            reader.read(0, 4)          # more rows than the buffer
    np.save(tmp_path / "f8.npy", matrix.astype(np.float64))
    with pytest.raises(ValueError, match="float32"):
        MatrixRowReader(tmp_path / "f8.npy", 2)


# ---------------------------------------------------------------- atomic writes: modes, leftovers

_WRITER = """
import os, sys, time
from pathlib import Path
from starlabels import artifacts
target, mode = Path(sys.argv[1]), sys.argv[2]
with artifacts.atomic_path(target) as tmp:
    tmp.write_bytes(b"half of it")
    Path(str(target) + ".inside").write_text(str(tmp))
    if mode == "die":
        os.kill(os.getpid(), 9)
    while not Path(str(target) + ".go").exists():
        time.sleep(0.02)
    tmp.write_bytes(b"all of it")
"""


def _start_writer(target, mode):
    import subprocess
    import sys
    import time
    from pathlib import Path

    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), mode],
                            cwd=Path(__file__).resolve().parent.parent)
    marker = Path(str(target) + ".inside")
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert marker.exists(), "the writer never entered its atomic block"
    return proc, Path(marker.read_text())


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_outputs_follow_the_process_umask(tmp_path, umask, mode):
    import os
    import stat

    old = os.umask(umask)
    try:
        artifacts.save_table(tmp_path / "t.parquet", pd.DataFrame({"a": [1]}))
        artifacts.save_json(tmp_path / "j.json", {"a": 1})
        artifacts.save_matrix(tmp_path / "m.npy", np.zeros((2, 2)))
    finally:
        os.umask(old)
    for name in ("t.parquet", "j.json", "m.npy"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_temporary_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "out" / "stars.parquet"
    proc, leftover = _start_writer(target, "die")
    assert proc.wait(timeout=60) == -9
    assert leftover.exists() and not target.exists()
    artifacts.save_json(tmp_path / "out" / "other.json", {"a": 1})   # a later run writes here
    assert not leftover.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "other.json", "stars.parquet.inside"]


def test_temporary_file_of_a_live_writer_is_left_alone(tmp_path):
    target = tmp_path / "out" / "flux.bin"
    proc, working = _start_writer(target, "wait")
    try:
        assert artifacts.sweep_temporaries(tmp_path / "out") == []
        artifacts.save_json(tmp_path / "out" / "other.json", {"a": 1})
        assert working.exists()
    finally:
        (tmp_path / "out" / "flux.bin.go").write_text("")
        assert proc.wait(timeout=60) == 0
    assert target.read_bytes() == b"all of it" and not working.exists()
