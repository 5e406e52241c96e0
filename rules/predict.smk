# calibrate_ensemble + predict: the ensemble's uncertainties calibrated on the valid split
# (where the method does so), then a fixed number of shards streams through the memory-mapped
# flux matrix.


rule calibrate_ensemble:
    input:
        flux=f"{R}/{{exp}}/trainset/flux.npy",
        ivar=f"{R}/{{exp}}/trainset/ivar.npy",
        table=f"{R}/{{exp}}/trainset/spectra.parquet",
        models=model_files,
    output:
        f"{R}/{{exp}}/models/ensemble_calibration.json",
    params:
        calibration=calibration_section,
        keep_quantile=lambda w: EXPERIMENTS[w.exp]["predict"]["keep_quantile"],
    log:
        f"{R}/{{exp}}/logs/calibrate_ensemble.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/calibrate_ensemble.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/calibrate_ensemble.py"


rule predict:
    input:
        unpack(ensemble_calibration_input),  # the ensemble's calibration, if it has one
        flux=f"{R}/{{exp}}/normalized/flux.npy",
        ivar=f"{R}/{{exp}}/normalized/ivar.npy",
        table=f"{R}/{{exp}}/normalized/stars.parquet",
        models=model_files,
    output:
        f"{R}/{{exp}}/predictions/shard_{{shard}}.parquet",
    params:
        n_shards=lambda w: EXPERIMENTS[w.exp]["predict"]["shards"],
        predict=section("predict"),
        options=predict_options,  # the method's own prediction settings (deep_remap: knn)
    threads: 1
    group:
        "predict"
    log:
        f"{R}/{{exp}}/logs/predict_shard_{{shard}}.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/predict_shard_{{shard}}.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/predict.py"


rule ensemble:
    # models/ is one thing to copy and apply (`starlabels predict`): members, calibration and
    # this manifest of their checksums, the settings that apply them and the catalogue's
    # reference-star scale
    input:
        unpack(ensemble_calibration_input),
        unpack(reference_scale_input),  # the catalogue's scale, applied by `starlabels predict`
        models=model_files,
    output:
        f"{R}/{{exp}}/models/ensemble.json",
    params:
        method=lambda w: EXPERIMENTS[w.exp]["method"],
        survey=lambda w: EXPERIMENTS[w.exp]["survey"],
        labels=section("labels"),
        keep_quantile=lambda w: EXPERIMENTS[w.exp]["predict"]["keep_quantile"],
        options=predict_options,
        catalog=section("catalog"),
        classes=evolutionary_classes,
    log:
        f"{R}/{{exp}}/logs/ensemble.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/ensemble.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/ensemble.py"
