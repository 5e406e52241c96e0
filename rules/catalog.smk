# catalog: merge shards with the star table and flags → FITS (TUNIT, provenance) + Parquet.


rule catalog:
    input:
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
        # MARVELS: giant / subgiant / dwarf column from the validate section's log g limits
        classes=lambda w: (
            {
                k: EXPERIMENTS[w.exp]["validate"][k]
                for k in ("giant_logg_max", "dwarf_logg_min")
            }
            if EXPERIMENTS[w.exp]["survey"] == "sdss_marvels"
            else None
        ),
        config_hash=section_hash("labels", "catalog", "method"),
    log:
        f"{R}/{{exp}}/logs/catalog.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/catalog.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/catalog.py"
