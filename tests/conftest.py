from pathlib import Path

import pytest

# the loopback HTTP server with injected faults, shared by the download/TAP/mirror tests
from httpfaults import fault_server  # noqa: F401  (re-exported pytest fixture)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_config_path() -> Path:
    return REPO / "tests" / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_run(repo, tiny_config_path, tmp_path_factory):
    """The whole workflow on tests/configs/tiny.yaml with its ablation study, once per session
    (minutes on 2 cores). ``args`` holds no target: with it Snakemake builds the default run."""
    from tiny import snakemake

    results = tmp_path_factory.mktemp("tiny") / "results"
    args = ["--cores", "2", "--configfile", str(tiny_config_path), "--config",
            f"results={results}"]
    # the default run, and the ablation study, which is its own target
    proc = snakemake(repo, "all", "ablation", *args)  # targets first: --config takes the rest
    if proc.returncode != 0:
        pytest.fail(f"snakemake failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return {"results": results, "args": args}


@pytest.fixture(scope="session")
def fitsverify():
    """Check a FITS file with Debian's fitsverify: 0 errors (its exit status is the error count).

    Skips, with the reason, where fitsverify is not installed (.ci/run installs it)."""
    import shutil
    import subprocess

    exe = shutil.which("fitsverify")

    def check(path) -> None:
        if exe is None:
            pytest.skip("fitsverify is not installed (Debian package 'fitsverify')")
        result = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 error(s)" in result.stdout

    return check


@pytest.fixture
def restore_torch_threads():
    """Put torch's thread count back after a test whose code under test sets it."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
