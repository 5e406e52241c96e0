# acquire: raw files in the archives' formats. `source: simulate` runs the embedded survey
# simulator; real archives (source eso_ges / sdss_marvels, synthetic.source phoenix) write the
# same outputs through rules/download.smk (manifest → download shards → assemble).


rule acquire_observed:
    wildcard_constraints:
        exp=SIMULATED_OBSERVED,
    output:
        manifest=f"{R}/{{exp}}/raw/observed/manifest.parquet",
        catalog=f"{R}/{{exp}}/raw/observed/catalog.fits",
        calibration=f"{R}/{{exp}}/raw/observed/calibration_stars.parquet",
        spectra=directory(f"{R}/{{exp}}/raw/observed/spectra"),
        truth=f"{R}/{{exp}}/truth/truth.parquet",
    params:
        survey=lambda w: EXPERIMENTS[w.exp]["survey"],
        source=lambda w: EXPERIMENTS[w.exp]["source"],
        simulate=section("simulate"),
    threads: config["threads"]
    log:
        f"{R}/{{exp}}/logs/acquire_observed.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/acquire_observed.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/acquire_observed.py"


rule acquire_synthetic:
    wildcard_constraints:
        exp=SIMULATED_SYNTHETIC,
    output:
        manifest=f"{R}/{{exp}}/raw/phoenix/manifest.parquet",
        models=directory(f"{R}/{{exp}}/raw/phoenix/HiResFITS"),
    params:
        simulate=lambda w: EXPERIMENTS[w.exp]["synthetic"]["simulate"],
    threads: config["threads"]
    log:
        f"{R}/{{exp}}/logs/acquire_synthetic.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/acquire_synthetic.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/acquire_synthetic.py"
