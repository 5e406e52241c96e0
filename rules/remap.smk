# deep-REMAP extras: the report on calibration (held-out stars, before/after temperature scaling)
# and classes, part of the default run; the ablation study (members with one part of the recipe
# switched off each, and their table) is its own target: `snakemake --cores N ablation`.


rule train_ablation:
    input:
        flux=f"{R}/{{exp}}/trainset/flux.npy",
        ivar=f"{R}/{{exp}}/trainset/ivar.npy",
        table=f"{R}/{{exp}}/trainset/spectra.parquet",
    output:
        weights=f"{R}/{{exp}}/ablation/{{variant}}/model.pt",
        sidecar=f"{R}/{{exp}}/ablation/{{variant}}/model.json",
        history=f"{R}/{{exp}}/ablation/{{variant}}/history.csv",
    wildcard_constraints:
        variant=ABLATION_VARIANTS,
    params:
        labels=section("labels"),
        method=lambda w: EXPERIMENTS[w.exp]["method"],
        train=section("train"),
        method_cfg=method_section,
    threads: lambda w: EXPERIMENTS[w.exp]["train"]["threads"]
    resources:
        gpu=1,
    log:
        f"{R}/{{exp}}/logs/train_ablation_{{variant}}.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/train_ablation_{{variant}}.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/train_ablation.py"


rule remap_report:
    input:
        unpack(truth_input),
        unpack(ensemble_calibration_input),
        flux=f"{R}/{{exp}}/normalized/flux.npy",
        table=f"{R}/{{exp}}/normalized/stars.parquet",
        catalog=f"{R}/{{exp}}/catalog/starlabels_{{exp}}.parquet",
        models=model_files,
    output:
        metrics=f"{R}/{{exp}}/remap_report.json",
        reliability=report(
            f"{R}/{{exp}}/plots/reliability.png",
            caption="../resources/report/reliability.rst",
            category="{exp}",
            subcategory="calibration",
        ),
        embedding_map=report(
            f"{R}/{{exp}}/plots/embedding_map.png",
            caption="../resources/report/embedding_map.rst",
            category="{exp}",
            subcategory="interpretation",
        ),
    params:
        classes=lambda w: {
            k: EXPERIMENTS[w.exp]["validate"][k]
            for k in ("giant_logg_max", "dwarf_logg_min")
        },
        targets=lambda w: EXPERIMENTS[w.exp]["validate"]["targets"],
    log:
        f"{R}/{{exp}}/logs/remap_report.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/remap_report.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/remap_report.py"


rule ablation_report:
    input:
        unpack(truth_input),
        unpack(ensemble_calibration_input),
        flux=f"{R}/{{exp}}/normalized/flux.npy",
        table=f"{R}/{{exp}}/normalized/stars.parquet",
        models=model_files,
        ablation=ablation_files,
    output:
        markdown=f"{R}/{{exp}}/ablation.md",
        figures=f"{R}/{{exp}}/ablation.json",
    params:
        variants=lambda w: EXPERIMENTS[w.exp]["remap"]["ablation"],
    log:
        f"{R}/{{exp}}/logs/ablation_report.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/ablation_report.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/ablation_report.py"

