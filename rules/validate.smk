# validate: metrics against the simulator's truth and the plots for `snakemake --report`.


rule validate:
    input:
        unpack(truth_input),  # simulated surveys only: real data have no truth
        unpack(method_report_input),  # the method's report (deep_remap: calibration, ablation)
        unpack(refine_report_input),  # the refine stage's report, where it runs
        unpack(reference_scale_input),  # the reference stars' scale, where it is fitted
        catalog=f"{R}/{{exp}}/catalog/starlabels_{{exp}}.parquet",
        table=f"{R}/{{exp}}/normalized/stars.parquet",
        flux=f"{R}/{{exp}}/normalized/flux.npy",
        ivar=f"{R}/{{exp}}/normalized/ivar.npy",
        clean=f"{R}/{{exp}}/clean/clean.parquet",
        rejects=f"{R}/{{exp}}/normalized/rejects.parquet",
        calibration=f"{R}/{{exp}}/raw/observed/calibration_stars.parquet",
        models=model_files,
    output:
        metrics=f"{R}/{{exp}}/metrics.json",
        one_to_one_true=report(
            f"{R}/{{exp}}/plots/one_to_one_true.png",
            caption="../resources/report/one_to_one_true.rst",
            category="{exp}",
            subcategory="precision",
        ),
        one_to_one_reference=report(
            f"{R}/{{exp}}/plots/one_to_one_reference.png",
            caption="../resources/report/one_to_one_reference.rst",
            category="{exp}",
            subcategory="precision",
        ),
        kiel=report(
            f"{R}/{{exp}}/plots/kiel.png",
            caption="../resources/report/kiel.rst",
            category="{exp}",
            subcategory="science",
        ),
        abundances=report(
            f"{R}/{{exp}}/plots/abundances.png",
            caption="../resources/report/abundances.rst",
            category="{exp}",
            subcategory="science",
        ),
        tsne=report(
            f"{R}/{{exp}}/plots/tsne.png",
            caption="../resources/report/tsne.rst",
            category="{exp}",
            subcategory="clean",
        ),
        precision_vs_snr=report(
            f"{R}/{{exp}}/plots/precision_vs_snr.png",
            caption="../resources/report/precision_vs_snr.rst",
            category="{exp}",
            subcategory="precision",
        ),
        gradients=report(
            f"{R}/{{exp}}/plots/gradients.png",
            caption="../resources/report/gradients.rst",
            category="{exp}",
            subcategory="interpretation",
        ),
        coverage=report(
            f"{R}/{{exp}}/plots/coverage.png",
            caption="../resources/report/coverage.rst",
            category="{exp}",
            subcategory="precision",
        ),
    params:
        labels=section("labels"),
        survey=lambda w: EXPERIMENTS[w.exp]["survey"],
        method=lambda w: EXPERIMENTS[w.exp]["method"],
        grid=section("grid"),
        validate=section("validate"),
        linelist=lambda w: EXPERIMENTS[w.exp]["simulate"]["linelist"],
        continuum=lambda w: EXPERIMENTS[w.exp]["normalize"]["continuum"],
        simulate=lambda w: (
            EXPERIMENTS[w.exp]["simulate"]
            if EXPERIMENTS[w.exp]["source"] == "simulate"
            else None
        ),
    log:
        f"{R}/{{exp}}/logs/validate.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/validate.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/validate.py"


rule summary_tables:
    # the report's tables: metrics.json and the catalogue, summarised as HTML pages
    input:
        metrics=f"{R}/{{exp}}/metrics.json",
        catalog=f"{R}/{{exp}}/catalog/starlabels_{{exp}}.parquet",
    output:
        metrics=report(
            f"{R}/{{exp}}/tables/metrics.html",
            caption="../resources/report/metrics_table.rst",
            category="{exp}",
            subcategory="tables",
        ),
        catalog=report(
            f"{R}/{{exp}}/tables/catalog_summary.html",
            caption="../resources/report/catalog_summary.rst",
            category="{exp}",
            subcategory="tables",
        ),
    params:
        labels=section("labels"),
    log:
        f"{R}/{{exp}}/logs/summary_tables.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/summary_tables.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/summary_tables.py"
