# synthesize: PHOENIX HiRes grid → vacuum→air, LSF at the instrument R, resampling onto the
# grid, the same continuum normalisation as observed spectra, augmentation.


rule synthesize:
    input:
        manifest=f"{R}/{{exp}}/raw/phoenix/manifest.parquet",
        models=f"{R}/{{exp}}/raw/phoenix/HiResFITS",
    output:
        flux=f"{R}/{{exp}}/synthetic/flux.npy",
        ivar=f"{R}/{{exp}}/synthetic/ivar.npy",
        table=f"{R}/{{exp}}/synthetic/spectra.parquet",
        rejects=f"{R}/{{exp}}/synthetic/rejects.parquet",
    params:
        grid=section("grid"),
        synthesize=lambda w: EXPERIMENTS[w.exp]["synthetic"]["synthesize"],
        continuum=lambda w: EXPERIMENTS[w.exp]["normalize"]["continuum"],
    threads: config["threads"]
    log:
        f"{R}/{{exp}}/logs/synthesize.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/synthesize.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/synthesize.py"
