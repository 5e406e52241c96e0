# catalog: merge shards with the star table and flags → FITS (TUNIT, provenance) + Parquet.


rule catalog:
    input:
        unpack(refine_catalog_input),  # refined labels, where the experiment refines them
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
