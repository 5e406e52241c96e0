"""The shipped Snakemake profiles say what the README says they do."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _gpu_rules() -> set[str]:
    """Rules whose own resources ask for a GPU (``gpu=1`` in rules/*.smk)."""
    found = set()
    for smk in (ROOT / "rules").glob("*.smk"):
        for block in re.split(r"^rule ", smk.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0].strip()
            if re.search(r"^\s+gpu\s*=\s*1", block, flags=re.M):
                found.add(name)
    return found


def test_every_gpu_rule_gets_a_gpu_job_on_slurm():
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    gpu_rules = _gpu_rules()
    assert {"train", "train_ablation"} <= gpu_rules
    for rule in gpu_rules:
        resources = profile["set-resources"].get(rule)
        assert resources is not None, f"profiles/slurm sets no resources for GPU rule {rule!r}"
        assert resources["gpu"] == 1 and "gpu_model" in resources, rule
        assert resources["runtime"] >= 60 and resources["mem_mb"] >= 8000, rule


def test_profiles_carry_no_site_specific_values():
    slurm = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    # the three keys a site edits are placeholders or empty, never a real site's values
    assert slurm["default-resources"]["slurm_account"] == "CHANGE_ME"
    assert slurm["default-resources"]["slurm_partition"] == "CHANGE_ME"
    assert slurm["set-resources"]["train"]["gpu_model"] == ""
    assert slurm["executor"] == "slurm" and slurm["rerun-incomplete"] is True
    for name in ("default", "slurm", "local-gpu"):
        text = (ROOT / "profiles" / name / "config.yaml").read_text()
        assert not re.search(r"(/home/|/scratch/|/project/|/work/)", text), name
