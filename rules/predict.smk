# predict: a fixed number of shards streams through the memory-mapped flux matrix.


rule predict:
    input:
        unpack(ensemble_calibration_input),  # the ensemble's temperatures, if it has them
        flux=f"{R}/{{exp}}/normalized/flux.npy",
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
    script:
        "../workflow_scripts/predict.py"
