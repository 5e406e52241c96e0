"""The benchmark scripts of bench/ run (in --quick mode, small sizes) and write result JSON with
the machine, versions, parameters, figures and load average; quick runs never touch the
committed bench/results/."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
# normalize first: it fills the shared cache the others take their spectra from
SCRIPTS = ["normalize_throughput", "tsne_clean", "predict_throughput", "train_throughput",
           "predict_rss", "realism_knobs"]


def _committed_state() -> dict[str, float]:
    folder = BENCH / "results"
    return {p.name: p.stat().st_mtime for p in folder.glob("*.json")} if folder.exists() else {}


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    before = _committed_state()
    results = {}
    for name in SCRIPTS:
        proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--quick", "--out",
                               str(out), "--cache", str(out / "cache"), "--threads", "2"],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        results[name] = json.loads((out / f"{name}.json").read_text())
    assert _committed_state() == before, "a --quick run wrote into bench/results/"
    return results


@pytest.mark.parametrize("name", SCRIPTS)
def test_envelope(quick_results, name):
    _check_envelope(quick_results[name], name)


def _check_envelope(r: dict, name: str) -> None:
    assert r["name"] == name and r["mode"] == "quick"
    m = r["machine"]
    assert m["hostname"] and m["cpu_model"] and m["logical_cores"] >= 1
    assert m["ram_bytes"] > 2**28 and "gpu" in m
    v = r["versions"]
    for key in ("python", "numpy", "torch", "starlabels_git_commit"):
        assert v[key], key
    load = r["load_average"]
    assert len(load["before"]) == 3 and len(load["after"]) == 3
    assert all(x >= 0 for x in load["before"] + load["after"])
    assert r["parameters"] and r["figures"] and isinstance(r["notes"], list)
    for t in r["targets"].values():
        assert {"limit", "measured", "met", "unit", "what"} <= set(t)
        if t["measured"] is None:
            assert t["met"] is None


def test_normalize_figures(quick_results):
    r = quick_results["normalize_throughput"]
    f, p = r["figures"], r["parameters"]
    assert p["n_stars"] == 24 and p["full_size"] is False and p["grid_pixels"] == 15702
    assert f["n_files"] == 48 and f["n_spectra"] == 48
    assert f["n_accepted"] + f["n_rejected"] == 24
    assert 0 < f["seconds"] < 120 and f["spectra_per_s"] == pytest.approx(48 / f["seconds"])
    assert f["projected_seconds_at_full_size"] == pytest.approx(f["seconds"] * 36904 / 24)
    assert "PROJECTED" in r["targets"]["total_seconds_at_36904"]["what"]


def test_tsne_figures(quick_results):
    r = quick_results["tsne_clean"]
    f = r["figures"]
    assert r["parameters"]["n_spectra"] == 300 and r["parameters"]["n_pixels"] == 15702
    assert f["n_cleaned"] == 300 and 0 <= f["n_rejected"] < 300
    assert 0 < f["step_seconds"]["tsne_s"] <= f["seconds"]
    assert r["targets"]["seconds_at_36904"]["measured"] is None   # not the full size


def test_predict_figures(quick_results):
    r = quick_results["predict_throughput"]
    f, p = r["figures"], r["parameters"]
    assert p["n_spectra"] == 256 and p["n_members"] == 2 and "untrained" in p["weights"]
    assert p["batch_size"] in (64, 2048) and p["batch_size_auto"] is True
    assert f["spectra_per_s"] == pytest.approx(256 / f["seconds"])
    assert len(f["np_load_seconds_before"]) == 2 and len(f["np_load_seconds_after"]) == 1
    loads = f["np_load_seconds_before"] + f["np_load_seconds_after"]
    assert 0 < f["np_load_seconds_floor"] == min(loads)
    assert f["ratio_to_np_load"] == pytest.approx(f["seconds"] / f["np_load_seconds_floor"])


def test_train_figures(quick_results):
    r = quick_results["train_throughput"]
    per = r["figures"]["per_thread_count"]
    assert list(per) == ["1"]
    rates = per["1"]["spectra_per_s_per_epoch"]
    assert len(rates) == r["parameters"]["epochs"] == 2 and all(x > 0 for x in rates)
    assert r["parameters"]["batch_size"] == 64 and r["parameters"]["n_pixels"] == 15702
    assert r["figures"]["best_spectra_per_s"] > 0


def test_rss_figures(quick_results):
    r = quick_results["predict_rss"]
    per = r["figures"]["per_size"]
    assert list(per) == ["1000", "4000"]
    for size, res in per.items():
        assert res["n_rows"] == int(size)
        assert 50 * 2**20 < res["peak_rss_bytes"] < 16 * 2**30
        assert res["peak_rss_anon_sampled_bytes"] > 0
        assert res["wait4_ru_maxrss_bytes"] > 0
    assert r["parameters"]["n_pixels"] == 3401 and r["parameters"]["n_members"] == 1


# ---------------------------------------------------------------- refine, shard by shard

def test_refine_throughput_quick(tmp_path):
    """On its own (not in quick_results): it builds its synthetic run itself, and `-k refine`
    should not run every other benchmark first."""
    out = tmp_path / "out"
    before = _committed_state()
    proc = subprocess.run([sys.executable, str(BENCH / "refine_throughput.py"), "--quick",
                           "--out", str(out), "--cache", str(tmp_path / "cache")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _committed_state() == before
    r = json.loads((out / "refine_throughput.json").read_text())
    _check_envelope(r, "refine_throughput")
    f, p = r["figures"], r["parameters"]
    assert p["n_rows"] == 1000 and p["n_shards"] == 4 and p["jobs"] == 2
    assert p["full_size"] is False and p["threads_per_job"] == 1
    assert p["emulator_kind"] == "quadratic" and p["n_pixels"] == 400
    assert f["n_rows"] == f["n_fitted"] == 1000
    assert 0 < f["seconds"] and f["stars_per_s"] == pytest.approx(1000 / f["seconds"])
    assert 0 < f["converged_fraction"] <= 1
    assert r["targets"]["seconds_at_36904"]["measured"] is None    # not the full size
    shards = f["per_shard"]
    assert [s["shard"] for s in shards] == [0, 1, 2, 3]
    assert sum(s["rows"] for s in shards) == sum(s["n_fitted"] for s in shards) == 1000
    for s in shards:
        assert 0 < s["seconds"] <= s["process_seconds"] <= f["seconds"] * 1.01
        assert s["fit_seconds"] is not None and s["fit_seconds"] <= s["seconds"]
        assert 50 * 2**20 < s["peak_rss_bytes"] < 16 * 2**30
        assert s["peak_rss_anon_sampled_bytes"] > 0 and s["wait4_ru_maxrss_bytes"] > 0
    assert f["peak_rss_max_bytes"] == max(s["peak_rss_bytes"] for s in shards)
    assert not (out / "refine_throughput_work").exists()        # the working folder is removed


# ---------------------------------------------------------------- The Cannon beside the network

def _toy_run(folder: Path) -> Path:
    """A finished run's files, as the workflow lays them out, for a toy survey whose one line's
    depth is Teff and width is log g; the 'catalogue' labels are truth + 30 K / 0.05 dex."""
    import numpy as np
    import pandas as pd

    from starlabels import artifacts

    rng = np.random.default_rng(2)
    n, n_pixels = 300, 120
    teff, logg = rng.uniform(4500, 6500, n), rng.uniform(1.5, 4.5, n)
    x = np.arange(n_pixels)
    flux = 1 - (0.2 + 0.5 * (teff[:, None] - 4500) / 2000) * \
        np.exp(-0.5 * ((x - 60) / (1.5 + logg[:, None])) ** 2)
    flux += rng.normal(0, 0.01, flux.shape)
    ids = [f"s{i:03d}" for i in range(n)]
    split = np.where(np.arange(n) < 200, "train", "test")
    run = folder / "toy"
    for sub in ("normalized", "trainset", "truth", "catalog", "models/member_0", "benchmarks"):
        (run / sub).mkdir(parents=True)
    artifacts.save_matrix(run / "normalized" / "flux.npy", flux.astype(np.float32))
    artifacts.save_matrix(run / "normalized" / "ivar.npy",
                          np.full(flux.shape, 1e4, dtype=np.float32))
    cat_teff = teff + rng.normal(0, 30, n)
    cat_logg = logg + rng.normal(0, 0.05, n)
    artifacts.save_table(run / "normalized" / "stars.parquet", pd.DataFrame(
        {"spectrum_id": ids, "star_id": ids, "split": split, "snr": 100.0, "teff": cat_teff,
         "logg": cat_logg}))
    train = np.flatnonzero(split == "train")
    artifacts.save_table(run / "trainset" / "spectra.parquet", pd.DataFrame(
        {"spectrum_id": [ids[i] for i in train], "split": "train", "source": "observed",
         "source_row": train, "teff": cat_teff[train], "logg": cat_logg[train]}))
    artifacts.save_table(run / "truth" / "truth.parquet", pd.DataFrame(
        {"star_id": ids, "teff": teff, "logg": logg, "defect": ""}))
    artifacts.save_table(run / "catalog" / "starlabels_toy.parquet", pd.DataFrame(
        {"spectrum_id": ids, "star_id": ids, "split": split,
         "snr": rng.uniform(20, 200, n), "teff": teff + rng.normal(0, 20, n),
         "logg": logg + rng.normal(0, 0.03, n)}))
    artifacts.save_json(run / "models" / "member_0" / "model.json",
                        {"labels": ["teff", "logg"], "train_seconds": 12.0, "threads": 1,
                         "n_holdout": 0, "git_commit": "toy"})
    (run / "benchmarks" / "predict_shard_0.tsv").write_text("s\th:m:s\n1.5\t0:00:01\n")
    return run


def test_peer_cannon_trains_the_published_package_on_the_same_rows(tmp_path):
    run = _toy_run(tmp_path)
    out = tmp_path / "out"
    before = _committed_state()
    proc = subprocess.run([sys.executable, str(BENCH / "peer_cannon.py"), "--quick", "--run",
                           str(run), "--out", str(out), "--cache", str(tmp_path / "cache")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _committed_state() == before
    r = json.loads((out / "peer_cannon.json").read_text())
    assert r["parameters"]["cannon"]["package"] == "annieslasso"
    assert r["parameters"]["cannon"]["numpy"].startswith("1.")
    assert r["parameters"]["n_train"] == 150 and r["parameters"]["n_test"] == 40
    for label, truth_scale in (("teff", 30.0), ("logg", 0.05)):
        entry = r["figures"]["labels"][label]
        # a line depth and width are quadratic enough for The Cannon to read them
        assert 0 < entry["cannon"]["sigma"] < 5 * truth_scale
        lo, hi = entry["cannon"]["sigma_ci95"]
        assert lo <= entry["cannon"]["sigma"] <= hi
        assert entry["network_over_cannon"] == pytest.approx(
            entry["network"]["sigma"] / entry["cannon"]["sigma"])
    assert r["figures"]["timing"]["cannon_train_seconds"] > 0


def test_realism_knob_bounds(quick_results):
    rows = quick_results["realism_knobs"]["figures"]["rows"]
    assert set(rows) == {"ideal", "rotation", "read_noise", "realistic"}
    ideal, rotation, noise, real = (rows[k]["median"] for k in ("ideal", "rotation", "read_noise",
                                                                "realistic"))
    for label in ideal["ideal"]:
        # marginalising never helps; every knob row keeps the ideal row's stars
        for row in (ideal, rotation, noise, real):
            assert row["marginalised"][label] >= row["ideal"][label] * (1 - 1e-9)
        # read noise costs nothing to the noise-free-knowledge bound, something to the other
        assert noise["ideal"][label] == pytest.approx(ideal["ideal"][label], rel=1e-9)
        assert noise["marginalised"][label] > ideal["marginalised"][label]
    assert rows["rotation"]["nuisances"]["broadening"] and not rows["ideal"]["nuisances"][
        "broadening"]
    assert real["marginalised"]["teff"] > ideal["marginalised"]["teff"]
