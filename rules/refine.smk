# refine: a spectral emulator trained once per experiment on the cleaned training stars, then a
# per-star likelihood fit of every prediction shard's spectra from the network's labels
# (starlabels.refine). calibrate_refine fits the valid split first (label scale, errors, χ² flag
# threshold); refine_report judges the refined labels against the truth. Only for experiments
# with refine.enabled.


rule train_emulator:
    wildcard_constraints:
        exp=REFINED,
    input:
        flux=f"{R}/{{exp}}/normalized/flux.npy",
        ivar=f"{R}/{{exp}}/normalized/ivar.npy",
        table=f"{R}/{{exp}}/normalized/stars.parquet",
        trainset=f"{R}/{{exp}}/trainset/spectra.parquet",
    output:
        weights=f"{R}/{{exp}}/models/emulator/model.pt",
        sidecar=f"{R}/{{exp}}/models/emulator/model.json",
        history=f"{R}/{{exp}}/models/emulator/history.csv",
    params:
        labels=section("labels"),
        refine=refine_settings("device", "emulator"),
        grid=section("grid"),
        linelist=lambda w: EXPERIMENTS[w.exp]["simulate"]["linelist"],
    threads: lambda w: EXPERIMENTS[w.exp]["refine"]["threads"]
    log:
        f"{R}/{{exp}}/logs/train_emulator.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/train_emulator.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/train_emulator.py"


rule calibrate_refine:
    wildcard_constraints:
        exp=REFINED,
    input:
        emulator=f"{R}/{{exp}}/models/emulator/model.json",
        flux=f"{R}/{{exp}}/normalized/flux.npy",
        ivar=f"{R}/{{exp}}/normalized/ivar.npy",
        trainset=f"{R}/{{exp}}/trainset/spectra.parquet",
        predictions=shard_files,
    output:
        f"{R}/{{exp}}/refine/calibration.json",
    params:
        labels=section("labels"),
        refine=refine_settings("device", "fit", "calibration"),
    threads: lambda w: EXPERIMENTS[w.exp]["refine"]["threads"]
    log:
        f"{R}/{{exp}}/logs/calibrate_refine.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/calibrate_refine.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/calibrate_refine.py"


rule refine:
    wildcard_constraints:
        exp=REFINED,
    input:
        emulator=f"{R}/{{exp}}/models/emulator/model.json",
        calibration=f"{R}/{{exp}}/refine/calibration.json",
        flux=f"{R}/{{exp}}/normalized/flux.npy",
        ivar=f"{R}/{{exp}}/normalized/ivar.npy",
        table=f"{R}/{{exp}}/normalized/stars.parquet",
        prediction=f"{R}/{{exp}}/predictions/shard_{{shard}}.parquet",
    output:
        table=f"{R}/{{exp}}/refine/shard_{{shard}}.parquet",
        models=f"{R}/{{exp}}/refine/models_{{shard}}.npy",
    params:
        n_shards=lambda w: EXPERIMENTS[w.exp]["predict"]["shards"],
        labels=section("labels"),
        refine=refine_settings("device", "fit"),
    threads: 1
    group:
        "refine"
    log:
        f"{R}/{{exp}}/logs/refine_shard_{{shard}}.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/refine_shard_{{shard}}.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/refine.py"


rule refine_report:
    wildcard_constraints:
        exp=REFINED,
    input:
        unpack(truth_input),
        catalog=f"{R}/{{exp}}/catalog/starlabels_{{exp}}.parquet",
        flux=f"{R}/{{exp}}/normalized/flux.npy",
        ivar=f"{R}/{{exp}}/normalized/ivar.npy",
        models=refine_model_files,
        calibration=f"{R}/{{exp}}/refine/calibration.json",
    output:
        metrics=f"{R}/{{exp}}/refine_report.json",
        fits=report(
            f"{R}/{{exp}}/plots/refine_fits.png",
            caption="../resources/report/refine_fits.rst",
            category="{exp}",
            subcategory="refine",
        ),
    params:
        labels=section("labels"),
        survey=lambda w: EXPERIMENTS[w.exp]["survey"],
        grid=section("grid"),
        n_shards=lambda w: EXPERIMENTS[w.exp]["predict"]["shards"],
        plot_stars=lambda w: EXPERIMENTS[w.exp]["refine"]["plot_stars"],
        snr_bins=lambda w: EXPERIMENTS[w.exp]["validate"]["snr_bins"],
        targets=lambda w: EXPERIMENTS[w.exp]["validate"]["targets"]["refine"],
        linelist=lambda w: EXPERIMENTS[w.exp]["simulate"]["linelist"],
    log:
        f"{R}/{{exp}}/logs/refine_report.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/refine_report.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/refine_report.py"
