# normalize: rest frame, flux-conserving resampling onto the experiment grid, continuum
# normalisation, masking; bad spectra go to the rejects table with a reason.


rule normalize:
    input:
        manifest=f"{R}/{{exp}}/raw/observed/manifest.parquet",
        catalog=f"{R}/{{exp}}/raw/observed/catalog.fits",
        calibration=f"{R}/{{exp}}/raw/observed/calibration_stars.parquet",
        spectra=f"{R}/{{exp}}/raw/observed/spectra",
    output:
        flux=f"{R}/{{exp}}/normalized/flux.npy",
        ivar=f"{R}/{{exp}}/normalized/ivar.npy",
        table=f"{R}/{{exp}}/normalized/stars.parquet",
        rejects=f"{R}/{{exp}}/normalized/rejects.parquet",
    params:
        survey=lambda w: EXPERIMENTS[w.exp]["survey"],
        labels=section("labels"),
        grid=section("grid"),
        selection=section("selection"),
        solar=section("solar_abundances"),
        normalize=section("normalize"),
    threads: config["threads"]
    log:
        f"{R}/{{exp}}/logs/normalize.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/normalize.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/normalize.py"
