# trainset + train: assemble what the networks learn from, then one job per ensemble member
# (a GPU job on a cluster: resources gpu=1).


rule trainset:
    input:
        unpack(trainset_inputs),
    output:
        flux=f"{R}/{{exp}}/trainset/flux.npy",
        table=f"{R}/{{exp}}/trainset/spectra.parquet",
    params:
        sources=lambda w: EXPERIMENTS[w.exp]["trainset"]["sources"],
        labels=section("labels"),
    log:
        f"{R}/{{exp}}/logs/trainset.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/trainset.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/trainset.py"


rule train:
    input:
        flux=f"{R}/{{exp}}/trainset/flux.npy",
        table=f"{R}/{{exp}}/trainset/spectra.parquet",
    output:
        weights=f"{R}/{{exp}}/models/member_{{member}}/model.pt",
        sidecar=f"{R}/{{exp}}/models/member_{{member}}/model.json",
        history=f"{R}/{{exp}}/models/member_{{member}}/history.csv",
    params:
        labels=section("labels"),
        method=lambda w: EXPERIMENTS[w.exp]["method"],
        train=section("train"),
        method_cfg=method_section,
    threads: lambda w: EXPERIMENTS[w.exp]["train"]["threads"]
    resources:
        gpu=1,
    log:
        f"{R}/{{exp}}/logs/train_member_{{member}}.log",
    benchmark:
        f"{R}/{{exp}}/benchmarks/train_member_{{member}}.tsv"
    conda:
        "../envs/starlabels.yaml"
    script:
        "../workflow_scripts/train.py"
