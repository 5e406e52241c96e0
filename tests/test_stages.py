import numpy as np
import pandas as pd

from starlabels import artifacts, stages
from starlabels.grid import WavelengthGrid, grid_hash, pixel_edges


def test_trainset_takes_kept_train_valid_rows_and_appends_synthetic(tmp_path):
    obs = np.arange(5 * 4, dtype=np.float32).reshape(5, 4)
    syn = -np.arange(2 * 4, dtype=np.float32).reshape(2, 4)
    artifacts.save_matrix(tmp_path / "o.npy", obs)
    artifacts.save_matrix(tmp_path / "s.npy", syn)
    artifacts.save_matrix(tmp_path / "oi.npy", obs + 100)
    artifacts.save_matrix(tmp_path / "si.npy", syn + 200)
    table = pd.DataFrame({"spectrum_id": list("abcde"), "star_id": list("abcde"),
                          "split": ["train", "valid", "test", "train", "target"],
                          "snr": 50.0, "teff": [5000.0, 5100, 5200, 5300, 5400]})
    artifacts.save_table(tmp_path / "o.parquet", table, {"grid_hash": "g", "n_pixels": 4})
    artifacts.save_table(tmp_path / "c.parquet", pd.DataFrame(
        {"spectrum_id": list("abcde"), "keep": [True, True, True, False, True]}))
    artifacts.save_table(tmp_path / "s.parquet", pd.DataFrame(
        {"spectrum_id": ["p1", "p2"], "star_id": ["p", "p"], "split": ["train", "valid"],
         "snr": 100.0, "teff": [6000.0, 6000.0]}))
    out = stages.trainset(sources=["observed", "synthetic"], labels=["teff"],
                          observed_flux=str(tmp_path / "o.npy"),
                          observed_ivar=str(tmp_path / "oi.npy"),
                          observed_table=str(tmp_path / "o.parquet"),
                          clean_table=str(tmp_path / "c.parquet"),
                          synthetic_flux=str(tmp_path / "s.npy"),
                          synthetic_ivar=str(tmp_path / "si.npy"),
                          synthetic_table=str(tmp_path / "s.parquet"),
                          flux=str(tmp_path / "t.npy"), ivar=str(tmp_path / "ti.npy"),
                          table=str(tmp_path / "t.parquet"), log=lambda m: None)
    # a, b kept (train/valid); c is test; d rejected by clean; e is a target
    assert out["spectrum_id"].tolist() == ["a", "b", "p1", "p2"]
    np.testing.assert_array_equal(artifacts.load_matrix(tmp_path / "t.npy"),
                                  np.vstack([obs[[0, 1]], syn]))
    # the inverse variances travel with their rows
    np.testing.assert_array_equal(artifacts.load_matrix(tmp_path / "ti.npy"),
                                  np.vstack([obs[[0, 1]] + 100, syn + 200]))
    assert artifacts.table_metadata(tmp_path / "t.parquet")["grid_hash"] == "g"


def test_wavelength_grid_segments_and_hash():
    grid = WavelengthGrid.from_config([{"name": "HR10", "start": 5340, "end": 5341, "step": 0.1},
                                       {"name": "HR21", "start": 8500, "end": 8500.5, "step": 0.1}])
    assert grid.n_pixels == 11 + 6
    assert grid.segment_slices == {"HR10": slice(0, 11), "HR21": slice(11, 17)}
    assert grid.hash() == grid_hash(grid.wavelength_air + 1e-8)      # rounding hides float noise
    assert grid.hash() != grid_hash(grid.wavelength_air + 1e-3)
    edges = pixel_edges(np.array([1.0, 2.0, 4.0]))
    np.testing.assert_allclose(edges, [0.5, 1.5, 3.0, 5.0])


def test_every_rule_runs_the_stage_function_named_as_the_rule():
    """rules/*.smk: each rule's script is workflow_scripts/<rule>.py, which starts the job
    (runtime.job) and calls stages.<rule> with keywords that function takes."""
    import ast
    import inspect
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    rules = {}
    for smk in (repo / "rules").glob("*.smk"):
        for name, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", smk.read_text(), re.M):
            rules[name] = re.search(r'script:\s*\n\s*"\.\./workflow_scripts/(\w+)\.py"', body)
    assert rules and all(rules.values()), rules
    for rule, script in rules.items():
        assert script.group(1) == rule
        tree = ast.parse((repo / "workflow_scripts" / f"{rule}.py").read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Attribute)]
        assert any(c.func.attr == "job" and getattr(c.func.value, "id", "") == "runtime"
                   for c in calls), rule
        (call,) = [c for c in calls if getattr(c.func.value, "id", "") == "stages"]
        assert call.func.attr == rule
        params = inspect.signature(getattr(stages, rule)).parameters
        given = {k.arg for k in call.keywords}
        assert given <= set(params), (rule, given - set(params))
        required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
        assert required <= given, (rule, required - given)
