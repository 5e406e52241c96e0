# clean: t-SNE cleaning of the training set (PCA → openTSNE → outliers / label disagreement).


rule clean:
    input:
        flux=f"{R}/{{exp}}/normalized/flux.npy",
        table=f"{R}/{{exp}}/normalized/stars.parquet",
    output:
        table=f"{R}/{{exp}}/clean/clean.parquet",
        plot=report(
            f"{R}/{{exp}}/clean/tsne_clean.png",
            caption="../resources/report/tsne_clean.rst",
            category="{exp}",
            subcategory="clean",
        ),
    params:
        labels=section("labels"),
        clean=section("clean"),
    threads: config["threads"]
    log:
        f"{R}/{{exp}}/logs/clean.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/clean.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/clean.py"
