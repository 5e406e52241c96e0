# catalog: merge shards with the star table and flags → FITS (TUNIT, provenance) + Parquet;
# where configured, first fit the trends that put the labels onto the reference stars' scale.


rule reference_scale:
    input:
        shards=shard_files,
        table=f"{R}/{{exp}}/normalized/stars.parquet",
        calibration=f"{R}/{{exp}}/raw/observed/calibration_stars.parquet",
    output:
        f"{R}/{{exp}}/catalog/reference_scale.json",
    params:
        labels=section("labels"),
        reference_scale=section("reference_scale"),
    log:
        f"{R}/{{exp}}/logs/reference_scale.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/reference_scale.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/reference_scale.py"


rule catalog:
    input:
        unpack(refine_catalog_input),  # refined labels, where the experiment refines them
        unpack(reference_scale_input),  # the reference stars' scale, where it is fitted
        shards=shard_files,
        table=f"{R}/{{exp}}/normalized/stars.parquet",
        clean=f"{R}/{{exp}}/clean/clean.parquet",
        models=model_files,
    output:
        fits=f"{R}/{{exp}}/catalog/starlabels_{{exp}}.fits",
        parquet=f"{R}/{{exp}}/catalog/starlabels_{{exp}}.parquet",
    params:
        labels=section("labels"),
        catalog=section("catalog"),
        method=lambda w: EXPERIMENTS[w.exp]["method"],
        survey=lambda w: EXPERIMENTS[w.exp]["survey"],  # which input columns it carries
        # giant / subgiant / dwarf column (surveys with giant candidates: MARVELS)
        classes=evolutionary_classes,
    log:
        f"{R}/{{exp}}/logs/catalog.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/catalog.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/catalog.py"
