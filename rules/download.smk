# download: real archives behind the same raw/ files the acquire rules simulate.
#   observed (source eso_ges | sdss_marvels):
#     archive_manifest → download_shard × download.shards → archive_observed
#   synthetic (synthetic.source phoenix):
#     phoenix_manifest → download_shard × download.shards → archive_synthetic
# The DAG has the same few jobs for 100 or 100 000 spectra: files are fetched inside the shards
# (never one job per spectrum). Downloaded files stay in raw/<dataset>/download/files/ (not a
# declared output), so a failed or interrupted run resumes and fetches only what is missing.
# Limit simultaneous transfers across jobs with --resources archive_connections=N.


rule archive_manifest:
    wildcard_constraints:
        exp=ARCHIVE_OBSERVED,
    output:
        remote=f"{R}/{{exp}}/raw/observed/download/remote.parquet",
        catalog=f"{R}/{{exp}}/raw/observed/download/catalog.fits",
    params:
        survey=lambda w: EXPERIMENTS[w.exp]["survey"],
        source=lambda w: EXPERIMENTS[w.exp]["source"],
        mirror=section("mirror"),
        archive=section("archive"),
        download=manifest_download_settings,
        grid=section("grid"),
        labels=section("labels"),
        download_dir=lambda w: f"{R}/{w.exp}/raw/observed/download/files",
        reference_stars=required_reference_stars,
    log:
        f"{R}/{{exp}}/logs/archive_manifest.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/archive_manifest.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/archive_manifest.py"


rule phoenix_manifest:
    wildcard_constraints:
        exp=PHOENIX_SYNTHETIC,
    output:
        remote=f"{R}/{{exp}}/raw/phoenix/download/remote.parquet",
    params:
        phoenix=lambda w: EXPERIMENTS[w.exp]["synthetic"]["phoenix"],
        mirror=section("mirror"),
        shards=lambda w: EXPERIMENTS[w.exp]["download"]["shards"],
    log:
        f"{R}/{{exp}}/logs/phoenix_manifest.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/phoenix_manifest.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/phoenix_manifest.py"


rule download_shard:
    wildcard_constraints:
        dataset="observed|phoenix",
    input:
        remote=f"{R}/{{exp}}/raw/{{dataset}}/download/remote.parquet",
    output:
        f"{R}/{{exp}}/raw/{{dataset}}/download/shard_{{shard}}.parquet",
    params:
        download=section("download"),
        credentials_env=credentials_env_names,
        dest_dir=lambda w: f"{R}/{w.exp}/raw/{w.dataset}/download/files",
        journal_dir=lambda w: f"{R}/{w.exp}/raw/{w.dataset}/download/journal",
    resources:
        archive_connections=lambda w: EXPERIMENTS[w.exp]["download"]["concurrency"],
    log:
        f"{R}/{{exp}}/logs/download_{{dataset}}_shard_{{shard}}.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/download_{{dataset}}_shard_{{shard}}.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/download_shard.py"


rule archive_observed:
    wildcard_constraints:
        exp=ARCHIVE_OBSERVED,
    input:
        remote=f"{R}/{{exp}}/raw/observed/download/remote.parquet",
        catalog=f"{R}/{{exp}}/raw/observed/download/catalog.fits",
        shards=download_shard_files("observed"),
    output:
        manifest=f"{R}/{{exp}}/raw/observed/manifest.parquet",
        catalog=f"{R}/{{exp}}/raw/observed/catalog.fits",
        calibration=f"{R}/{{exp}}/raw/observed/calibration_stars.parquet",
        spectra=directory(f"{R}/{{exp}}/raw/observed/spectra"),
    params:
        survey=lambda w: EXPERIMENTS[w.exp]["survey"],
        reference_stars=section("reference_stars"),
    log:
        f"{R}/{{exp}}/logs/archive_observed.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/archive_observed.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/archive_observed.py"


rule archive_synthetic:
    wildcard_constraints:
        exp=PHOENIX_SYNTHETIC,
    input:
        remote=f"{R}/{{exp}}/raw/phoenix/download/remote.parquet",
        shards=download_shard_files("phoenix"),
    output:
        manifest=f"{R}/{{exp}}/raw/phoenix/manifest.parquet",
        models=directory(f"{R}/{{exp}}/raw/phoenix/HiResFITS"),
    log:
        f"{R}/{{exp}}/logs/archive_synthetic.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/archive_synthetic.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/archive_synthetic.py"
